"""Build the optional native crop decoder (metadata lives in pyproject.toml).

The extension links libjpeg-turbo. A source install links the system's (Debian/Ubuntu:
``apt install libjpeg62-turbo-dev`` or ``libjpeg-turbo8-dev``). It is optional: without a compiler
or the headers the build skips it, says so on the terminal (pip hides a successful build's output,
so the message goes to /dev/tty as well), ``pip install`` still succeeds, and ``decoder="auto"``
uses the fastest other backend (saying why once, in the log).

``SHARDPIPE_REQUIRE_NATIVE=1`` (what ``make wheel`` sets) makes a failed build an error: a wheel
must carry the extension. ``make wheel`` then copies the libjpeg-turbo it links into the wheel
(``auditwheel repair``), so the wheel needs no libjpeg, headers or compiler where it is installed.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def tell_user(message: str) -> None:
    """Print to stderr and, when there is one, straight to the terminal: pip shows a build's output only with -v."""
    print(message, file=sys.stderr)
    try:
        with open("/dev/tty", "w") as tty:
            tty.write(message + "\n")
    except OSError:
        pass


class BuildExt(build_ext):
    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:
            if getattr(ext, "optional", False):
                tell_user(
                    "\n*** shardpipe: the native crop decoder (shardpipe.image.decoders._cropjpeg) was NOT built: "
                    f"{e}\n*** shardpipe works without it (decoder='auto' picks simplejpeg, PyTurboJPEG or PIL), "
                    "about 20% slower on crop-aware decode.\n*** To build it: install gcc and libjpeg-turbo's "
                    "headers (Debian/Ubuntu: apt install gcc libjpeg62-turbo-dev), then reinstall shardpipe.\n"
                )
            raise


required = os.environ.get("SHARDPIPE_REQUIRE_NATIVE") == "1"
setup(
    ext_modules=[
        Extension(
            "shardpipe.image.decoders._cropjpeg",
            sources=["shardpipe/image/decoders/_cropjpeg.c", "shardpipe/image/decoders/_restart.c"],
            depends=["shardpipe/image/decoders/_jpegguard.h", "shardpipe/image/decoders/_restart.h"],
            libraries=["jpeg"],
            extra_compile_args=["-O2"],
            optional=not required,  # a failed source build is skipped (and said so); a wheel build must not skip it
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
