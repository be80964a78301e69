#!/usr/bin/env python
"""Object storage at cloud latency: an epoch from SeaweedFS (S3) behind a throttling proxy.

"link MiB/s" is what the proxy forwarded from its first byte to its last (the network
phase, without the loaders' process start-up); "epoch MiB/s" counts from the loader's
first ``iter`` to its last sample. The proxy (``shardpipe.devtools.throttle``) adds ``--latency`` ms before the first byte
of every response and caps each connection at ``--per-conn`` MiB/s and the whole link
at ``--total`` MiB/s. Each loader reads the same shards with ``--workers`` DataLoader
workers and no decoding (the network is the bottleneck), each round in a fresh
process, variants alternating:

    shardpipe          this tree's defaults
    shardpipe-hand     this tree, the best settings found by hand before (8 MiB blocks,
                       readahead 8, prefetch 2)
    shardpipe-main     the defaults of the tree in --main (the code before this change)
    wds-fsspec         webdataset 1.0 opening s3:// URLs through fsspec (s3fs)
    wds-pipe-aws       webdataset with ``pipe:aws s3 cp ... -`` (needs the AWS CLI)

``--random`` measures random access instead: batches of 256 random indices from an
IndexedDataset (this tree: ``__getitems__``, parallel grouped GETs; --main: one GET per
sample, as its DataLoader would ask).

    python tools/bench_cloud.py --mib 300 --rounds 2 --latency 40 --per-conn 25 --total 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
ACCESS_KEY, SECRET_KEY = "shardpipe-test-key", "shardpipe-test-secret"  # tests/servers/seaweed.py
VARIANTS = ("shardpipe", "shardpipe-hand", "shardpipe-main", "wds-fsspec", "wds-pipe-aws")


# -- data ----------------------------------------------------------------------------------
def make_shards(root: Path, mib: int, shard_mib: int) -> Path:
    """~``mib`` MiB of shards of photo-like JPEGs (200 distinct images, repeated under new keys)."""
    stamp = root / f".mib{mib}-shard{shard_mib}"
    if stamp.exists():
        return root
    sys.path.insert(0, str(ROOT))
    from shardpipe import ShardWriter
    from shardpipe.devtools.synth import make_dataset

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    images = [(jpg, label) for _, jpg, label in make_dataset(200, workers=2)]
    print(f"writing ~{mib} MiB of shards into {root} ...", flush=True)
    written, i = 0, 0
    with ShardWriter(f"{root}/train-%06d.tar", maxsize=shard_mib * MiB) as w:
        while written < mib * MiB:
            jpg, label = images[i % len(images)]
            w.write({"__key__": f"s{i:07d}", "jpg": jpg, "cls": label})
            written += len(jpg) + 1536
            i += 1
    stamp.touch()
    return root


# -- one run, in its own process ------------------------------------------------------------
class PeakRss:
    """Samples the peak RSS (VmHWM) of this process and its descendants while it runs."""

    def __init__(self) -> None:
        from shardpipe.devtools.bench.proctree import _peak_rss_mb, descendants

        self._peak, self._descendants = _peak_rss_mb, descendants
        self.main = self.worker = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def sample(self) -> None:
        self.main = max(self.main, self._peak(os.getpid()))
        for pid in self._descendants():
            self.worker = max(self.worker, self._peak(pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()
        self._stop.set()


def run_stream(variant: str, manifest: str, endpoint: str, workers: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    so = {"key": ACCESS_KEY, "secret": SECRET_KEY, "endpoint_url": endpoint}
    meta = json.loads(Path(manifest).read_text())
    names = [e["name"] for e in meta["shards"]]
    url = "s3://bench/manifest.json"
    if variant.startswith("shardpipe"):
        from shardpipe import ShardDataset, ShardLoader

        kw: dict[str, Any] = {}
        if variant == "shardpipe-hand":
            from shardpipe.io.remote import ReadOptions

            kw = {"read_options": ReadOptions(block_size=8 * MiB, readahead=8), "prefetch": 2}
        loader: Any = ShardLoader(ShardDataset(url, decode=None, storage_options=so, **kw), num_workers=workers)
    else:
        import webdataset as wds

        os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_ENDPOINT_URL=endpoint)
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        if variant == "wds-fsspec":  # webdataset 1.0 has no s3 handler: open through fsspec, its defaults
            import fsspec

            def s3_handler(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
                return fsspec.open(url, mode, **so).open()

            sys.modules["webdataset.gopen"].gopen_schemes["s3"] = s3_handler
            urls = [f"s3://bench/{n}" for n in names]
        else:
            urls = [f"pipe:aws s3 cp --endpoint-url {endpoint} s3://bench/{n} -" for n in names]
        loader = DataLoader(wds.WebDataset(urls, shardshuffle=False, empty_check=False), num_workers=workers,
                            batch_size=None)  # fmt: skip
    with PeakRss() as rss:
        t0 = time.perf_counter()
        n, first = 0, 0.0
        for _ in loader:
            if not n:
                first = time.perf_counter() - t0  # worker start-up and the first shard's first bytes
            n += 1
        wall = time.perf_counter() - t0
    return {"samples": n, "wall": wall, "first": first, "main_rss_mb": rss.main, "worker_rss_mb": rss.worker}


def run_random(variant: str, endpoint: str, batches: int, batch: int) -> dict[str, Any]:
    import numpy as np

    from shardpipe.indexed import IndexedDataset

    so = {"key": ACCESS_KEY, "secret": SECRET_KEY, "endpoint_url": endpoint}
    ds = IndexedDataset("s3://bench/manifest.json", decode=None, storage_options=so)
    rng = np.random.default_rng(0)
    ds[0]  # open the first shard outside the timing
    with PeakRss() as rss:
        t0 = time.perf_counter()
        for _ in range(batches):
            idx = rng.integers(0, len(ds), batch).tolist()
            got = ds.__getitems__(idx) if hasattr(ds, "__getitems__") else [ds[i] for i in idx]
            assert len(got) == batch
        wall = time.perf_counter() - t0
    return {"samples": batches * batch, "wall": wall, "main_rss_mb": rss.main, "worker_rss_mb": 0.0}


# -- the harness ----------------------------------------------------------------------------
def child(variant: str, args: argparse.Namespace, endpoint: str, manifest: Path) -> dict[str, Any]:
    tree = args.main if variant.endswith("-main") else str(ROOT)
    cmd = [sys.executable, __file__, "--run", variant, "--endpoint", endpoint, "--manifest", str(manifest),
           "--workers", str(args.workers), "--batches", str(args.batches)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=tree)
    if out.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=300, help="data size")
    ap.add_argument("--shard-mib", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--latency", type=float, default=40, help="ms to the first byte of every response")
    ap.add_argument("--per-conn", type=float, default=25, help="MiB/s per connection")
    ap.add_argument("--total", type=float, default=200, help="MiB/s for the whole link")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--random", action="store_true", help="random access: batches of 256 random indices")
    ap.add_argument("--batches", type=int, default=3, help="random access: batches per run (main: 1)")
    ap.add_argument(
        "--main",
        help="a checkout of the code before the change (its defaults are 'before'); "
        "without it the -main variants are skipped",
    )
    ap.add_argument("--data", default=str(ROOT / "bench-data" / "cloud"))
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    ap.add_argument("--manifest", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.run:  # one measurement in this fresh process; JSON on the last line
        if args.run.startswith("random"):
            batches = 1 if args.run.endswith("-main") else args.batches
            result = run_random(args.run, args.endpoint, batches, 256)
        else:
            result = run_stream(args.run, args.manifest, args.endpoint, args.workers)
        print(json.dumps(result))
        return 0

    sys.path.insert(0, str(ROOT))
    from shardpipe.devtools.throttle import ThrottleProxy
    from tests.servers.seaweed import SeaweedS3

    data = make_shards(Path(args.data), args.mib, args.shard_mib)
    manifest = data / "manifest.json"
    total_bytes = sum(e["bytes"] for e in json.loads(manifest.read_text())["shards"])
    tmp = Path(tempfile.mkdtemp(prefix="bench-cloud-"))
    server = SeaweedS3(tmp / "seaweed", buckets=("bench",)).start()
    proxy = ThrottleProxy(
        server.port, latency=args.latency / 1000, per_conn=args.per_conn * MiB, total=args.total * MiB
    ).start()  # fmt: skip
    try:
        import fsspec.core

        fs, _ = fsspec.core.url_to_fs("s3://bench", **server.storage_options())
        for f in sorted(data.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                fs.put_file(str(f), f"bench/{f.name}")
        link = f"{args.latency:g} ms, {args.per_conn:g} MiB/s per connection, {args.total:g} MiB/s in all"
        print(f"{total_bytes / MiB:.0f} MiB in {len(list(data.glob('*.tar')))} shards; proxy: {link}; "
              f"{args.workers} workers; load average before: {os.getloadavg()}", flush=True)  # fmt: skip
        variants = ["random", "random-main"] if args.random else args.variants.split(",")
        if args.main is None and any(v.endswith("-main") for v in variants):
            variants = [v for v in variants if not v.endswith("-main")]
            print("the -main variants skipped: give --main DIR (a checkout of the code before the change)")
        if "wds-pipe-aws" in variants and shutil.which("aws") is None:
            variants.remove("wds-pipe-aws")
            print("wds-pipe-aws skipped: no aws CLI")
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for r in range(args.rounds):
            for v in variants:
                proxy.reset_counters()
                res = child(v, args, proxy.endpoint, manifest)
                res.update(requests=proxy.requests, max_conns=proxy.max_open_connections, load=os.getloadavg()[0],
                           link=proxy.link_rate() / MiB, net=proxy.last_byte_at - proxy.first_byte_at)  # fmt: skip
                results[v].append(res)
                print(f"  round {r + 1} {v}: {json.dumps(res)}", flush=True)
        report(results, total_bytes, args)
    finally:
        proxy.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def report(results: dict[str, list[dict[str, Any]]], total_bytes: int, args: argparse.Namespace) -> None:
    print(f"\n## {args.latency:g} ms, {args.per_conn:g} MiB/s per connection, {args.total:g} MiB/s total, "
          f"{args.workers} workers (median of {args.rounds})")  # fmt: skip
    if args.random:
        print("| variant | samples/s | wall s | requests | peak RSS MiB | load |")
        print("|---|---:|---:|---:|---:|---:|")
        for v, rs in results.items():
            rate = statistics.median(r["samples"] / r["wall"] for r in rs)
            print(f"| {v} | {rate:.0f} | {statistics.median(r['wall'] for r in rs):.2f} | "
                  f"{statistics.median(r['requests'] for r in rs):.0f} | "
                  f"{max(r['main_rss_mb'] for r in rs):.0f} | {statistics.median(r['load'] for r in rs):.1f} |")  # fmt: skip
        return
    print("| loader | link MiB/s | of link | epoch MiB/s | epoch s | network s | first sample s | requests "
          "| max conns | worker peak RSS MiB | load |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for v, rs in results.items():
        link = statistics.median(r["link"] for r in rs)
        epoch = statistics.median(total_bytes / MiB / r["wall"] for r in rs)
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall", "net", "first", "requests", "load")}
        print(
            f"| {v} | {link:.1f} | {link / args.total:.2f} | {epoch:.1f} | {med['wall']:.1f} | {med['net']:.1f} "
            f"| {med['first']:.1f} | {med['requests']:.0f} | {max(r['max_conns'] for r in rs)} "
            f"| {max(r['worker_rss_mb'] for r in rs):.0f} | {med['load']:.1f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
