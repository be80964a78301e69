"""``mark_restarts``: existing tar/tgz shards rewritten with restart-marked JPEGs, plus index and manifest.

Shards from any tool (shardpipe, webdataset, img2dataset, tar(1)) are read member by member;
every ``.jpg``/``.jpeg`` member is re-encoded losslessly with restart intervals
(``shardpipe.image.restart``: same pixels), every other member and every member name, order and
tar header field is kept. Inputs are read through shardpipe's io layer (local, ``s3://``,
``gs://``, ``http(s)://``: streamed, with its retries); outputs go to a local folder or an
object store. Each output shard (:mod:`shardpipe.write.restart_shard`) appears complete or not
at all (locally a temporary name renamed when complete; on S3/GCS the object is published when
its upload completes and a failed upload is aborted), so a run that is stopped keeps its
finished shards and the next run (resumable by default) skips them. A damaged input shard is
logged, left out and listed (summary, manifest's ``skipped``), and the others converted; a rerun
with other settings is refused and a local folder takes one run at a time
(:mod:`shardpipe.write.restart_record`). The index and manifest are rebuilt at the end (with
each shard's sha256, taken as it is written, and the input manifest's class names, when the
input was a manifest). Gzipped shards are written as the shard writer writes them (no timestamp
or file name in the gzip header), so a conversion is reproducible.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import time
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shardpipe.errors import ShardNotFoundError, ShardpipeError
from shardpipe.format.manifest import read_manifest, write_manifest
from shardpipe.image.restart import DEFAULT_PER_ROW, available
from shardpipe.io.files import is_local, join_url, local_path, same_file
from shardpipe.io.remote import ReadOptions
from shardpipe.pools import thread_pool
from shardpipe.write.outfiles import folder_lock, size
from shardpipe.write.restart_record import CONVERTED_BY, RECORD, record_settings, restart_settings
from shardpipe.write.restart_shard import TEMP, convert_shard, remove

log = logging.getLogger("shardpipe")


@dataclass
class RestartSummary:
    """What ``mark_restarts`` did."""

    shards: int = 0
    skipped_shards: int = 0  #: already converted by an earlier run
    jpegs: int = 0  #: JPEG members seen in the converted shards
    marked: int = 0  #: re-encoded with restart intervals
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    manifest: str = ""
    outputs: list[str] = field(default_factory=list)
    #: ``(input, why)`` of each input shard left out as damaged (unreadable, truncated, corrupt), in list order
    damaged: list[tuple[str, str]] = field(default_factory=list)

    def format(self, max_damaged: int = 20, show: Callable[[str], str] = str) -> str:
        """What the run did, and the damaged inputs with reasons; ``show`` as in ``WriteSummary.format``."""
        change = 100 * (self.bytes_out / self.bytes_in - 1) if self.bytes_in else 0.0
        lines = [
            f"{self.shards} shards ({self.skipped_shards} already done): {self.marked} of {self.jpegs} JPEGs "
            f"restart-marked, shards {change:+.2f}% in size, {self.seconds:.1f} s; manifest: {self.manifest}"
        ]
        if self.damaged:
            lines.append(f"skipped {len(self.damaged)} damaged input shards (not in the manifest):")
            lines += [f"  {show(src)}: {show(why)}" for src, why in self.damaged[:max_damaged]]
            if len(self.damaged) > max_damaged:
                lines.append(f"  ... and {len(self.damaged) - max_damaged} more (listed in the manifest)")
        return "\n".join(lines)


def _file_name(url: str) -> str:
    """The last path component of a local path or URL (query and fragment left out)."""
    return os.path.basename(local_path(url)) if is_local(url) else posixpath.basename(urlsplit(url).path)


def _input_id(url: str) -> str:
    """How the record names an input: a local one by its real absolute path (a rerun from another
    folder, or through a link, names the same file), a URL as it is."""
    return os.path.realpath(local_path(url)) if is_local(url) else url


def _missing(url: str) -> bool:
    """Whether ``url`` is a local shard that is not there (remote ones are found missing when read)."""
    return is_local(url) and not os.path.isfile(local_path(url))


def _remove_temps(folder: str) -> None:
    """Delete the partial shards of stopped runs in ``folder``, those this run does not convert too
    (the lock is held: no run is writing them). Remote ones were never published."""
    for name in os.listdir(folder):
        if name.endswith(TEMP):
            remove(os.path.join(folder, name))


def mark_restarts(
    urls: str,
    output_dir: str,
    *,
    per_row: int = DEFAULT_PER_ROW,
    workers: int = 2,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
    output_storage_options: dict[str, Any] | None = None,
    read_options: ReadOptions | None = None,
) -> RestartSummary:
    """Convert the shards ``urls`` names (brace pattern, glob, ``::`` list or a manifest;
    local, ``s3://``, ``gs://`` or ``http(s)://``) into ``output_dir`` (a local folder or an
    ``s3://``/``gs://`` prefix; same file names), then write ``output_dir/manifest.json``
    and its index.

    ``storage_options`` are fsspec's options for the inputs, ``output_storage_options`` for
    the output (default: the same). Outputs that exist are complete (published only when
    done) and are kept: run it again to resume. Remote reads, of the inputs and of the shards
    written (indexed), follow ``read_options``.
    """
    from shardpipe.stages.shards import expand_urls
    from shardpipe.write.index_job import index_shards

    if not available():
        raise ImportError("restart intervals need shardpipe's native extension (pip install with a C compiler)")
    if urlsplit(output_dir).scheme in ("http", "https"):
        raise ValueError(
            f"cannot write shards to {output_dir!r}: a web server is read-only; use a folder, s3:// or gs://"
        )
    if per_row < 1:
        raise ValueError(f"per_row (--per-row) must be at least 1, got {per_row}")
    out_options = storage_options if output_storage_options is None else output_storage_options
    t0 = time.perf_counter()
    sources = [s.url for s in expand_urls(urls, storage_options, read_options=read_options)]
    if is_local(output_dir):
        output_dir = local_path(output_dir)
    targets = [join_url(output_dir, _file_name(u)) for u in sources]
    _check_names(sources, targets)
    same = [u for u, t in zip(sources, targets) if same_file(u, t)]
    if same:
        raise ValueError(f"the output folder holds the input shard {same[0]}: choose another folder")
    manifest_url = join_url(output_dir, "manifest.json")
    class_names = None
    if isinstance(urls, str) and urls.endswith(".json"):  # read all of the input before writing anything
        if same_file(urls, manifest_url):
            raise ValueError(f"the output folder holds the input manifest {urls}: choose another folder")
        class_names = read_manifest(urls, storage_options, read_options).get("class_names")
    if not is_local(output_dir):
        _check_reachable(output_dir, out_options)
    missing = [u for u, t in zip(sources, targets) if _missing(u) and size(t, out_options) is None]
    if missing:  # (a manifest's shard: the CLI checks those it was given)
        raise ShardNotFoundError(f"no such shard: {missing[0]}")
    if is_local(output_dir):  # made only now: a run refused above leaves no empty folder behind
        os.makedirs(output_dir, exist_ok=True)
    lock = folder_lock(output_dir, CONVERTED_BY) if is_local(output_dir) else contextlib.nullcontext()
    with lock:  # held until the manifest is written: a second run would delete this one's partial shards
        if is_local(output_dir):
            _remove_temps(output_dir)
        inputs = {_file_name(t): _input_id(u) for u, t in zip(sources, targets)}
        known = record_settings(output_dir, restart_settings(per_row), inputs, out_options)
        summary, sha256, errors = _convert_all(
            sources, targets, per_row, workers, progress, storage_options, out_options, read_options
        )  # fmt: skip
        done = [t for u, t in zip(sources, targets) if u not in errors]
        if not done:
            raise _none_converted([errors[u] for u in sources if u in errors])
        if summary.skipped_shards and not known:
            log.warning(
                "%s holds %d shards from an older version's run without %s: they are kept unchecked, "
                "as converted then", output_dir, summary.skipped_shards, RECORD,
            )  # fmt: skip
        manifest = index_shards(
            done, manifest_url, workers=max(1, workers), storage_options=out_options, read_options=read_options
        )
        _add_sha256(manifest, output_dir, sha256, out_options, read_options)
        if class_names:
            manifest["class_names"] = class_names
        if summary.damaged:  # as shardpipe write lists its skipped inputs
            manifest["skipped"] = [{"name": src, "reason": why} for src, why in summary.damaged]
        manifest["restart_intervals"] = {"per_row": per_row, "converted_by": CONVERTED_BY}
        write_manifest(manifest_url, manifest, out_options)
    summary.manifest = manifest_url
    summary.seconds = time.perf_counter() - t0
    return summary


def _convert_all(
    sources: list[str],
    targets: list[str],
    per_row: int,
    workers: int,
    progress: bool,
    storage_options: dict[str, Any] | None,
    out_options: dict[str, Any] | None,
    read_options: ReadOptions | None = None,
) -> tuple[RestartSummary, dict[str, str], dict[str, ShardpipeError]]:
    """Convert each source whose target is not there yet; return the summary, the sha256 of each shard
    converted, by file name, taken as it was written, and the error of each damaged source.

    A damaged source (its data: truncated, corrupt, gone, unreadable) is logged and left out, and
    the others are converted: one bad shard of thousands does not stop the run. Any other error
    (the output's: a full disk) stops it."""
    from tqdm import tqdm

    summary = RestartSummary(shards=len(sources), outputs=targets)
    todo = []
    for src, dst in zip(sources, targets):
        if size(dst, out_options) is not None:
            summary.skipped_shards += 1
        else:
            todo.append((src, dst))

    def convert(pair: tuple[str, str]) -> tuple[int, int, int, int, str]:
        return convert_shard(
            pair[0], pair[1], per_row, storage_options=storage_options, output_storage_options=out_options,
            read_options=read_options,
        )  # fmt: skip

    sha256: dict[str, str] = {}
    errors: dict[str, ShardpipeError] = {}
    with tqdm(total=len(todo), unit="shard", disable=not progress, dynamic_ncols=True) as bar:
        with thread_pool(workers, "shardpipe-restart") as pool:  # the transcode releases the GIL, and so do reads
            futures = {pool.submit(convert, pair): pair for pair in todo}
            try:
                for future in as_completed(futures):
                    src, dst = futures[future]
                    try:
                        jpegs, marked, b_in, b_out, sha = future.result()
                    except ShardpipeError as e:
                        log.warning("skipped a damaged input shard: %s", e)
                        errors[src] = e
                    else:
                        summary.jpegs += jpegs
                        summary.marked += marked
                        summary.bytes_in += b_in
                        summary.bytes_out += b_out
                        sha256[_file_name(dst)] = sha
                    bar.update(1)
            except BaseException:
                for future in futures:  # the running ones end; no new one starts
                    future.cancel()
                raise
    summary.damaged = [(src, _reason(errors[src], src)) for src in sources if src in errors]
    return summary, sha256, errors


def _reason(error: ShardpipeError, src: str) -> str:
    """What is wrong with ``src``: its error's message without the shard's name in front."""
    text = str(error)
    return text[len(src) + 2 :] if text.startswith(f"{src}: ") else text


def _none_converted(errors: list[ShardpipeError]) -> ShardpipeError:
    """The error of a run whose every shard to convert was damaged: that shard's, or one naming the first."""
    if len(errors) == 1:
        return errors[0]
    first = errors[0]
    return type(first)(
        f"none of the {len(errors)} input shards could be read (each is logged above); the first: {first}"
    )


def _check_names(sources: list[str], targets: list[str]) -> None:
    """Refuse two inputs that would be written to one output: a shard listed twice, or two of one name."""
    first: dict[str, str] = {}
    for src, dst in zip(sources, targets):
        if dst not in first:
            first[dst] = src
        elif first[dst] == src:
            raise ValueError(f"the shard list names {src} twice: list each shard once")
        else:
            raise ValueError(
                f"the input shards {first[dst]} and {src} have the same file name; they would both be written to {dst}"
            )


def _check_reachable(url: str, storage_options: dict[str, Any] | None) -> None:
    """Fail before any work when the output store cannot be listed (no credentials, wrong
    endpoint, no such bucket), naming the store and what its client said."""
    import fsspec.core

    try:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        fs.exists(path)
    except Exception as e:  # noqa: BLE001 - each client has its own errors; all mean "cannot write there"
        raise ValueError(
            f"cannot reach the output {url}: {type(e).__name__}: {e} (check --output-storage-options: "
            "endpoint, credentials)"
        ) from e


def _add_sha256(
    manifest: dict[str, Any],
    folder: str,
    known: dict[str, str],
    storage_options: dict[str, Any] | None,
    read_options: ReadOptions | None = None,
) -> None:
    """Give every shard entry its sha256 (as the shard writer does), so that ``verify`` checks the
    bytes: from ``known`` (taken while writing) or, for shards kept from an earlier run, by reading them."""
    from shardpipe.write.index_job import scan_shard

    for entry in manifest["shards"]:
        sha = known.get(entry["name"])
        entry["sha256"] = sha or scan_shard(join_url(folder, entry["name"]), storage_options, True, read_options).sha256
