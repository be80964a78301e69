"""ShardDataset fuses decode with exactly the transforms image/fused.py fuses (CenterCrop included)."""

from __future__ import annotations

import numpy as np
import pytest

from shardpipe import ShardDataset
from shardpipe.augment import CenterCrop, Compose, RandomHorizontalFlip, RandomResizedCrop, Resize
from shardpipe.image.fused import fusable
from shardpipe.stages.decode import Decode
from tests.helpers import make_samples, write_manifest_dataset


@pytest.mark.parametrize(
    "transform, fused",
    [
        (CenterCrop(16), True),
        (Compose([CenterCrop(16), RandomHorizontalFlip()]), True),
        (RandomResizedCrop(16), True),
        (Compose([Resize(20), CenterCrop(16)]), True),
        (RandomHorizontalFlip(), False),
        (lambda img: img[:16, :16], False),
        (None, False),
    ],
)
def test_the_dataset_fuses_what_build_image_fn_fuses(tmp_path, transform, fused):
    assert fusable(transform) is fused
    manifest = write_manifest_dataset(tmp_path, make_samples(4), [4])
    ds = ShardDataset(manifest, transform=transform)
    (decode,) = [s for s in ds.build_pipeline().stages if isinstance(s, Decode)]
    assert decode.sample_decoder._fuse is fused
    images = [s["jpg"] for s in ds]
    assert len(images) == 4 and all(isinstance(img, np.ndarray) and img.dtype == np.uint8 for img in images)
    if fused:  # every fused transform here ends in a 16 x 16 image
        assert {img.shape for img in images} == {(16, 16, 3)}
