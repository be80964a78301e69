"""Length-prefixed lists of byte strings in a file: how the kernel benchmarks hand JPEGs to a fresh
child process without pickle. Standard library only, so a child can import it before choosing which
shardpipe checkout it measures."""

from __future__ import annotations


def save_items(items: list[bytes], path: str) -> None:
    with open(path, "wb") as f:
        for data in items:
            f.write(len(data).to_bytes(8, "little") + data)


def load_items(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        blob = f.read()
    items, pos = [], 0
    while pos < len(blob):
        n = int.from_bytes(blob[pos : pos + 8], "little")
        items.append(blob[pos + 8 : pos + 8 + n])
        pos += 8 + n
    return items
