"""``--read-options JSON`` bounds the remote reads of ``inspect``, ``verify``, ``index`` and ``restart``, run as
users run them: the CLI as a program, against the misbehaving HTTP server and SeaweedFS behind a fault proxy.
A store that accepts connections and never answers ends the command after the options' tries, each within
their ``timeout``, with an error naming the URL (before: the library's training defaults, 60 s a try and 9
tries, ~9.5 minutes). Without the flag the commands read under ``CLI_READ_OPTIONS`` (3 tries, not 9). The
subprocess timeouts are hang guards, far above the seconds these take."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shardpipe import ShardWriter
from shardpipe.devtools.synth import make_dataset

pytestmark = pytest.mark.servers

COMMANDS = ["inspect", "verify", "index", "restart"]
#: one try of one second
FAST = json.dumps({"timeout": 1, "retries": 0})
#: how long a stalled object keeps a request waiting: past every hang guard here
STALL = 300


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", *args], capture_output=True, text=True,
        timeout=120,  # hang guard (before: ~9.5 minutes a stalled request)
    )  # fmt: skip


def outputs(command: str, tmp_path: Path) -> list[str]:
    """The arguments ``command`` needs besides URLS."""
    if command == "index":
        return ["-o", str(tmp_path / "new" / "manifest.json"), "--no-progress"]
    if command == "restart":
        return ["-o", str(tmp_path / "restarted"), "--no-progress"]
    return []


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two shards of three synthetic JPEGs each, with the writer's manifest and index."""
    folder = tmp_path_factory.mktemp("read-options")
    with ShardWriter(f"{folder}/s-%06d.tar", maxcount=3) as w:
        for key, jpg, cls in make_dataset(6, seed=3):
            w.write({"__key__": key, "jpg": jpg, "cls": str(cls).encode()})
    return folder


def serve(server, shards: Path, name: str, which: str, **behaviour) -> str:
    """Serve the shards, manifest and index under ``/name/``, the files whose name ends in ``which`` as
    ``behaviour`` says, the others by the book; returns the manifest's URL."""
    for path in sorted(shards.iterdir()):
        server.put(f"{name}/{path.name}", path.read_bytes(), **(behaviour if path.name.endswith(which) else {}))
    return server.url(f"{name}/manifest.json")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_stalled_shard_named_on_the_command_line_ends_after_the_tries_naming_it(
    misbehaving, shards, tmp_path, command
):
    serve(misbehaving, shards, "named", ".tar", stall=STALL)
    url = misbehaving.url("named/s-000000.tar")
    run = cli(command, url, *outputs(command, tmp_path), "--read-options", FAST)
    assert run.returncode == 2, run.stderr
    assert run.stderr == (
        f"shardpipe {command}: error: {url}: cannot reach the store for its existence check after 1 attempt: "
        "TimeoutError: no answer within 1 s\n"
    )


#: what the commands say fixes an object whose store answers 5xx or nothing (not "restore the shard")
STORE_FIX = (
    "(to fix: the store is up but failing or slow: check it, then run again; "
    """--read-options '{"timeout": 60, "retries": 8}' waits longer)"""
)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "behaviour, error",
    [({"stall": STALL}, "TimeoutError: no answer within 1 s"), ({"status": 503}, "ClientResponseError: 503")],
)
def test_a_stalled_or_failing_manifest_is_an_input_that_cannot_be_read(
    misbehaving, shards, tmp_path, command, behaviour, error
):
    """Exit 2, as for a stalled existence check of a shard named on the command line, with what to check: it
    was exit 1 (a problem found in the data) and, from index, "to fix: restore the shard from a good copy"."""
    name = f"manifest-{command}-{'stall' if 'stall' in behaviour else 'status'}"
    manifest = serve(misbehaving, shards, name, "manifest.json", **behaviour)
    run = cli(command, manifest, *outputs(command, tmp_path), "--read-options", FAST)
    assert run.returncode == 2, run.stderr
    said = f"shardpipe {command}: error: {manifest}: cannot open after 1 attempt: {error}"
    assert run.stderr.startswith(said), run.stderr
    assert run.stderr.endswith(f" {STORE_FIX}\n"), run.stderr
    assert not (tmp_path / "new").exists() and not (tmp_path / "restarted").exists()


@pytest.mark.timeout(300)
def test_an_unreachable_store_of_a_manifests_shards_exits_2_from_every_command(shards, tmp_path):
    """restart exited 1 (a problem found in the data) where inspect, verify and index exit 2."""
    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manifest = json.loads((shards / "manifest.json").read_text())
    for shard in manifest["shards"]:
        shard["name"] = f"http://127.0.0.1:{port}/gone/{shard['name']}"
    del manifest["index"]
    far = tmp_path / "far.json"
    far.write_text(json.dumps(manifest))
    for command in COMMANDS:
        run = cli(command, str(far), *outputs(command, tmp_path), "--read-options", FAST)
        assert run.returncode == 2, (command, run.stderr)
        said = rf"^shardpipe {command}: error: http://127\.0\.0\.1:{port}/gone/s-00000[01]\.tar: cannot reach the store"
        assert re.match(said, run.stderr), run.stderr


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", COMMANDS)
def test_stalled_shards_of_a_manifest_end_the_command_naming_them(misbehaving, shards, tmp_path, command):
    manifest = serve(misbehaving, shards, "shards", ".tar", stall=STALL)
    shard = re.escape(misbehaving.url("shards/s-00000")) + r"[01]\.tar"  # (index reads both at once)
    run = cli(command, manifest, *outputs(command, tmp_path), "--read-options", FAST)
    assert run.returncode == 1, run.stderr
    said = rf"{shard}: cannot open after 1 attempt: TimeoutError: no answer within 1 s"
    assert re.search(said, run.stdout + run.stderr), (run.stdout, run.stderr)
    if command == "restart":
        assert "none of the 2 input shards could be read" in run.stderr
    if command == "index":  # the store's fix, not "restore the shard from a good copy"
        assert run.stderr.endswith(f" {STORE_FIX}\n"), run.stderr


@pytest.mark.timeout(300)
def test_verify_reads_a_stalled_index_sidecar_within_the_tries_naming_it(misbehaving, shards):
    manifest = serve(misbehaving, shards, "sidecar", ".index", stall=STALL)
    index = misbehaving.url("sidecar/manifest.index")
    run = cli("verify", manifest, "--read-options", FAST)
    assert run.returncode == 1, run.stderr
    assert run.stderr.endswith(
        f"shardpipe verify: error: {index}: cannot open after 1 attempt: TimeoutError: no answer within 1 s\n"
    ), run.stderr


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_without_the_flag_a_failing_shard_is_tried_as_the_cli_defaults_say(misbehaving, shards, command):
    """A 5xx was tried 9 times a shard, with ~32 s of back-off between the tries: now CLI_READ_OPTIONS' 3."""
    manifest = serve(misbehaving, shards, f"down-{command}", "s-000000.tar", status=503)
    shard = misbehaving.url(f"down-{command}/s-000000.tar")
    run = cli(command, manifest)
    assert run.returncode == 1, run.stderr
    said = f"{shard}: cannot open after 3 attempts: ClientResponseError: 503, message='Service Unavailable'"
    assert said in run.stdout, run.stdout


@pytest.mark.timeout(300)
def test_a_stalled_s3_listing_ends_after_the_tries_naming_it(s3_store, shards, tmp_path):
    for path in shards.glob("*.tar"):
        s3_store.put(f"read-options/{path.name}", path.read_bytes())
    options = json.dumps(s3_store.options(proxied=True))
    url = s3_store.url("read-options/*.tar")
    small = json.dumps({"min_block": 4096, "block_size": 8192, "retries": 0})
    run = cli("inspect", "--json", url, "--storage-options", options, "--read-options", small)
    assert run.returncode == 0, run.stderr  # read in requests of 8 KiB at most, by the book
    assert json.loads(run.stdout)["total"]["samples"] == 6
    s3_store.proxy.stall(0, STALL, times=100)  # every answer, from its first byte
    for command in COMMANDS:
        args = outputs(command, tmp_path)
        run = cli(command, url, *args, "--storage-options", options, "--read-options", '{"timeout": 1, "retries": 1}')
        assert run.returncode == 2, run.stderr
        assert run.stderr.endswith(
            f"shardpipe {command}: error: {url}: cannot reach the store for its listing after 2 attempts: "
            "TimeoutError: no answer within 1 s\n"
        ), run.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        ("{timeout: 1}", "--read-options is not JSON: Expecting property name enclosed in double quotes"),
        ("[1]", """--read-options must be a JSON object, such as '{"timeout": 5, "retries": 1}'"""),
        ('{"timout": 1}', "--read-options: unknown field 'timout' (did you mean 'timeout'? the fields: block_size, "
         "readahead, min_block, memory_limit, retries, backoff, max_backoff, timeout)"),
        ('{"speed": 1}', "--read-options: unknown field 'speed' (the fields: block_size, readahead, min_block, "
         "memory_limit, retries, backoff, max_backoff, timeout)"),
        ('{"timeout": "5"}', '--read-options: timeout must be a number, got "5"'),
        ('{"retries": 1.5}', "--read-options: retries must be an integer, got 1.5"),
        ('{"retries": true}', "--read-options: retries must be an integer, got true"),
        ('{"block_size": null}', "--read-options: block_size must be an integer, got null"),
        ('{"readahead": "2"}', '--read-options: readahead must be an integer or null, got "2"'),
        ('{"retries": -1}', "--read-options: retries must be 0 or more, got -1"),
        ('{"timeout": 0}', "--read-options: timeout must be above 0, got 0"),
        ('{"timeout": NaN}', "--read-options: timeout must be a finite number, got NaN"),
    ],
)  # fmt: skip
def test_bad_read_options_are_a_usage_error_naming_the_field(shards, tmp_path, text, message):
    for command in COMMANDS if "timout" in text else ["inspect"]:
        run = cli(command, str(shards / "manifest.json"), *outputs(command, tmp_path), "--read-options", text)
        assert run.returncode == 2, run.stderr
        assert run.stderr.startswith(f"shardpipe {command}: error: {message}"), run.stderr
        assert not (tmp_path / "new").exists() and not (tmp_path / "restarted").exists()


def test_read_options_fit_for_local_shards_change_nothing(shards, tmp_path):
    options = json.dumps({"readahead": None, "backoff": 0})
    run = cli("verify", str(shards / "manifest.json"), "--workers", "2", "--read-options", options)
    assert run.returncode == 0, run.stderr
    assert "verified 2 shards: 6 samples" in run.stdout


@pytest.mark.timeout(300)
def test_verify_tells_a_failing_or_stalled_shard_from_a_missing_one(misbehaving, tmp_path):
    """A shard whose store answers 503, or nothing, is unreadable (the store is failing, the shard may be
    intact), not missing: it was reported "missing shard: cannot open: ..." with advice to restore it."""
    with ShardWriter(f"{tmp_path}/s-%06d.tar", maxcount=2) as w:
        for key, jpg, cls in make_dataset(6, seed=5):
            w.write({"__key__": key, "jpg": jpg, "cls": str(cls).encode()})
    behaviours = {"s-000000.tar": {"status": 503}, "s-000001.tar": {"stall": STALL}}
    for path in sorted(tmp_path.iterdir()):
        if path.name != "s-000002.tar":  # not served: a 404
            misbehaving.put(f"verify-kinds/{path.name}", path.read_bytes(), **behaviours.get(path.name, {}))
    failing, stalled, gone = (misbehaving.url(f"verify-kinds/s-00000{i}.tar") for i in range(3))
    run = cli("verify", misbehaving.url("verify-kinds/manifest.json"), "--read-options", FAST)
    assert run.returncode == 1, run.stderr
    problems = [line.strip() for line in run.stdout.splitlines() if line.startswith("  ")]
    assert len(problems) == 4 and problems[3].startswith("count mismatch: 0 samples"), run.stdout
    fix = "(to fix: the store is up but failing or slow: check it, then run again; --read-options"
    assert problems[0].startswith(
        f"{failing}: unreadable shard: {failing}: cannot open after 1 attempt: ClientResponseError: 503, "
        "message='Service Unavailable'"
    ), problems[0]
    assert fix in problems[0]
    assert problems[1].startswith(
        f"{stalled}: unreadable shard: {stalled}: cannot open after 1 attempt: TimeoutError: no answer within 1 s {fix}"
    ), problems[1]
    assert problems[2].startswith(f"{gone}: missing shard: cannot open: shard not found: {gone} (to fix: restore it")
