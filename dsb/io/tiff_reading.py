"""Reading a TIFF with tifffile so that its damage is one clear error: :func:`tiff_reading`, for every
reader of :mod:`dsb.io` (images, pixel sizes, channel names, blocks)."""

from __future__ import annotations

import contextlib
import logging
import threading

from dsb.core.errors import BadDataError

__all__ = ["tiff_reading"]


@contextlib.contextmanager
def tiff_reading(path):
    """Around a read with tifffile: the damage it logs and reads past (a truncated file's missing
    pages, at its ERROR level) becomes a :class:`BadDataError` naming ``path``, instead of lines on
    stderr and fewer frames; its other complaints (odd vendor metadata) are dropped. Only this
    thread's records are taken, so reads on other threads are untouched."""
    records: list[logging.LogRecord] = []
    thread = threading.get_ident()

    class _Catch(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.thread != thread:
                return True
            records.append(record)
            return False

    catch = _Catch()
    logger = logging.getLogger("tifffile")
    logger.addFilter(catch)
    try:
        yield
    finally:
        logger.removeFilter(catch)
    damage = [r for r in records if r.levelno >= logging.ERROR]
    if damage:
        said = damage[0].getMessage().split("> ", 1)[-1]
        raise BadDataError(f"corrupt or truncated TIFF ({said})", path=path)


@contextlib.contextmanager
def open_tiff(path):
    """A ``tifffile.TiffFile`` of ``path`` inside :func:`tiff_reading`; whatever fails while it is open
    (tifffile raises many types for a damaged file) is one :class:`BadDataError` naming the file."""
    import tifffile

    try:
        with tiff_reading(path), tifffile.TiffFile(path) as tif:
            yield tif
    except BadDataError:
        raise
    except Exception as exc:
        raise BadDataError(f"corrupt or unreadable TIFF ({type(exc).__name__}: {exc})", path=path) from None
