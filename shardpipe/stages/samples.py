"""Group tar members into samples, and split samples across consumers."""

from __future__ import annotations

from shardpipe.errors import DuplicateMemberError
from shardpipe.format.sample import Sample, warn_dotted_extension
from shardpipe.stages.base import Stage, State
from shardpipe.stages.untar import BROKEN, Member
from shardpipe.state import COUNT


class GroupSamples(Stage[Sample]):
    """Join consecutive members with the same key (in the same shard) into one sample.

    Yields ``{"__key__", "__url__", "__shard__", ext: bytes, ...}``. To find where a
    sample ends it must read the first member of the next one; its state is therefore the
    source's state from *before* that member (``Untar.state_before``), so a resume starts
    at the sample boundary. A sample cut short by a broken shard is dropped whole.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: Member | None = None
        self._before_pending: State | None = None  # for sources without state_before()

    def reset(self, state: State | None = None) -> None:
        super().reset(state)
        self._pending = None
        self._before_pending = None

    def _pull(self) -> Member | None:
        """The next member, or None at the end of the epoch."""
        assert self.source is not None
        if not hasattr(self.source, "state_before"):
            self._before_pending = self.source.get_state()
        try:
            return self.source.next()
        except StopIteration:
            return None

    def next(self) -> Sample:
        while True:
            member = self._pending or self._pull()
            self._pending = None
            if member is None:
                raise StopIteration
            shard, name, data, key, ext, _ = member
            if key is None:
                continue  # metadata, extension-less member, or the end of a broken shard
            sample: Sample = {"__key__": key, "__url__": shard.url, "__shard__": shard.index}
            if shard.pad:
                sample["__pad__"] = True
            duplicate: str | None = None
            broken = False
            while True:
                if "." in ext:  # type: ignore[operator]
                    warn_dotted_extension(name, key, ext)  # type: ignore[arg-type]
                if ext in sample and duplicate is None:
                    duplicate = ext
                sample[ext] = data  # type: ignore[index]
                member = self._pull()
                while member is not None and member.key is None and member.name is not BROKEN:
                    member = self._pull()
                if member is None:
                    break
                if member.name is BROKEN:
                    broken = True
                    break
                if member.key != key or member.shard is not shard:
                    self._pending = member
                    break
                name, data, ext = member.name, member.data, member.ext
            if broken:
                continue
            if duplicate is not None:
                self.ctx.errors(
                    DuplicateMemberError(f"sample {key!r} in shard {shard.url} has two {duplicate!r} members")
                )
                continue
            return sample

    def get_state(self) -> State:
        if self._pending is None:
            return super().get_state()
        state_before = getattr(self.source, "state_before", None)
        return {"source": state_before(self._pending) if state_before else self._before_pending}


class SplitSamples(Stage[Sample]):
    """Keep every ``count``-th sample: used when there are fewer shards than consumers.

    Every consumer then reads all shards (more I/O) but decodes only its share, so no
    worker sits idle and no sample is seen twice.
    """

    state_fields = {"seen": COUNT}

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
