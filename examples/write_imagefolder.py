"""Write shards from an ImageFolder tree (root/<class>/<image>.jpg), with a manifest.

    python examples/write_imagefolder.py IMAGEFOLDER data            # your images
    python examples/write_imagefolder.py --demo 200 images data      # first make 200 photo-like JPEGs in images/

Then train from data/manifest.json with any of the other examples.
"""

import argparse

import shardpipe
from shardpipe.devtools.synth import write_image_folder

parser = argparse.ArgumentParser()
parser.add_argument("imagefolder")
parser.add_argument("out", help="folder for the shards and manifest.json")
parser.add_argument("--demo", type=int, metavar="N", help="first generate N synthetic images into IMAGEFOLDER")
parser.add_argument("--maxcount", type=int, default=50, help="images per shard")
parser.add_argument("--classes", type=int, default=10, help="classes of the --demo images (default 10)")
args = parser.parse_args()

if args.demo:
    write_image_folder(args.imagefolder, args.demo, num_classes=args.classes)
# classes are shuffled across shards (seeded), so a streaming shuffle sees every class mixed
summary = shardpipe.write_shards(args.imagefolder, f"{args.out}/train-%06d.tar", maxcount=args.maxcount, seed=0)
print(summary.format())
