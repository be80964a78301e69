"""Check that samples carry the fields a training loop needs."""

from __future__ import annotations

from collections.abc import Sequence

from shardpipe.errors import MissingFieldError
from shardpipe.format.sample import Sample
from shardpipe.stages.base import Stage


class RequireFields(Stage[Sample]):
    """Pass samples that have every required field; the rest go to on_error.

    Each entry may list alternatives separated by ``;`` (``"jpg;jpeg;png"``): the first
    present one is renamed to the first name, so downstream code sees one field name.
    """

    def __init__(self, fields: Sequence[str]):
        super().__init__()
        self.fields = [f.split(";") for f in fields]

    def next(self) -> Sample:
        while True:
            sample = self.pull()
            missing = None
            for names in self.fields:
                found = next((n for n in names if n in sample), None)
                if found is None:
                    missing = names
                    break
                if found != names[0]:
                    sample[names[0]] = sample.pop(found)
            if missing is None:
                return sample
            self.ctx.errors(
                MissingFieldError(
                    f"sample {sample['__key__']!r} in shard {sample['__url__']} has no "
                    f"{' or '.join(repr(n) for n in missing)} field (it has: "
                    f"{', '.join(k for k in sample if not k.startswith('__'))})"
                )
            )
