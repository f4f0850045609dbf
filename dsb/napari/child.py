"""Work that needs TensorFlow, run in a child process so that the viewer's never imports it.

TensorFlow's libraries export the symbols of the LLVM they embed; Mesa's OpenGL
drivers, which draw napari's canvas on Linux, load a system LLVM of their own.
In one process the two collide: drawing segfaults or the process aborts at exit
("free(): invalid pointer"). So the viewer segments with OpenVINO or ONNX
Runtime, and training and ONNX export, which need Keras and TensorFlow, run in a
spawned child process that reports back through a queue.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dsb.core.errors import BadDataError, DsbError, EnvironmentProblem

__all__ = ["child_events", "ChildFailed"]

_ERRORS = {cls.__name__: cls for cls in (DsbError, BadDataError, EnvironmentProblem)}
_POLL_S = 0.2


class ChildFailed(RuntimeError):
    """The child process raised an error that is not a :class:`dsb.core.errors.DsbError`, or died."""


@dataclass(frozen=True)
class _Done:
    value: object


@dataclass(frozen=True)
class _Error:
    kind: str
    message: str
    trace: str


def _child(target: Callable, args: tuple, kwargs: dict, events, cancel) -> None:
    """In the child: run ``target``, passing its reports, its return value or its error to ``events``."""
    try:
        events.put(_Done(target(*args, report=events.put, cancel=cancel, **kwargs)))
    except BaseException as exc:  # every way out is reported, or the parent would wait in vain
        # A subclass (dsb.training.TrainingDiverged, RLEError) goes back as the class of errors.py it is.
        kind = next((c.__name__ for c in type(exc).__mro__ if _ERRORS.get(c.__name__) is c), type(exc).__name__)
        events.put(_Error(kind, str(exc), traceback.format_exc()))


def child_events(target: Callable, *args, cancel: threading.Event | None = None, **kwargs) -> Iterator:
    """Run ``target(*args, report=..., cancel=..., **kwargs)`` in a spawned process; yield its reports, then its result.

    Parameters
    ----------
    target : callable
        A module-level function (the child imports it by name). ``report`` is a
        callable that sends one picklable object back; ``cancel`` an event
        with ``is_set()``, set when ``cancel`` here is.
    cancel : threading.Event, optional
        Polled in this process and passed on to the child.

    Yields
    ------
    object
        Each object the child reported, then what ``target`` returned.

    Raises
    ------
    DsbError
        The child raised one (the same class for the three of :mod:`dsb.core.errors`, the one of
        them it derives from for another).
    ChildFailed
        The child raised another error (its traceback in the message) or died.
    """
    context = multiprocessing.get_context("spawn")
    events, stop = context.Queue(), context.Event()
    process = context.Process(target=_child, args=(target, args, kwargs, events, stop), daemon=True,
                              name="dsb-child")
    process.start()
    try:
        while True:
            if cancel is not None and cancel.is_set():
                stop.set()
            try:
                event = events.get(timeout=_POLL_S)
            except queue.Empty:
                if not process.is_alive():
                    raise ChildFailed(f"the dsb child process ended without a result (exit code {process.exitcode})")
                continue
            if isinstance(event, _Error):
                if event.kind in _ERRORS:
                    raise _ERRORS[event.kind](event.message)
                raise ChildFailed(f"{event.kind}: {event.message}\n{event.trace}")
            yield event.value if isinstance(event, _Done) else event
            if isinstance(event, _Done):
                return
    finally:
        process.join(timeout=30)
        if process.is_alive():
            process.terminate()
