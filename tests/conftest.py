"""Shared fixtures: synthetic nuclei and, where present, the real competition files."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return Path(os.environ.get("DSB_SHARED", REPO.parent / "shared" / "dsb2018"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of competition zips, or skip when this machine has none."""
    path = _shared_dir()
    if not (path / "stage1_train.zip").is_file():
        pytest.skip(f"competition files not found in {path}")
    return path


def _extract(zip_path: Path) -> Path:
    """Unzip once into a cache that outlives the test session.

    pytest keeps and later deletes its last three temporary folders; with 30,000
    files in each, that cleaning alone took minutes. The cache is keyed by the
    zip's size and mtime, and a marker written last says the extraction is whole.
    """
    info = zip_path.stat()
    root = Path(os.environ.get("DSB_TEST_CACHE", Path(tempfile.gettempdir()) / "dsb-test-data"))
    dest = root / f"{zip_path.stem}-{info.st_size}-{int(info.st_mtime)}"
    marker = dest / ".complete"
    if not marker.exists():
        shutil.rmtree(dest, ignore_errors=True)
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(dest)
        marker.touch()
    return dest


@pytest.fixture(scope="session")
def train_dir(shared_data) -> Path:
    """stage1_train unzipped (read-only use: never write into it)."""
    return _extract(shared_data / "stage1_train.zip")


@pytest.fixture(scope="session")
def test_dir(shared_data) -> Path:
    """stage1_test unzipped (read-only use: never write into it)."""
    return _extract(shared_data / "stage1_test.zip")


def make_discs(shape=(64, 64), centres=((20, 20), (40, 44)), radius=8) -> np.ndarray:
    """Instance labels of discs, label i + 1 for centre i; later discs win where they overlap."""
    rr, cc = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for i, (r, c) in enumerate(centres):
        labels[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = i + 1
    return labels


@pytest.fixture
def discs() -> np.ndarray:
    return make_discs()
