"""Resumable streaming from real S3 (SeaweedFS), GCS (fake-gcs-server) and HTTP (nginx).

Faults come from a TCP proxy between the client and the server: connections cut
mid-shard (once, and on every response up to and past the retry limit), stalls past
the read timeout, and a server restarted mid-read.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import IO, Any

import pytest

from shardpipe.errors import CorruptShardError, ShardNotFoundError, TruncatedShardError
from shardpipe.io.files import open_shard
from shardpipe.io.prefetch import Prefetcher
from shardpipe.io.remote import ReadOptions, is_retryable

from .helpers import payload

pytestmark = pytest.mark.servers

MiB = 1 << 20
# small blocks so that a few MiB make many ranged requests; fast retries for the tests
FAST = ReadOptions(block_size=1 * MiB, readahead=2, retries=4, backoff=0.05, max_backoff=0.2)


def read_all(url: str, offset: int = 0, chunk: int = 100_003, **kw) -> tuple[bytes, object]:
    """Read like the untar stage does: read(n) until EOF. Returns (bytes, the stream)."""
    parts = []
    with open_shard(url, offset, **kw) as f:
        while data := f.read(chunk):
            parts.append(data)
    return b"".join(parts), f


def read_all_from(f) -> tuple[bytes, object]:
    with f:
        return f.read(), f


# -- plain reads -----------------------------------------------------------------------
def test_full_read_equals_local_bytes(remote):
    data = payload(3 * MiB + 12345, 1)  # not a multiple of the block size
    remote.put("full.bin", data)
    got, f = read_all(remote.url("full.bin"), storage_options=remote.options(), read_options=FAST)
    assert got == data
    assert f.retries_used == 0


@pytest.mark.parametrize("offset", [1, MiB - 1, MiB, 2 * MiB + 7])
def test_read_from_offset(remote, offset):
    data = payload(3 * MiB, 2)
    remote.put("offset.bin", data)
    got, _ = read_all(remote.url("offset.bin"), offset, storage_options=remote.options(), read_options=FAST)
    assert got == data[offset:]


def test_read_sizes_and_read1(http_store):
    data = payload(2 * MiB + 10, 3)
    http_store.put("sizes.bin", data)
    with open_shard(http_store.url("sizes.bin"), read_options=FAST) as f:
        assert f.read(0) == b""
        assert f.read(10) == data[:10]
        assert f.tell() == 10
        one = f.read1(5 * MiB)  # up to the end of the current block only
        assert one == data[10 : len(one) + 10] and 0 < len(one) <= MiB
        buf = bytearray(MiB + 5)
        n = f.readinto(buf)
        assert bytes(buf[:n]) == data[10 + len(one) : 10 + len(one) + n]
        assert f.read() == data[10 + len(one) + n :]
        assert f.read(100) == b""
    with pytest.raises(ValueError, match="closed stream"):
        f.read(1)


def test_seek_within_and_beyond_the_read_ahead(http_store):
    data = payload(16 * MiB, 12)
    http_store.put("seek.bin", data)
    opts = ReadOptions(block_size=MiB, readahead=2)
    with open_shard(http_store.url("seek.bin", proxied=True), read_options=opts) as f:
        assert f.seekable()
        steps = [(10, 1), (MiB - 5, 1), (MiB + 100, 0), (2 * MiB + 1, 0), (12 * MiB, 0), (5, 0)]
        for target, whence in steps:
            pos = f.seek(target if whence == 0 else target - f.tell(), whence)
            assert pos == f.tell() == target
            assert f.read(1000) == data[target : target + 1000]
            if target == 12 * MiB:
                # blocks 0-4 (read, then 2 ahead) and 12-14 at most were requested so far, however slow the
                # machine (cancelled requests may or may not finish); the 7 blocks skipped would make it 15
                assert http_store.proxy.bytes_down < 8 * MiB + 64 * 1024
        assert f.seek(-10, 2) == len(data) - 10 and f.read() == data[-10:]
        with pytest.raises(ValueError, match="seek to -1 outside"):
            f.seek(-1)


def test_empty_object(remote):
    remote.put("empty.bin", b"")
    got, _ = read_all(remote.url("empty.bin"), storage_options=remote.options())
    assert got == b""


def test_missing_object_is_shard_not_found(remote):
    with pytest.raises(ShardNotFoundError, match="shard not found: .*missing-shard.tar"):
        open_shard(remote.url("missing-shard.tar"), storage_options=remote.options())


def test_wrong_s3_secret_fails_fast_without_retrying(s3_store):
    s3_store.put("secret.bin", b"x" * 100)
    opts = s3_store.options(proxied=True) | {"secret": "not-the-secret"}
    with pytest.raises(PermissionError):
        open_shard(s3_store.url("secret.bin"), storage_options=opts, read_options=FAST)


def test_manifest_size_mismatch_is_corrupt(remote):
    remote.put("sized.bin", b"y" * 1000)
    with pytest.raises(CorruptShardError, match="1000 bytes but the manifest says 999"):
        open_shard(remote.url("sized.bin"), storage_options=remote.options(), expected_size=999)


def test_offset_past_the_end_is_an_error(http_store):
    http_store.put("short.bin", b"z" * 10)
    with pytest.raises(ValueError, match="offset 11 outside"):
        open_shard(http_store.url("short.bin"), 11)


def test_server_ignoring_range_requests_is_detected(http_store):
    data = payload(3 * MiB, 4)
    http_store.put("norange.bin", data)
    url = f"{http_store.server.endpoint}/norange/norange.bin"  # nginx with max_ranges 0
    with pytest.raises(CorruptShardError, match="the server ignores Range requests"):
        read_all(url, read_options=FAST)


def test_read_options_are_validated():
    with pytest.raises(ValueError, match=r"^ReadOptions\.block_size must be above 0, got 0$"):
        ReadOptions(block_size=0)
    assert [ReadOptions(backoff=1, max_backoff=5).delay(i) for i in (1, 2, 3, 4)] == [1, 2, 4, 5]


def test_errors_seen_from_the_clients_are_retryable():
    import aiohttp
    from botocore.exceptions import ResponseStreamingError

    assert is_retryable(aiohttp.ClientPayloadError("Response payload is not completed"))
    assert is_retryable(ResponseStreamingError(error="Connection broken"))
    assert is_retryable(IndexError("list index out of range"))  # s3fs _fetch_range timeout
    assert is_retryable(ConnectionResetError(104, "reset"))
    assert is_retryable(TimeoutError())
    assert not is_retryable(PermissionError("denied"))
    assert not is_retryable(CorruptShardError("bad"))
    assert not is_retryable(TypeError("a bug"))
    not_found = aiohttp.ClientResponseError(None, (), status=404)
    assert not is_retryable(not_found)
    assert is_retryable(aiohttp.ClientResponseError(None, (), status=503))
    # fsspec's HTTP info() wraps every failure in FileNotFoundError: the cause decides
    for cause, retry in [(ConnectionRefusedError(111, "refused"), True), (not_found, False)]:
        try:
            raise FileNotFoundError("http://h/a.tar") from cause
        except FileNotFoundError as e:
            assert is_retryable(e) is retry
    assert not is_retryable(FileNotFoundError("s3://b/a.tar"))


# -- faults ----------------------------------------------------------------------------
@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
def test_connection_cut_once_mid_shard(remote, rst):
    data = payload(4 * MiB, 5)
    remote.put("cut-once.bin", data)
    remote.proxy.cut(after=MiB // 2 + 1000, times=1, rst=rst)
    got, _ = read_all(
        remote.url("cut-once.bin", proxied=True), storage_options=remote.options(proxied=True),
        read_options=FAST,
    )  # fmt: skip
    assert remote.proxy.faults_fired == 1
    assert got == data


def test_cut_on_every_response_up_to_the_limit_still_reads_exact_bytes(http_store):
    # one request at a time (readahead=0) so that each cut costs exactly one attempt;
    # the fsspec HTTP client has no retries of its own, so ours are the only ones
    opts = ReadOptions(block_size=MiB, readahead=0, retries=4, backoff=0.01)
    data = payload(3 * MiB, 6)
    http_store.put("cut-limit.bin", data)
    http_store.proxy.cut(after=300_000, times=opts.retries)
    got, f = read_all(http_store.url("cut-limit.bin", proxied=True), read_options=opts)
    assert got == data
    assert f.retries_used == opts.retries == http_store.proxy.faults_fired


def test_cut_once_more_than_the_limit_raises_naming_url_and_offset(http_store):
    opts = ReadOptions(block_size=MiB, readahead=0, retries=3, backoff=0.01)
    http_store.put("cut-over.bin", payload(3 * MiB, 7))
    url = http_store.url("cut-over.bin", proxied=True)
    http_store.proxy.cut(after=1000, times=opts.retries + 1)
    with pytest.raises(
        TruncatedShardError,
        match=rf"{url}: read failed at byte {MiB + 5} of {3 * MiB} after 4 attempts: ClientPayloadError",
    ):
        read_all(url, MiB + 5, read_options=opts)  # resuming mid-shard, as after a restart
    assert http_store.proxy.faults_fired == opts.retries + 1


def test_a_failed_stream_keeps_raising_its_error(http_store):
    opts = ReadOptions(block_size=MiB, readahead=1, retries=0, backoff=0.01)
    data = payload(3 * MiB, 13)
    http_store.put("fail-sticky.bin", data)
    with open_shard(http_store.url("fail-sticky.bin", proxied=True), read_options=opts) as f:
        http_store.proxy.cut(after=1000, times=10)
        with pytest.raises(TruncatedShardError, match="after 1 attempt: "):
            f.read()
        with pytest.raises(TruncatedShardError, match="after 1 attempt: "):
            f.read(10)  # not silently the next block's bytes


@pytest.mark.parametrize("kind", ["s3", "http"])
def test_cut_on_every_connection_raises_after_the_limit(request, kind):
    # s3fs retries a few times itself; the outcome must still be our clear error
    store = request.getfixturevalue(f"{kind}_store")
    store.put("cut-all.bin", payload(2 * MiB, 8))
    store.proxy.cut(after=100_000, times=1_000_000)
    opts = ReadOptions(block_size=MiB, readahead=0, retries=1, backoff=0.01)
    with pytest.raises(TruncatedShardError, match=r"cut-all.bin: read failed at byte 0 of"):
        read_all(
            store.url("cut-all.bin", proxied=True), storage_options=store.options(proxied=True),
            read_options=opts,
        )  # fmt: skip


def test_stall_past_the_read_timeout_is_retried(remote):
    data = payload(3 * MiB, 9)
    remote.put("stall.bin", data)
    remote.proxy.stall(after=200_000, seconds=30, times=1)
    opts = ReadOptions(block_size=MiB, readahead=1, retries=3, backoff=0.05, timeout=1.0)
    got, f = read_all(
        remote.url("stall.bin", proxied=True), storage_options=remote.options(proxied=True),
        read_options=opts,
    )  # fmt: skip
    assert got == data
    assert remote.proxy.faults_fired == 1
    assert f.retries_used >= 1  # the stalled request was abandoned and asked again


def test_latency_and_throttle_do_not_change_bytes(http_store):
    data = payload(2 * MiB, 10)
    http_store.put("slow.bin", data)
    http_store.proxy.latency = 0.02
    http_store.proxy.throttle = 50 * MiB
    got, _ = read_all(http_store.url("slow.bin", proxied=True), read_options=FAST)
    assert got == data


@pytest.mark.parametrize("kind", ["s3", "http"])
def test_server_restarted_mid_read(request, kind):
    """Stop the server after the first MiB is consumed, start it again: exact bytes."""
    store = request.getfixturevalue(f"{kind}_store")
    data = payload(6 * MiB, 11)
    store.put("restart.bin", data)
    # ~30 s of retries: far more than a restart takes, so a slow machine does not fail the test
    opts = ReadOptions(block_size=MiB, readahead=1, retries=30, backoff=0.2, max_backoff=1.0)
    store.proxy.throttle = 20 * MiB  # keep the transfer going while the server restarts
    with open_shard(
        store.url("restart.bin", proxied=True), storage_options=store.options(proxied=True),
        read_options=opts,
    ) as f:  # fmt: skip
        head = f.read(MiB)
        store.server.stop()
        with restarting(store.server, after=0.5):
            rest = f.read()
        retries = f.retries_used
    assert head + rest == data
    if kind == "http":  # (s3fs retries a refused connection itself, below our reader)
        assert retries > 0  # the restart really broke our stream and we resumed it


@contextlib.contextmanager
def restarting(server, after: float):
    """Start ``server`` again ``after`` seconds into the block, while the block runs.

    A failed start is raised here (not lost in the thread), and the server is up again
    when the block ends, so later tests of the session find it running.
    """
    failure: list[BaseException] = []

    def start() -> None:
        try:
            server.start()
        except BaseException as e:  # reported below
            failure.append(e)

    timer = threading.Timer(after, start)
    timer.start()
    try:
        yield
    finally:
        timer.join()
        if failure:
            server.start()  # one more try, so the session's other tests keep their server
            raise AssertionError(f"restarting the server failed: {failure[0]!r}")


# -- prefetch --------------------------------------------------------------------------
def test_prefetch_starts_the_next_shard_with_bounded_memory(http_store):
    data = [payload(6 * MiB, 20 + i) for i in range(2)]
    for i, d in enumerate(data):
        http_store.put(f"pf-{i}.bin", d)
    urls = [http_store.url(f"pf-{i}.bin", proxied=True) for i in range(2)]
    opts = ReadOptions(block_size=MiB, readahead=2)
    with Prefetcher(depth=1, read_options=opts) as pf:
        pf.prefetch(urls[1])
        ahead = pf._ahead[urls[1]].result()  # opened in the background
        for req in list(ahead._pending):
            req.fut.result()  # wait until its first requests are in
        # only `readahead` blocks of the 6 MiB shard were fetched ahead
        assert 2 * MiB <= http_store.proxy.bytes_down < 2 * MiB + 64 * 1024
        got0, _ = read_all_from(pf.open(urls[0]))
        got1, _ = read_all_from(pf.open(urls[1]))
        assert pf.hits == 1
    assert (got0, got1) == (data[0], data[1])


def iter_prefetched(urls: list[str], depth: int = 1, **open_kwargs: Any) -> Iterator[tuple[str, IO[bytes]]]:
    """Open each URL in turn through a Prefetcher, the next ``depth`` ones ahead (as Untar's opener does)."""
    with Prefetcher(depth, **open_kwargs) as pf:
        for i, url in enumerate(urls):
            for ahead in urls[i + 1 : i + 1 + depth]:
                pf.prefetch(ahead)
            yield url, pf.open(url)


def test_iter_prefetched_yields_every_shard_in_order(remote):
    data = [payload(MiB + i * 1000, 30 + i) for i in range(4)]
    for i, d in enumerate(data):
        remote.put(f"it-{i}.bin", d)
    urls = [remote.url(f"it-{i}.bin") for i in range(4)]
    got = []
    for url, f in iter_prefetched(urls, depth=2, storage_options=remote.options(), read_options=FAST):
        with f:
            got.append((url, f.read()))
    assert got == list(zip(urls, data))


def test_prefetch_error_is_raised_for_its_own_shard(http_store):
    http_store.put("ok-0.bin", b"a" * 1000)
    urls = [http_store.url("ok-0.bin"), http_store.url("missing-1.bin")]
    it = iter_prefetched(urls, depth=1)
    url, f = next(it)
    with f:
        assert f.read() == b"a" * 1000
    with pytest.raises(ShardNotFoundError, match="missing-1.bin"):
        next(it)


def test_prefetched_shard_opened_at_an_offset_is_reopened_there(http_store):
    data = payload(2 * MiB, 40)
    http_store.put("pf-off.bin", data)
    url = http_store.url("pf-off.bin")
    with Prefetcher(depth=1, read_options=FAST) as pf:
        pf.prefetch(url)
        with pf.open(url, 12345) as f:
            assert f.read() == data[12345:]
        assert pf.hits == 0


# -- whole epochs through the core pipeline ------------------------------------------------
def _fields(sample: dict) -> tuple:
    """A sample's key and stored bytes (metadata such as __url__ left out)."""
    return sample["__key__"], tuple(sorted((k, v) for k, v in sample.items() if not k.startswith("__")))


def epoch(urls, **kw) -> list[tuple]:
    from shardpipe import ShardDataset

    return [_fields(s) for s in ShardDataset(urls, decode=None, **kw)]


@pytest.fixture(scope="module")
def epoch_samples() -> list[dict]:
    from .helpers import make_samples

    return make_samples(40, prefix="ep")


def write_epoch(pattern: str, samples: list[dict], storage_options: dict | None = None) -> str:
    """Write ``samples`` as shards of 7 with ShardWriter; return the manifest URL."""
    from shardpipe import ShardWriter

    with ShardWriter(pattern, maxcount=7, storage_options=storage_options) as w:
        for s in samples:
            w.write(s)
    return pattern.rsplit("/", 1)[0] + "/manifest.json"


@pytest.fixture(scope="module")
def local_epoch(tmp_path_factory, epoch_samples) -> tuple[str, list[tuple]]:
    root = tmp_path_factory.mktemp("epoch-local")
    manifest = write_epoch(f"{root}/train-%06d.tar", epoch_samples)
    result = epoch(manifest)
    assert len(result) == len(epoch_samples)
    return str(root), result


def remote_epoch_manifest(store, local_root: str, epoch_samples, name: str) -> str:
    """The epoch's shards on ``store``: written there by ShardWriter (S3, GCS) or served (HTTP)."""
    if store.kind == "http":
        import shutil

        for f in os.listdir(local_root):
            (store.server.docroot / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(os.path.join(local_root, f), store.server.docroot / name / f)
        return store.url(f"{name}/manifest.json", proxied=True)
    write_epoch(store.url(f"{name}/train-%06d.tar"), epoch_samples, store.options())
    return store.url(f"{name}/manifest.json")


def test_epoch_from_each_server_equals_the_local_epoch(remote, local_epoch, epoch_samples):
    root, expected = local_epoch
    manifest = remote_epoch_manifest(remote, root, epoch_samples, "epoch-plain")
    assert epoch(manifest, storage_options=remote.options(proxied=True)) == expected
    shards = epoch(manifest.replace("manifest.json", "train-{000000..000005}.tar"),
                   storage_options=remote.options(proxied=True))  # fmt: skip
    assert shards == expected


def test_epoch_from_s3_with_dataloader_workers(s3_store, local_epoch, epoch_samples):
    """Forked workers (after the parent read the manifest over S3) each stream their shards."""
    from shardpipe import ShardDataset, ShardLoader

    root, expected = local_epoch
    manifest = remote_epoch_manifest(s3_store, root, epoch_samples, "epoch-workers")
    dataset = ShardDataset(manifest, decode=None, storage_options=s3_store.options(proxied=True))
    got = [_fields(s) for s in ShardLoader(dataset, num_workers=2, multiprocessing_context="fork")]
    assert sorted(got) == sorted(expected)


def test_epoch_under_connection_cuts_has_every_sample_exactly_once(remote, local_epoch, epoch_samples):
    root, expected = local_epoch
    manifest = remote_epoch_manifest(remote, root, epoch_samples, "epoch-cuts")
    remote.proxy.cut(after=5000, times=2)  # shards are ~20 KB: each cut breaks a shard mid-way
    got = epoch(manifest, storage_options=remote.options(proxied=True))
    assert remote.proxy.faults_fired == 2
    assert got == expected


def test_epoch_survives_a_server_restart(http_store, local_epoch, epoch_samples):
    root, expected = local_epoch
    manifest = remote_epoch_manifest(http_store, root, epoch_samples, "epoch-restart")
    from shardpipe import ShardDataset

    got = []
    dataset = iter(ShardDataset(manifest, decode=None))
    for i, s in enumerate(dataset):
        got.append(_fields(s))
        if i == 10:  # mid-epoch: the next shards' requests meet a stopped server
            http_store.server.stop()
            with restarting(http_store.server, after=0.5):
                got += [_fields(s) for s in dataset]
    assert got == expected


def run_pipeline(manifest: str, policy: str = "raise", **options) -> tuple[list[tuple], dict]:
    """One epoch of ShardDataset with the given I/O options; (samples, skips by error type)."""
    from shardpipe import ShardDataset

    dataset = ShardDataset(manifest, decode=None, on_error=policy, **options)
    return [_fields(s) for s in dataset], dataset.stats.errors()


def test_epoch_with_a_shard_past_the_retry_limit(http_store, local_epoch, epoch_samples):
    root, expected = local_epoch
    manifest = remote_epoch_manifest(http_store, root, epoch_samples, "epoch-broken")
    opts = ReadOptions(retries=1, backoff=0.01)
    # raise policy: the clear error names the shard and the offset
    http_store.proxy.cut(after=5000, times=1_000_000)
    with pytest.raises(TruncatedShardError, match=r"train-000000.tar: read failed at byte 0 of"):
        run_pipeline(manifest, read_options=opts, prefetch=0)
    # skip policy: the first shard fails both attempts and is skipped and counted
    http_store.proxy.clear()
    http_store.proxy.cut(after=5000, times=opts.retries + 1)
    got, skips = run_pipeline(manifest, "skip", read_options=opts, prefetch=0)  # cuts hit shard 1 only
    assert skips == {"TruncatedShardError": 1}
    assert got == expected[7:]  # the first shard held the first 7 samples


def test_second_epoch_through_the_cache_reads_nothing_from_the_server(s3_store, local_epoch, epoch_samples, tmp_path):
    root, expected = local_epoch
    manifest = remote_epoch_manifest(s3_store, root, epoch_samples, "epoch-cache")
    kw = {"storage_options": s3_store.options(proxied=True), "cache_dir": tmp_path}
    assert run_pipeline(manifest, **kw)[0] == expected
    s3_store.proxy.reset_counters()
    assert run_pipeline(manifest, **kw)[0] == expected
    # only the manifest is read again; every shard comes from the cache
    assert s3_store.proxy.bytes_down < 4096


@pytest.mark.timeout(90)
def test_parent_connections_survive_forked_workers(s3_store, epoch_samples):
    """Forked DataLoader workers must not break the parent's pooled S3 connections.

    (Dropping the inherited fsspec instances in a child closes their sockets through the
    event-loop poller shared with the parent, whose next request then hangs.)
    """
    from shardpipe import ShardDataset, ShardLoader

    manifest = write_epoch(s3_store.url("fork-a/train-%06d.tar"), epoch_samples, s3_store.options())
    dataset = ShardDataset(manifest, decode=None, storage_options=s3_store.options())
    assert len(list(ShardLoader(dataset, num_workers=2, multiprocessing_context="fork"))) == len(epoch_samples)
    again = write_epoch(s3_store.url("fork-b/train-%06d.tar"), epoch_samples, s3_store.options())
    assert len(list(ShardDataset(again, decode=None, storage_options=s3_store.options()))) == len(epoch_samples)
