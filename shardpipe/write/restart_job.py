"""``mark_restarts``: existing tar/tgz shards rewritten with restart-marked JPEGs, plus index and manifest.

Shards from any tool (shardpipe, webdataset, img2dataset, tar(1)) are read member by
member; every ``.jpg``/``.jpeg`` member is re-encoded losslessly with restart intervals
(``shardpipe.image.restart``: same pixels), every other member and every member name,
order and tar header field is kept. Each output shard is written to a temporary name and
renamed when complete, so a run that is stopped keeps its finished shards and the next run
(resumable by default) skips them. The index and manifest are rebuilt at the end (with the
input manifest's class names, when the input was a manifest).
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from shardpipe.errors import CorruptShardError, ShardNotFoundError
from shardpipe.format.manifest import read_manifest, write_manifest
from shardpipe.image.restart import DEFAULT_PER_ROW, add_restart_intervals, available, restart_layout
from shardpipe.io.files import is_local, local_path

log = logging.getLogger("shardpipe")

_JPEG_EXTS = (".jpg", ".jpeg")
_TEMP = ".restart-tmp"


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

    def format(self) -> str:
        change = 100 * (self.bytes_out / self.bytes_in - 1) if self.bytes_in else 0.0
        return (
            f"{self.shards} shards ({self.skipped_shards} already done): {self.marked} of {self.jpegs} JPEGs "
            f"restart-marked, shards {change:+.2f}% in size, {self.seconds:.1f} s; manifest: {self.manifest}"
        )


def _safe_name(name: str, shard: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ".." in parts:
        raise CorruptShardError(f"{shard}: member {name!r} escapes the shard; refusing to copy it")


def convert_shard(src: str, dst: str, per_row: int = DEFAULT_PER_ROW) -> tuple[int, int, int, int]:
    """Write ``dst`` (atomically) from ``src`` with restart-marked JPEGs.

    Returns ``(jpegs, marked, bytes of src, bytes of dst)``.
    """
    tmp = dst + _TEMP
    jpegs = marked = 0
    mode = "w:gz" if src.endswith((".gz", ".tgz")) else "w"
    try:
        with tarfile.open(src, "r|*") as tin, tarfile.open(tmp, mode, format=tarfile.PAX_FORMAT) as tout:
            for info in tin:
                _safe_name(info.name, src)
                if not info.isfile():
                    tout.addfile(info)
                    continue
                f = tin.extractfile(info)
                data = f.read() if f is not None else b""
                if info.name.lower().endswith(_JPEG_EXTS):
                    jpegs += 1
                    new = add_restart_intervals(data, per_row)
                    if new is not data or restart_layout(data) is not None:
                        marked += 1
                    data = new
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))
    except (tarfile.TarError, EOFError) as e:
        _remove(tmp)
        raise CorruptShardError(f"{src}: not a readable tar shard ({e})") from e
    except BaseException:
        _remove(tmp)
        raise
    os.replace(tmp, dst)
    return jpegs, marked, os.path.getsize(src), os.path.getsize(dst)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def mark_restarts(
    urls: str, output_dir: str, *, per_row: int = DEFAULT_PER_ROW, workers: int = 2, progress: bool = False
) -> RestartSummary:
    """Convert the shards ``urls`` names (brace pattern, ``::`` list or a manifest) into
    ``output_dir`` (same file names), then write ``output_dir/manifest.json`` and its index.

    Local shards only. Outputs that exist are complete (renamed into place when done) and
    are kept: run it again to resume.
    """
    from tqdm import tqdm

    from shardpipe.stages.shards import expand_urls
    from shardpipe.write.index_job import index_shards

    if not available():
        raise ImportError("restart intervals need shardpipe's native extension (pip install with a C compiler)")
    if not is_local(output_dir):
        raise ValueError(f"the output must be a local folder, not {output_dir!r}")
    t0 = time.perf_counter()
    sources = [s.url for s in expand_urls(urls)]
    remote = [u for u in sources if not is_local(u)]
    if remote:
        raise ValueError(f"only local shards can be converted; {remote[0]!r} is not local")
    out = local_path(output_dir)
    os.makedirs(out, exist_ok=True)
    targets = [os.path.join(out, os.path.basename(local_path(u))) for u in sources]
    if len(set(targets)) != len(targets):
        raise ValueError("two input shards have the same file name; they would overwrite each other")
    summary = RestartSummary(shards=len(sources), outputs=targets)
    todo = []
    for src, dst in zip(sources, targets):
        _remove(dst + _TEMP)  # a stopped run's partial shard
        if os.path.exists(dst):
            summary.skipped_shards += 1
        else:
            todo.append((local_path(src), dst))
    missing = [src for src, _ in todo if not os.path.isfile(src)]
    if missing:
        raise ShardNotFoundError(f"no such shard: {missing[0]}")
    with tqdm(total=len(todo), unit="shard", disable=not progress, dynamic_ncols=True) as bar:
        with ThreadPoolExecutor(max(1, workers)) as pool:  # the transcode releases the GIL
            for jpegs, marked, b_in, b_out in pool.map(lambda p: convert_shard(p[0], p[1], per_row), todo):
                summary.jpegs += jpegs
                summary.marked += marked
                summary.bytes_in += b_in
                summary.bytes_out += b_out
                bar.update(1)
    manifest_url = os.path.join(out, "manifest.json")
    manifest = index_shards(targets, manifest_url, workers=max(1, workers))
    if isinstance(urls, str) and urls.endswith(".json") and read_manifest(urls).get("class_names"):
        manifest["class_names"] = read_manifest(urls)["class_names"]
    manifest["restart_intervals"] = {"per_row": per_row, "converted_by": "shardpipe restart"}
    write_manifest(manifest_url, manifest)
    summary.manifest = manifest_url
    summary.seconds = time.perf_counter() - t0
    return summary
