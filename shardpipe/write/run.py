"""What one write job has decided before writing (:class:`WriteRun`) and what it reports (:class:`WriteSummary`)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shardpipe.write.options import WriteOptions
from shardpipe.write.sources import Record, Skip, Source


@dataclass(frozen=True)
class WriteRun:
    """The inputs of one write, in the order they are written, and where they go."""

    source: Source
    records: list[Record]
    scan_skipped: list[Skip]  #: inputs the scan already rejected
    pattern: str  #: shard names, ``out/train-%06d.tar``
    folder: str  #: where the shards, the manifest and the progress file go
    fingerprint: dict[str, Any]  #: options and inputs, compared on resume
    metadata: dict[str, Any]  #: written into the manifest
    options: WriteOptions


@dataclass
class WriteSummary:
    """The outcome of :func:`write_shards`."""

    written: int = 0  #: samples in the shards (including shards kept from a resumed run)
    written_now: int = 0  #: samples written by this call
    presized: int = 0  #: images re-encoded by presize in this call
    marked: int = 0  #: images (not presized) re-encoded losslessly with restart intervals in this call
    skipped: list[Skip] = field(default_factory=list)
    shards: int = 0
    bytes: int = 0
    seconds: float = 0.0
    resumed_shards: int = 0
    manifest: str | None = None
    class_names: list[str] | None = None
    shuffled: bool = False  #: samples were written in a seeded permutation of the input order
    #: what the source's scan says once: how a CSV list was read (``read: ...``), hidden files left out
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.written_now / self.seconds if self.seconds > 0 else 0.0

    def format(self, max_skipped: int = 20, show: Callable[[str], str] = str) -> str:
        """A human-readable report: counts, throughput, and the skipped inputs with reasons; ``show``
        makes each name, reason and note safe where the report goes (the CLI's ``printable``)."""
        lines = [
            f"wrote {self.written} samples into {self.shards} shards ({self.bytes / 2**20:.1f} MiB)"
            + (f", {self.resumed_shards} shards kept from the interrupted run" if self.resumed_shards else ""),
            f"this run: {self.written_now} images ({self.presized} presized, {self.marked} given restart "
            f"intervals, {self.written_now - self.presized - self.marked} copied unchanged) in {self.seconds:.1f} s "
            f"= {self.images_per_s:.0f} images/s",
        ]
        lines += [show(n) for n in self.notes]
        if self.skipped:
            reasons = Counter(re.sub(r":.*", "", s.reason) for s in self.skipped)
            lines.append(f"skipped {len(self.skipped)}: " + ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())))
            lines += [f"  {show(s.name)}: {show(s.reason)}" for s in self.skipped[:max_skipped]]
            if len(self.skipped) > max_skipped:
                lines.append(f"  ... and {len(self.skipped) - max_skipped} more (listed in the manifest)")
        else:
            lines.append("skipped: nothing")
        if self.shuffled:
            lines.append("order: shuffled (seeded; --no-shuffle keeps the input order)")
        if self.manifest:
            lines.append(f"manifest: {self.manifest}")
        return "\n".join(lines)
