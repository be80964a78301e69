"""``shardpipe bench --peers``: shardpipe against the loaders users would pick instead.

Same images for all (``prepare_data``: photo-like, ~110 KB at ~500x375; shardpipe reads
them as ``shardpipe write`` stores them, with restart intervals, the others byte for byte
as their own writers do), same work
(RandomResizedCrop(224) + flip, uint8 batches of 64), ``workers`` processes or threads each,
every loader in a fresh process per round, alternating; medians over the rounds. The primary
figure is CPU milliseconds per image over the whole process tree (steady on a shared
machine), then images/s, ratios to shardpipe and to webdataset + PIL, and peak RSS. A peer
whose package is missing is reported with its install command and skipped. The peers'
packages are no dependency of shardpipe: ``make bench-peers`` installs them into
``bench-env/`` (see ``tools/bench-requirements.txt``).

Two rows are references, not loaders: shardpipe's kernel alone on JPEGs in memory (2 processes),
and the floor (``devtools.bench.floor``): that kernel fed from the shards by plain DataLoader
workers, with no stages, the most any pipeline of that shape reaches.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shardpipe.devtools.bench.kernels import format_table, median


@dataclass(frozen=True)
class Peer:
    """One row: its measurement config and the (module, pip package) pairs it needs."""

    name: str
    config: dict[str, Any]
    needs: tuple[tuple[str, str], ...] = field(default=())


_DECODE = (("simplejpeg", "simplejpeg"), ("cv2", "opencv-python-headless"))
SHARDPIPE, KERNEL, WDS_PIL = "shardpipe", "shardpipe kernel alone", "webdataset + PIL"
#: the kernel fed from the shards by DataLoader workers with no stages: what reading the shards in workers costs
FLOOR = "floor: kernel in workers, no stages"

PEERS: tuple[Peer, ...] = (
    Peer(SHARDPIPE, {"kind": "shardpipe", "channels_last": True}),
    Peer(KERNEL, {"kind": "kernel", "mode": "processes"}),
    Peer(FLOOR, {"kind": "floor"}),
    Peer(WDS_PIL, {"kind": "webdataset"}, (("webdataset", "webdataset"),)),
    Peer(
        "webdataset + simplejpeg + OpenCV", {"kind": "webdataset-simplejpeg"}, (("webdataset", "webdataset"), *_DECODE)
    ),
    Peer("LitData", {"kind": "litdata"}, (("litdata", "litdata"), *_DECODE)),
    Peer("MosaicML streaming", {"kind": "mosaic"}, (("streaming", "mosaicml-streaming"), *_DECODE)),
    Peer("SPDL", {"kind": "spdl"}, (("spdl.pipeline", "spdl"), ("spdl.io", "spdl"), *_DECODE)),
    Peer("DALI CPU", {"kind": "dali-cpu"}, (("nvidia.dali", "nvidia-dali-cuda120"),)),
)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package of a dotted name
        return False


def missing(peer: Peer) -> str | None:
    """``"not installed: pip install X Y"`` when a package ``peer`` needs is absent, else ``None``."""
    return not_installed(peer.needs)


def not_installed(needs: Sequence[tuple[str, str]]) -> str | None:
    """``"not installed: pip install X Y"`` for the (module, pip package) pairs whose module is absent, else ``None``."""
    packages = dict.fromkeys(pip for module, pip in needs if not _installed(module))
    return f"not installed: pip install {' '.join(packages)}" if packages else None


def select(only: Sequence[str] | None = None) -> list[Peer]:
    """The peers whose names contain one of ``only`` (case-insensitive), or all."""
    from shardpipe.devtools.bench import matching

    names = matching([p.name for p in PEERS], only)
    return [p for p in PEERS if p.name in names]


def run_peers(
    data_dir: str = "bench-data",
    n: int = 2000,
    workers: int = 2,
    batch: int = 64,
    size: int = 224,
    buffer: int = 1000,
    rounds: int = 3,
    only: Sequence[str] | None = None,
    nice: int = 10,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str], dict[str, Any]]:
    """(raw results by row, skipped rows -> why, the data's description)."""
    from shardpipe.devtools.bench.loaders import prepare_data, run_rounds

    skipped: dict[str, str] = {}
    rows: dict[str, dict[str, Any]] = {}
    for peer in select(only):
        why = missing(peer)
        if why:
            skipped[peer.name] = why
            log(f"{peer.name}: {why} (skipped)")
        else:
            rows[peer.name] = {**peer.config, "workers": workers, "batch": batch, "size": size, "buffer": buffer}
    log(f"preparing {n} images under {data_dir} (once) ...")
    data = prepare_data(data_dir, n)
    _prepare_formats(rows, data, log)
    return run_rounds(rows, data, rounds, nice, log), skipped, data


def _prepare_formats(rows: dict[str, dict[str, Any]], data: dict[str, Any], log: Callable[[str], None]) -> None:
    """Write LitData's and MosaicML's own formats here, once, not inside a measured round."""
    from shardpipe.devtools.bench.loaders import manifest_urls
    from shardpipe.devtools.bench.peer_loaders import prepare_peer_data

    kinds = {cfg["kind"] for cfg in rows.values()}
    for kind, fmt in (("litdata", "litdata"), ("mosaic", "mds")):
        if kind in kinds:
            log(f"writing the samples in {kind}'s format (once) ...")
            prepare_peer_data(data, manifest_urls(data["plain"]), fmt)


def summarize(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per loader: medians (and the CPU range) over the rounds, ratios filled in."""
    rows = []
    for name, runs in results.items():
        if not runs:
            continue
        cpu = [1000 * r["cpu_per_image"] for r in runs]
        rss = [r["rss_main_mb"] + r.get("rss_workers_mb", r.get("rss_worker_mb", 0.0)) for r in runs]
        rows.append(
            {
                "name": name,
                "cpu_ms": median(cpu),
                "cpu_lo": min(cpu),
                "cpu_hi": max(cpu),
                "rate": median([r["rate"] for r in runs]),
                "rss_mb": median(rss),
                "rounds": len(runs),
            }
        )
    by_name = {r["name"]: r for r in rows}
    ref_cpu = by_name.get(SHARDPIPE, {}).get("cpu_ms", float("nan"))
    ref_rate = by_name.get(WDS_PIL, {}).get("rate", float("nan"))
    for r in rows:
        r["cpu_x_shardpipe"] = r["cpu_ms"] / ref_cpu
        r["rate_x_wds_pil"] = r["rate"] / ref_rate
    return rows


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets for the full pipeline, where the rows they need were run."""
    by_name = {r["name"]: r for r in rows}
    sp = by_name.get(SHARDPIPE)
    if sp is None:
        return []
    out = []
    peers = [r for r in rows if r["name"] not in (SHARDPIPE, KERNEL, FLOOR)]
    if peers:
        best = min(peers, key=lambda r: r["cpu_ms"])
        x = best["cpu_ms"] / sp["cpu_ms"]
        out.append(f"CPU ms/img: best peer ({best['name']}) / shardpipe = {x:.2f}x (target >= 1.5x: {_met(x >= 1.5)})")
    if WDS_PIL in by_name:
        x = sp["rate"] / by_name[WDS_PIL]["rate"]
        out.append(f"images/s: shardpipe / webdataset + PIL = {x:.2f}x (target >= 2.5x: {_met(x >= 2.5)})")
    if KERNEL in by_name:
        k = by_name[KERNEL]
        x = sp["rate"] / k["rate"]
        cpu = k["cpu_ms"] / sp["cpu_ms"]
        out.append(
            f"CPU ms/img: its kernel alone / shardpipe = {cpu:.2f}x (target >= 0.95x: {_met(cpu >= 0.95)}); "
            f"by images/s: {x:.2f}x"
        )
        if FLOOR in by_name:
            f = by_name[FLOOR]
            out.append(
                f"CPU ms/img: its kernel alone / the kernel in workers with no stages = {k['cpu_ms'] / f['cpu_ms']:.2f}x "
                f"(reading the shards in plain DataLoader workers, nothing else); "
                f"that / shardpipe = {f['cpu_ms'] / sp['cpu_ms']:.2f}x (what shardpipe's stages and start-up cost)"
            )
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(rows: list[dict[str, Any]], skipped: dict[str, str], *, workers: int, batch: int, command: str) -> str:
    """The text table (CPU ms/img first), skipped peers and targets."""
    rounds = max((r["rounds"] for r in rows), default=0)
    lines = [
        f"$ {command}",
        f"RandomResizedCrop(224) + flip, uint8 batches of {batch}, {workers} processes or threads per loader; "
        f"medians of {rounds} rounds, each loader in a fresh process per round",
        "",
    ]
    headers = ["loader", "CPU ms/img", "range", "img/s", "CPU x shardpipe", "img/s x wds+PIL", "peak RSS MB"]
    table = [
        [
            r["name"],
            r["cpu_ms"],
            f"{r['cpu_lo']:.2f}-{r['cpu_hi']:.2f}",
            r["rate"],
            r["cpu_x_shardpipe"],
            r["rate_x_wds_pil"],
            r["rss_mb"],
        ]
        for r in rows
    ]
    lines.append(format_table(headers, table))
    lines.append("(peak RSS: main process + the sum of its workers' peaks, which counts shared pages more than once)")
    for name, why in skipped.items():
        lines.append(f"{name}: {why}")
    found = targets(rows)
    if found:
        lines += ["", "targets (issue 23)", *(f"  {t}" for t in found)]
    return "\n".join(lines)


def save(text: str, rows: list[dict[str, Any]], path: str, log: Callable[[str], None] = print) -> None:
    """Write the table to ``path`` and its bar chart beside it (``.png``), if matplotlib is installed."""
    from shardpipe.devtools.bench.chart import save_chart

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")
    png = os.path.splitext(path)[0] + ".png"
    if not _installed("matplotlib"):
        log(f"table saved to {path}; chart: not installed: pip install matplotlib")
        return
    save_chart(rows, png, title=text.splitlines()[1] if "\n" in text else "")
    log(f"table saved to {path}, chart to {png}")
