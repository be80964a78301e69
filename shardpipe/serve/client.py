"""``RemoteLoader``: a trainer's loader whose batches come from ``shardpipe serve`` processes.

Each epoch the loader splits its rank's share into ``parts`` consumers of the epoch plan
(like a local loader's DataLoader workers) and assigns them to its servers. Batches are
taken from the parts in a fixed round robin, so the sequence of batches depends only on
the plan, never on which server was faster. Each batch arrives with the pipeline state
after it; that state is all a surviving server needs to continue a lost server's part,
and the per-part states are the loader's resume state.

Failure: every server with work assigned sends a heartbeat each 0.5 s; one silent for
``timeout`` seconds (killed, stopped, unreachable, or sending malformed messages) is
dropped and its parts continue on the others from the last batch received. A dropped
server is asked to rejoin at the start of each later epoch.

Memory: at most ``credits`` batches per part are queued here or in flight (a credit goes
back only for a batch taken), so the trainer holds at most ``parts * credits`` batches
besides the one it is using, and each server at most ``credits`` per part it runs plus the
one each worker is building. A server cuts off a trainer for which ``MAX_QUEUED`` (256)
messages wait: keep ``credits`` times the parts on one server below that.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from shardpipe.dataset import distributed_rank
from shardpipe.errors import ShardpipeError
from shardpipe.serve.links import END, SILENT, ServerLink, Slot, check_reply, load_keys
from shardpipe.serve.server import require_zmq
from shardpipe.serve.wire import DEFAULT_MAX_MESSAGE, WireError, control, unpack
from shardpipe.stages.base import State
from shardpipe.state import STATE_VERSION, StateError, validate_remote_state

log = logging.getLogger("shardpipe.serve")


class RemoteError(ShardpipeError):
    """The fleet cannot deliver the epoch: no server left, a pipeline error, a refused request."""


class RemoteLoader:
    """Iterate batches produced by decode servers, with epochs, failover and exact resume.

    Args:
        servers: endpoints of ``shardpipe serve`` processes (``tcp://host:port``).
        parts: consumers this rank's epoch is split into (default: the servers' worker
            count at the first epoch). Every rank must use the same value for equal
            batch counts, and a mid-epoch resume needs the value it was saved with.
        credits: batches in flight per part (the flow-control window).
        timeout: seconds of silence after which a server with work counts as lost.
        rank, world_size: override torch.distributed / RANK and WORLD_SIZE.
        pin_memory: copy tensors into pinned memory (when CUDA is available).
        server_key: the servers' CURVE public key file; with ``client_key`` (this
            trainer's secret key file, ``zmq.auth`` format) the connection is encrypted
            and authenticated.
        max_message: bytes above which a message is refused.
        rejoin_wait: seconds an epoch start waits for dropped servers to answer.
        part_timeout: seconds the loader may wait for the next batch of one part while its
            server keeps sending heartbeats (a hung worker process) before that server is
            dropped; allow for the slowest first batch (shard opening, shuffle buffer).
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        parts: int | None = None,
        credits: int = 2,
        timeout: float = 10.0,
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool = False,
        server_key: str | Path | None = None,
        client_key: str | Path | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        rejoin_wait: float = 1.0,
        part_timeout: float = 300.0,
    ):
        self._zmq = require_zmq()
        if isinstance(servers, str) or not servers:
            raise ValueError("RemoteLoader needs a list of server endpoints, e.g. ['tcp://127.0.0.1:5555']")
        if credits < 1:
            raise ValueError(f"credits must be >= 1, not {credits}")
        if (server_key is None) != (client_key is None):
            raise ValueError("CURVE needs both server_key (public key file) and client_key (secret key file)")
        self.servers = [ServerLink(a) for a in servers]
        self.parts = parts
        self.credits, self.timeout, self.rejoin_wait = credits, timeout, rejoin_wait
        self.part_timeout = part_timeout
        self.max_message = max_message
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self._rank, self._world = rank, world_size
        self._curve = load_keys(server_key, client_key) if server_key else None
        self._ctx = self._zmq.Context()
        self._ids = itertools.count(1)
        self.stats: Counter[str] = Counter()
        self._fingerprint: str | None = None  # the servers' (they must all agree)
        self.epoch = 0
        self._iterations = 0
        self._epoch_pinned = False
        self._resume: State | None = None
        self._slots: list[Slot] = []
        self._by_assignment: dict[int, Slot] = {}
        self._next_part = 0
        self._epoch_done = False
        self._rank_world = (0, 1)

    # -- configuration --------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (later passes go on from there)."""
        self.epoch = epoch
        self._epoch_pinned = True

    def fingerprint(self) -> str:
        """The servers' fingerprint (their dataset and config); asks them when none has answered yet."""
        if self._fingerprint is None:
            self._greet([s for s in self.servers if not s.live], self.timeout)
        if self._fingerprint is None:
            names = ", ".join(s.address for s in self.servers)
            raise RemoteError(f"no server answered within {self.timeout:g}s: {names}, so no fingerprint is known")
        return self._fingerprint

    def rank_and_world(self) -> tuple[int, int]:
        """This trainer's (rank, world_size): the constructor's override, else torch.distributed/env."""
        rank, world = distributed_rank()
        return (self._rank if self._rank is not None else rank, self._world if self._world is not None else world)

    def close(self) -> None:
        """Close the sockets (the servers stay up for other trainers)."""
        self._ctx.destroy(linger=0)

    def __enter__(self) -> RemoteLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections ------------------------------------------------------------
    def _greet(self, servers: list[ServerLink], wait: float) -> None:
        """Say hello to ``servers`` and wait up to ``wait`` seconds for their answers."""
        for s in servers:
            s.connect(self._ctx, self.max_message, self._curve)
        deadline = time.monotonic() + wait
        # not waiting for one that answered and was refused (a malformed hello)
        while any(not s.live and s.reason == SILENT for s in servers) and time.monotonic() < deadline:
            self._pump(min(0.05, max(0.0, deadline - time.monotonic())), check=False)

    # -- iteration --------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._iterations > 0 and not self._epoch_pinned:
            self.epoch += 1
        self._epoch_pinned = False
        self._iterations += 1
        first = self._fingerprint is None
        dropped = [s for s in self.servers if not s.live]
        if dropped:
            self._greet(dropped, self.timeout if first else self.rejoin_wait)
        live = [s for s in self.servers if s.live]
        if not live:
            names = ", ".join(s.address + ("" if s.reason == SILENT else f" ({s.reason})") for s in self.servers)
            raise RemoteError(
                f"no server answered within {self.timeout if first else self.rejoin_wait:g}s: {names} "
                "(are they running, and with CURVE, do the keys match?)"
            )
        for s in dropped:
            if not s.live:
                log.warning("server %s did not answer; epoch %d runs without it", s.address, self.epoch)
        if self.parts is None:
            self.parts = sum(s.workers for s in live)
        resume, self._resume = self._resume, None
        if resume is not None:
            self._check_resume(resume)
        return self._epoch(resume)

    def _epoch(self, resume: State | None) -> Iterator[dict[str, Any]]:
        assert self.parts is not None
        self._rank_world = self.rank_and_world()
        states = resume["states"] if resume else [None] * self.parts
        done = list(resume["done"]) if resume else [False] * self.parts
        self._slots = slots = [Slot(k, states[k]) for k in range(self.parts)]
        self._by_assignment = {}
        self._epoch_done = False
        for slot, finished in zip(self._slots, done):
            slot.ended = finished
            if not finished:
                self._assign(slot)
        k = self._next_part = resume["next_part"] if resume else 0
        remaining = done.count(False)
        try:
            while remaining:
                slot = self._slots[k]
                k = (k + 1) % self.parts
                if slot.ended and not slot.queue:
                    continue
                item = self._take(slot)
                if item is END:
                    remaining -= 1
                    continue
                header, batch = item
                slot.consumed = header["state"]
                self._next_part = k
                if slot.assignment is not None:
                    assert slot.server is not None
                    slot.server.sock.send_multipart(control("credit", assignment=slot.assignment, n=1))
                self.stats["batches"] += 1
                yield self._pin(batch) if self.pin_memory else batch
            self._epoch_done = True
        finally:
            self._cancel_all(slots)

    def _take(self, slot: Slot) -> Any:
        """The next item of ``slot``: a batch, or ``END`` once the part is complete."""
        waited, assignment = 0.0, slot.assignment
        while not slot.queue:
            t0 = time.monotonic()
            self._pump(0.1)
            if slot.assignment != assignment:  # taken over: the new server gets its own time
                waited, assignment = 0.0, slot.assignment
            waited += time.monotonic() - t0  # only time spent waiting here counts, not the trainer's
            if waited > self.part_timeout and slot.server is not None and not slot.queue:
                self._drop(slot.server, f"part {slot.index} made no progress for {self.part_timeout:g}s")
                waited, assignment = 0.0, slot.assignment
        item = slot.queue.popleft()
        if item is END:
            slot.ended = True
        return item

    def _pin(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    # -- receiving ----------------------------------------------------------------
    def _pump(self, wait: float, check: bool = True) -> None:
        """Receive what the servers sent within ``wait`` seconds; drop servers gone silent."""
        zmq = self._zmq
        poller = zmq.Poller()
        socks = {s.sock: s for s in self.servers if s.sock is not None}
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        for sock, _ in poller.poll(timeout=wait * 1000):
            server = socks[sock]
            while server.sock is sock and sock.poll(0):
                self._receive(server, sock.recv_multipart(copy=False))
        if check:
            now = time.monotonic()
            for s in self.servers:
                busy = any(slot.server is s and slot.assignment is not None for slot in self._slots)
                if s.live and busy and now - s.last_seen > self.timeout:
                    self._drop(s, f"no message for {self.timeout:g}s (dead, stopped or unreachable)")

    def _receive(self, server: ServerLink, frames: list[Any]) -> None:
        try:
            header, batch = unpack(frames, self.max_message)
            check_reply(header)  # before any field is used: a size, a state, a fingerprint
        except WireError as e:
            self.stats["rejected"] += 1
            log.error("rejected a message from %s (%d so far): %s", server.address, self.stats["rejected"], e)
            server.reason = f"sent a malformed message: {e}"  # also when it was not live yet (a bad hello)
            self._drop(server, server.reason)
            server.close()  # (_drop closes a live one; nothing more is read from one refused at its hello)
            return
        server.last_seen = time.monotonic()
        kind = header["type"]
        if kind == "hello":
            self._welcome(server, header)
            return
        if kind == "rejected":  # e.g. no live worker left there: its parts go to the others
            self._drop(server, f"refused a request: {header.get('message')}")
            return
        slot = self._by_assignment.get(header.get("assignment"))  # type: ignore[arg-type]
        if kind == "heartbeat":
            return
        if slot is None or slot.assignment != header.get("assignment"):
            self.stats["stale"] += 1  # from an assignment that was cancelled or taken over
            return
        if kind == "batch":
            slot.received = header["state"]
            slot.queue.append((header, batch))
        elif kind == "end":
            slot.assignment = None
            slot.queue.append(END)
        elif kind == "lost":
            log.warning("server %s lost part %d (%s); reassigning", server.address, slot.index, header.get("message"))
            self.stats["reassigned"] += 1
            self._assign(slot)
        elif kind == "error":
            raise RemoteError(f"server {server.address}: {header.get('message')}")

    def _welcome(self, server: ServerLink, header: dict[str, Any]) -> None:
        fp = header.get("fingerprint")
        if self._fingerprint is None:
            self._fingerprint = fp
        if fp != self._fingerprint:
            server.close()
            raise RemoteError(
                f"server {server.address} serves a different dataset or config (fingerprint {fp}, "
                f"the others {self._fingerprint}): its batches would not form the same epoch"
            )
        if not server.live:
            log.info("server %s joined (%s workers)", server.address, header.get("workers"))
        server.live, server.workers, server.fingerprint = True, max(1, header["workers"]), fp

    # -- assignment ------------------------------------------------------------------
    def _assign(self, slot: Slot) -> None:
        """Send ``slot``'s part, from its last received state, to the least busy live server."""
        live = [s for s in self.servers if s.live]
        if not live:
            lost = "; ".join(f"{s.address} ({s.reason})" for s in self.servers)
            raise RemoteError(f"every server is lost: {lost}; part {slot.index} of epoch {self.epoch} is unfinished")

        def load(s: ServerLink) -> float:
            return sum(1 for x in self._slots if x.server is s and x.assignment is not None) / s.workers

        server = min(live, key=load)
        rank, world = self._rank_world
        slot.assignment = next(self._ids)
        slot.server = server
        self._by_assignment[slot.assignment] = slot
        credits = max(0, self.credits - len(slot.queue))
        if not any(x.server is server and x.assignment is not None for x in self._slots if x is not slot):
            server.last_seen = time.monotonic()  # its heartbeats start with this assignment
        request = {
            "assignment": slot.assignment,
            "epoch": self.epoch,
            "rank": rank,
            "world_size": world,
            "part": slot.index,
            "parts": self.parts,
            "state": slot.received,
            "credits": credits,
        }
        server.sock.send_multipart(control("assign", **request))

    def _drop(self, server: ServerLink, reason: str) -> None:
        """Stop using ``server`` and move its unfinished parts to the others."""
        if not server.live:
            return
        server.live, server.reason = False, reason
        server.close()
        self.stats["servers_lost"] += 1
        moved = [x for x in self._slots if x.server is server and x.assignment is not None]
        log.warning(
            "server %s dropped: %s; parts %s continue elsewhere", server.address, reason, [x.index for x in moved]
        )
        for slot in moved:
            self._assign(slot)
            self.stats["reassigned"] += 1

    def _cancel_all(self, slots: list[Slot]) -> None:
        """Withdraw this pass's unfinished parts (a later pass has its own slots)."""
        for slot in slots:
            if slot.assignment is not None and slot.server is not None and slot.server.sock is not None:
                slot.server.sock.send_multipart(control("cancel", assignment=slot.assignment))
            slot.assignment = None

    # -- resume -------------------------------------------------------------------------
    def state_dict(self) -> State:
        """A small JSON-serialisable snapshot: resume exactly after the last batch yielded."""
        if self._resume is not None:
            return dict(self._resume)  # loaded and not yet iterated: still that position
        mid_epoch = bool(self._slots) and not self._epoch_done
        rank, world = self._rank_world if self._slots else self.rank_and_world()
        return {
            "version": STATE_VERSION,
            "fingerprint": self._fingerprint,
            "epoch": self.epoch + 1 if self._epoch_done else self.epoch,
            "rank": rank,
            "world_size": world,
            "parts": self.parts,
            "next_part": self._next_part if mid_epoch else 0,
            "states": [s.consumed for s in self._slots] if mid_epoch else None,
            "done": [s.ended and not s.queue for s in self._slots] if mid_epoch else None,
        }

    def load_state_dict(self, state: State) -> None:
        """Continue from ``state`` at the next iteration (checked against the servers then)."""
        validate_remote_state(state)
        self.set_epoch(int(state["epoch"]))
        self._iterations = 0
        if state["states"] is not None:
            self.parts = int(state["parts"])
            self._resume = state

    def _check_resume(self, state: State) -> None:
        if state["fingerprint"] != self._fingerprint:
            raise StateError(
                "remote loader state was saved for another dataset or config (state fingerprint "
                f"{state['fingerprint']}, the servers' {self._fingerprint}): resuming would repeat or skip samples"
            )
        if (state["rank"], state["world_size"]) != self.rank_and_world():
            raise StateError(
                f"cannot resume mid-epoch as rank {self.rank_and_world()}: the state was saved by rank "
                f"{state['rank']} of {state['world_size']}"
            )
