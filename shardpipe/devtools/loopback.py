"""A TCP server on 127.0.0.1 whose asyncio loop runs in a background thread: the shared lifecycle of
the benchmark's throttling proxy and the tests' fault proxy (start, endpoint, stop)."""

from __future__ import annotations

import asyncio
import threading
from typing import Self


class LoopbackServer:
    """Serve ``_handle(reader, writer)`` on a free 127.0.0.1 port from a daemon thread's event loop."""

    def __init__(self, name: str = "loopback-server") -> None:
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=name)
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Close the listener, cancel every connection's task and end the loop's thread."""

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
