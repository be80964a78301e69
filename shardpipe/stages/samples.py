"""Group tar members into samples, and split samples across consumers."""

from __future__ import annotations

from ..errors import CorruptShardError
from ..sample import Sample, split_name, warn_dotted_extension
from .base import Stage, State
from .untar import BROKEN, Member


class GroupSamples(Stage[Sample]):
    """Join consecutive members with the same key (in the same shard) into one sample.

    Yields ``{"__key__", "__url__", "__shard__", ext: bytes, ...}``. To find where a
    sample ends it must read the first member of the next one; its state is therefore the
    source's state from *before* that member, so a resume starts at the sample boundary.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: Member | None = None
        self._before_pending: State | None = None

    def reset(self, state: State | None = None) -> None:
        super().reset(state)
        self._pending = None
        self._before_pending = None

    def _pull_member(self) -> Member | None:
        """The next member, remembering the source state before it; None at the end."""
        assert self.source is not None
        self._before_pending = self.source.get_state()
        try:
            return self.source.next()
        except StopIteration:
            return None

    def next(self) -> Sample:
        while True:
            member = self._pending or self._pull_member()
            self._pending = None
            if member is None:
                raise StopIteration
            shard, name, data = member
            parts = split_name(name) if name is not BROKEN else None
            if parts is None:
                continue  # metadata, extension-less member, or the end of a broken shard
            key = parts[0]
            sample: Sample = {"__key__": key, "__url__": shard.url, "__shard__": shard.index}
            if shard.pad:
                sample["__pad__"] = True
            duplicate: str | None = None
            while True:
                ext = parts[1]
                if "." in ext:
                    warn_dotted_extension(name, key, ext)
                if ext in sample:
                    duplicate = ext
                sample[ext] = data
                member = self._pull_member()
                while member is not None and member[1] is not BROKEN and (parts := split_name(member[1])) is None:
                    member = self._pull_member()
                if member is None:
                    break
                if member[1] is BROKEN:  # the shard broke inside this sample: drop it
                    duplicate = None
                    sample = {}
                    break
                assert parts is not None
                if parts[0] != key or member[0] is not shard:
                    self._pending = member
                    break
                name, data = member[1], member[2]
            if duplicate is not None:
                self.ctx.errors(
                    CorruptShardError(f"sample {key!r} in shard {shard.url} has two {duplicate!r} members")
                )
                continue
            if not sample:
                continue
            return sample

    def get_state(self) -> State:
        if self._pending is not None:
            return {"source": self._before_pending}
        return super().get_state()


class SplitSamples(Stage[Sample]):
    """Keep every ``count``-th sample: used when there are fewer shards than consumers.

    Every consumer then reads all shards (more I/O) but decodes only its share, so no
    worker sits idle and no sample is seen twice.
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen = 0

    def reset(self, state: State | None = None) -> None:
        super().reset(state)
        self._seen = int(state["seen"]) if state else 0

    def next(self) -> Sample:
        index, count = self.ctx.split_index, self.ctx.split_count
        while True:
            sample = self.pull()
            self._seen += 1
            if (self._seen - 1) % count == index:
                return sample

    def get_state(self) -> State:
        return {"seen": self._seen, **super().get_state()}
