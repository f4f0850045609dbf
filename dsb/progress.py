"""Progress bars with a time estimate, on stderr so that stdout stays parseable."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator

import click

__all__ = ["track"]


def track(iterable: Iterable, *, length: int | None = None, label: str = "", enabled: bool = True) -> Iterator:
    """Iterate over ``iterable``, drawing a bar with an ETA on stderr when ``enabled``."""
    if not enabled:
        yield from iterable
        return
    if length is None:
        with contextlib.suppress(TypeError):
            length = len(iterable)  # type: ignore[arg-type]
    with click.progressbar(
        iterable, length=length, label=label, file=sys.stderr, show_eta=True, show_pos=True
    ) as bar:
        yield from bar
