"""``index_shards``: a manifest and an index sidecar for existing tar/tgz shards.

Shards written by other tools (webdataset, tarp, tar(1)) have no manifest, so several
ranks cannot split them evenly and nothing can read one sample by number. Indexing
reads only member headers where the format allows: local tar shards seek over member
data; remote tar shards are read in the usual ranged blocks (8 MiB, two ahead), and a
member reaching past the blocks in flight is stepped over without downloading it (small
members are cheaper to read in bulk than to skip one request at a time: measured in
BENCHMARKS.md); tgz shards must be decompressed whole (their offsets, in the
decompressed stream, are recorded, and the shard is marked sequential-only).
``sha256=True`` reads every byte.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from typing import IO, Any

from shardpipe.errors import ShardNotFoundError, ShardReadError
from shardpipe.format.index import ShardIndex, index_name, write_index
from shardpipe.format.manifest import build_manifest, shard_entry, write_manifest
from shardpipe.format.sample import split_name
from shardpipe.format.tar.reader import TarStream, skipped_note
from shardpipe.io.files import dirname_url, is_local, join_url, local_path, same_file
from shardpipe.io.remote import ReadOptions, open_remote
from shardpipe.io.verify import HashingReader
from shardpipe.pools import thread_pool

log = logging.getLogger("shardpipe")


@dataclass
class ShardScan:
    """What scanning one shard found."""

    url: str
    index: ShardIndex
    sha256: str | None = None
    split_keys: int = 0  #: keys that start a sample more than once (a count: an unsorted shard may hold many)
    first_split: str | None = None  #: the first of them
    skipped: dict[str, int] = field(default_factory=dict)  #: links and sparse files stepped over, by kind


def _open(
    url: str, storage_options: dict[str, Any] | None, whole: bool, read_options: ReadOptions | None = None
) -> tuple[IO[bytes], int]:
    """The shard as a stream and its size: small buffered reads locally unless reading it ``whole``;
    remotely under ``read_options``."""
    if is_local(url):
        path = local_path(url)
        try:
            f = open(path, "rb", buffering=1 << 20 if whole else 1 << 14)
        except FileNotFoundError as e:
            raise ShardNotFoundError(f"shard not found: {url}") from e
        except OSError as e:
            raise ShardReadError(f"cannot read shard {url}: {e}") from e
        return f, os.fstat(f.fileno()).st_size
    stream = open_remote(url, storage_options=storage_options, options=read_options)
    return stream, stream.size  # type: ignore[return-value]


def scan_shard(
    url: str,
    storage_options: dict[str, Any] | None = None,
    sha256: bool = False,
    read_options: ReadOptions | None = None,
) -> ShardScan:
    """Index one shard: the start offset and key checksum of every sample, its size and gzip flag.

    Samples are found exactly as streaming finds them (consecutive members sharing a
    key; ``__*__`` and extension-less members belong to none; links and sparse files are skipped,
    and counted in ``skipped``), so counts agree. A key whose members lie apart (a tar written
    unsorted) starts a sample each time: ``split_keys`` counts them.
    """
    raw, size = _open(url, storage_options, sha256, read_options)
    hashing = HashingReader(raw) if sha256 else None
    tar = TarStream(hashing or raw, url)  # type: ignore[arg-type]
    index = ShardIndex(size=size, compressed=tar.compressed)
    current: str | None = None
    seen: set[str] = set()
    split: dict[str, None] = {}  # in the order found, each once
    try:
        while True:
            at = tar.offset
            header = tar.next_header()
            if header is None:
                index.end(at)
                break
            parts = split_name(header[0])
            if parts is not None and parts[0] != current:
                current = parts[0]
                if current in seen:
                    split[current] = None
                seen.add(current)
                index.add(at, current)
            tar.skip_data()
        if hashing is not None:
            hashing.drain()  # the record padding after the end-of-archive blocks
    finally:
        tar.close()
    first = next(iter(split), None)
    return ShardScan(url, index, hashing.hexdigest() if hashing else None, len(split), first, dict(tar.skipped))


def _entry_name(shard_url: str, manifest_url: str) -> str:
    """The shard's name as the manifest lists it: relative when it sits below the manifest."""
    base = dirname_url(manifest_url)
    if dirname_url(shard_url) == base:
        return shard_url.rstrip("/").rsplit("/", 1)[-1]
    if is_local(shard_url) and is_local(manifest_url):
        rel = os.path.relpath(os.path.abspath(local_path(shard_url)), os.path.abspath(base or "."))
        return rel if not rel.startswith("..") else os.path.abspath(local_path(shard_url))
    return shard_url


def _check_output(output: str) -> None:
    """ValueError when ``output`` names a folder, not the manifest file to write (before any shard is read)."""
    if output.endswith("/") or (is_local(output) and os.path.isdir(local_path(output))):
        raise ValueError(
            f"{output} is a folder: name the manifest to write, such as {output.rstrip('/')}/manifest.json"
        )


def _check_not_a_shard(output: str, shard_urls: list[str]) -> None:
    """ValueError when the manifest or its index sidecar would be written over one of the shards."""
    sidecar = join_url(dirname_url(output), index_name(output))
    for target in (output, sidecar):
        hit = next((u for u in shard_urls if same_file(u, target)), None)
        if hit is not None:
            raise ValueError(f"{target} would be written over the shard {hit}: name another manifest file")


def _warn_split_keys(scans: list[ShardScan]) -> None:
    """One warning for the shards where a key's members lie apart (each run is a sample of its own)."""
    split = [s for s in scans if s.split_keys]
    if split:
        first = split[0]
        log.warning(
            "%d of %d shards hold a key in more than one place (%s: %d keys, the first %r): its members are not "
            "next to each other (a tar written unsorted? `tar --sort=name`), so each run of them is indexed as a "
            "sample of its own, as streaming reads it; `shardpipe verify` lists them",
            len(split), len(scans), first.url, first.split_keys, first.first_split,
        )  # fmt: skip


#: the fields indexing computes; any other field of a manifest (class_names, options...) is its writer's
_COMPUTED = ("format", "shards", "samples", "bytes", "index", "indexed_by")


def _kept_metadata(
    urls: str | Sequence[str], storage_options: dict[str, Any] | None, read_options: ReadOptions | None
) -> dict[str, Any]:
    """When ``urls`` is one manifest (rebuilding its index), its writer's metadata, to keep."""
    from shardpipe.format.manifest import read_manifest
    from shardpipe.io.urls import single_manifest

    manifest = single_manifest(urls)
    if manifest is None:
        return {}
    return {k: v for k, v in read_manifest(manifest, storage_options, read_options).items() if k not in _COMPUTED}


def _scan_item(shared: tuple[dict[str, Any] | None, bool, ReadOptions | None], item: tuple[int, str]) -> ShardScan:
    """One remote engine task: scan the shard ``item = (position, url)``."""
    return scan_shard(item[1], shared[0], shared[1], shared[2])


def _scans(
    urls: list[str],
    workers: int,
    sha256: bool,
    storage_options: dict[str, Any] | None,
    engine: str,
    ray_address: str | None,
    read_options: ReadOptions | None = None,
) -> Iterator[tuple[int, ShardScan]]:
    """``(position, scan)`` of every shard as scans finish: in a local thread pool or on ``engine``."""
    from shardpipe.write.engines import map_engine

    remote_map = map_engine(engine)
    if remote_map is not None:
        items = list(enumerate(urls))
        for (i, _), scan in remote_map(
            _scan_item,
            (storage_options, sha256, read_options),
            items,
            lambda it: f"indexing shard {it[1]}",
            address=ray_address,
        ):
            yield i, scan
        return
    with thread_pool(workers, "shardpipe-index") as pool:
        futures = {pool.submit(scan_shard, u, storage_options, sha256, read_options): i for i, u in enumerate(urls)}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()


def index_shards(
    urls: str | Sequence[str],
    output: str,
    *,
    workers: int = 8,
    sha256: bool = False,
    storage_options: dict[str, Any] | None = None,
    progress: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    read_options: ReadOptions | None = None,
) -> dict[str, Any]:
    """Scan ``urls`` (brace pattern, ``::``-joined or list) in parallel; write ``output`` and its index.

    Writes the manifest ``ShardWriter`` writes (per shard: samples, bytes, and sha256
    with ``sha256=True``) and the index sidecar beside it (``manifest.index``). Shards
    keep the order given. Returns the manifest. ``engine="ray"`` scans each shard in a
    Ray task (``ray_address``: the cluster to join) instead of ``workers`` local threads.
    When ``urls`` is a manifest, its writer's metadata (``class_names``, ``options``...) is kept.
    ``output`` must name a file: a folder is a ValueError, raised before any shard is read.
    Remote reads (a manifest given as ``urls``, listings, shards) follow ``read_options``.
    """
    from tqdm import tqdm

    from shardpipe.stages.shards import expand_urls

    _check_output(output)
    kept = _kept_metadata(urls, storage_options, read_options)
    shard_urls = [s.url for s in expand_urls(urls, storage_options, read_options=read_options)]
    _check_not_a_shard(output, shard_urls)
    scans: list[ShardScan | None] = [None] * len(shard_urls)
    with tqdm(total=len(shard_urls), unit="shard", disable=not progress, dynamic_ncols=True) as bar:
        samples = 0
        for i, scan in _scans(shard_urls, workers, sha256, storage_options, engine, ray_address, read_options):
            scans[i] = scan
            samples += scan.index.samples
            bar.update(1)
            bar.set_postfix(samples=samples, refresh=False)
    done = [s for s in scans if s is not None]
    gz = sum(s.index.compressed for s in done)
    if gz:
        log.warning(
            "%d of %d shards are gzip-compressed: indexed, but sequential-only (no random access)", gz, len(done)
        )
    _warn_split_keys(done)
    for scan in done:
        if scan.skipped:
            log.warning("%s", skipped_note(scan.url, scan.skipped))
    name = index_name(output)
    write_index(join_url(dirname_url(output), name), [s.index for s in done], storage_options)
    entries = [shard_entry(_entry_name(s.url, output), s.index.samples, s.index.size, s.sha256) for s in done]
    manifest = build_manifest(entries, {**kept, "index": name, "indexed_by": "shardpipe index"})
    write_manifest(output, manifest, storage_options)
    return manifest
