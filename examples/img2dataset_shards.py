"""Train from img2dataset output: index its shards once, then stream image + caption + metadata.

img2dataset (--output_format webdataset) writes out/00000.tar, 00001.tar, ..., each holding
000000000.jpg, 000000000.txt (caption) and 000000000.json (url, size, ...) per image: the
layout shardpipe reads. Indexing writes out/manifest.json (sample counts: equal shares per rank,
exact resume, random access).

    python examples/img2dataset_shards.py path/to/img2dataset/out
"""

import argparse
from pathlib import Path

import shardpipe
from shardpipe.augment import RandomResizedCrop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", help="img2dataset's output folder (NNNNN.tar shards)")
    args = parser.parse_args()

    folder = Path(args.folder)
    shards = sorted(str(p) for p in folder.glob("[0-9]*.tar"))
    manifest = shardpipe.index_shards(shards, str(folder / "manifest.json"), workers=4)
    print(f"indexed {manifest['samples']} samples in {len(shards)} shards")

    dataset = shardpipe.ShardDataset(
        str(folder / "manifest.json"),
        shuffle=1000,
        seed=0,
        transform=RandomResizedCrop(64),
        batch_size=8,
        require=["jpg", "txt"],
    )
    for batch in shardpipe.ShardLoader(dataset, num_workers=2):
        images, captions = batch["jpg"], batch["txt"]  # uint8 NCHW tensor, list of strings
        print(f"{tuple(images.shape)} images; first caption: {captions[0]!r}; source: {batch['json'][0]['url']}")


if __name__ == "__main__":
    main()
