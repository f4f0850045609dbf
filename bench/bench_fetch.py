"""How long `dsb fetch` takes when the data are already there (:func:`dsb.kaggle.fetch.fetch`).

    python bench/bench_fetch.py

Prints, with the budget each should stay within (they were assertions in
tests/test_fetch.py, where a loaded machine made them flaky):

- a second fetch of a small synthetic stage into a complete destination
  (no source needed): budget 0.5 s;
- with the competition files (../shared/dsb2018 or $DSB_SHARED), the cold
  fetch and a second fetch of the real stages: budget 1 s for the second.

Not a test: it prints figures, and exits 0 over budget too.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMALL_BUDGET_S = 0.5
REAL_BUDGET_S = 1.0


def _shared() -> Path:
    return Path(os.environ.get("DSB_SHARED", REPO.parent / "shared" / "dsb2018"))


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _small_source(folder: Path) -> Path:
    """The inner zips of Kaggle's bundle, with three 24 x 32 images (two masks each) to train on."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def stage(n: int, masks: int) -> dict[str, bytes]:
        entries = {}
        for i in range(n):
            image_id = f"{i:04x}abcd"
            entries[f"{image_id}/images/{image_id}.png"] = _png(rng.integers(0, 256, (24, 32, 4), dtype=np.uint8))
            for k in range(masks):
                mask = np.zeros((24, 32), np.uint8)
                mask[k * 2 : k * 2 + 2, :4] = 255
                entries[f"{image_id}/masks/mask{k:02d}.png"] = _png(mask)
        return entries

    csv = b"ImageId,EncodedPixels\n0000abcd,1 2\n"
    for name, entries in {
        "stage1_train.zip": stage(3, 2),
        "stage1_test.zip": stage(3, 0),
        "stage1_train_labels.csv.zip": {"stage1_train_labels.csv": csv},
        "stage1_sample_submission.csv.zip": {"stage1_sample_submission.csv": csv},
    }.items():
        with zipfile.ZipFile(folder / name, "w", zipfile.ZIP_DEFLATED) as zf:
            for entry, data in entries.items():
                zf.writestr(entry, data)
    return folder


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _verdict(seconds: float, budget: float) -> str:
    return f"within the {budget:g} s budget" if seconds < budget else f"OVER the {budget:g} s budget"


def main() -> int:
    from dsb.kaggle.fetch import fetch

    with tempfile.TemporaryDirectory(prefix="dsb-bench-fetch-") as tmp:
        tmp = Path(tmp)
        source = _small_source(tmp / "src")
        fetch(tmp / "small", source=source)
        seconds, summary = _timed(lambda: fetch(tmp / "small", source=tmp / "gone"))
        assert summary.fetched == (), summary
        print(f"second fetch, small stage: {seconds * 1000:.0f} ms ({_verdict(seconds, SMALL_BUDGET_S)})")

        shared = _shared()
        if not (shared / "stage1_train.zip").is_file():
            print(f"no competition files in {shared}: the real fetch is not measured")
            return 0
        cold, summary = _timed(lambda: fetch(tmp / "real", source=shared))
        print(f"cold fetch: {summary} in {cold:.1f} s")
        warm, again = _timed(lambda: fetch(tmp / "real", source=shared))
        assert again.fetched == (), again
        print(f"second fetch, real stages: {warm * 1000:.0f} ms ({_verdict(warm, REAL_BUDGET_S)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
