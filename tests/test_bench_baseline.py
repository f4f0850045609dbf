"""`make bench`'s baseline: an earlier commit's prediction timed by its own bench, from a git worktree."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _bench():
    sys.path.insert(0, str(REPO / "bench"))  # the bench imports its helpers from its own folder
    try:
        spec = importlib.util.spec_from_file_location("bench_predict", REPO / "bench" / "bench_predict.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "bench"))
    return module


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def old_repo(tmp_path) -> Path:
    """A repository whose one commit has a bench that prints a table row as bench_predict does, and
    records the arguments and PYTHONPATH it was run with."""
    repo = tmp_path / "repo"
    (repo / "bench").mkdir(parents=True)
    (repo / "bench" / "bench_predict.py").write_text(
        "import os, sys\n"
        "from pathlib import Path\n"
        "here = Path(__file__).resolve().parents[1]\n"
        "assert os.environ['PYTHONPATH'] == str(here), os.environ['PYTHONPATH']\n"
        "print('model: the old one')\n"
        "print('| engine | end to end MP/s | scale estimate |')\n"
        "print('| --- | ---: | ---: |')\n"
        "print(f'| openvino (default) | 2.29 | 20% |  {\" \".join(sys.argv[1:])}')\n"
        "print('openvino: end to end 4.9 s, 2.29 MP/s; bare forward over the same 275 tiles (13.1 MP)')\n"
    )
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "old")
    return repo


def test_the_baseline_row_comes_from_the_old_commits_own_bench(old_repo, capsys):
    bench = _bench()
    row, speed = bench._baseline("HEAD", 2, repo=old_repo)
    assert speed == pytest.approx(2.29)
    assert row.startswith("| HEAD: openvino, its default | 2.29 | 20% |")
    assert "--engines openvino --repeat 2" in row  # its default engine, as many passes as ours
    out = capsys.readouterr().out
    assert "timing its prediction" in out
    assert "baseline HEAD: openvino: end to end 4.9 s" in out  # its line of detail, passed on
    # The worktree is gone again: only the repository's own remains.
    assert len(_git(old_repo, "worktree", "list").splitlines()) == 1


def test_a_baseline_that_cannot_be_had_says_why_and_is_skipped(old_repo, capsys):
    bench = _bench()
    assert bench._baseline("no-such-commit", 1, repo=old_repo) is None
    assert "baseline no-such-commit: no worktree" in capsys.readouterr().out
    # A bench that fails (here: it prints no row) is said, with its output, and skipped too.
    (old_repo / "bench" / "bench_predict.py").write_text("print('skipped: no data')\n")
    _git(old_repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "broken")
    assert bench._baseline("HEAD", 1, repo=old_repo) is None
    out = capsys.readouterr().out
    assert "its bench failed" in out and "skipped: no data" in out
    assert len(_git(old_repo, "worktree", "list").splitlines()) == 1


def test_a_baseline_that_hangs_is_stopped_and_its_worktree_removed(old_repo, capsys):
    bench = _bench()
    (old_repo / "bench" / "bench_predict.py").write_text("import time\ntime.sleep(60)\n")
    _git(old_repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "hangs")
    assert bench._baseline("HEAD", 1, repo=old_repo, timeout=2) is None
    assert "its bench took over 2 s, stopped" in capsys.readouterr().out
    assert len(_git(old_repo, "worktree", "list").splitlines()) == 1
