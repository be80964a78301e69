"""Untar: open each shard and yield its members; resumable at any member boundary."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import IO, NamedTuple

from shardpipe.errors import CorruptShardError, ShardpipeError, ShardReadError, StateError
from shardpipe.format.sample import split_name
from shardpipe.format.tar.reader import BLOCK, MAX_MEMBER_SIZE, TarStream, skipped_note
from shardpipe.io.deferred import DeferredBytes, SharedFile, unbuffered_local
from shardpipe.io.opener import ShardOpener
from shardpipe.io.verify import VerifyingReader
from shardpipe.stages.base import Stage, State
from shardpipe.stages.shards import Shard
from shardpipe.state import MAX_INT, OPTIONAL, StateCheck


class Member(NamedTuple):
    """One tar member as ``Untar`` yields it."""

    shard: Shard
    name: str
    #: the bytes, or (``Untar(defer_from=...)``) a record of where they are, read by ``Shuffle``
    data: bytes | DeferredBytes
    key: str | None  #: from ``split_name``; None for members outside any sample
    ext: str | None
    #: lets ``Untar.state_before`` rebuild the state from just before this member, so a
    #: consumer can resume at a sample boundary
    mark: tuple


#: member name that marks the end of a broken shard (under skip/warn): drop the partial sample
BROKEN = "\0broken"
Opener = Callable[[Shard, int], IO[bytes]]
#: the fields of the shard being read in an ``Untar`` state: the plan's shard (compared, never
#: opened from here) and the position inside it
SHARD_STATE_KEYS = (
    "url",
    "index",
    "samples",
    "size",
    "sha256",
    "start",
    "stop",
    "pad",
    "offset",
    "gz",
    "ordinal",
    "key",
)
MAX_KEY = 4096
log = logging.getLogger("shardpipe")
#: shard -> the epoch this process last warned of its skipped links or sparse files (once an epoch, as
#: ``shardpipe index`` does once a run, also when the ``resample`` policy reads a shard again)
_WARNED: dict[str, int] = {}


def warn_skipped(url: str, skipped: Mapping[str, int], epoch: int) -> None:
    """Log the links and sparse files stepped over in shard ``url``, once an epoch in this process."""
    if _WARNED.get(url) != epoch:
        _WARNED[url] = epoch
        log.warning("%s", skipped_note(url, skipped))


class Untar(Stage[Member]):
    """Yield a ``Member`` for every regular member of every shard, in order.

    ``opener(shard, offset)`` returns a byte stream positioned at ``offset``; the default,
    a ``shardpipe.io.opener.ShardOpener``, goes through ``shardpipe.io.files.open_shard``
    and opens the next shards ahead (an opener with ``ahead``/``depth`` gets the upcoming
    shards of the plan; one with ``close`` is closed with this stage). When a shard carries a sample range
    (``start``/``stop``), members of samples outside it are stepped over unread (a seek
    on seekable streams) and the shard is closed once the range is done. State: the
    source's state, the shard being read, the byte offset after the last member
    returned and the sample position there, so ``reset`` reopens the shard at that
    point (a seek for plain tar; a discard of decompressed bytes for gzip).
    A broken shard goes to on_error: the error names the shard and offset; under
    skip/warn the rest of that shard is skipped and counted.

    At the end of each shard its sample count is compared with the manifest's (when
    known): a difference is a ``CorruptShardError``. ``verify=True`` also hashes every
    shard with a manifest sha256/size as it streams and compares at its end (a consumer
    reading a range of a shard reads the rest too; a resume rereads from the start).
    ``max_member_size``: see ``TarStream``. ``defer_from``: members of at least this many
    bytes in plain local shards are left in the file as ``DeferredBytes`` (read when a
    later ``Shuffle`` emits their sample; ``shardpipe.io.deferred``); None reads them all.
    Hard links, symbolic links and GNU sparse files are stepped over (only regular files are members),
    counted in ``skipped`` and the context's ``skipped`` (``dataset.stats.skipped()``), and a shard
    holding any is logged once an epoch (``warn_skipped=False``: by a caller that reports them itself).
    """

    state_fields = {"shard": OPTIONAL}

    def __init__(
        self,
        opener: Opener | None = None,
        give_up_after: int | None = None,
        *,
        max_member_size: int | None = MAX_MEMBER_SIZE,
        verify: bool = False,
        defer_from: int | None = None,
        warn_skipped: bool = True,
    ):
        super().__init__()
        self.opener: Opener = opener if opener is not None else ShardOpener()
        self.max_member_size = max_member_size
        self.verify = verify
        self.defer_from = defer_from
        self.warn_skipped = warn_skipped
        self._file: SharedFile | None = None  # the current shard's descriptor for deferred members
        self._verifier: VerifyingReader | None = None
        self._complete = False  # the current shard was read to its end-of-archive block
        # for endless shard lists (resampling): this many unreadable shards in a row end
        # the epoch with an error even under the skip policy, instead of skipping forever
        self.give_up_after = give_up_after
        self._failures = 0
        self._shard: Shard | None = None
        self._tar: TarStream | None = None
        self._ordinal = 0  # samples started in the current shard
        self._key: str | None = None  # key of the sample being read
        self._source_state: State | None = None  # the source's state after it gave this shard
        #: links and sparse files stepped over, by kind (``TarStream.skipped``), over every shard closed
        self.skipped: Counter[str] = Counter()
        # the shard's skipped members before its sample range began (another consumer's); None: not begun
        self._before: Counter[str] | None = None

    def _open_stream(self, shard: Shard, offset: int) -> IO[bytes]:
        """The opener's stream, after telling it which shards come next (for prefetching)."""
        ahead, depth = getattr(self.opener, "ahead", None), getattr(self.opener, "depth", 0)
        if ahead is not None and depth:
            ahead(getattr(self.source, "peek", lambda k: [])(depth))
        return self.opener(shard, offset)

    def reset(self, state: State | None = None) -> None:
        self.close()  # the shard being read and any opened ahead: the plan may differ now
        super().reset(state)
        self._source_state = state.get("source") if state else None
        cur = state.get("shard") if state else None
        if cur:
            # the shard the plan gave here (the state's copy was compared with it by check_state)
            planned = getattr(self.source, "last_given", lambda: None)()
            if planned is None or planned.index != cur["index"]:
                raise StateError(
                    f"resume state names shard {cur.get('index')!r}, which the plan did not give at this point"
                )
            self._open(planned, int(cur["offset"]), bool(cur["gz"]))
            self._ordinal, self._key = int(cur["ordinal"]), cur["key"]

    def check_state(self, state: State, check: StateCheck, below: object) -> object:
        cur = state.get("shard")
        if cur is None:
            return below
        check = check.at("shard")
        check.mapping(cur, SHARD_STATE_KEYS)
        planned: Shard | None = getattr(below, "last", None)
        if planned is None:
            check.fail("names a shard being read, but the plan gave no shard for this consumer at this point")
        for key in ("index", "url", "samples", "size", "sha256", "start", "stop", "pad"):
            check.at(key).equal(cur[key], getattr(planned, key), f"the plan's shard there ({planned.url})")
        gz = check.at("gz").boolean(cur["gz"])
        offset = check.at("offset").integer(cur["offset"])
        if offset % BLOCK:
            check.at("offset").fail(f"must be a multiple of {BLOCK} (a tar block boundary), got {offset}")
        if not gz and planned.size is not None and offset > planned.size:
            check.at("offset").fail(f"must be <= {planned.size} (the shard's size in its manifest), got {offset}")
        last = planned.stop if planned.stop is not None else planned.samples
        check.at("ordinal").integer(cur["ordinal"], 0, MAX_INT if last is None else last, " (samples in the shard)")
        check.at("key").string(cur["key"], none=True, max_len=MAX_KEY)
        return below

    def _open(self, shard: Shard, offset: int = 0, compressed: bool | None = None) -> None:
        # a fresh object per visit: a plan may list one shard twice in a row
        self._shard, self._ordinal, self._key = dataclasses.replace(shard), 0, None
        self._complete = False
        self._before = None if shard.start else Counter()
        verify = self.verify and (shard.sha256 is not None or shard.size is not None)
        # gzip streams cannot seek, and a verified shard is hashed from its first byte:
        # both start at 0 and discard up to the offset
        start = 0 if compressed or verify else offset
        stream = self._open_stream(shard, start)
        self._file = None
        if self.defer_from is not None and not verify and not compressed:
            local = unbuffered_local(stream, shard.url)
            if local is not None:
                stream, self._file = local
        self._verifier = VerifyingReader(stream, shard.url, shard.size, shard.sha256) if verify else None
        self._tar = TarStream(self._verifier or stream, shard.url, start, compressed, self.max_member_size)
        if start != offset:
            self._tar.skip_to(offset)

    def _close(self, ended: bool = False) -> None:
        """Close the shard being read; ``ended``: read to the end of its range (or of the file)."""
        if self._tar is not None:
            skipped = self._tar.skipped - self._before if self._before is not None else Counter()
            if skipped:
                self.skipped.update(skipped)
                self.ctx.skipped.update(skipped)
                if ended and self.warn_skipped:
                    warn_skipped(self._tar.url, skipped, self.ctx.epoch)
            self._tar.close()
        self._tar, self._shard, self._verifier = None, None, None
        self._file = None  # deferred members keep it open until they are read

    def next(self) -> Member:
        while True:
            if self._tar is None:
                shard = self.pull()  # StopIteration ends the epoch
                self._source_state = self.source.get_state() if self.source is not None else None
                self.ctx.where("read", shard.url)
                try:
                    self._open(shard)
                except ShardpipeError as e:
                    self._shard = None
                    self._failed(e)
                    continue
            assert self._tar is not None and self._shard is not None
            t0 = time.perf_counter()
            tar, shard = self._tar, self._shard
            self.ctx.where("untar", shard.url)
            read0 = tar.read_seconds
            try:
                member = self._next_in_range(tar, shard)
            except ShardpipeError as e:
                self._close()
                self._failed(e)
                return Member(shard, BROKEN, b"", None, None, ())
            read = tar.read_seconds - read0
            timers = self.ctx.timers
            timers["read"] = timers.get("read", 0.0) + read
            timers["untar"] = timers.get("untar", 0.0) + time.perf_counter() - t0 - read
            if member is None:
                error = self._end_checks(shard)
                self._close(ended=True)
                if error is not None:  # every sample was returned: count the shard, drop none
                    self._failed(error)
                continue
            self._failures = 0
            return member

    def _failed(self, error: ShardpipeError) -> None:
        """Apply on_error; give up when too many shards in a row failed."""
        self._failures += 1
        if self.give_up_after is not None and self._failures >= self.give_up_after:
            raise ShardReadError(
                f"{self._failures} shards in a row could not be read (the last: {error}); giving up rather "
                "than skipping forever"
            ) from error
        self.ctx.errors(error)

    def _end_checks(self, shard: Shard) -> ShardpipeError | None:
        """Compare what the shard held with its manifest entry: the error, or None."""
        expected = shard.samples
        try:
            if expected is not None and (self._ordinal > expected or (self._complete and self._ordinal != expected)):
                held = self._ordinal if self._complete else f"at least {self._ordinal}"
                raise CorruptShardError(
                    f"shard {shard.url} holds {held} samples but its manifest entry says {expected}"
                )
            if self._verifier is not None:
                self._verifier.finish()
        except ShardpipeError as e:
            return e
        return None

    def _next_in_range(self, tar: TarStream, shard: Shard) -> Member | None:
        """The next member whose sample lies in the shard's range; None when the range is done."""
        while True:
            mark = (self._source_state, tar.offset, self._ordinal, self._key, tar.compressed)
            header = tar.next_header()
            if header is None:
                self._complete = True
                return None
            name = header[0]
            parts = split_name(name)
            key, ext = parts if parts is not None else (None, None)
            if key is not None and key != self._key:
                self._key = key
                self._ordinal += 1
            position = self._ordinal - 1
            if shard.stop is not None and position >= shard.stop:
                return None
            if position < shard.start:
                tar.skip_data()
                continue
            if self._before is None:  # the range begins: links before it are the previous consumer's
                self._before = Counter(tar.skipped)
            return Member(shard, name, self._data(tar, header[1]), key, ext, mark)

    def _data(self, tar: TarStream, size: int) -> bytes | DeferredBytes:
        """The member's bytes, or a record of them when deferring (a member the file cuts short
        fails at the next header, with the error reading it would give: ``TarStream.skip_data``)."""
        file = self._file
        if file is not None and size >= self.defer_from:  # type: ignore[operator]
            at = tar.offset
            tar.skip_data()
            return DeferredBytes(file, at, size)
        return tar.read_data()

    def state_before(self, member: Member) -> State:
        """The state from just before ``member`` (which this stage returned earlier)."""
        source_state, offset, ordinal, key, gz = member.mark
        shard_state = {**member.shard.to_state(), "offset": offset, "gz": gz, "ordinal": ordinal, "key": key}
        return {"source": source_state, "shard": shard_state}

    def get_state(self) -> State:
        state = super().get_state() if self._tar is None else {"source": self._source_state}
        if self._tar is not None and self._shard is not None:
            state["shard"] = {
                **self._shard.to_state(),
                "offset": self._tar.offset,
                "gz": self._tar.compressed,
                "ordinal": self._ordinal,
                "key": self._key,
            }
        return state

    def close(self) -> None:
        """Close the open shard and any shards opened ahead."""
        self._close()
        close = getattr(self.opener, "close", None)
        if close is not None:
            close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
