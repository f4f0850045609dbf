"""The few calls to Kaggle that dsb makes: sign in, download the competition, submit.

The official ``kaggle`` package signs in when it is imported (and, without
credentials, prints a page of help and exits), so it is imported only inside
:func:`authenticate`, with its output silenced, and its failures become one
:class:`~dsb.core.errors.EnvironmentProblem` line. Everything else takes the client
as an argument, so tests pass a fake with the same method names.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from dsb.core.errors import BadDataError, EnvironmentProblem

__all__ = ["COMPETITION", "NO_CREDENTIALS", "authenticate", "download_competition", "submit"]

COMPETITION = "data-science-bowl-2018"
NO_CREDENTIALS = (
    "no Kaggle credentials: put kaggle.json in ~/.kaggle, set KAGGLE_USERNAME and KAGGLE_KEY "
    "(or KAGGLE_API_TOKEN)"
)


def authenticate():
    """Sign in to Kaggle with the user's credentials and return the API client.

    Credentials are whatever the installed ``kaggle`` package accepts (2.x:
    ``~/.kaggle/kaggle.json``, ``KAGGLE_USERNAME`` and ``KAGGLE_KEY``,
    ``KAGGLE_API_TOKEN``, ``~/.kaggle/access_token``, or a ``kaggle auth
    login``; ``KAGGLE_CONFIG_DIR`` moves the folder).

    Returns
    -------
    kaggle.api.kaggle_api_extended.KaggleApi

    Raises
    ------
    EnvironmentProblem
        The package is missing, there are no credentials, or signing in failed.
    """
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):
            import kaggle  # signs in on import; 1.x raises without credentials, 2.x swallows it
    except ImportError:
        raise EnvironmentProblem(
            "the kaggle package is not installed (pip install kaggle)"
        ) from None
    except (Exception, SystemExit):
        raise EnvironmentProblem(NO_CREDENTIALS) from None
    api = kaggle.api
    if getattr(api, "_authenticated", False):
        return api
    try:
        with contextlib.redirect_stdout(quiet):
            api.authenticate()
    except SystemExit:  # kaggle prints its help and calls exit(1) when it finds no credentials
        raise EnvironmentProblem(NO_CREDENTIALS) from None
    except Exception as exc:
        raise EnvironmentProblem(_describe(exc, "signing in to Kaggle")) from None
    return api


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."  # urllib3's messages run long


def _describe(exc: Exception, doing: str) -> str:
    """One line for a failed Kaggle call, with the fix for the common HTTP errors."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        return f"{doing}: Kaggle rejected the credentials (401 Unauthorized); create a new API token"
    if status == 403:
        return (
            f"{doing}: Kaggle refused (403 Forbidden); accept the rules at "
            f"https://www.kaggle.com/competitions/{COMPETITION}/rules with the same account"
        )
    if status == 404:
        return f"{doing}: Kaggle has no competition {COMPETITION!r} (404 Not Found)"
    if isinstance(exc, (ConnectionError, TimeoutError)) or "Connection" in type(exc).__name__:
        return f"{doing}: cannot reach Kaggle ({_one_line(exc)}); check the network"
    return f"{doing}: {_one_line(exc)}"


def download_competition(dest_dir, *, client, competition: str = COMPETITION, quiet: bool = True) -> Path:
    """Download the competition's bundle (one zip) into ``dest_dir``.

    Parameters
    ----------
    dest_dir : str or os.PathLike
        Created if needed.
    client : KaggleApi or an object with ``competition_download_files(competition, path=..., quiet=...)``
    competition : str
    quiet : bool
        Passed to Kaggle (False: its own progress bar).

    Returns
    -------
    Path
        The downloaded zip.

    Raises
    ------
    EnvironmentProblem
        The download failed (rules not accepted, network, credentials) or left no zip.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        client.competition_download_files(competition, path=str(dest_dir), quiet=quiet)
    except Exception as exc:
        raise EnvironmentProblem(_describe(exc, f"downloading {competition}")) from None
    expected = dest_dir / f"{competition}.zip"
    if expected.is_file():
        return expected
    zips = sorted(dest_dir.glob("*.zip"))
    if len(zips) == 1:
        return zips[0]
    raise EnvironmentProblem(f"the Kaggle download left no {expected.name} here", path=dest_dir)


def submit(csv_path, message: str, *, client, competition: str = COMPETITION) -> str:
    """Submit a CSV to the competition.

    Parameters
    ----------
    csv_path : str or os.PathLike
    message : str
        The submission's description on Kaggle.
    client : KaggleApi or an object with ``competition_submit(file_name, message, competition, quiet=...)``

    Returns
    -------
    str
        Kaggle's reply message (may be empty).

    Raises
    ------
    BadDataError
        The CSV does not exist.
    EnvironmentProblem
        Kaggle refused or the upload failed.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise BadDataError("file not found", path=csv_path)
    try:
        reply = client.competition_submit(str(csv_path), message, competition, quiet=True)
    except Exception as exc:
        raise EnvironmentProblem(_describe(exc, f"submitting to {competition}"), path=csv_path) from None
    text = str(getattr(reply, "message", "") or "")
    failed = getattr(client, "COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE", None)
    if failed and text == failed:
        raise EnvironmentProblem(f"submitting to {competition}: the upload failed", path=csv_path)
    return text
