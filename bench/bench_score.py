"""How fast is `dsb score`? Whole process and library call, against a straightforward scorer.

Builds a 65-image set from the first sorted ids of stage1_train (the size of the
stage-1 test set): a truth folder in stage1_train layout, the matching solution
CSV, and a submission made from the true masks with every object grown by one
pixel and 10 % of them dropped (``--perfect`` keeps them exact). Then times:

- ``python -m dsb.cli score SUB --truth TRUTH`` as a fresh process (start-up,
  imports, reading, scoring), for both kinds of truth (``--no-cli`` skips it);
- the library call :func:`dsb.kaggle.submission.score_submission` in this process;
- a straightforward scorer kept in this file: Python sets of pixel indices per
  object and an IoU for every pair of objects.

Prints figures; not a test. Targets: the whole process under 1 s on the solution
CSV, and at least 10x faster than the straightforward scorer.

Usage: python bench/bench_score.py [--images 65] [--repeat 3] [--perfect] [--no-cli]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dsb.kaggle.metric import THRESHOLDS
from dsb.kaggle.rle import labels_to_rles, rles_to_labels
from dsb.kaggle.submission import score_submission, write_submission


def shared_dir() -> Path:
    return Path(os.environ.get("DSB_SHARED", REPO.parent / "shared" / "dsb2018"))


# ---------------------------------------------------------------- the data


def build(work: Path, n_images: int, *, perfect: bool, seed: int = 0) -> dict:
    """Write truth folder, solution CSV and submission for the first ``n_images`` ids."""
    shared = shared_dir()
    with zipfile.ZipFile(shared / "stage1_train.zip") as zf:
        names = zf.namelist()
        ids = sorted({n.split("/")[0] for n in names if n.count("/") >= 2})[:n_images]
        wanted = set(ids)
        zf.extractall(work / "truth", [n for n in names if n.split("/")[0] in wanted])
    with zipfile.ZipFile(shared / "stage1_train_labels.csv.zip") as zf:
        labels_csv = pd.read_csv(io.BytesIO(zf.read("stage1_train_labels.csv")), dtype=str, keep_default_na=False)
    labels_csv = labels_csv[labels_csv["ImageId"].isin(wanted)]

    from PIL import Image

    rng = np.random.default_rng(seed)
    solution_rows, submission_rows = [], []
    n_objects = 0
    for image_id in ids:
        with Image.open(work / "truth" / image_id / "images" / f"{image_id}.png") as image:
            width, height = image.size
        rles = labels_csv.loc[labels_csv["ImageId"] == image_id, "EncodedPixels"].tolist()
        n_objects += len(rles)
        solution_rows += [(image_id, r, height, width) for r in rles]
        labels = rles_to_labels(rles, (height, width), allow_overlap=True)  # 0a7d30... shares pixels
        if not perfect:
            grown = ndimage.grey_dilation(labels, size=3)
            labels = np.where(labels > 0, labels, grown)  # grow into background only: no overlaps
            dropped = np.flatnonzero(rng.random(len(rles)) < 0.1) + 1
            labels[np.isin(labels, dropped)] = 0
        submission_rows += [(image_id, r) for r in labels_to_rles(labels) or [""]]
    solution = work / "solution.csv"
    pd.DataFrame(solution_rows, columns=["ImageId", "EncodedPixels", "Height", "Width"]).to_csv(
        solution, index=False, lineterminator="\n"
    )
    submission = write_submission(pd.DataFrame(submission_rows, columns=["ImageId", "EncodedPixels"]), work / "sub.csv")
    return {
        "ids": ids,
        "objects": n_objects,
        "folder": work / "truth",
        "solution": solution,
        "submission": submission,
    }


# ---------------------------------------------------------------- the straightforward scorer


def straightforward_score(submission: Path, solution: Path) -> float:
    """Sets of pixel indices per object; IoU of every (true, predicted) pair."""

    def read(path):
        objects, shapes = {}, {}
        with open(path, newline="") as f:
            reader = csv.reader(f)
            next(reader)
            for row in reader:
                image_id, rle = row[0], row[1]
                if len(row) >= 4:
                    shapes[image_id] = (int(row[2]), int(row[3]))
                found = objects.setdefault(image_id, [])
                values = [int(v) for v in rle.split()]
                if values:
                    pixels = set()
                    for start, length in zip(values[0::2], values[1::2]):
                        pixels.update(range(start, start + length))
                    found.append(pixels)
        return objects, shapes

    truth, _ = read(solution)
    pred, _ = read(submission)
    scores = []
    for image_id, true_objects in truth.items():
        if image_id not in pred:
            scores.append(0.0)
            continue
        pred_objects = pred[image_id]
        ious = [len(a & b) / len(a | b) for a in true_objects for b in pred_objects]
        precisions = []
        for t in THRESHOLDS:
            tp = sum(iou > t for iou in ious)
            denominator = len(true_objects) + len(pred_objects) - tp
            precisions.append(tp / denominator if denominator else 1.0)
        scores.append(sum(precisions) / len(precisions))
    return sum(scores) / len(scores)


# ---------------------------------------------------------------- timing


def _cpu() -> float:
    """CPU seconds of this process and its finished children: on a shared machine
    these say more than wall time, which includes waiting for a core."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, repeat: int):
    """Median wall seconds, median CPU seconds and the last result of ``repeat`` calls."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), _cpu()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def run_cli(submission: Path, truth: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "dsb.cli", "score", str(submission), "--truth", str(truth)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"dsb score failed ({out.returncode}): {out.stderr.strip()}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=65)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--perfect", action="store_true", help="submit the true masks unchanged")
    parser.add_argument("--no-cli", dest="cli", action="store_false", help="skip the whole-process timing")
    args = parser.parse_args()
    if not (shared_dir() / "stage1_train.zip").is_file():
        print(f"skipped: competition files not found in {shared_dir()}")
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_score.") as tmp:
        data = build(Path(tmp), args.images, perfect=args.perfect)
        sub, solution, folder = data["submission"], data["solution"], data["folder"]
        print(f"{len(data['ids'])} images, {data['objects']} true nuclei, "
              f"{'perfect' if args.perfect else 'perturbed'} submission ({sub.stat().st_size / 1e6:.2f} MB)")
        print(f"{'what':<44} {'wall s':>8} {'CPU s':>7}  score   (medians of {args.repeat})")

        def line(what, wall, cpu, score):
            print(f"{what:<44} {wall:8.3f} {cpu:7.3f}  {score:.6f}", flush=True)

        figures = {}
        for kind, truth in (("solution CSV", solution), ("truth folder", folder)):
            wall, cpu, score = timed(lambda truth=truth: score_submission(sub, truth)[0], args.repeat)
            line(f"library score_submission ({kind})", wall, cpu, score)
            figures[f"library call ({kind})"] = (wall, cpu, score)
            if args.cli:
                wall, cpu, score = timed(lambda truth=truth: run_cli(sub, truth), args.repeat)
                line(f"whole process dsb score ({kind})", wall, cpu, score)
                figures[f"whole process ({kind})"] = (wall, cpu, score)
        wall, cpu, score = timed(lambda: straightforward_score(sub, solution), 1)
        line("straightforward: sets, all pairs (solution)", wall, cpu, score)
        figures["straightforward"] = (wall, cpu, score)

    base_wall, base_cpu, base_score = figures["straightforward"]
    ours = "whole process (solution CSV)" if args.cli else "library call (solution CSV)"
    wall, cpu, _ = figures[ours]
    # The set-based scorer keeps the two shared pixels of image 0a7d30... in both of
    # their masks where label images give them to the earlier one: far below 1e-4.
    gap = max(abs(f[2] - base_score) for f in figures.values())
    agree = gap < 1e-4
    print(f"{ours}: {wall:.3f} s wall, {cpu:.3f} s CPU; "
          f"{base_wall / wall:.1f}x (wall) and {base_cpu / cpu:.1f}x (CPU) faster than straightforward; "
          f"largest score difference {gap:.1e} ({'agree' if agree else 'DISAGREE'})")
    print(f"targets: under 1 s: {'met' if wall < 1 else 'NOT met'} on wall, {'met' if cpu < 1 else 'NOT met'} on CPU; "
          f">= 10x: {'met' if base_wall / wall >= 10 else 'NOT met'} on wall, "
          f"{'met' if base_cpu / cpu >= 10 else 'NOT met'} on CPU")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
