"""Longer fuzz run of the tar reader, the gzip path and the JPEG header parser (minutes).

    python tools/fuzz.py --minutes 5 [--seed 1] [--save tests/fuzz_corpus]

Mutates the valid seeds of ``shardpipe.devtools.fuzz`` (and, sometimes, inputs that
reached new code: a line-coverage signal from ``sys.settrace`` is too slow, so the
corpus grows with inputs whose outcome, error message or member list, was not seen
before). Each input runs in this process under a per-input time limit (a hang is a
failure too). Every failing input is written to ``--save``/<target>/<sha1>.bin, where
``tests/test_fuzz.py`` replays it on every test run; keep those files as regression tests.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shardpipe.devtools.fuzz import check_gzip, check_jpeg, mutate, read_tar, seed_inputs  # noqa: E402
from shardpipe.errors import ShardpipeError  # noqa: E402
from shardpipe.image.decoders.jpeg import read_header  # noqa: E402

PER_INPUT_SECONDS = 5


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang(f"an input ran longer than {PER_INPUT_SECONDS} s")


def outcome(target: str, data: bytes, original: list) -> str:
    """A short signature of what the input did (new signatures join the corpus)."""
    if target == "jpeg":
        check_jpeg(data)
        try:
            h = read_header(data)
        except ValueError as e:
            return f"ValueError:{re.sub(r'[0-9]+', 'N', str(e))}"
        return f"ok:{h.sof}:{h.components}:{h.sampling}:{h.adobe_transform}"
    if target == "gzip":
        check_gzip(data, original)
    try:
        members = read_tar(data)
    except ShardpipeError as e:
        return f"{type(e).__name__}:{re.sub(r'[0-9]+', 'N', str(e))[:80]}"
    return f"ok:{len(members)}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=int(time.time()))
    p.add_argument("--save", default=str(Path(__file__).resolve().parent.parent / "tests" / "fuzz_corpus"))
    args = p.parse_args()
    rng = random.Random(args.seed)
    seeds = seed_inputs()
    originals = {"gzip": read_tar(seeds["gzip"][0])}
    corpus = {t: list(v) for t, v in seeds.items()}
    seen: dict[str, set[str]] = {t: set() for t in corpus}
    runs = {t: 0 for t in corpus}
    failures: list[tuple[str, Path, str]] = []
    signal.signal(signal.SIGALRM, _alarm)
    end = time.monotonic() + 60 * args.minutes
    print(f"fuzzing for {args.minutes} min, seed {args.seed}", flush=True)
    while time.monotonic() < end:
        target = rng.choice(list(corpus))
        data = mutate(rng.choice(corpus[target]), rng, rounds=rng.choice([1, 3, 8]))
        runs[target] += 1
        signal.alarm(PER_INPUT_SECONDS)
        try:
            sig = outcome(target, data, originals.get("gzip", []))
        except Exception as e:  # noqa: BLE001 - every other exception is a finding
            name = hashlib.sha1(data).hexdigest()[:16]
            path = Path(args.save) / target / f"{name}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            why = f"{type(e).__name__}: {e}"
            failures.append((target, path, why))
            print(f"FAIL {target} {path}: {why}\n{traceback.format_exc(limit=3)}", flush=True)
            continue
        finally:
            signal.alarm(0)
        if sig not in seen[target] and len(corpus[target]) < 500:
            seen[target].add(sig)
            corpus[target].append(data)
    total = sum(runs.values())
    print(f"ran {total} inputs ({', '.join(f'{t} {n}' for t, n in runs.items())}) in {args.minutes} min, "
          f"{total / (60 * args.minutes):.0f}/s; corpus {', '.join(f'{t} {len(c)}' for t, c in corpus.items())}; "
          f"{len(failures)} failures")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
