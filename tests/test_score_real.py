"""`dsb score` on held-out stage1_train images: perfect is 1, empty is 0 (issue 2's acceptance)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from dsb.cli import cli
from dsb.io.images import list_ids, read_labels
from dsb.kaggle.rle import labels_to_rles


@pytest.fixture(scope="module")
def held_out(train_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("held_out")
    ids = list_ids(train_dir)[::60]  # 12 images, of every kind
    rows = []
    for image_id in ids:
        shutil.copytree(train_dir / image_id, root / "truth" / image_id)
        # From the label image, not the labels CSV: a few training masks overlap,
        # which a submission may not; read_labels settles them.
        labels = read_labels(train_dir / image_id, return_fixes=True)[0]
        rows += [(image_id, rle) for rle in labels_to_rles(labels)]
    pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"]).to_csv(root / "perfect.csv", index=False)
    pd.DataFrame({"ImageId": ids, "EncodedPixels": ""}).to_csv(root / "empty.csv", index=False)
    return root


@pytest.mark.parametrize(("name", "expected"), [("perfect.csv", "1.000000"), ("empty.csv", "0.000000")])
def test_score_of_perfect_and_empty_submissions(held_out, name, expected, tmp_path):
    per_image = tmp_path / "per_image.csv"
    result = CliRunner().invoke(
        cli, ["score", str(held_out / name), "--truth", str(held_out / "truth"), "--per-image", str(per_image)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == expected
    table = pd.read_csv(per_image)
    assert len(table) == 12
    assert {"tp_50", "fp_50", "fn_50", "tp_75", "fp_75", "fn_75", "type"} <= set(table.columns)
    assert set(table["type"]) <= {"fluorescence", "brightfield", "stained"}


def test_validate_accepts_the_perfect_submission(held_out):
    result = CliRunner().invoke(cli, ["validate", str(held_out / "perfect.csv"), "--images", str(held_out / "truth")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith("valid")
