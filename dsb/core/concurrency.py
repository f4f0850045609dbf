"""Running work on every core: how many cores there are, and results handed back in order."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

__all__ = [
    "usable_cores",
]


def usable_cores() -> int:
    """The cores this process may use (a CPU-limited container or ``taskset`` gives fewer than the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def in_order(pool, work: Callable, items: Iterable, ahead: int, argument: Callable = lambda item: item):
    """``(item, future of work(argument(item)))`` for each item, in order, with at most ``ahead``
    submitted to ``pool`` and not yet handed out; closing the generator (an error, or a caller that
    stops early) cancels those not started."""
    from collections import deque

    pending: deque = deque()
    try:
        for item in items:
            if len(pending) == ahead:
                yield pending.popleft()
            pending.append((item, pool.submit(work, argument(item))))
        while pending:
            yield pending.popleft()
    finally:
        for _, future in pending:
            future.cancel()
