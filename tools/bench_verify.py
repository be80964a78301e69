"""Cost of ``ShardDataset(verify=True)``: CPU ms per shard, per MB and per image, side by side.

    python tools/bench_verify.py [-n 512] [--shards 8] [--rounds 3] [--data bench-data/verify]

Writes ``n`` photo-like JPEGs into shards with a manifest once (reused on later runs),
then reads a whole epoch with ``decode=None`` (read + untar only, where a checksum's
cost shows most) and with ``decode="rgb8"``, each with verify off and on: every
configuration in a fresh process per round, alternating, shards in the page cache.
Prints the median CPU time of the epoch (the child process's user+system time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, resource, sys, time
import shardpipe
manifest, decode, verify = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
ds = shardpipe.ShardDataset(manifest, decode=None if decode == "none" else decode, verify=verify)
list(ds)  # warm imports outside the measurement: the decoders load lazily
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
n = sum(1 for _ in ds)
r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
print(json.dumps({"images": n, "cpu": cpu, "wall": t1 - t0}))
"""


def ensure_data(root: Path, n: int, shards: int) -> Path:
    manifest = root / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text())["samples"] == n:
        return manifest
    import shardpipe
    from shardpipe.devtools.synth import make_dataset

    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with shardpipe.ShardWriter(str(root / "v-%04d.tar"), maxcount=-(-n // shards)) as w:
        for key, jpeg, label in make_dataset(n):
            w.write({"__key__": key, "jpg": jpeg, "cls": label})
    print(f"wrote {n} images into {shards} shards in {time.perf_counter() - t0:.1f} s")
    return manifest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", type=int, default=512)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", default=str(ROOT / "bench-data" / "verify"))
    args = p.parse_args()
    manifest = ensure_data(Path(args.data), args.n, args.shards)
    m = json.loads(manifest.read_text())
    shards, mb = len(m["shards"]), m["bytes"] / 1e6
    blob = b"".join((manifest.parent / s["name"]).read_bytes() for s in m["shards"])
    t0 = time.process_time()
    hashlib.sha256(blob).hexdigest()
    sha_ms_per_mb = 1000 * (time.process_time() - t0) / mb
    configs = [(d, v) for d in ("none", "rgb8") for v in ("0", "1")]
    results: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
    for _ in range(args.rounds):
        for c in configs:
            out = subprocess.run([sys.executable, "-c", CHILD, str(manifest), *c], capture_output=True, text=True,
                                 check=True, cwd=ROOT)  # fmt: skip
            results[c].append(json.loads(out.stdout.strip().splitlines()[-1])["cpu"])
    print(f"{args.n} images, {shards} shards, {mb:.1f} MB; median of {args.rounds} rounds, a fresh process each")
    print(f"plain hashlib.sha256 of the same bytes: {sha_ms_per_mb:.2f} CPU ms/MB")
    print("| decode | verify | CPU ms/epoch | CPU ms/shard | CPU ms/MB | CPU ms/img | verify adds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for d, v in configs:
        cpu = 1000 * statistics.median(results[(d, v)])
        base = 1000 * statistics.median(results[(d, "0")])
        extra = (
            "" if v == "0" else f"{cpu - base:+.1f} ms ({(cpu - base) / mb:+.2f} ms/MB, {100 * (cpu / base - 1):+.0f}%)"
        )
        print(f"| {d} | {'on' if v == '1' else 'off'} | {cpu:.0f} | {cpu / shards:.1f} | {cpu / mb:.2f} | "
              f"{cpu / args.n:.3f} | {extra} |")  # fmt: skip


if __name__ == "__main__":
    main()
