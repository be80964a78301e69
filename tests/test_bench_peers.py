"""`shardpipe bench --peers`: process-tree CPU accounting, missing peers, the table and its targets."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shardpipe import ShardDataset
from shardpipe.devtools.bench import peers
from shardpipe.devtools.bench.proctree import descendants, tree_cpu_seconds, worker_peak_rss_mb

from .helpers import run_in_group

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\nprint('done', flush=True)\ntime.sleep(30)"


def test_tree_cpu_counts_a_live_child_that_was_never_waited_for():
    before = tree_cpu_seconds()
    child = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "done"  # burnt 0.4 s of CPU, still alive
        live = descendants()
        assert child.pid in live and live[child.pid] >= 0.35
        assert tree_cpu_seconds() - before >= 0.35
        total, largest = worker_peak_rss_mb()
        assert total >= largest > 1.0  # a Python interpreter's peak RSS, read from /proc
    finally:
        child.kill()
        child.wait()
    assert child.pid not in descendants()
    # reaped: its time moved into this process's RUSAGE_CHILDREN, so the total did not drop
    assert tree_cpu_seconds() - before >= 0.35


def test_a_missing_peer_is_named_with_its_install_command():
    peer = peers.Peer(
        "X",
        {"kind": "x"},
        (("json", "json"), ("no_such_module_q7", "no-such-pkg"), ("no_such_parent_q7.sub", "other-pkg")),
    )
    assert peers.missing(peer) == "not installed: pip install no-such-pkg other-pkg"
    assert peers.missing(peers.Peer("Y", {"kind": "y"}, (("json", "json"),))) is None
    assert [p.name for p in peers.select(["LITDATA", "dali"])] == ["LitData", "DALI CPU"]


def _run(cpu_ms: float, rate: float) -> dict[str, float]:
    return {"cpu_per_image": cpu_ms / 1000, "rate": rate, "rss_main_mb": 100.0, "rss_workers_mb": 50.0}


def test_summary_ratios_and_targets():
    results = {
        peers.SHARDPIPE: [_run(1.0, 1000), _run(1.2, 900), _run(1.1, 1100)],
        peers.KERNEL: [_run(0.9, 1050)] * 3,
        peers.WDS_PIL: [_run(3.0, 400)] * 3,
        "LitData": [_run(1.5, 800)] * 3,
    }
    rows = {r["name"]: r for r in peers.summarize(results)}
    sp = rows[peers.SHARDPIPE]
    assert (sp["cpu_ms"], sp["cpu_lo"], sp["cpu_hi"], sp["rate"], sp["rss_mb"]) == (1.1, 1.0, 1.2, 1000, 150.0)
    assert abs(rows[peers.WDS_PIL]["cpu_x_shardpipe"] - 3.0 / 1.1) < 1e-9
    assert rows[peers.SHARDPIPE]["rate_x_wds_pil"] == 2.5
    found = peers.targets(list(rows.values()))
    assert found[0] == "CPU ms/img: best peer (LitData) / shardpipe = 1.36x (target >= 1.5x: MISSED)"
    assert found[1] == "images/s: shardpipe / webdataset + PIL = 2.50x (target >= 2.5x: met)"
    assert found[2] == "CPU ms/img: its kernel alone / shardpipe = 0.82x (target >= 0.95x: MISSED); by images/s: 0.95x"
    assert len(found) == 3  # no floor row run: no line for it
    with_floor = peers.summarize({**results, peers.FLOOR: [_run(1.0, 1040)] * 3, "DALI CPU": [_run(0.95, 700)] * 3})
    found = peers.targets(with_floor)
    assert found[0] == "CPU ms/img: best peer (DALI CPU) / shardpipe = 0.86x (target >= 1.5x: MISSED)"  # not the floor
    assert found[3] == (
        "CPU ms/img: its kernel alone / the kernel in workers with no stages = 0.90x (reading the shards in "
        "plain DataLoader workers, nothing else); that / shardpipe = 0.91x (what shardpipe's stages and start-up cost)"
    )
    text = peers.report(list(rows.values()), {"SPDL": "not installed: pip install spdl"}, workers=2, batch=64,
                        command="shardpipe bench --peers")  # fmt: skip
    assert text.startswith("$ shardpipe bench --peers\n")
    assert "SPDL: not installed: pip install spdl" in text and "targets (issue 23)" in text


def test_cli_runs_the_installed_peers_and_skips_the_missing(tmp_path: Path, bench_data_dir: Path):
    report = tmp_path / "out" / "peers.txt"
    cmd = [sys.executable, "-m", "shardpipe.cli", "bench", "--peers", "--data", str(bench_data_dir), "--n", "64",
           "--rounds", "1", "--batch", "16", "--only", "shardpipe", "webdataset + PIL", "litdata", "--report", str(report)]  # fmt: skip
    t0 = time.perf_counter()
    result = run_in_group(cmd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    table = out[out.index("loader ") :]
    for name in ("shardpipe ", "shardpipe kernel alone", "webdataset + PIL"):
        assert f"\n{name}" in table, name
    if importlib.util.find_spec("litdata") is None:
        assert "LitData: not installed: pip install litdata" in out
        assert "\nLitData " not in table
    assert "CPU ms/img: best peer (" in out and "images/s: shardpipe / webdataset + PIL" in out
    assert report.read_text().startswith("$ shardpipe bench --peers --n 64 --rounds 1")
    png = report.with_suffix(".png")
    if importlib.util.find_spec("matplotlib") is None:
        assert "chart: not installed: pip install matplotlib" in out and not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"bench --peers CLI test: {time.perf_counter() - t0:.1f} s")


def test_bench_data_gives_shardpipe_restart_marked_shards_and_the_others_plain(tmp_path: Path):
    from shardpipe.devtools.bench.loaders import manifest_urls, prepare_data
    from shardpipe.devtools.synth import CMYK_INDEX, make_dataset
    from shardpipe.image.restart import available, restart_layout

    if not available():
        pytest.skip("native extension not built: nothing is given restart intervals")
    n = 30
    data = prepare_data(str(tmp_path), n, shard_size=16)
    originals = {key: jpg for key, jpg, _ in make_dataset(n)}

    def members(name: str) -> dict[str, bytes]:
        return {s["__key__"]: s["jpg"] for s in ShardDataset(manifest_urls(data[name]), decode=None)}

    full, plain, presized = members("full"), members("plain"), members("presized")
    assert plain == originals  # the other loaders read the generated JPEGs byte for byte
    assert set(full) == set(presized) == set(originals)
    for i, key in enumerate(sorted(originals)):
        pixels = np.asarray(Image.open(io.BytesIO(full[key])))
        assert np.array_equal(pixels, np.asarray(Image.open(io.BytesIO(originals[key])))), key  # lossless
        untouchable = i == CMYK_INDEX  # the progressive one (PROGRESSIVE_INDEX) becomes baseline
        assert (restart_layout(full[key]) is None) == untouchable, key
        assert (full[key] == originals[key]) == untouchable, key
        assert restart_layout(presized[key]) is not None, key  # presize re-encodes every one as baseline RGB
    assert data["mean_bytes_restart_marked"] < data["mean_bytes"]
    shard = Path(manifest_urls(data["full"])[0])
    written = shard.stat().st_mtime_ns
    again = prepare_data(str(tmp_path), n, shard_size=16)  # written once, then reused
    assert again["full"] == data["full"] and shard.stat().st_mtime_ns == written


def test_chart_colours_shardpipe_the_references_and_the_peers_apart():
    from shardpipe.devtools.bench.chart import bar_color

    ours, kernel, floor, peer = (bar_color(n) for n in (peers.SHARDPIPE, peers.KERNEL, peers.FLOOR, "LitData"))
    assert kernel == floor
    assert len({ours, kernel, peer}) == 3
