"""Inputs for ``shardpipe write``: flat folders, ImageFolder trees, CSV/JSONL lists, LMDB stores.

``base`` holds the record types and the key rules; each source type lives in its own
module (``folder``, ``imagefolder``, ``lists``, ``lmdb``) and ``registry`` maps type names
to them, importing a source only when it is used.
"""

from shardpipe.write.sources.base import (
    Loaded,
    Record,
    RecordsSource,
    Scan,
    Skip,
    Source,
    ValueDecoder,
    checked_records,
    make_key,
    printable,
    strip_suffix,
    unique_keys,
)
from shardpipe.write.sources.registry import SOURCE_TYPES, SOURCES, detect_type, open_source

__all__ = [
    "SOURCES",
    "SOURCE_TYPES",
    "Loaded",
    "Record",
    "RecordsSource",
    "Scan",
    "Skip",
    "Source",
    "ValueDecoder",
    "checked_records",
    "detect_type",
    "make_key",
    "open_source",
    "printable",
    "strip_suffix",
    "unique_keys",
]
