"""Build the optional native crop decoder (metadata lives in pyproject.toml).

The extension links the system libjpeg-turbo (Debian/Ubuntu: ``apt install libjpeg62-turbo-dev``
or ``libjpeg-turbo8-dev``). It is optional: without a compiler or the headers the build skips
it, ``pip install`` still succeeds, and ``decoder="auto"`` uses the fastest other backend
(saying why once, in the log).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shardpipe.image.decoders._cropjpeg",
            sources=["shardpipe/image/decoders/_cropjpeg.c", "shardpipe/image/decoders/_restart.c"],
            depends=["shardpipe/image/decoders/_jpegguard.h", "shardpipe/image/decoders/_restart.h"],
            libraries=["jpeg"],
            extra_compile_args=["-O2"],
            optional=True,  # a failed build is skipped, not fatal
        )
    ]
)
