"""argparse types shared by the commands (``shardpipe.cli``) and the benchmark tools (``shardpipe.devtools``),
which the commands import: here, below both, neither imports the other's way back."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum``, else a usage error naming the bound (exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, not {value}")
        return value

    return parse
