"""A TCP proxy for fault injection between a client and a real server.

Runs its own asyncio loop in a daemon thread on 127.0.0.1. Faults are queued and
counted per response (HTTP clients keep connections alive, so one connection carries
many requests): ``cut(after=N, times=K)`` drops the connection of each of the next K
responses that reach N bytes from the server; ``stall`` pauses them instead. A fault
is used up only when it fires, so small responses (HEAD, listings) do not consume it. ``latency`` (seconds added before each response) and ``throttle``
(bytes/s from server to client) apply to every connection. Counters record how many
connections were made and how many bytes each way went through.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass

from shardpipe.devtools.loopback import LoopbackServer

CHUNK = 64 * 1024


@dataclass
class Fault:
    kind: str  # "cut" or "stall"
    after: int  # bytes from server to client before the fault fires
    remaining: int  # responses still to receive this fault
    seconds: float = 0.0  # stall length
    rst: bool = False  # cut with a TCP reset instead of a clean close


class FaultProxy(LoopbackServer):
    """Forwards 127.0.0.1:``port`` to ``upstream_host:upstream_port`` with injectable faults."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.latency = 0.0
        self.throttle: float | None = None
        self.connections = 0
        self.bytes_down = 0
        self.bytes_up = 0
        self.faults_fired = 0
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        super().__init__("fault-proxy")

    # -- control (called from the test thread) --------------------------------------
    def cut(self, after: int, times: int = 1, *, rst: bool = False) -> None:
        """Drop the connection of each of the next ``times`` responses at byte ``after``."""
        with self._lock:
            self._faults.append(Fault("cut", after, times, rst=rst))

    def stall(self, after: int, seconds: float, times: int = 1) -> None:
        """Stop forwarding for ``seconds`` at byte ``after`` of the next ``times`` responses."""
        with self._lock:
            self._faults.append(Fault("stall", after, times, seconds=seconds))

    def clear(self) -> None:
        """Remove queued faults, latency and throttle; reset the counters."""
        with self._lock:
            self._faults.clear()
        self.latency = 0.0
        self.throttle = None
        self.reset_counters()

    def reset_counters(self) -> None:
        with self._lock:
            self.connections = self.bytes_down = self.bytes_up = self.faults_fired = 0

    def pending_faults(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._faults)

    # -- the proxy itself (runs on the proxy's loop) -----------------------------------
    def _fire(self, sent: int, incoming: int) -> Fault | None:
        """The fault that fires within the next ``incoming`` bytes of a response, if any."""
        with self._lock:
            while self._faults and self._faults[0].remaining <= 0:
                self._faults.popleft()
            if not self._faults or sent + incoming < self._faults[0].after:
                return None
            fault = self._faults[0]
            fault.remaining -= 1
            self.faults_fired += 1
            return fault

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        try:
            ureader, uwriter = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(cwriter)  # upstream down: the client sees a reset connection
            return
        turn = asyncio.Event()  # set when the client sent a request: a new response follows
        up = asyncio.ensure_future(self._pump_up(creader, uwriter, turn))
        down = asyncio.ensure_future(self._pump_down(ureader, cwriter, turn))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the proxy is stopping
        finally:
            for task in (up, down):
                task.cancel()
            for w in (uwriter, cwriter):
                if not w.is_closing():
                    w.close()

    async def _pump_up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, turn: asyncio.Event) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(CHUNK):
                with self._lock:
                    self.bytes_up += len(data)
                turn.set()
                writer.write(data)
                await writer.drain()

    async def _pump_down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, turn: asyncio.Event) -> None:
        sent = 0  # bytes of the current response
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(CHUNK):
                if turn.is_set():  # the first bytes of a new response
                    turn.clear()
                    sent = 0
                    if self.latency:
                        await asyncio.sleep(self.latency)
                fault = self._fire(sent, len(data))
                if fault is not None:
                    head, data = data[: fault.after - sent], data[fault.after - sent :]
                    await self._send(writer, head)
                    sent += len(head)
                    if fault.kind == "cut":
                        if fault.rst:
                            _reset(writer)
                        else:
                            writer.close()
                        return
                    await asyncio.sleep(fault.seconds)
                await self._send(writer, data)
                sent += len(data)

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            self.bytes_down += len(data)
        writer.write(data)
        await writer.drain()
        if self.throttle:
            await asyncio.sleep(len(data) / self.throttle)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed peer or middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
