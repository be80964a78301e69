"""A store that cannot be reached (nothing listens on its 127.0.0.1 port) fails after shardpipe's own
retries (``ReadOptions``), naming the URL: the clients' own retries are off where shardpipe makes the
filesystem (botocore: 5 tries a request, gcsfs: 6 with waits of 1 to 16 s, and its 60 s bucket-layout
probe), so an S3 endpoint took ~110 s to fail and a GCS one over 5 minutes. Run as users run it: a
program (gcsfs as installed, its layout probe on: GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT unset) and the CLI.
The subprocess timeouts are hang guards, far above the second or two these take."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .servers.procs import free_port

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
    assert kind_name == "TruncatedShardError"
    assert message.startswith(f"{url}: cannot open after 9 attempts: {client_error}")
    assert str(port) in message


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


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", *args], capture_output=True, text=True, env=user_env(),
        timeout=200,  # hang guard: the CLI reads under the default ReadOptions (8 retries, ~32 s of backoff)
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_a_glob_on_a_gcs_endpoint_nobody_listens_on_exits_2_naming_it():
    prefix, options, port = closed_store("gs")
    url = f"{prefix}/x/*.tar"
    run = cli("inspect", url, "--storage-options", json.dumps(options))
    assert run.returncode == 2, run.stderr
    assert (
        f"shardpipe inspect: error: {url}: cannot reach the store for its listing after 9 attempts: "
        f"ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', {port})"
    ) in run.stderr
    assert f"INFO retrying the listing of {url} after ClientConnectorError" in run.stderr  # said while it waits
