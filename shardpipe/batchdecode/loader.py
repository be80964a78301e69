"""``BatchDecodeLoader``: decode the encoded batches of a loader in this process."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from shardpipe.batchdecode.base import BatchDecoder, BatchDict, decode_batch


class BatchDecodeLoader:
    """Wrap an iterable of encoded batches (e.g. a DataLoader over
    ``ShardDataset(decode="encoded", batch_size=B)`` with ``batch_size=None``) and yield them
    decoded by ``batch_decoder``. Batches whose every image was skipped are dropped.

    Each pass tells the decoder its epoch, so random crops and flips differ between epochs
    and repeat for the same epoch: the epoch of the wrapped loader's dataset when it has one
    (a ``ShardLoader`` or DataLoader over a ``ShardDataset``, read once the pass has started,
    after a ``ShardLoader`` moved to its next epoch), else the number of earlier passes.

    ``decode_seconds`` and ``images`` add up the time spent decoding in this process and
    the images that came out (for per-stage tables; with CUDA, until DALI returned).
    """

    def __init__(self, batches: Iterable[BatchDict], batch_decoder: BatchDecoder, image_field: str = "jpg"):
        self.batches, self.batch_decoder, self.image_field = batches, batch_decoder, image_field
        self.decode_seconds = 0.0
        self.images = 0
        self.passes = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (passed on to the wrapped loader if it has ``set_epoch``)."""
        setter = getattr(self.batches, "set_epoch", None)
        if callable(setter):
            setter(epoch)
        self.passes = int(epoch)

    def __iter__(self) -> Iterator[BatchDict]:
        batches = iter(self.batches)  # a ShardLoader moves its dataset to the next epoch here
        epoch = getattr(getattr(self.batches, "dataset", None), "epoch", None)
        self.batch_decoder.set_epoch(self.passes if epoch is None else epoch)
        self.passes += 1
        return self._decode(batches)

    def _decode(self, batches: Iterator[BatchDict]) -> Iterator[BatchDict]:
        for batch in batches:
            start = time.perf_counter()
            out = decode_batch(self.batch_decoder, batch, self.image_field)
            self.decode_seconds += time.perf_counter() - start
            self.images += len(out[self.image_field])
            if len(out[self.image_field]):
                yield out

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]
