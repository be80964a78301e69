"""Per-image work of a write job: load, check, maybe presize; in order, in parallel.

Every engine prepares images with :func:`prepare`; the local engine streams them
through :func:`prepared` (threads or processes, results in input order).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, NamedTuple

from shardpipe.errors import DecodeError
from shardpipe.image.restart import add_restart_intervals
from shardpipe.workerstart import watch_parent
from shardpipe.write.presize import check_image, image_ext, presize
from shardpipe.write.sources import Record, Source

log = logging.getLogger("shardpipe")

CHUNK = 8  # records per task sent to a worker: amortises IPC, keeps results flowing in order


@dataclass(frozen=True)
class PrepareOptions:
    """What happens to each image in a worker."""

    presize: int | None = None
    quality: int = 90
    check: str = "header"
    #: re-encode JPEGs losslessly with restart intervals (``shardpipe.image.restart``)
    restart_intervals: bool = True


class Prepared(NamedTuple):
    """An input ready to be written: its position in the listing and its sample's fields."""

    pos: int
    key: str
    ext: str
    data: bytes
    label: int | None
    extra: dict[str, Any] | None
    presized: bool  #: re-encoded by presize
    #: not presized, re-encoded losslessly with restart intervals (else copied byte for byte)
    marked: bool = False


class Skipped(NamedTuple):
    """An input that could not be written, and why."""

    pos: int
    name: str
    reason: str


#: what :func:`prepare` gives for one input
PrepareResult = Prepared | Skipped


# ---------------------------------------------------------------------------- per-image work


def prepare(source: Source, opts: PrepareOptions, pos: int, record: Record) -> PrepareResult:
    """Load, check, maybe presize one record and give a JPEG restart intervals (lossless, when
    ``opts.restart_intervals``): a :class:`Prepared`, or a :class:`Skipped` saying why not."""
    try:
        loaded = source.load(record)
        data = loaded.data
        ext = image_ext(data)
        changed = False
        if opts.presize:
            data, changed = presize(data, opts.presize, opts.quality)
        if changed:
            ext = "jpg"
        else:
            check_image(data, ext, opts.check)
        if opts.restart_intervals and ext == "jpg":
            before = data
            data = add_restart_intervals(data)
            marked = data is not before and not changed
        else:
            marked = False
    except DecodeError as e:
        return Skipped(pos, record.name, f"unreadable image: {e}")
    except OSError as e:
        return Skipped(pos, record.name, f"cannot read: {e}")
    except Exception as e:  # a bad sidecar, or a user's LMDB value decoder failing on a value
        return Skipped(pos, record.name, f"cannot load: {type(e).__name__}: {e}")
    return Prepared(pos, record.key, ext, data, loaded.label, loaded.extra, changed, marked)


_worker: tuple[Source, PrepareOptions] | None = None


def _init_worker(source: Source, opts: PrepareOptions) -> None:
    global _worker
    _worker = (source, opts)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    try:  # exit when the writer dies (even by SIGKILL), also in the middle of a chunk
        watch_parent()
    except Exception as e:  # noqa: BLE001 - an initializer that raises makes the pool restart workers forever
        log.warning(
            "a write worker cannot watch the writer (%s: %s): it ends when its task queue closes", type(e).__name__, e
        )


def _work_chunk(chunk: list[tuple[int, Record]]) -> list[PrepareResult]:
    assert _worker is not None
    return [prepare(_worker[0], _worker[1], pos, rec) for pos, rec in chunk]


def prepared(
    source: Source, opts: PrepareOptions, items: list[tuple[int, Record]], workers: int
) -> Iterator[PrepareResult]:
    """``prepare`` every item, in order, with ``workers`` in parallel.

    CPU-bound work (presize, ``check="decode"``) runs in that many processes; pass-through
    and the restart-interval transcode (C that releases the GIL) run in that many threads,
    which overlap reads (slow disks, network filesystems) without copying every image
    between processes. A bounded number of
    tasks is in flight, so memory stays bounded when writing is slower than preparing.
    """
    if workers <= 1:
        for pos, rec in items:
            yield prepare(source, opts, pos, rec)
        return
    if not opts.presize and opts.check != "decode":
        # pass-through and the transcode (GIL released): threads overlap reads, cost no IPC copies
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            window: deque[Any] = deque()
            for pos, rec in items:
                window.append(pool.submit(prepare, source, opts, pos, rec))
                if len(window) > 16 * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        return
    chunks = (items[i : i + CHUNK] for i in range(0, len(items), CHUNK))
    with _process_context(source, opts).Pool(workers, _init_worker, (source, opts)) as pool:
        pending = deque(pool.apply_async(_work_chunk, (c,)) for c in islice(chunks, 4 * workers))
        while pending:
            results = pending.popleft().get()
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append(pool.apply_async(_work_chunk, (nxt,)))
            yield from results


def _process_context(source: Source, opts: PrepareOptions) -> Any:
    """How the worker processes start: as the loader's workers do (``shardpipe.worker_context``).

    Fork when this process has no other thread (nothing re-imported); beside other threads
    (a user's, a progress bar's), shardpipe's forkserver, because a fork while another thread
    holds a lock can hang a worker forever; the program's own start method when it chose one.
    """
    from shardpipe.workers import worker_context

    chosen = worker_context((source, opts))
    context = chosen if chosen is not None else mp.get_context()
    log.debug("write workers start by %s", type(context).__name__)
    return context


def to_sample(item: Prepared) -> dict[str, Any]:
    """The sample dict of a prepared input."""
    sample: dict[str, Any] = {"__key__": item.key, item.ext: item.data}
    if item.label is not None:
        sample["cls"] = item.label
    if item.extra:
        sample["json"] = item.extra
    return sample
