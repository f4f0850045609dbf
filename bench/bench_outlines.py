"""Where a run's score is lost on its held-out images: finding nuclei, or drawing their outlines.

    python bench/bench_outlines.py [RUN_DIR] [--data DIR]

The competition's score averages TP / (TP + FP + FN) over IoU thresholds from 0.5 to 0.95. At
0.5 it measures finding each nucleus once; towards 0.95, drawing its outline to the pixel.
Printed for the run's validation images (default: the shipped model, whose validation groups no
training image came from): the mean precision at each threshold, then for every predicted
nucleus matched to a true one at IoU 0.5, by image type and true diameter, how many there are,
the median ratio of predicted to true area (above 1: outlines drawn too wide), the mean IoU, and
the share of matches above IoU 0.75 and 0.85. Not a test: it prints figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _heldout import run_and_data  # noqa: E402  (bench/ is the script's own folder)

DIAMETER_BINS = (0, 10, 15, 20, 30, 50, 1000)


def matched_pairs(true_labels, pred_labels):
    """Per true nucleus matched at IoU above 0.5: its area, its match's area and their IoU."""
    import numpy as np

    from dsb.kaggle.metric import iou_matrix

    iou = iou_matrix(true_labels, pred_labels)  # objects in increasing label order
    true_ids = np.unique(true_labels[true_labels > 0])
    pred_ids = np.unique(pred_labels[pred_labels > 0])
    ti, pi = np.nonzero(iou > 0.5)
    true_area = np.bincount(true_labels.ravel())[true_ids[ti]]
    pred_area = np.bincount(pred_labels.ravel())[pred_ids[pi]]
    return true_area, pred_area, iou[ti, pi]


def main() -> int:
    args = run_and_data(__doc__.splitlines()[0])
    if args is None:
        return 0

    import numpy as np
    import pandas as pd

    import dsb
    from dsb.kaggle.metric import THRESHOLDS, image_score
    from dsb.workflows.evaluate import predict_validation

    model = dsb.load_model(args.run_dir)
    print(f"model: {model.path} ({model.engine})")
    validation = predict_validation(model.network, model.config, args.data, progress=False)
    precision, pairs = [], []
    for image_id, truth in validation.truth.items():
        pred = validation.pred[image_id]
        precision.append(image_score(truth, pred).precision)
        true_area, pred_area, iou = matched_pairs(truth, pred)
        pairs.append(pd.DataFrame({"type": validation.types[image_id], "diameter": np.sqrt(4 * true_area / np.pi),
                                   "ratio": pred_area / true_area, "iou": iou}))
    print(f"\n{len(precision)} validation images: mean precision at each IoU threshold")
    print("| " + " | ".join(f"{t:.2f}" for t in THRESHOLDS) + " | score |")
    print("|" + " ---: |" * (len(THRESHOLDS) + 1))
    means = np.mean(precision, axis=0)
    print("| " + " | ".join(f"{p:.3f}" for p in means) + f" | {means.mean():.4f} |")

    table = pd.concat(pairs, ignore_index=True)
    table["true diameter"] = pd.cut(table["diameter"], DIAMETER_BINS, right=False)
    print("\nnuclei matched at IoU 0.5, by type and true diameter (px)")
    print("| type | true diameter | matched | area ratio (median) | mean IoU | IoU > 0.75 | IoU > 0.85 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for (kind, band), part in table.groupby(["type", "true diameter"], observed=True):
        print(f"| {kind} | {band.left:g} to {band.right:g} | {len(part)} | {part['ratio'].median():.2f} | "
              f"{part['iou'].mean():.3f} | {(part['iou'] > 0.75).mean():.2f} | {(part['iou'] > 0.85).mean():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
