"""A server's worker process: runs the parts assigned to it and sends their batches.

A worker holds any number of parts and produces for whichever has credit (round
robin), so a trainer that waits on one part never blocks another part's producer. Each
batch goes out with the pipeline state after it: the point a surviving server resumes
from if this one is lost. The worker never runs ahead of its credits, so at most
``credits`` batches per part exist beyond the one being built.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import traceback
from collections import deque
from typing import Any

from shardpipe.dataset import ShardDataset
from shardpipe.serve.coordination import MAX_CREDITS, Part, check_request, part_pipeline
from shardpipe.serve.wire import clip_text, control, pack, unpack
from shardpipe.stages.base import Pipeline

log = logging.getLogger("shardpipe.serve")


class _Running:
    def __init__(self, client: bytes, part: Part, pipeline: Pipeline):
        self.client, self.part, self.pipeline = client, part, pipeline
        self.credits = part.credits
        self.sent = 0


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (a SIGKILLed server leaves no orphans)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere the parent-pid check in the loop does it


def _log_failure(what: str, e: BaseException) -> None:
    """Log ``what`` with ``e``'s traceback, each part of it clipped: an exception's text (a hostile
    shard's key or field list) must not flood the server's log."""
    parts = traceback.TracebackException.from_exception(e).format()
    log.error("%s\n%s", what, "".join(clip_text(part) for part in parts).rstrip("\n"))


def run_worker(index: int, endpoint: str, dataset: ShardDataset) -> None:
    """Entry point of worker ``index``: serve parts over the PAIR socket at ``endpoint``."""
    # first: Ctrl-C reaches the whole group and the server stops us. The server starts us with SIGINT
    # blocked (see server._start_workers): ignored now, a pending one is discarded, then unblock it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    import zmq

    from shardpipe.workermemory import tune_worker_allocator

    die_with_parent()
    tune_worker_allocator()
    parent = os.getppid()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.linger = 0
    sock.connect(endpoint)
    running: dict[tuple[bytes, int], _Running] = {}
    turn: deque[tuple[bytes, int]] = deque()

    def handle(frames: list[Any]) -> None:
        client = bytes(frames[0])
        try:  # the main process checked it; a worker checks again rather than die of a bad one
            header, _ = unpack(frames[1:])
            check_request(header)
        except Exception as e:
            log.warning("worker %d: ignored a malformed request: %s", index, clip_text(str(e)))
            return
        key = (client, header.get("assignment", -1))
        if header["type"] == "assign":
            part = Part.from_header(header)
            try:
                running[key] = _Running(client, part, part_pipeline(dataset, part))
                turn.append(key)
            except Exception as e:  # a bad resume state or unreadable shard list: the trainer decides
                _log_failure(f"worker {index}: cannot start {part.describe()}", e)
                message = clip_text(str(e))
                sock.send_multipart([client, *control("error", assignment=part.assignment, message=message)])
        elif header["type"] == "credit" and key in running:
            running[key].credits = min(MAX_CREDITS, running[key].credits + header["n"])
        elif header["type"] == "cancel" and key in running:
            running.pop(key).pipeline.close()

    while True:
        ready = [k for k in turn if k in running and running[k].credits > 0]
        if sock.poll(0 if ready else 200):
            while sock.poll(0):
                handle(sock.recv_multipart(copy=False))
            continue
        if os.getppid() != parent:
            return
        if not ready:
            turn = deque(k for k in turn if k in running)
            continue
        key = ready[0]
        turn.remove(key)
        turn.append(key)  # round robin among the parts that have credit
        job = running[key]
        try:
            batch = job.pipeline.next()
            state = job.pipeline.get_state()
            frames = pack({"type": "batch", "assignment": job.part.assignment, "seq": job.sent, "state": state}, batch)
        except StopIteration:
            sock.send_multipart([job.client, *control("end", assignment=job.part.assignment, sent=job.sent)])
            running.pop(key).pipeline.close()
            continue
        except Exception as e:  # a pipeline error, or a field the wire cannot carry (WireError)
            _log_failure(f"worker {index}: {job.part.describe()} failed", e)
            message = clip_text(f"{job.part.describe()}: {type(e).__name__}: {e}")  # the server reads it whole
            sock.send_multipart([job.client, *control("error", assignment=job.part.assignment, message=message)])
            running.pop(key).pipeline.close()
            continue
        sock.send_multipart([job.client, *frames], copy=False)
        job.credits -= 1
        job.sent += 1
