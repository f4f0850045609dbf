"""Progress bars with a time estimate, on stderr so that stdout stays parseable."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator

import click

__all__ = ["track", "say"]


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def track(iterable: Iterable, *, length: int | None = None, label: str = "", enabled: bool = True) -> Iterator:
    """Iterate over ``iterable``, drawing a bar with an ETA on stderr when ``enabled``.

    Nothing is drawn when stderr is not a terminal: there click would print the
    bare label, a stray line in logs that would come before a one-line error.
    """
    if not enabled or not _stderr_is_terminal():
        yield from iterable
        return
    if length is None:
        with contextlib.suppress(TypeError):
            length = len(iterable)  # type: ignore[arg-type]
    with click.progressbar(
        iterable, length=length, label=label, file=sys.stderr, show_eta=True, show_pos=True
    ) as bar:
        yield from bar


def say(line: str) -> None:
    """One progress line on stderr (training's per-epoch lines): this module and the CLI are the
    only places that write to the terminal."""
    print(line, file=sys.stderr, flush=True)
