"""What ``shardpipe restart`` keeps in its output folder to resume safely: the settings record and the lock.

``restart.json`` records the settings that a converted shard's bytes depend on (besides its
input), the names of the shards converted with them and the input each came from. A run writes it (atomically) before
it converts anything, so a run killed before its manifest still left it. A rerun whose settings
differ is refused while any of the recorded shards is in the folder: those shards are kept by
the rerun, so the manifest would claim the new settings for shards made with the old ones.
A folder made by an older version has no record: its ``manifest.json`` (``restart_intervals``)
stands in for it; without either, its shards are kept unchecked, as before. A shard that is
there but came from another input of its name (``a/x.tar`` then ``b/x.tar``) is refused too:
the rerun would keep it as the conversion of this run's input.

A local output folder is locked for the whole run (``outfiles.folder_lock``), so a second
run into it is refused instead of deleting the first one's shards in progress. An object-store
prefix is not locked (docs/reference.md says what two runs into one can do).
"""

from __future__ import annotations

import logging
from typing import Any

from shardpipe.image.decoders import registry
from shardpipe.io.files import join_url
from shardpipe.write.outfiles import read_json, size, write_json
from shardpipe.write.shard_writer import MANIFEST

log = logging.getLogger("shardpipe")

RECORD = "restart.json"
CONVERTED_BY = "shardpipe restart"

#: each setting as a user sets it
_LABELS = {"per_row": "per_row (--per-row)", "max_pixels": "shardpipe.image.decoders.registry.MAX_PIXELS"}


def restart_settings(per_row: int) -> dict[str, Any]:
    """What the bytes of a converted shard depend on, besides its input: the intervals per MCU row,
    and the pixel limit above which an image is copied as it is."""
    return {"per_row": per_row, "max_pixels": registry.MAX_PIXELS}


def _earlier(
    folder: str, storage_options: dict[str, Any] | None
) -> tuple[str, dict[str, Any], list[str], dict[str, str]] | None:
    """``(file read, settings, shard names, input of each)`` of the earlier runs into ``folder``: its
    record, else the manifest of an older version's finished run (inputs unknown); ``None`` when there
    is neither."""
    url = join_url(folder, RECORD)
    record = _read(url, storage_options)
    if record is not None:
        settings, shards, sources = record.get("settings"), record.get("shards"), record.get("sources", {})
        if not isinstance(settings, dict) or not _names(shards) or not _sources(sources):
            raise ValueError(f"{url} is not a record of shardpipe restart (damaged?): remove it, or use another folder")
        return url, settings, shards, sources
    url = join_url(folder, MANIFEST)
    manifest = _read(url, storage_options) or {}
    marks = manifest.get("restart_intervals")
    shards = [e.get("name") for e in manifest.get("shards", []) if isinstance(e, dict)]
    if isinstance(marks, dict) and marks.get("converted_by") == CONVERTED_BY and "per_row" in marks and _names(shards):
        return url, {"per_row": marks["per_row"]}, shards, {}
    return None


def _read(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """A JSON object file, ``None`` when missing; ValueError naming it when it is not one."""
    try:
        value = read_json(url, storage_options)
    except ValueError as e:  # (JSONDecodeError, UnicodeDecodeError)
        raise ValueError(f"{url} is not JSON ({e}): remove it, or use another folder") from None
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{url} is not a JSON object: remove it, or use another folder")
    return value


def _names(value: Any) -> bool:
    """Whether ``value`` is a list of shard file names."""
    return isinstance(value, list) and all(isinstance(n, str) and n and "/" not in n for n in value)


def _sources(value: Any) -> bool:
    """Whether ``value`` maps shard file names to the inputs they were converted from."""
    return isinstance(value, dict) and _names(list(value)) and all(isinstance(v, str) and v for v in value.values())


def record_settings(
    folder: str, settings: dict[str, Any], sources: dict[str, str], storage_options: dict[str, Any] | None
) -> bool:
    """Refuse (``ValueError``) ``settings`` that differ from those of shards an earlier run finished
    in ``folder``, or a shard there converted from another input than ``sources`` (shard file name ->
    input) names; else record them. Returns whether an earlier run's settings were known."""
    earlier = _earlier(folder, storage_options)
    kept: list[str] = []
    inputs: dict[str, str] = {}
    if earlier is not None:
        url, old, old_names, old_sources = earlier
        changed = [k for k in old if old[k] != settings.get(k)]
        if not changed:
            kept, inputs = old_names, old_sources
            _check_sources(folder, url, old_sources, sources, storage_options)
        elif any(size(join_url(folder, n), storage_options) is not None for n in old_names):
            raise ValueError(_refusal(folder, url, old, settings, changed))
    inputs = {**inputs, **sources}
    record = {
        "converted_by": CONVERTED_BY, "settings": settings, "shards": sorted({*kept, *sources}), "sources": inputs,
    }  # fmt: skip
    write_json(join_url(folder, RECORD), record, storage_options)
    return earlier is not None


def _check_sources(
    folder: str, url: str, old: dict[str, str], new: dict[str, str], storage_options: dict[str, Any] | None
) -> None:
    """Refuse a shard in ``folder`` that an earlier run converted from another input than this run's."""
    for name, src in new.items():
        if old.get(name, src) != src and size(join_url(folder, name), storage_options) is not None:
            raise ValueError(
                f"{join_url(folder, name)} was converted from {old[name]} ({url}), not from this run's {src}: "
                "remove it to convert this input into it, or convert into another folder"
            )


def _refusal(folder: str, url: str, old: dict[str, Any], new: dict[str, Any], changed: list[str]) -> str:
    diffs = "; ".join(f"{_LABELS.get(k, k)} was {old[k]} there, {new.get(k)} in this run" for k in changed)
    return (
        f"{folder} holds shards converted with other settings ({url}): {diffs}. Rerun with the same "
        "settings to finish or extend them, or convert into a new or empty folder"
    )
