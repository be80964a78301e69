"""Write shards to S3 (or any S3-compatible store) and stream them back, with a local cache.

    export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...    # as for any S3 client
    export S3_ENDPOINT_URL=http://127.0.0.1:8333               # only for MinIO, SeaweedFS, R2, ...
    python examples/read_s3.py s3://bucket/train --from-folder images   # pack images/ (an ImageFolder) to S3
    python examples/read_s3.py s3://bucket/train                        # stream what is there

(pip install "shardpipe[s3]")
"""

import argparse
import os
import tempfile

import shardpipe
from shardpipe.augment import RandomResizedCrop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("prefix", help="s3://bucket/folder holding the shards and manifest.json")
    parser.add_argument("--from-folder", help="first write this ImageFolder's images there")
    args = parser.parse_args()

    storage_options = {}  # passed to s3fs; credentials come from the usual AWS variables or files
    if os.environ.get("S3_ENDPOINT_URL"):
        storage_options = {"endpoint_url": os.environ["S3_ENDPOINT_URL"], "client_kwargs": {"region_name": "us-east-1"}}
    if args.from_folder:
        summary = shardpipe.write_shards(
            args.from_folder, f"{args.prefix}/train-%06d.tar", maxcount=50, storage_options=storage_options
        )
        print(summary.format())

    dataset = shardpipe.ShardDataset(
        f"{args.prefix}/manifest.json",
        storage_options=storage_options,
        cache_dir=os.path.join(tempfile.gettempdir(), "shardpipe-cache"),  # the second epoch reads from disk
        shuffle=100,
        transform=RandomResizedCrop(64),
        batch_size=16,
    )
    loader = shardpipe.ShardLoader(dataset, num_workers=2)
    for epoch in range(2):
        images = sum(len(batch["cls"]) for batch in loader)
        print(f"epoch {epoch}: {images} images from {args.prefix}")


if __name__ == "__main__":
    main()
