"""The benchmark's LMDB store and its loader's dataset: written only for the LMDB row, since ``lmdb``
is no dependency of shardpipe (without it the row is skipped, as a peer whose package is missing)."""

from __future__ import annotations

import io
import os
from typing import Any

from shardpipe.devtools.bench.loaders import PilTrainTransform


def write_lmdb(data: dict[str, Any]) -> None:
    """Write (once; reused when complete) ``data["lmdb"]``: label + JPEG bytes of the i-th generated image
    under key ``i``, the same bytes as the ImageFolder tree's files."""
    import lmdb

    done = data["lmdb"] + ".ready"
    if os.path.exists(done):
        return
    env = lmdb.open(data["lmdb"], map_size=max(1 << 30, 4 * data["n"] * 200_000), subdir=True)
    with env.begin(write=True) as txn:  # one transaction: a killed run leaves nothing half written
        for i, (path, label) in enumerate(data["files"]):
            with open(path, "rb") as f:
                txn.put(f"{i:08d}".encode(), label.to_bytes(2, "little") + f.read())
    env.close()
    open(done, "w").close()


class LmdbDataset:
    """A map dataset over an LMDB store (label + JPEG bytes per key), PIL decode."""

    def __init__(self, path: str, n: int, size: int):
        self.path, self.n, self.transform = path, n, PilTrainTransform(size)
        self._env: Any = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        if self._env is None:  # opened in each worker, after the fork
            import lmdb

            self._env = lmdb.open(self.path, readonly=True, lock=False, readahead=False, meminit=False)
        with self._env.begin() as txn:
            value = txn.get(f"{i:08d}".encode())
        return self.transform(Image.open(io.BytesIO(value[2:]))), int.from_bytes(value[:2], "little")
