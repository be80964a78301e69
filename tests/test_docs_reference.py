"""docs/reference.md says what the code does: the option groups' fields, the extras and decoder names."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from shardpipe.cli import COMMANDS
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


CLI_DOC = (ROOT / "docs" / "cli.md").read_text()


@pytest.mark.parametrize("command", ["write", "index", "restart", "inspect", "verify"])
def test_the_cli_doc_names_every_option_of_the_data_commands(command):
    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    named = [a.option_strings for a in parser._actions if a.option_strings and a.dest != "help"]
    undocumented = [o for o in named if not any(re.search(rf"(?<![\w-]){s}(?![\w-])", CLI_DOC) for s in o)]
    assert undocumented == []  # (-o or --output: either will do)


def test_the_cli_doc_gives_the_read_options_fields_and_the_commands_defaults():
    from shardpipe.cli.reading import CLI_READ_OPTIONS
    from shardpipe.io.remote import ReadOptions

    said = " ".join(CLI_DOC.split("`--read-options JSON`")[1].split("\n- ")[0].split())
    fields = [f.name for f in dataclasses.fields(ReadOptions)]
    assert re.findall(r"`(\w+)`", said.split("ReadOptions`")[1].split(")")[0]) == fields
    c = CLI_READ_OPTIONS
    assert f"`timeout` {c.timeout:g} s a request, `retries` {c.retries} ({c.retries + 1} tries)" in said
    assert f"`max_backoff` {c.max_backoff:g} s, `block_size` {c.block_size >> 20} MiB ({c.block_size})" in said
    changed = {f: getattr(c, f) for f in fields if getattr(c, f) != getattr(ReadOptions(), f)}
    assert set(changed) == {"timeout", "retries", "max_backoff", "block_size"}  # each one said above
