"""The same seed, data and config give the same submission CSV, byte for byte, on CPU.

End to end through the `dsb` command: a tiny U-Net trained for two steps on
synthetic discs in stage1_train layout, once in this process and once in a
fresh `python -m dsb` process (another hash seed, a cold start), then
`dsb predict` with each run. A third run with another seed must give another
CSV, so that the comparison can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_discs
from PIL import Image

keras = pytest.importorskip("keras")

from dsb.cli import cli
from dsb.kaggle.submission import read_submission

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "model": {"depth": 2, "base_filters": 4, "dropout": [0.0]},
    "train": {"crop_size": 32, "batch_size": 2, "epochs": 1, "steps_per_epoch": 2},
    "predict": {"tile_size": 32, "overlap": 8, "batch_size": 4},
}


def write_stage(stage: Path, n: int = 6) -> None:
    """Noisy bright discs on a dark background, one mask PNG per disc."""
    rng = np.random.default_rng(0)
    for i in range(n):
        labels = make_discs((48, 64), rng.integers(8, 40, size=(4, 2)), radius=6)
        image = (np.where(labels > 0, 180, 30) + rng.integers(0, 30, labels.shape)).astype(np.uint8)
        sample = stage / f"s{i}"
        (sample / "images").mkdir(parents=True)
        (sample / "masks").mkdir()
        Image.fromarray(image).save(sample / "images" / f"s{i}.png")
        for k in range(1, labels.max() + 1):
            Image.fromarray(((labels == k) * 255).astype(np.uint8)).save(sample / "masks" / f"m{k}.png")


def dsb(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, (result.stderr, result.exception)
    return result


def test_same_seed_same_submission_bytes(tmp_path):
    data = tmp_path / "data"
    write_stage(data / "stage1_train")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    train = ("train", "--config", config, "--data", data)

    dsb(*train, "--out", tmp_path / "here", "--seed", 3)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONHASHSEED": "12345"}
    proc = subprocess.run(
        [sys.executable, "-m", "dsb", *map(str, train), "--out", str(tmp_path / "there"), "--seed", "3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    dsb(*train, "--out", tmp_path / "other", "--seed", 4)

    csvs = {}
    for run in ("here", "there", "other"):
        out = tmp_path / f"{run}.csv"
        dsb("predict", tmp_path / run, "--images", data / "stage1_train", "--out", out)
        csvs[run] = out.read_bytes()
    assert csvs["here"] == csvs["there"]
    # Not a vacuous match: the CSV holds nuclei, and another seed moves them.
    nuclei = read_submission(tmp_path / "here.csv")["EncodedPixels"]
    assert (nuclei != "").sum() >= 6
    assert csvs["other"] != csvs["here"]
