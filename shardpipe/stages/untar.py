"""Untar: open each shard and yield its members; resumable at any member boundary."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO

from ..errors import ShardpipeError
from ..io import open_shard
from ..tarstream import TarStream
from .base import Stage, State
from .shards import Shard

Member = tuple[Shard, str, bytes]
#: member name that marks the end of a broken shard (under skip/warn): drop the partial sample
BROKEN = "\0broken"
Opener = Callable[[Shard, int], IO[bytes]]


class Untar(Stage[Member]):
    """Yield ``(shard, name, data)`` for every regular member of every shard, in order.

    ``opener(shard, offset)`` returns a byte stream positioned at ``offset``; the default
    goes through ``shardpipe.io.open_shard``. State: the source's state, the shard being
    read and the byte offset after the last member returned, so ``reset`` reopens the
    shard there (a seek for plain tar; a discard of decompressed bytes for gzip).
    A broken shard goes to the error policy: the error names the shard and offset; under
    skip/warn the rest of that shard is skipped and counted.
    """

    def __init__(self, opener: Opener | None = None):
        super().__init__()
        self.opener = opener or self._default_open
        self._shard: Shard | None = None
        self._tar: TarStream | None = None

    def _default_open(self, shard: Shard, offset: int) -> IO[bytes]:
        return open_shard(shard.url, offset, storage_options=self.ctx.storage_options)

    def reset(self, state: State | None = None) -> None:
        self._close()
        super().reset(state)
        cur = state.get("shard") if state else None
        if cur:
            shard = Shard(cur["url"], int(cur["index"]))
            self._open(shard, int(cur["offset"]), bool(cur["gz"]))

    def _open(self, shard: Shard, offset: int = 0, compressed: bool | None = None) -> None:
        self._shard = shard
        if compressed:  # gzip streams cannot seek: decompress from the start and discard
            self._tar = TarStream(self.opener(shard, 0), shard.url, 0, compressed=True)
            self._tar.skip_to(offset)
        else:
            self._tar = TarStream(self.opener(shard, offset), shard.url, offset, compressed)

    def _close(self) -> None:
        if self._tar is not None:
            self._tar.close()
        self._tar, self._shard = None, None

    def next(self) -> Member:
        while True:
            if self._tar is None:
                shard = self.pull()  # StopIteration ends the epoch
                try:
                    self._open(shard)
                except ShardpipeError as e:
                    self._shard = None
                    self.ctx.errors(e)
                    continue
            assert self._tar is not None and self._shard is not None
            t0 = time.perf_counter()
            read0 = self._tar.read_seconds
            try:
                member = self._tar.next_member()
            except ShardpipeError as e:
                shard = self._shard
                self._close()
                self.ctx.errors(e)
                return shard, BROKEN, b""
            read = self._tar.read_seconds - read0
            self.ctx.add_time("read", read)
            self.ctx.add_time("untar", time.perf_counter() - t0 - read)
            if member is None:
                self._close()
                continue
            return self._shard, member[0], member[1]

    def get_state(self) -> State:
        state = super().get_state()
        if self._tar is not None and self._shard is not None:
            state["shard"] = {
                "url": self._shard.url,
                "index": self._shard.index,
                "offset": self._tar.offset,
                "gz": self._tar.compressed,
            }
        return state

    def __del__(self) -> None:
        try:
            if self._tar is not None:
                self._tar.close()
        except Exception:  # interpreter shutdown
            pass

