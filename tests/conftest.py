"""Shared fixtures: synthetic nuclei and, where present, the real competition files."""

from __future__ import annotations

import os
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


def _extract(zip_path: Path, dest: Path) -> Path:
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(dest)
    return dest


@pytest.fixture(scope="session")
def train_dir(shared_data, tmp_path_factory) -> Path:
    """stage1_train unzipped once per test session."""
    return _extract(shared_data / "stage1_train.zip", tmp_path_factory.mktemp("stage1_train"))


@pytest.fixture(scope="session")
def test_dir(shared_data, tmp_path_factory) -> Path:
    """stage1_test unzipped once per test session."""
    return _extract(shared_data / "stage1_test.zip", tmp_path_factory.mktemp("stage1_test"))


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
