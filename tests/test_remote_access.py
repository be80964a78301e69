"""Refused requests and missing credentials, as users meet them: real SeaweedFS (wrong secret, no
credentials at all) and nginx (403, 401). Each is an ``AccessDeniedError`` naming the URL and what
to set, raised at once (no retries) and never taken for a missing shard or skipped as bad data."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import shardpipe
from shardpipe import ShardDataset
from shardpipe.devtools.synth import make_jpeg
from shardpipe.errors import ShardNotFoundError
from shardpipe.io.access import AccessDeniedError, access_error, denied
from shardpipe.io.files import open_shard
from shardpipe.io.remote import ReadOptions, is_retryable

from .servers.nginx import PASSWORD, USER
from .servers.procs import free_port
from .servers.seaweed import ACCESS_KEY

pytestmark = pytest.mark.servers

REPO = Path(__file__).resolve().parents[1]
FAST = ReadOptions(retries=4, backoff=0.05, max_backoff=0.2)
S3_HINT = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
HTTP_HINT = 'pass them in storage_options, e.g. {"client_kwargs": {"headers": {"Authorization": "Bearer ..."}}}'


def shard(n: int = 3) -> bytes:
    buf = io.BytesIO()
    tw = shardpipe.TarWriter(buf)
    for i in range(n):
        tw.write({"__key__": f"s{i:03d}", "jpg": make_jpeg(i), "cls": i})
    tw.close()
    return buf.getvalue()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", *args], capture_output=True, text=True, timeout=240,
        env={**base, "PYTHONPATH": str(REPO), **(env or {})},
    )  # fmt: skip


def s3_env(server, **extra: str) -> dict[str, str]:
    """What a user of an S3-compatible store exports, with no credentials file to fall back on."""
    return {
        "AWS_ENDPOINT_URL": server.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true", **extra,
    }  # fmt: skip


@pytest.mark.parametrize("where, status", [("forbidden", "403 Forbidden"), ("login", "401 Unauthorized")])
def test_an_http_refusal_is_access_denied_not_a_missing_shard(http_store, caplog, where, status):
    http_store.put("access/a.tar", shard())
    url = f"{http_store.server.endpoint}/{where}/access/a.tar"
    with caplog.at_level(logging.INFO, logger="shardpipe"), pytest.raises(AccessDeniedError) as e:
        open_shard(url, read_options=FAST)
    assert str(e.value) == f"{url}: access denied ({status}); the server wants credentials: {HTTP_HINT}"
    assert not isinstance(e.value, ShardNotFoundError)
    assert "retrying" not in caplog.text


def test_http_credentials_in_storage_options_as_the_error_says(http_store):
    data = shard()
    http_store.put("access/b.tar", data)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    opts = {"client_kwargs": {"headers": {"Authorization": f"Basic {token}"}}}
    with open_shard(f"{http_store.server.endpoint}/login/access/b.tar", storage_options=opts) as f:
        assert f.read() == data


def test_a_wrong_s3_secret_names_the_url_and_what_to_set(s3_store, caplog):
    s3_store.put("access/c.tar", shard())
    opts = s3_store.options(proxied=True) | {"secret": "not-the-secret"}
    with caplog.at_level(logging.INFO, logger="shardpipe"), pytest.raises(AccessDeniedError) as e:
        open_shard("s3://shards/access/c.tar", storage_options=opts, read_options=FAST)
    assert str(e.value).startswith("s3://shards/access/c.tar: access denied (403 Forbidden); " + S3_HINT)
    assert "retrying" not in caplog.text
    assert s3_store.proxy.connections == 1


def test_a_refusal_stops_an_epoch_that_skips_bad_shards(http_store):
    """Bad credentials are no bad data: on_error='skip' would otherwise skip every shard, quietly."""
    http_store.put("access/d.tar", shard())
    ds = ShardDataset(f"{http_store.server.endpoint}/forbidden/access/d.tar", on_error="skip", decode=None)
    with pytest.raises(AccessDeniedError, match=r"/forbidden/access/d\.tar: access denied \(403 Forbidden\)"):
        list(ds)


def test_cli_without_s3_credentials_says_what_to_set_at_once(s3_server):
    run = cli("inspect", "s3://shards/access/manifest.json", env=s3_env(s3_server))
    assert run.returncode == 2, run.stderr
    assert (
        "shardpipe inspect: error: s3://shards/access/manifest.json: access denied (no credentials found "
        f"(Unable to locate credentials)); {S3_HINT}"
    ) in run.stderr
    assert "retrying" not in run.stderr  # (it retried 8 times, 30 s, then said 'cannot open after 9 attempts')


@pytest.mark.parametrize("pattern", ["access/e-{0..1}.tar", "access/e-*.tar"])
def test_cli_with_a_wrong_s3_secret_is_access_denied_not_shard_not_found(s3_store, pattern):
    for i in range(2):
        s3_store.put(f"access/e-{i}.tar", shard())
    env = s3_env(s3_store.server, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY="not-the-secret")
    run = cli("inspect", f"s3://shards/{pattern}", env=env)
    assert run.returncode == 2, run.stderr
    assert f"s3://shards/access/e-{'0' if '{' in pattern else '*'}.tar: access denied (" in run.stderr
    assert S3_HINT in run.stderr
    assert "shard not found" not in run.stderr


def test_cli_with_the_s3_credentials_in_the_environment_reads(s3_store):
    s3_store.put("access/f.tar", shard(4))
    env = s3_env(
        s3_store.server, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=s3_store.server.storage_options()["secret"]
    )
    run = cli("inspect", "--json", "s3://shards/access/f.tar", env=env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["total"]["samples"] == 4


def test_cli_a_server_that_refuses_connections_is_not_a_missing_shard():
    url = f"http://127.0.0.1:{free_port()}/x.tar"  # nothing listens there
    run = cli("inspect", url)  # (the existence check is tried 3 times, under the CLI's default read options)
    assert run.returncode == 2, run.stderr
    assert (
        f"shardpipe inspect: error: {url}: cannot reach the store for its existence check after 3 attempts: "
        "ClientConnectorError: "
    ) in run.stderr
    assert "shard not found" not in run.stderr


def test_gcs_refusals_as_gcsfs_raises_them():
    """fake-gcs-server checks no credentials: the errors come from gcsfs's own response check."""
    gcsfs_retry = pytest.importorskip("gcsfs.retry")
    for status, body, reason in [
        (403, b'{"error": {"message": "no access"}}', "403 Forbidden"),
        (401, b'{"error": {"code": 401, "message": "Invalid Credentials"}}', "401 Unauthorized"),
    ]:
        with pytest.raises(Exception) as e:
            gcsfs_retry.validate_response(status, body, "b/o.tar")
        assert denied(e.value) == reason
        assert not is_retryable(e.value)
        err = access_error("gs://b/o.tar", e.value)
        assert str(err).startswith(f"gs://b/o.tar: access denied ({reason}); set GOOGLE_APPLICATION_CREDENTIALS")
    with pytest.raises(FileNotFoundError) as e:
        gcsfs_retry.validate_response(404, b"", "b/o.tar")
    assert denied(e.value) is None
