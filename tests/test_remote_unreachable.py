"""A store that cannot be reached (nothing listens on its 127.0.0.1 port) fails after shardpipe's own
retries (``ReadOptions``), naming the URL: the clients' own retries are off where shardpipe makes the
filesystem (botocore: 5 tries a request, gcsfs: 6 with waits of 1 to 16 s, and its 60 s bucket-layout
probe), so an S3 endpoint took ~110 s to fail and a GCS one over 5 minutes. Run as users run it: a
program (gcsfs as installed, its layout probe on: GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT unset) and the CLI.
The subprocess timeouts are hang guards, far above the second or two these take."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shardpipe import ShardDataset, StoreUnreachableError, TarWriter
from shardpipe.devtools.synth import make_dataset
from shardpipe.io.files import open_shard
from shardpipe.io.remote import ReadOptions

from .servers.procs import free_port
from .servers.proxy import FaultProxy

REPO = Path(__file__).resolve().parents[1]

PROGRAM = """
import json, sys
from shardpipe import ShardDataset
from shardpipe.io.remote import ReadOptions

url, options = sys.argv[1], json.loads(sys.argv[2])
read = ReadOptions(retries=8, backoff=0.05, max_backoff=0.2, timeout=20)
try:
    list(ShardDataset(url, storage_options=options, read_options=read, decode=None))
except Exception as e:
    print(json.dumps([type(e).__name__, str(e)]))
"""


def closed_store(kind: str) -> tuple[str, dict, int]:
    """A URL prefix and storage_options for a ``kind`` store whose port nothing listens on."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    if kind == "s3":
        return "s3://shards", {"endpoint_url": endpoint, "key": "k", "secret": "s"}, port
    if kind == "gs":
        return "gs://shards", {"endpoint_url": endpoint, "token": "anon", "project": "p"}, port
    return endpoint, {}, port


def user_env() -> dict[str, str]:
    """The environment of a user's program: gcsfs's defaults (the tests' fixtures switch its probe off)."""
    env = {k: v for k, v in os.environ.items() if k != "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT" and not k.startswith("AWS_")}
    return {**env, "PYTHONPATH": str(REPO)}


def run_program(url: str, options: dict) -> list[str]:
    run = subprocess.run(
        [sys.executable, "-c", PROGRAM, url, json.dumps(options)], capture_output=True, text=True,
        env=user_env(), timeout=60,  # hang guard (before: 9 x ~9 s over S3, 9 x over 30 s over GCS)
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip(), run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "kind, client_error",
    [("s3", "EndpointConnectionError: Could not connect to the endpoint URL"),
     ("gs", "ConnectionRefusedError: [Errno 111] Connect call failed"),
     ("http", "ClientConnectorError: Cannot connect to host")],
)  # fmt: skip
def test_opening_a_shard_on_a_store_nobody_listens_on_fails_after_the_read_options_retries(kind, client_error):
    prefix, options, port = closed_store(kind)
    url = f"{prefix}/x/a.tar"
    kind_name, message = run_program(url, options)
    assert kind_name == "StoreUnreachableError"  # (before: TruncatedShardError, a bad shard)
    store = f"http://127.0.0.1:{port}"
    assert message.startswith(f"{url}: cannot reach the store at {store} to open it after 9 attempts: {client_error}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "kind, client_error",
    [("s3", "EndpointConnectionError: Could not connect to the endpoint URL"),
     ("gs", "ConnectionRefusedError: [Errno 111] Connect call failed")],
)  # fmt: skip
def test_a_glob_on_a_store_nobody_listens_on_fails_after_the_read_options_retries_naming_it(kind, client_error):
    prefix, options, port = closed_store(kind)
    url = f"{prefix}/x/*.tar"
    kind_name, message = run_program(url, options)
    assert kind_name == "StoreUnreachableError"  # (before: the client's own error, without the URL)
    assert message.startswith(f"{url}: cannot reach the store for its listing after 9 attempts: {client_error}")
    assert str(port) in message


SKIPPING = """
import json, sys
from shardpipe import ShardDataset, ShardLoader
from shardpipe.io.remote import ReadOptions

urls, workers = json.loads(sys.argv[1]), int(sys.argv[2])
read = ReadOptions(retries=2, backoff=0.05, max_backoff=0.1, timeout=20)
ds = ShardDataset(urls, read_options=read, decode=None, on_error="skip")
try:
    n = len(list(ShardLoader(ds, num_workers=workers) if workers else ds))
    print(json.dumps(["read", n, ds.stats.errors()]))
except Exception as e:
    print(json.dumps([type(e).__name__, str(e), ds.stats.errors()]))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("host", ["closed port", "no such host"])
def test_an_unreachable_store_stops_a_pass_that_skips_bad_shards(host, workers):
    """No shard of an unreachable store would read: on_error='skip' stops the pass with StoreUnreachableError
    instead of skipping every shard after its retries (a TruncatedShardError each, ~33 s each by default)."""
    store = f"http://127.0.0.1:{free_port()}" if host == "closed port" else "http://shards.invalid"
    urls = [f"{store}/x/s-{i}.tar" for i in range(4)]
    run = subprocess.run(
        [sys.executable, "-c", SKIPPING, json.dumps(urls), str(workers)], capture_output=True, text=True,
        env=user_env(), timeout=100,  # hang guard
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip(), run.stderr[-3000:]
    kind_name, message, skipped = json.loads(run.stdout.strip().splitlines()[-1])
    assert (kind_name, skipped) == ("StoreUnreachableError", {}), message  # (before: ["read", 0, 4 skips])
    assert re.search(
        rf"{re.escape(store)}/x/s-\d\.tar: cannot reach the store at {re.escape(store)} to open it after 3 attempts: "
        r"ClientConnector(DNS)?Error: Cannot connect to host ",
        message,
    ), message


@pytest.mark.servers
@pytest.mark.timeout(120)
def test_a_missing_or_cut_shard_stays_a_skip(misbehaving):
    """Once connected, a shard the server does not have (404) or cuts short is that shard's problem: a skip."""
    good = make_shard(misbehaving, "reach/good.tar")
    cut = misbehaving.put("reach/cut.tar", misbehaving.objects["/reach/good.tar"].data, length_delta=100)
    urls = [misbehaving.url("reach/missing.tar"), cut, good]
    read = ReadOptions(retries=1, backoff=0.01, max_backoff=0.02, timeout=20)
    ds = ShardDataset(urls, read_options=read, decode=None, on_error="skip", shuffle=False)
    assert len(list(ds)) == 3  # the good shard's samples
    assert ds.stats.errors() == {"ShardNotFoundError": 1, "TruncatedShardError": 1}


@pytest.mark.servers
@pytest.mark.timeout(120)
def test_a_store_that_goes_away_mid_read_stops_the_pass_naming_it(misbehaving):
    url = make_shard(misbehaving, "reach/away.tar")
    proxy = FaultProxy(misbehaving.port).start()
    proxied = url.replace(misbehaving.endpoint, proxy.endpoint)
    read = ReadOptions(min_block=1024, block_size=1024, readahead=0, retries=2, backoff=0.01, timeout=20)
    stream = open_shard(proxied, read_options=read)
    assert stream.read(1024) == misbehaving.objects["/reach/away.tar"].data[:1024]
    proxy.stop()  # its connections close; new ones are refused
    with pytest.raises(StoreUnreachableError) as e:
        stream.read(4096)
    assert re.match(
        rf"{re.escape(proxied)}: cannot reach the store at {re.escape(proxy.endpoint)} for bytes 1024-2047 after 3 "
        r"attempts: ConnectionRefusedError: \[Errno 111\] Connect call failed",
        str(e.value),
    ), str(e.value)  # (before: TruncatedShardError, a skip under on_error="skip")


def make_shard(server, name: str) -> str:
    """A shard of three synthetic JPEGs served at ``name``; its URL."""
    buf = io.BytesIO()
    w = TarWriter(buf)
    for key, jpg, cls in make_dataset(3, seed=1):
        w.write({"__key__": key, "jpg": jpg, "cls": str(cls).encode()})
    w.close()
    return server.put(name, buf.getvalue())


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", *args], capture_output=True, text=True, env=user_env(),
        timeout=200,  # hang guard: the CLI reads under its default read options (2 retries, 0.75 s of backoff)
    )  # fmt: skip


@pytest.mark.timeout(300)
def test_cli_a_glob_on_a_gcs_endpoint_nobody_listens_on_exits_2_naming_it():
    prefix, options, port = closed_store("gs")
    url = f"{prefix}/x/*.tar"
    run = cli("inspect", url, "--storage-options", json.dumps(options))
    assert run.returncode == 2, run.stderr
    assert (
        f"shardpipe inspect: error: {url}: cannot reach the store for its listing after 3 attempts: "
        f"ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', {port})"
    ) in run.stderr
    assert f"INFO retrying the listing of {url} after ClientConnectorError" in run.stderr  # said while it waits
