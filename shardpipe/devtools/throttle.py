"""A TCP proxy that makes a local server look like object storage seen from a cloud VM.

Every response waits ``latency`` seconds before its first byte (kept-alive connections
included: a new request on a connection is a new response), each connection is paced
to ``per_conn`` bytes/s and all of them together to ``total`` bytes/s (one shared link,
served in order). It counts requests, connections and bytes. Used by
``tools/bench_cloud.py``; runs its own asyncio loop in a daemon thread on 127.0.0.1.

    proxy = ThrottleProxy(upstream_port, latency=0.04, per_conn=25 << 20, total=200 << 20).start()
    ... point the client at proxy.endpoint ...
    proxy.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from shardpipe.devtools.loopback import LoopbackServer

CHUNK = 64 * 1024


class ThrottleProxy(LoopbackServer):
    """Forwards 127.0.0.1:``port`` to ``upstream_host:upstream_port`` with latency and bandwidth caps."""

    def __init__(
        self,
        upstream_port: int,
        *,
        latency: float = 0.0,
        per_conn: float | None = None,
        total: float | None = None,
        upstream_host: str = "127.0.0.1",
    ):
        self.upstream = (upstream_host, upstream_port)
        self.latency, self.per_conn, self.total = latency, per_conn, total
        self.requests = 0
        self.connections = 0
        self.open_connections = 0
        self.max_open_connections = 0
        self.bytes_down = 0
        #: time.monotonic() when the bytes forwarded passed ``warmup`` (small metadata reads before the data
        #: flows are left out) and of the last byte; ``link_rate`` counts between them
        self.warmup = 1 << 20
        self.first_byte_at = self.last_byte_at = 0.0
        self._bytes_at_first = 0
        self._link_free_at = 0.0  # when the shared link has sent everything queued so far
        super().__init__("throttle-proxy")

    def reset_counters(self) -> None:
        self.requests = self.connections = self.max_open_connections = self.bytes_down = 0
        self.first_byte_at = self.last_byte_at = 0.0
        self._bytes_at_first = 0

    def link_rate(self) -> float:
        """Bytes/s forwarded once the data flows (past ``warmup`` bytes) until the last byte."""
        span = self.last_byte_at - self.first_byte_at
        return (self.bytes_down - self._bytes_at_first) / span if span > 0 else 0.0

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        self.max_open_connections = max(self.max_open_connections, self.open_connections)
        try:
            ureader, uwriter = await asyncio.open_connection(*self.upstream)
        except OSError:
            cwriter.close()
            self.open_connections -= 1
            return
        turn = asyncio.Event()  # set when the client sent a request: the next bytes start a response
        tasks = {
            asyncio.ensure_future(self._pump_up(creader, uwriter, turn)),
            asyncio.ensure_future(self._pump_down(ureader, cwriter, turn)),
        }
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            self.open_connections -= 1
            for task in tasks:
                task.cancel()
            for w in (uwriter, cwriter):
                if not w.is_closing():
                    w.close()

    async def _pump_up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, turn: asyncio.Event) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(CHUNK):
                if not turn.is_set():
                    self.requests += 1
                turn.set()
                writer.write(data)
                await writer.drain()

    async def _pump_down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, turn: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        conn_free_at = 0.0  # when this connection has sent everything so far at its own pace
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(CHUNK):
                if turn.is_set():  # the first bytes of a response
                    turn.clear()
                    if self.latency:
                        await asyncio.sleep(self.latency)
                now = loop.time()
                due = now
                if self.per_conn:
                    conn_free_at = max(conn_free_at, now) + len(data) / self.per_conn
                    due = max(due, conn_free_at)
                if self.total:
                    self._link_free_at = max(self._link_free_at, now) + len(data) / self.total
                    due = max(due, self._link_free_at)
                if due > now:
                    await asyncio.sleep(due - now)
                self.bytes_down += len(data)
                self.last_byte_at = time.monotonic()
                if not self.first_byte_at and self.bytes_down >= self.warmup:
                    self.first_byte_at, self._bytes_at_first = self.last_byte_at, self.bytes_down
                writer.write(data)
                await writer.drain()
