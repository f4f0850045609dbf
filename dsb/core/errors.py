"""Errors a user can act on, and the exit status each one maps to.

Every command turns a :class:`DsbError` into one line on stderr and its
``exit_code``; anything else is a bug and gets a traceback only with ``--debug``.

=====  ============================================================
code   meaning
=====  ============================================================
0      success
1      unexpected internal error (a bug: please report it)
2      usage error: a bad option or argument (click's own code)
3      bad data: an image, mask, CSV, config or run folder is wrong, or training diverged
4      environment: no credentials, an unwritable path, a full disk, a missing engine or extra
130    interrupted with Ctrl-C
=====  ============================================================
"""

from __future__ import annotations

EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_BAD_DATA = 3
EXIT_ENVIRONMENT = 4
EXIT_INTERRUPTED = 130


class DsbError(Exception):
    """A problem with the user's input, reported as one line.

    Parameters
    ----------
    message : str
        What is wrong and, where it helps, what was expected.
    path : str or os.PathLike, optional
        The file or folder the problem is in; it starts the line.
    where : str, optional
        The row, key or item inside ``path`` ("row 12", "key 'epochs'").
    """

    exit_code = EXIT_BAD_DATA

    def __init__(self, message: str, *, path=None, where: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.where = where
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.path, self.where) if p]
        prefix = ": ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class BadDataError(DsbError):
    """An image, mask, CSV, config or run folder does not hold what it should."""

    exit_code = EXIT_BAD_DATA


class EnvironmentProblem(DsbError):
    """Something outside the data is missing: credentials, a writable folder, disk space."""

    exit_code = EXIT_ENVIRONMENT
