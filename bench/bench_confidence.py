"""How well each nucleus's confidence tells true nuclei from false ones, on a run's held-out images.

    python bench/bench_confidence.py [RUN_DIR] [--data DIR]

The confidence is what ``dsb segment`` writes per nucleus (the ``confidence`` column of
``NAME_nuclei.csv``; ``dsb.segment(..., return_confidence=True)``): its mean body probability.
For the validation images of the run (default: the shipped model, whose validation groups no
training image came from), every predicted nucleus is called true when it matches a true one
at IoU 0.5. Printed per image type: the nuclei, the share of them that are true, the area under
the ROC curve of confidence for true against false (1: it ranks every true nucleus above every
false one; 0.5: no better than chance), and what a user who keeps only the nuclei at or above
0.9 or 0.95 keeps of the true nuclei, drops of the false, and the share of true among those kept; then the share of true nuclei in each band of confidence. Last, the touching
synthetic fields of :mod:`dsb.io.synthetic` (no false nuclei to speak of there): how many of
their true nuclei each such bar would lose. Not a test: it prints figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _heldout import run_and_data  # noqa: E402  (bench/ is the script's own folder)

BARS = (0.85, 0.9, 0.95)
BANDS = (0.0, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)


def roc_auc(is_true, score) -> float:
    """Area under the ROC curve: the chance that a random true nucleus has a higher score than a
    random false one (ties count half), from the ranks (the Mann-Whitney U statistic)."""
    import numpy as np
    from scipy.stats import rankdata

    is_true = np.asarray(is_true, bool)
    n_true, n_false = int(is_true.sum()), int((~is_true).sum())
    if not n_true or not n_false:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[is_true].sum() - n_true * (n_true + 1) / 2) / (n_true * n_false))


def main() -> int:
    args = run_and_data(__doc__.splitlines()[0])
    if args is None:
        return 0

    import numpy as np
    import pandas as pd

    import dsb
    from dsb.inference.predict import predict_nuclei
    from dsb.io.synthetic import KINDS, nuclei_field
    from dsb.kaggle.metric import match_nuclei
    from dsb.workflows.evaluate import validation_data

    model = dsb.load_model(args.run_dir)
    config = model.config
    print(f"model: {model.path} ({model.engine}); nuclei under min_confidence "
          f"{config.postprocess.min_confidence:g} are dropped before they are counted here")
    images, truth, types = validation_data(config, args.data, progress=False)
    rows = []
    for image_id, raw in images.items():
        nuclei = predict_nuclei(model.network, config, raw)
        matched, _, _ = match_nuclei(truth[image_id], nuclei.labels)
        true = np.zeros(int(nuclei.labels.max()) + 1, bool)
        true[matched] = True
        rows += [(types[image_id], float(c), bool(t)) for c, t in zip(nuclei.confidence, true[1:])]
    table = pd.DataFrame(rows, columns=["type", "confidence", "true"])

    print(f"\n{len(images)} validation images")
    print("| type | nuclei | true | AUC | " + " | ".join(f"at or above {b:g}: true kept, false dropped, true share"
                                                       for b in BARS[1:]) + " |")
    print("| --- | ---: | ---: | ---: |" + " ---: |" * len(BARS[1:]))
    for kind, part in [("all", table), *table.groupby("type")]:
        cells = [kind, str(len(part)), f"{part['true'].mean():.3f}", f"{roc_auc(part['true'], part['confidence']):.3f}"]
        for bar in BARS[1:]:
            kept = part[part["confidence"] >= bar]
            n_false = int((~part["true"]).sum())
            cells.append(f"{kept['true'].sum() / max(part['true'].sum(), 1):.2f}, "
                         f"{1 - (~kept['true']).sum() / n_false if n_false else float('nan'):.2f}, "
                         f"{kept['true'].mean() if len(kept) else float('nan'):.3f}")
        print("| " + " | ".join(cells) + " |")

    bands = table.groupby(pd.cut(table["confidence"], BANDS), observed=True)["true"].agg(["size", "mean"])
    print("\n| confidence | nuclei | true share |\n| --- | ---: | ---: |")
    for band, row in bands.iterrows():
        print(f"| {band.left:g} to {band.right:g} | {int(row['size'])} | {row['mean']:.3f} |")

    print("\ntouching synthetic fields: true nuclei found at IoU 0.5, and those under each bar")
    print("| kind | found / true | " + " | ".join(f"under {b:g}" for b in BARS) + " |")
    print("| --- | ---: |" + " ---: |" * len(BARS))
    for kind in KINDS:
        found = total = 0
        under = dict.fromkeys(BARS, 0)
        for diameter in (8, 12, 20, 30, 48, 72, 110):
            side = max(256, min(1400, 9 * diameter))
            image, true_labels = nuclei_field((side, side), diameter, kind=kind, touching=True, seed=diameter)
            nuclei = predict_nuclei(model.network, config, image)
            matched, _, _ = match_nuclei(true_labels, nuclei.labels)
            found, total = found + len(matched), total + int(true_labels.max())
            for bar in BARS:
                under[bar] += int((nuclei.confidence[matched - 1] < bar).sum())
        print(f"| {kind} | {found} / {total} | " + " | ".join(str(under[b]) for b in BARS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
