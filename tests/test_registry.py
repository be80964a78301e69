"""The one registry helper: lazy import, choices on an unknown name, the install hint on a missing package."""

from __future__ import annotations

import sys

import pytest

from shardpipe.batchdecode.registry import BATCH_DECODERS
from shardpipe.image.decoders.registry import DECODERS
from shardpipe.registry import Entry, Registry
from shardpipe.write.engines import ENGINES, MAP_ENGINES
from shardpipe.write.sources import SOURCES


def test_every_pluggable_part_uses_the_one_helper():
    for registry in (BATCH_DECODERS, DECODERS, ENGINES, MAP_ENGINES, SOURCES):
        assert isinstance(registry, Registry)
        for name in registry:
            module, _, attr = registry.entry(name).target.partition(":")
            assert module.startswith("shardpipe.") and attr, (registry.kind, name)


def test_load_imports_only_when_asked():
    reg = Registry("widget", {"json": Entry("json:dumps"), "tar": Entry("tarfile:TarFile")})
    sys.modules.pop("tarfile", None)
    assert reg.load("json")([1]) == "[1]"
    assert "tarfile" not in sys.modules
    import tarfile

    assert reg.load("tar") is tarfile.TarFile
    assert reg.names() == ["json", "tar"] and "tar" in reg and len(reg) == 2


def test_unknown_name_lists_the_choices():
    reg = Registry("widget", {"b": Entry("json:dumps"), "a": Entry("json:loads")})
    with pytest.raises(ValueError, match=r"^unknown widget 'c': choose one of \['a', 'b'\]$"):
        reg.load("c")


def test_the_choices_name_auto_where_the_caller_resolves_it():
    """An unknown decoder or batch decoder listed the registered names without ``auto``, which
    ``get_decoder`` and ``resolve_batch_decoder`` accept (and default to)."""
    from shardpipe import resolve_batch_decoder
    from shardpipe.image.decoders import get_decoder

    with pytest.raises(ValueError, match=r"^unknown decoder 'nope': choose one of \['auto', 'cv2', .*'pil', "):
        get_decoder("nope")
    with pytest.raises(ValueError, match=r"^unknown batch decoder 'x': choose one of \['auto', 'cpu', 'dali', "):
        resolve_batch_decoder("x")
    reg = Registry("widget", {"b": Entry("json:dumps")}, also=("auto",))
    assert reg.choices() == ["auto", "b"] and "auto" not in reg  # listed, not registered


def test_missing_package_names_what_to_install():
    reg = Registry("widget", {"gone": Entry("shardpipe_no_such_module:X", "pip install shardpipe[gone]")})
    with pytest.raises(
        ImportError,
        match=r"^widget 'gone' needs a package that is not installed \(.*\): pip install shardpipe\[gone\]$",
    ):
        reg.load("gone")


def test_missing_module_without_a_hint_is_a_bug_and_raised_as_is():
    reg = Registry("widget", {"gone": Entry("shardpipe_no_such_module:X")})
    with pytest.raises(ModuleNotFoundError, match="shardpipe_no_such_module"):
        reg.load("gone")
    reg.register("later", "json:dumps")
    assert reg.load("later") is __import__("json").dumps
    reg.unregister("later")
    assert "later" not in reg
