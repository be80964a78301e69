"""HTTP servers that misbehave, read as users read them: a streamed epoch (``ShardDataset``),
random access (``IndexedDataset``) and ``shardpipe inspect``/``verify``. Whatever the server
does, the result is the shard's own bytes or an error naming the shard (a counted skip under
``on_error="skip"``), never another range's or another version's bytes, never a hang."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from shardpipe import ShardDataset, ShardWriter
from shardpipe.devtools.synth import make_dataset
from shardpipe.errors import CorruptShardError, NotTarError, ShardNotFoundError, ShardReadError, TruncatedShardError
from shardpipe.indexed import IndexedDataset
from shardpipe.io.files import open_shard
from shardpipe.io.remote import ReadOptions

from .servers.misbehaving import MisbehavingServer

pytestmark = pytest.mark.servers

KiB = 1 << 10
# small requests, so that each shard is read by many of them; few, quick retries
SMALL = ReadOptions(min_block=4 * KiB, block_size=8 * KiB, retries=2, backoff=0.01, max_backoff=0.02, timeout=10)


def write_shards(folder: Path, seed: int = 0) -> list[dict]:
    """Two shards of three synthetic JPEGs each, with the writer's manifest and index."""
    samples = [{"__key__": k, "jpg": jpg, "cls": str(c).encode()} for k, jpg, c in make_dataset(6, seed=seed)]
    with ShardWriter(f"{folder}/s-%06d.tar", maxcount=3) as w:
        for s in samples:
            w.write(s)
    return samples


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    folder = tmp_path_factory.mktemp("misbehaving")
    return folder, write_shards(folder)


def serve(server, shards, name: str, first: dict | None = None, **behaviour) -> str:
    """Serve the shards under ``/name/``, the shards (the first one alone with ``first``) as
    ``behaviour`` says, the manifest and index by the book; returns the manifest's URL."""
    folder, _ = shards
    for path in sorted(folder.iterdir()):
        if path.suffix != ".tar":
            server.put(f"{name}/{path.name}", path.read_bytes())
        elif first is None or path.name == "s-000000.tar":
            server.put(f"{name}/{path.name}", path.read_bytes(), **(first or behaviour))
        else:
            server.put(f"{name}/{path.name}", path.read_bytes())
    return server.url(f"{name}/manifest.json")


def epoch(manifest: str, **kw) -> list[dict]:
    return list(ShardDataset(manifest, decode=None, read_options=SMALL, shuffle=False, **kw))


def jpegs(samples) -> list[tuple[str, bytes]]:
    return [(s["__key__"], s["jpg"]) for s in samples]


def test_a_server_behaving_reads_whole(misbehaving, shards):
    manifest = serve(misbehaving, shards, "good")
    assert jpegs(epoch(manifest)) == jpegs(shards[1])
    ds = IndexedDataset(manifest, decode=None, read_options=SMALL)
    assert jpegs(ds[i] for i in range(len(ds))) == jpegs(shards[1])


BAD_RANGES = {
    "shifted": (dict(range_shift=4 * KiB), r"the server answered 206 with Content-Range 'bytes \d+-\d+/225280': the server "
                r"does not send the range asked for"),
    "a 200 page": (dict(range_status=200), r"the server answered 200 with 88 bytes: the server ignores Range"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_RANGES)
def test_a_range_answered_with_other_bytes_is_an_error_naming_the_shard(misbehaving, shards, case):
    behaviour, message = BAD_RANGES[case]
    manifest = serve(misbehaving, shards, "bad", first=behaviour)
    shard = misbehaving.url("bad/s-000000.tar")
    with pytest.raises(CorruptShardError, match=rf"^{shard}: asked for bytes \d+-\d+, {message}"):
        epoch(manifest)
    skipped = ShardDataset(manifest, decode=None, read_options=SMALL, shuffle=False, on_error="skip")
    assert jpegs(skipped) == jpegs(shards[1][3:])  # the other shard, whole
    assert skipped.stats.errors() == {"CorruptShardError": 1}
    ds = IndexedDataset(manifest, decode=None, read_options=SMALL)
    with pytest.raises(CorruptShardError, match=rf"^{shard}: asked for bytes \d+-\d+, {message}"):
        ds[1]  # random access, past the shard's first bytes
    assert jpegs([ds[4]]) == jpegs(shards[1][4:5])  # the other shard


@pytest.mark.parametrize("etag", [True, False], ids=["etag", "last-modified"])
def test_a_shard_replaced_mid_read_by_a_server_ignoring_if_match_is_an_error(misbehaving, shards, tmp_path, etag):
    # the new version has the same members of the same sizes: only the version check can tell
    new = [{**s, "jpg": bytes(reversed(s["jpg"]))} for s in shards[1][:3]]
    with ShardWriter(f"{tmp_path}/n-%06d.tar", maxcount=3) as w:
        for s in new:
            w.write(s)
    replacement = (tmp_path / "n-000000.tar").read_bytes()
    assert len(replacement) == (shards[0] / "s-000000.tar").stat().st_size
    manifest = serve(misbehaving, shards, "swap", first=dict(change_after=2, replacement=replacement, etag=etag))
    field = "ETag" if etag else "Last-Modified"
    with pytest.raises(
        CorruptShardError,
        match=rf"^{misbehaving.url('swap/s-000000.tar')} changed while being read: the request for bytes \d+-\d+ "
        rf"no longer matches {field} .*VersionChanged: the response for bytes \d+-\d+ has {field} ",
    ):
        epoch(manifest)


@pytest.mark.parametrize("etag", [True, False], ids=["etag", "last-modified"])
def test_a_shard_replaced_between_random_reads_is_an_error_naming_the_shard(misbehaving, shards, etag):
    manifest = serve(misbehaving, shards, "swap-random", first=dict(change_after=1, etag=etag))
    ds = IndexedDataset(manifest, decode=None, read_options=SMALL)
    assert jpegs([ds[0]]) == jpegs(shards[1][:1])  # the first request: the version the index was made of
    field = "ETag" if etag else "Last-Modified"
    with pytest.raises(
        CorruptShardError,
        match=rf"^{misbehaving.url('swap-random/s-000000.tar')} changed since it was opened: the request for bytes "
        rf"\d+-\d+ no longer matches {field} .*VersionChanged: the response for bytes \d+-\d+ has {field} ",
    ):
        ds[1]


def test_a_redirect_to_another_server_is_followed(misbehaving, shards):
    folder, samples = shards
    other = MisbehavingServer().start()
    try:
        for path in sorted(folder.iterdir()):
            other.put(f"moved/{path.name}", path.read_bytes())
            status = 301 if path.suffix == ".tar" else 302
            misbehaving.put(f"old/{path.name}", b"", redirect=other.url(f"moved/{path.name}"), redirect_status=status)
        manifest = misbehaving.url("old/manifest.json")
        assert jpegs(epoch(manifest)) == jpegs(samples)
        ds = IndexedDataset(manifest, decode=None, read_options=SMALL)
        assert jpegs([ds[5], ds[1]]) == jpegs([samples[5], samples[1]])
    finally:
        other.stop()


def test_a_redirect_loop_is_an_error_naming_the_shard_without_retries(misbehaving, shards):
    manifest = serve(misbehaving, shards, "loop", first=dict(redirect="/loop/s-000000.tar"))
    shard = misbehaving.url("loop/s-000000.tar")
    read = ReadOptions(retries=3, backoff=0.01)
    with pytest.raises(ShardReadError, match=rf"^{shard}: cannot open: the server redirects in a loop \(more than 10 "):
        list(ShardDataset(manifest, decode=None, read_options=read, shuffle=False))
    # fsspec asks by HEAD, then by GET: 10 requests each (aiohttp stops there), not again for each retry
    assert len([r for r in misbehaving.requests() if r[1] == "/loop/s-000000.tar"]) == 20
    with pytest.raises(ShardReadError, match=rf"^{shard}: cannot open: the server redirects in a loop"):
        IndexedDataset(manifest, decode=None, read_options=read)[0]


def test_a_server_error_page_is_retried_then_named_with_its_status(misbehaving, shards):
    manifest = serve(misbehaving, shards, "down", first=dict(status=503))
    shard = misbehaving.url("down/s-000000.tar")
    with pytest.raises(
        TruncatedShardError,
        match=rf"^{shard}: cannot open after 3 attempts: ClientResponseError: 503, message='Service Unavailable'",
    ):
        epoch(manifest)


@pytest.mark.parametrize("char", ["#", "?"])
def test_a_raw_hash_or_question_mark_in_an_http_url_gets_a_hint(misbehaving, char):
    name = f"a{char}b.tar"
    misbehaving.put(name, b"x" * 1024)
    hint = r"percent-encode them, '#' as %23 and '\?' as %3F"
    with pytest.raises(ShardNotFoundError, match=rf"^shard not found: {re.escape(misbehaving.url(name))} .*{hint}"):
        open_shard(misbehaving.url(name))
    with open_shard(misbehaving.url(quote(name))) as f:  # encoded, it reaches the server as the name
        assert f.read() == b"x" * 1024
    done = subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", "inspect", misbehaving.url(name)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert re.search(rf"shardpipe inspect: error: shard not found: .*{hint}", done.stderr), done.stderr


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_a_body_longer_than_its_content_length_is_a_data_problem_for_the_cli(misbehaving, shards, command):
    # the bytes past Content-Length break the connection's next response: here in the padding after the archive
    manifest = serve(misbehaving, shards, f"long-{command}", first=dict(length_delta=-100))
    shard = misbehaving.url(f"long-{command}/s-000000.tar")
    done = subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", command, manifest], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr  # bad data, not a usage error
    assert "read from closed stream" not in done.stderr
    assert re.search(rf"{re.escape(shard)}: asked for bytes \d+-\d+ \(\d+ bytes\), {TOO_LONG}", done.stdout), (
        done.stdout
    )
    assert "\\x00" not in done.stdout  # (before: aiohttp's message, quoting the bytes past Content-Length)


#: either the Content-Length of the answer's headers is found short of its Content-Range, or (headers and body
#: in one packet) aiohttp finds bytes after the body
TOO_LONG = (
    r"the server's answer (declares Content-Length \d+ for Content-Range 'bytes \d+-\d+/\d+' \(\d+ bytes\)|held "
    r"more bytes than its Content-Length header declares): the server misreports the length of its answers"
)


def test_a_body_longer_than_its_content_length_is_named_in_plain_words(misbehaving, shards):
    manifest = serve(misbehaving, shards, "long", first=dict(length_delta=-100))
    shard = misbehaving.url("long/s-000000.tar")
    message = rf"^{re.escape(shard)}: asked for bytes \d+-\d+ \(\d+ bytes\), {TOO_LONG}$"
    with pytest.raises(CorruptShardError, match=message):  # (before: aiohttp's 400, quoting the bytes past it)
        epoch(manifest)
    ds = IndexedDataset(manifest, decode=None, read_options=SMALL)
    with pytest.raises(CorruptShardError, match=message):  # (before: "truncated shard ... it ends at byte N")
        ds[1]


# a deadline far below the stall, one retry: the stall outlasts both tries
DEADLINE = ReadOptions(retries=1, backoff=0.01, max_backoff=0.02, timeout=0.5)


@pytest.mark.timeout(120)
def test_a_stalled_manifest_is_read_within_the_datasets_deadline(misbehaving, shards):
    """The manifest is read under the dataset's ReadOptions (before: the defaults, 60 s a try, 9 tries)."""
    manifest = serve(misbehaving, shards, "stalled-manifest")
    misbehaving.put("stalled-manifest/manifest.json", misbehaving.objects["/stalled-manifest/manifest.json"].data,
                    stall=5)  # fmt: skip
    message = rf"^{manifest}: cannot open after 2 attempts: TimeoutError: no answer within 0.5 s$"
    with pytest.raises(TruncatedShardError, match=message):
        ShardDataset(manifest, decode=None, read_options=DEADLINE)
    with pytest.raises(TruncatedShardError, match=message):
        IndexedDataset(manifest, decode=None, read_options=DEADLINE)
    with pytest.raises(TruncatedShardError, match=message):  # the block shuffle reads it once, for both
        ShardDataset(manifest, decode=None, read_options=DEADLINE, shuffle=True, shuffle_algo="block")


@pytest.mark.timeout(120)
def test_a_stalled_index_sidecar_is_read_within_the_datasets_deadline(misbehaving, shards):
    manifest = serve(misbehaving, shards, "stalled-index")
    index = next(name for name in misbehaving.objects if name.startswith("/stalled-index/") and "index" in name)
    misbehaving.put(index[1:], misbehaving.objects[index].data, stall=5)
    message = rf"^{misbehaving.url(index[1:])}: cannot open after 2 attempts: TimeoutError: no answer within 0.5 s$"
    with pytest.raises(TruncatedShardError, match=message):
        IndexedDataset(manifest, decode=None, read_options=DEADLINE)


def test_an_html_page_served_for_a_shard_is_named_by_its_content_type(misbehaving, shards):
    """A 200 with an HTML page where a shard should be (a login or error page): the error says what the server
    answered (before: only "a file of another kind caught by a glob?", which it is not)."""
    shard = misbehaving.put("page/s-000000.tar", b"", status=200)  # named directly: a manifest's size differs
    hint = "(the server answered text/html: a login or error page?)"
    with pytest.raises(NotTarError) as e:
        epoch(shard)
    assert str(e.value) == (
        f"shard {shard} is not a tar archive: its first 88 bytes (starting b'<html><head><tit') are not a tar "
        f"header {hint}"
    )
    done = subprocess.run(
        [sys.executable, "-m", "shardpipe.cli", "inspect", shard], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr
    assert hint in done.stdout + done.stderr, done.stdout + done.stderr
