"""Atomic writes: an interrupted or failed write keeps the previous good file."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from dsb.core.atomic import (
    atomic_dir,
    atomic_path,
    atomic_paths,
    removed_if_left_empty,
    writable_dir,
    write_text,
)
from dsb.core.errors import EnvironmentProblem


def test_success_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_interrupted_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_disk_full_is_one_environment_error(tmp_path, monkeypatch):
    target = tmp_path / "out.csv"
    target.write_text("old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(EnvironmentProblem, match="no space left on device") as info:
        write_text(target, "new")
    assert str(target) in str(info.value)
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(EnvironmentProblem, match=r"cannot write x.txt in this folder \(permission denied\)"):
        write_text(folder / "x.txt", "x")


def test_unwritable_destination_is_an_environment_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(EnvironmentProblem) as info:
        write_text(blocker / "x.txt", "x")
    assert str(info.value) == f"{blocker}: is a file, where a folder is needed"
    # Deeper, or asked for as a folder: the line still names the file in the way.
    for call in (lambda: write_text(blocker / "a" / "x.txt", "x"), lambda: writable_dir(blocker / "a"),
                 lambda: writable_dir(blocker)):
        with pytest.raises(EnvironmentProblem) as info:
            call()
        assert str(info.value) == f"{blocker}: is a file, where a folder is needed"
    assert blocker.read_text() == "a file where a folder should be"


def test_atomic_dir_swaps_in_only_complete_folders(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "a").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("half")
            raise RuntimeError
    assert (target / "a").read_text() == "old"
    with atomic_dir(target) as tmp:
        (tmp / "b").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "report.html", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def _failing_replace(monkeypatch, name):
    """os.replace fails with ENOSPC whenever its destination is called ``name``."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_atomic_paths_replaces_every_file_in_order(tmp_path, monkeypatch):
    first, second = tmp_path / "config.json", tmp_path / "tuning.csv"
    first.write_text("old config")
    order = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (order.append(os.path.basename(dst)), real(src, dst)))
    with atomic_paths(first, second) as (a, b):
        a.write_text("new config")
        b.write_text("new table")
    assert (first.read_text(), second.read_text()) == ("new config", "new table")
    assert order == ["config.json", "tuning.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "tuning.csv"]


@pytest.mark.parametrize("table_existed", [False, True])
def test_atomic_paths_undoes_the_first_file_when_the_second_cannot_be_written(tmp_path, monkeypatch, table_existed):
    first, second = tmp_path / "config.json", tmp_path / "tuning.csv"
    first.write_text("old config")
    if table_existed:
        second.write_text("old table")
    _failing_replace(monkeypatch, "tuning.csv")
    with pytest.raises(EnvironmentProblem, match="no space left on device") as info:
        with atomic_paths(first, second) as (a, b):
            a.write_text("new config")
            b.write_text("new table")
    assert str(second) in str(info.value)
    assert first.read_text() == "old config"
    assert second.read_text() == "old table" if table_existed else not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"] + (["tuning.csv"] if table_existed else [])


def test_atomic_paths_removes_a_new_first_file_when_the_second_fails(tmp_path, monkeypatch):
    first, second = tmp_path / "config.json", tmp_path / "tuning.csv"
    _failing_replace(monkeypatch, "tuning.csv")
    with pytest.raises(EnvironmentProblem):
        with atomic_paths(first, second) as (a, b):
            a.write_text("new config")
            b.write_text("new table")
    assert list(tmp_path.iterdir()) == []


def test_atomic_paths_interrupted_before_the_renames_keeps_everything(tmp_path):
    first, second = tmp_path / "config.json", tmp_path / "tuning.csv"
    first.write_text("old config")
    with pytest.raises(KeyboardInterrupt):
        with atomic_paths(first, second) as (a, b):
            a.write_text("half")
            raise KeyboardInterrupt
    assert first.read_text() == "old config" and not second.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_folders_made_for_a_run_that_fails_are_not_left_empty(tmp_path):
    there = tmp_path / "there"
    there.mkdir()
    for folder in (tmp_path / "new" / "deeper", there):
        with pytest.raises(ValueError), removed_if_left_empty(folder):
            writable_dir(folder)
            raise ValueError("a bad image")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there"]  # made ones gone, the one there before kept
    with pytest.raises(KeyboardInterrupt), removed_if_left_empty(tmp_path / "new" / "deeper") as folder:
        writable_dir(folder)
        (folder / "a_labels.tif").write_bytes(b"written before the failure")
        raise KeyboardInterrupt
    assert (tmp_path / "new" / "deeper" / "a_labels.tif").exists()  # what was written is kept, and its folders
    with removed_if_left_empty(tmp_path / "ok") as folder:
        writable_dir(folder)
    assert folder.is_dir()  # a run that succeeds keeps its folder, empty or not


def test_a_link_stays_a_link_and_a_named_pipe_a_pipe(tmp_path):
    """A rename over them made both regular files: the link's target kept its old content, and a pipe
    (as /dev/null, for a root user) was replaced by a file."""
    import threading

    target = tmp_path / "target.csv"
    target.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    with atomic_path(link) as tmp:
        tmp.write_text("new")
    assert link.is_symlink() and target.read_text() == "new"
    folder = tmp_path / "real"
    folder.mkdir()
    (tmp_path / "linked").symlink_to(folder)
    with atomic_dir(tmp_path / "linked") as tmp:
        (tmp / "TRAINING.md").write_text("export")
    assert (tmp_path / "linked").is_symlink() and (folder / "TRAINING.md").read_text() == "export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "linked", "real", "target.csv"]

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    read = []
    reader = threading.Thread(target=lambda: read.append(pipe.read_text()), daemon=True)  # no hang if it fails
    reader.start()
    with atomic_path(pipe) as tmp:
        tmp.write_text("through the pipe")
    reader.join(timeout=30)
    assert read == ["through the pipe"] and stat.S_ISFIFO(os.stat(pipe).st_mode)


PIPE_WRITER = """
import sys
from dsb.core.atomic import atomic_path, atomic_paths

with atomic_path("/dev/stdout") as tmp:
    tmp.write_text("one\\n")
with atomic_paths("/dev/stdout", sys.argv[1]) as (a, b):
    a.write_text("two\\n")
    b.write_text("beside")
"""


def test_dev_stdout_into_a_pipe(tmp_path):
    """/dev/stdout is a link to a pipe that has no path: resolving it first made the write fail in /proc."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", PIPE_WRITER, str(tmp_path / "b.txt")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "one\ntwo\n" and (tmp_path / "b.txt").read_text() == "beside"
