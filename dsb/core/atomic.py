"""Write files and folders so that an interruption never leaves one that looks complete.

Everything is written under a temporary name in the destination's own folder
(same file system, so the final :func:`os.replace` is atomic) and renamed into
place only once it is whole. The previous good version stays until then.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

from dsb.core.errors import EnvironmentProblem

__all__ = ["atomic_path", "atomic_paths", "atomic_dir", "write_text", "os_error", "scratch_dir", "writable_dir",
           "removed_if_left_empty"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_error(exc: OSError, path, *, doing: str | None = None) -> EnvironmentProblem:
    """Turn an OSError on ``path`` into a one-line :class:`EnvironmentProblem`.

    ``doing`` says what failed (``"cannot write a file in this folder"``), the system's reason
    follows in brackets. A file standing where a folder is needed is named itself.
    """
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        blocking = next((p for p in (Path(path), *Path(path).parents) if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            return EnvironmentProblem("is a file, where a folder is needed", path=blocking)
    if exc.errno == errno.ENOSPC:
        what = "no space left on device"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "permission denied" if doing else "not writable (permission denied)"
    else:
        what = exc.strerror or str(exc)
    return EnvironmentProblem(f"{doing} ({what})" if doing else what, path=path)


@contextlib.contextmanager
def atomic_path(path, *, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The temporary file is removed if the block raises, so ``path`` either keeps
    its previous content or gets the complete new one. A symbolic link keeps
    pointing where it did, its target replaced; a special file (``/dev/null``,
    a named pipe) gets the complete file written into it instead of being replaced.

    Parameters
    ----------
    path : str or os.PathLike
        The final destination.
    suffix : str, optional
        Suffix of the temporary name (defaults to that of ``path``), for writers
        that pick a format from the file name.
    """
    path, special = _destination(Path(path))
    with _temporary(path, suffix, elsewhere=special) as tmp:
        try:
            yield tmp
            if special:
                _copy_into(tmp, path)
            else:
                os.replace(tmp, path)
        except OSError as exc:
            raise os_error(exc, path) from exc


def _destination(path: Path) -> tuple[Path, bool]:
    """Where a write to ``path`` lands: a symbolic link's target (the link stays a link), else ``path``; and
    whether that is a special file (``/dev/null``, a named pipe) to write into, which a rename would replace
    with a regular file."""
    try:
        mode = os.stat(path).st_mode  # through links: /dev/stdout is a link to a pipe with no path of its own
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        return path, True
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    return path, False


def _copy_into(tmp: Path, path: Path) -> None:
    """The whole file ``tmp`` written into the special file ``path``."""
    with open(tmp, "rb") as source, open(path, "wb") as target:
        shutil.copyfileobj(source, target)


@contextlib.contextmanager
def atomic_paths(*paths):
    """Yield one temporary path per destination; rename them all into place, in order, on success.

    For files that only make sense together (a run's ``config.json`` and the
    ``tuning.csv`` it was tuned from): if one rename fails, the files already
    renamed get their previous content back (or are removed if they were new),
    so either every destination is new or every one is as it was.
    """
    destinations = [_destination(Path(p)) for p in paths]
    paths = [path for path, _ in destinations]
    special = {path for path, is_special in destinations if is_special}  # written into, as atomic_path does
    with contextlib.ExitStack() as stack:
        temps = [stack.enter_context(_temporary(path, elsewhere=path in special)) for path in paths]
        try:
            yield temps
        except OSError as exc:
            raise os_error(exc, paths[0].parent) from exc
        # Every previous version is kept aside before the first rename, so a failed one can be undone.
        backups = {}
        for path in paths:
            if path.exists() and path not in special:
                backups[path] = stack.enter_context(_temporary(path))
                try:
                    shutil.copy2(path, backups[path])
                except OSError as exc:
                    raise os_error(exc, path.parent) from exc
        for done, (path, tmp) in enumerate(zip(paths, temps)):
            try:
                if path in special:
                    _copy_into(tmp, path)
                else:
                    os.replace(tmp, path)
            except OSError as exc:
                for earlier in (p for p in paths[:done] if p not in special):  # what went into a pipe is gone
                    with contextlib.suppress(OSError):
                        if earlier in backups:
                            os.replace(backups[earlier], earlier)
                        else:
                            earlier.unlink()
                raise os_error(exc, path) from exc


@contextlib.contextmanager
def _temporary(path: Path, suffix: str | None = None, *, elsewhere: bool = False):
    """A new empty file next to ``path`` (``elsewhere``: in the system's temporary folder, for a special file)
    with an ordinary file's mode, removed afterwards if still there."""
    suffix = path.suffix if suffix is None else suffix
    try:
        if not elsewhere:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}",
                                   dir=None if elsewhere else path.parent)
        # mkstemp makes the file 0600; give it the mode an ordinary open() would.
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
    except OSError as exc:
        raise os_error(exc, path.parent, doing=f"cannot write {path.name} in this folder") from exc
    tmp = Path(tmp)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary folder next to ``path``; swap it in for ``path`` on success.

    An existing ``path`` is replaced only after the new folder is complete.
    """
    path = _destination(Path(path))[0]  # a link to a folder: the folder it links to is replaced
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700
    except OSError as exc:
        raise os_error(exc, path.parent) from exc
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:
                os.replace(old, path)  # the previous good folder goes back in place
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise os_error(exc, path) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(folder, prefix: str):
    """A hidden scratch folder made in ``folder`` (so that renames from it stay on one file system,
    and workers that share ``folder`` see it), removed with what it holds when the block ends.

    Raises
    ------
    EnvironmentProblem
        When the folder cannot be made (:func:`os_error`).
    """
    folder = Path(folder)
    try:
        scratch = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=folder))
    except OSError as exc:
        raise os_error(exc, folder) from exc
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def writable_dir(folder) -> Path:
    """Make ``folder`` (and its parents) and check it can be written.

    Commands call this before long work, so that an unwritable destination
    fails at once instead of after predicting.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, folder, doing="cannot make this folder") from exc
    if not os.access(folder, os.W_OK):
        raise EnvironmentProblem("not writable (permission denied)", path=folder)
    return folder


@contextlib.contextmanager
def removed_if_left_empty(folder):
    """Remove ``folder``, and the parents made with it, when the block fails and leaves them empty.

    A command that makes its output folder before long work (:func:`writable_dir`) and then stops
    at a bad input leaves no empty folder behind; a folder that was there before is left alone.
    """
    folder = Path(folder)
    made = []
    for level in (folder, *folder.parents):
        if level.exists():
            break
        made.append(level)
    try:
        yield folder
    except BaseException:
        for level in made:  # innermost first; rmdir refuses a folder that holds anything
            with contextlib.suppress(OSError):
                level.rmdir()
        raise


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
