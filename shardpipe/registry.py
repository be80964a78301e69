"""Named implementations imported on first use: ``name -> "module:attr"`` plus an install hint.

Every pluggable part (batch decoders, write sources, per-image decoders, write engines)
keeps one :class:`Registry`. Nothing optional is imported until its name is asked for,
an unknown name fails with the choices, and a missing package fails with the command
that installs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Entry:
    """Where one implementation lives and what it needs."""

    target: str  #: ``"module:attr"``
    install: str | None = None  #: what to install when the module's import fails (None: a bug, re-raised)


class Registry:
    """Names of one kind (``"batch decoder"``, ``"engine"``, ...) mapped to lazily imported objects."""

    def __init__(self, kind: str, entries: dict[str, Entry] | None = None, *, also: tuple[str, ...] = ()) -> None:
        """``also``: names the caller resolves to an entry itself (``"auto"``), listed first among the choices."""
        self.kind = kind
        self._entries: dict[str, Entry] = dict(entries or {})
        self.also = also

    def register(self, name: str, target: str, install: str | None = None) -> None:
        """Add (or replace) ``name``."""
        self._entries[name] = Entry(target, install)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a no-op when absent)."""
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Every registered name, installed here or not, in registration order."""
        return list(self._entries)

    def choices(self) -> list[str]:
        """Every name a user may give: ``also``'s, then the registered ones, sorted."""
        return [*self.also, *sorted(self._entries)]

    def entry(self, name: str) -> Entry:
        """The entry of ``name``; a ValueError naming the choices when there is none."""
        entry = self._entries.get(name)
        if entry is None:
            raise ValueError(f"unknown {self.kind} {name!r}: choose one of {self.choices()}")
        return entry

    def load(self, name: str) -> Any:
        """The object registered as ``name``, imported now; an ImportError with the install hint if it cannot be."""
        entry = self.entry(name)
        module, _, attr = entry.target.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as e:
            if entry.install is None:
                raise
            raise ImportError(
                f"{self.kind} {name!r} needs a package that is not installed ({e}): {entry.install}"
            ) from e
