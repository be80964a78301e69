"""``make wheel`` builds a wheel that carries the native decoder and its libjpeg-turbo; a source build
that cannot build the decoder says so on the terminal, without ``pip -v``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DECODE = """
import hashlib, sys
import shardpipe
from shardpipe.image.decoders.registry import get_decoder
from shardpipe.devtools.synth import make_jpeg
import shardpipe.image.decoders._cropjpeg as ext
out = get_decoder("native").decode(make_jpeg(3))
print(shardpipe.__file__)
print(ext.__file__)
print(out.shape, hashlib.sha256(out.tobytes()).hexdigest())
"""


def headers_and_compiler() -> bool:
    return shutil.which("gcc") is not None and Path("/usr/include/jpeglib.h").exists()


def outside_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH pointing at this checkout."""
    return {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH", "SHARDPIPE_REQUIRE_NATIVE")
    }


@pytest.mark.slow
@pytest.mark.timeout(900)  # its steps' own limits, not the suite's 300 s
@pytest.mark.skipif(not headers_and_compiler(), reason="building the wheel needs gcc and libjpeg-turbo's headers")
def test_wheel_carries_the_decoder_and_its_libjpeg(tmp_path: Path):
    wheels = tmp_path / "wheels"
    make = subprocess.run(["make", "wheel", f"WHEEL_DIR={wheels}", f"PY={sys.executable}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)  # fmt: skip
    assert make.returncode == 0, make.stdout[-3000:] + make.stderr[-3000:]
    (wheel,) = wheels.glob("shardpipe-*manylinux*.whl")

    venv = tmp_path / "venv"  # sees the system's torch and numpy; shardpipe itself only from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300, env=outside_env())  # fmt: skip
    run = subprocess.run([python, "-c", DECODE], cwd=tmp_path, env=outside_env(), capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    package, extension, decoded = run.stdout.splitlines()
    assert package.startswith(str(venv)) and extension.startswith(str(venv))

    # the extension finds libjpeg inside the installed wheel, not in /usr/lib
    ldd = subprocess.run(["ldd", extension], capture_output=True, text=True, check=True).stdout
    (jpeg_line,) = [line for line in ldd.splitlines() if "libjpeg" in line]
    assert str(venv) in jpeg_line and "shardpipe.libs" in jpeg_line and "/usr/lib" not in jpeg_line

    # and decodes exactly as the decoder built here against the system's libjpeg-turbo
    here = subprocess.run([sys.executable, "-c", DECODE], cwd=ROOT, env={**outside_env(), "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    if here.returncode != 0:
        pytest.fail(f"the in-place native decoder did not run: {here.stderr[-2000:]}")
    assert decoded == here.stdout.splitlines()[2]


@pytest.mark.slow
def test_a_source_build_without_a_compiler_says_so_on_the_terminal(tmp_path: Path):
    """pip hides a successful build's output; the message reaches the terminal (here a pseudo-terminal)."""
    if not shutil.which("script"):
        pytest.skip("needs script(1) to give pip a terminal")
    source = tmp_path / "src"
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.so", "__pycache__", "*.egg-info")
    )
    command = f"CC=false {sys.executable} -m pip wheel -q --no-deps --no-build-isolation -w {tmp_path / 'out'} {source}"
    run = subprocess.run(["script", "-qec", command, "/dev/null"], env=outside_env(), capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:]
    assert "shardpipe: the native crop decoder (shardpipe.image.decoders._cropjpeg) was NOT built" in run.stdout
    assert "apt install gcc libjpeg62-turbo-dev" in run.stdout
    (wheel,) = (tmp_path / "out").glob("shardpipe-*.whl")  # the install goes on without the decoder
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")]
