"""Session-scoped pytest fixtures for the real servers and their fault proxies.

Loaded from tests/conftest.py with ``pytest_plugins = ["tests.servers.fixtures"]``.
A server whose binary is missing skips its tests with the install line in the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from .fakegcs import FakeGCS  # noqa: E402
from .misbehaving import MisbehavingServer  # noqa: E402
from .nginx import Nginx  # noqa: E402
from .proxy import FaultProxy  # noqa: E402
from .seaweed import SeaweedS3  # noqa: E402

GCS_BUCKET = "shards"


def _start(factory, what: str):
    try:
        server = factory()
    except FileNotFoundError as e:
        pytest.skip(f"{what} unavailable: {e}")
    return server.start()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """SeaweedFS with a bucket ``shards``; S3 at ``s3_server.endpoint``."""
    server = _start(lambda: SeaweedS3(tmp_path_factory.mktemp("seaweed")), "SeaweedFS")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGCS]:
    """fake-gcs-server with a bucket ``shards``."""
    server = _start(lambda: FakeGCS(tmp_path_factory.mktemp("fakegcs")), "fake-gcs-server")
    server.create_bucket(GCS_BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx serving ``http_server.docroot``."""
    root = tmp_path_factory.mktemp("nginx")
    server = _start(lambda: Nginx(root, root / "www"), "nginx")
    yield server
    server.stop()


@pytest.fixture
def misbehaving() -> Iterator[MisbehavingServer]:
    """An HTTP server that misbehaves as each object put into it says (a thread; one per test)."""
    server = MisbehavingServer().start()
    yield server
    server.stop()


def _proxy(port: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(port).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def _s3_proxy(s3_server: SeaweedS3) -> Iterator[FaultProxy]:
    yield from _proxy(s3_server.port)


@pytest.fixture(scope="session")
def _gcs_proxy(gcs_server: FakeGCS) -> Iterator[FaultProxy]:
    yield from _proxy(gcs_server.port)


@pytest.fixture(scope="session")
def _http_proxy(http_server: Nginx) -> Iterator[FaultProxy]:
    yield from _proxy(http_server.port)


@pytest.fixture
def s3_proxy(_s3_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The fault proxy in front of SeaweedFS, cleared before and after each test."""
    _s3_proxy.clear()
    yield _s3_proxy
    _s3_proxy.clear()


@pytest.fixture
def gcs_proxy(_gcs_proxy: FaultProxy) -> Iterator[FaultProxy]:
    _gcs_proxy.clear()
    yield _gcs_proxy
    _gcs_proxy.clear()


@pytest.fixture
def http_proxy(_http_proxy: FaultProxy) -> Iterator[FaultProxy]:
    _http_proxy.clear()
    yield _http_proxy
    _http_proxy.clear()


class RemoteStore:
    """One server seen through its proxy or directly: put objects, get URLs and options."""

    def __init__(self, kind: str, server, proxy: FaultProxy):
        self.kind = kind
        self.server = server
        self.proxy = proxy

    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name`` on the server (not through the proxy)."""
        if self.kind == "http":
            path = self.server.docroot / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return
        import fsspec.core

        fs, path = fsspec.core.url_to_fs(self.url(name), **self.server.storage_options())
        fs.pipe_file(path, data)

    def url(self, name: str, *, proxied: bool = False) -> str:
        if self.kind == "http":
            endpoint = self.proxy.endpoint if proxied else self.server.endpoint
            return f"{endpoint}/{name}"
        return f"{'s3' if self.kind == 's3' else 'gs'}://shards/{name}"

    def options(self, *, proxied: bool = False) -> dict:
        """storage_options reaching the server directly or through the fault proxy."""
        if self.kind == "http":
            return {}
        return self.server.storage_options(self.proxy.endpoint if proxied else None)


@pytest.fixture(params=["s3", "gcs", "http"])
def remote(request: pytest.FixtureRequest) -> RemoteStore:
    """Each real server in turn (with its cleared fault proxy)."""
    kind = request.param
    server = request.getfixturevalue({"s3": "s3_server", "gcs": "gcs_server", "http": "http_server"}[kind])
    proxy = request.getfixturevalue(f"{kind}_proxy")
    return RemoteStore(kind, server, proxy)


@pytest.fixture
def s3_store(s3_server: SeaweedS3, s3_proxy: FaultProxy) -> RemoteStore:
    return RemoteStore("s3", s3_server, s3_proxy)


@pytest.fixture
def gcs_store(gcs_server: FakeGCS, gcs_proxy: FaultProxy) -> RemoteStore:
    return RemoteStore("gcs", gcs_server, gcs_proxy)


@pytest.fixture
def http_store(http_server: Nginx, http_proxy: FaultProxy) -> RemoteStore:
    return RemoteStore("http", http_server, http_proxy)
