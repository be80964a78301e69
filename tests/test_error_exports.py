"""The errors users meet (README, docs/reference.md) import from the package, without importing torch or zmq."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import shardpipe
import shardpipe.errors
import shardpipe.format.manifest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTED = {  # name -> the module that defines it
    "SetupError": shardpipe.errors,
    "ListenError": shardpipe.errors,
    "DuplicateMemberError": shardpipe.errors,
    "ManifestPathError": shardpipe.format.manifest,
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_a_documented_error_is_exported(name):
    namespace: dict = {}
    exec(f"from shardpipe import {name}", namespace)
    assert namespace[name] is getattr(DOCUMENTED[name], name)
    assert issubclass(namespace[name], shardpipe.ShardpipeError)
    assert name in shardpipe.__all__


def test_every_error_class_of_shardpipe_errors_is_exported():
    errors = {
        name
        for name, value in vars(shardpipe.errors).items()
        if inspect.isclass(value) and issubclass(value, shardpipe.errors.ShardpipeError)
    }
    assert errors - set(shardpipe.__all__) == set()


def test_a_refused_request_is_exported_as_a_permission_error_not_a_shardpipe_error():
    """``AccessDeniedError`` (wrong or missing credentials) is caught as ``PermissionError``: it is no
    ``ShardpipeError``, so ``on_error="skip"`` never counts every shard of an epoch as a skip."""
    from shardpipe import AccessDeniedError
    from shardpipe.io.access import AccessDeniedError as defined

    assert AccessDeniedError is defined and "AccessDeniedError" in shardpipe.__all__
    assert issubclass(AccessDeniedError, PermissionError)
    assert not issubclass(AccessDeniedError, shardpipe.ShardpipeError)


PROGRAM = """
import json, sys
import shardpipe
light = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "zmq"))
from shardpipe import AccessDeniedError, DuplicateMemberError, ListenError, ManifestPathError, SetupError
print(json.dumps({"after import": light, "after the errors": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "zmq"))}))
"""


def test_importing_the_errors_stays_light():
    run = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"after import": [], "after the errors": []}
