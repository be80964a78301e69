"""docs/reference.md says what the code does: the option groups' fields, the extras and decoder names."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from shardpipe.image.decoders import registry
from shardpipe.options import GROUPS

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = (ROOT / "docs" / "reference.md").read_text()


def test_the_option_groups_list_every_field_in_order():
    section = REFERENCE.split("## ShardDataset options")[1].split("\n## ")[0]
    listed = dict(re.findall(r"`(\w+Options)` \(([^)]*)\)", " ".join(section.split())))
    for group in GROUPS:
        fields = [f.name for f in dataclasses.fields(group)]
        assert [w.strip() for w in listed[group.__name__].split(",")] == fields, group.__name__


def test_the_decoder_extras_are_the_ones_pyproject_defines():
    pyproject = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+; shardpipe supports 3.10
    table = pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = dict(re.findall(r"^(\w+) = \[(.*)\]$", table, re.M))
    section = " ".join(REFERENCE.split("## Decoding and augmentation on the CPU")[1].split("\n## ")[0].split())
    assert re.findall(r"`pip install 'shardpipe\[(\w+)\]'`", section) == ["turbo", "turbojpeg", "jpeg4py"]
    # what the text says each installs
    assert "simplejpeg" in extras["turbo"] and "opencv" in extras["turbo"] and "PyTurboJPEG" in extras["turbojpeg"]
    assert "jpeg4py" in extras["jpeg4py"]
    # every quoted decoder name there is one the registry knows
    quoted = set(re.findall(r'\(`"(\w+)"`', section))
    assert quoted == {"simplejpeg", "turbo", "jpeg4py", "cv2", "pil"}
    assert quoted <= set(registry.decoder_names())
