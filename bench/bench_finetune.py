"""How much a few annotated images of an unseen experiment help: fine-tune, then score the rest.

    python bench/bench_finetune.py [--data DIR] [--model RUN_DIR] [--groups G1,G2,...] [--n 5,10]
                                   [--minutes 10] [--work DIR] [--seed 0] [--epochs N] [--steps N]

For each imaging-experiment group of stage1_train (the training cache's groups,
:func:`dsb.training.cache.load_prepared`; by default three that the default run held
out: stained-256x320-large, fluorescence-360x360, brightfield-1024x1024-small),
with ``--model`` (default: the shipped model, which held those three out) trained without that group:

1. draw the group's images in a seeded order; the first ``n`` (for each ``n`` of
   ``--n``) are copied into a folder in the user layout (a) (``images/``,
   ``masks/`` with 16-bit label TIFFs), the images after the largest ``n`` are
   the ones scored, the same for every ``n``;
2. score them with the competition metric (:func:`dsb.kaggle.metric.score_labels`,
   predicting with :func:`dsb.inference.predict.predict_labels`) before;
3. fine-tune (:func:`dsb.training.train` with ``init=--model``) for at most
   ``--minutes`` of training, and score them again after.

Prints a markdown table: group, images fine-tuned on, images scored, score
before, score after, minutes. ``--minutes 2`` is a quick run; ``--n 2
--groups G --epochs 1 --steps 1`` with a tiny model checks that it works.
Not a test: it prints figures. The run folders stay under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GROUPS = ("stained-256x320-large", "fluorescence-360x360", "brightfield-1024x1024-small")


def _user_folder(folder: Path, stage: Path, ids) -> Path:
    """Layout (a): the images as they are, their labels as 16-bit TIFFs."""
    import shutil

    import tifffile

    from dsb.io.images import image_path, read_labels

    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for image_id in ids:
        src = image_path(stage, image_id)
        shutil.copy2(src, folder / "images" / f"{image_id}{src.suffix}")
        labels = read_labels(stage / image_id, return_fixes=True)[0]
        tifffile.imwrite(folder / "masks" / f"{image_id}.tif", labels.astype(np.uint16))
    return folder


def _score(run_dir: Path, stage: Path, ids) -> float:
    """Mean competition score of a run on ``ids`` of the stage folder."""
    from dsb.inference.predict import predict_labels
    from dsb.io.images import image_path, read_image, read_labels
    from dsb.kaggle.metric import score_labels
    from dsb.network.model_folder import load_run

    model, config = load_run(run_dir)
    truth, pred = {}, {}
    for image_id in ids:
        raw = read_image(image_path(stage, image_id))
        truth[image_id] = read_labels(stage / image_id, raw.shape[:2], return_fixes=True)[0]
        pred[image_id] = predict_labels(model, config, raw)
    return score_labels(truth, pred)[0]


def _plan(ids: list[str], ns: list[int], seed: int, group: str) -> tuple[list[str], list[int], list[str]]:
    """Seeded order of a group's ids, the ``n`` that leave at least two images to score, and those."""
    order = [ids[j] for j in np.random.default_rng([seed, len(ids)]).permutation(len(ids))]
    fits = [n for n in ns if n <= len(ids) - 2]
    if len(fits) < len(ns):
        print(f"note: group {group} has {len(ids)} images; fine-tuning on {fits or 'none'} of {ns}", file=sys.stderr)
    return order, fits, order[max(fits):] if fits else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data", help="a folder with stage1_train/")
    parser.add_argument("--model", type=Path, default=REPO / "dsb" / "models" / "default",
                        help="the run to fine-tune (default: the shipped model)")
    parser.add_argument("--groups", default=",".join(GROUPS), help="comma-separated group names")
    parser.add_argument("--n", default="5,10", help="comma-separated numbers of images to fine-tune on")
    parser.add_argument("--minutes", type=float, default=10.0, help="training minutes of each fine-tune")
    parser.add_argument("--work", type=Path, default=None, help="where user folders and runs go (default: temp)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="fine-tune epochs (default dsb.training.finetune's)")
    parser.add_argument("--steps", type=int, default=None, help="steps per epoch (default dsb.training.finetune's)")
    args = parser.parse_args()

    if not (args.data / "stage1_train").is_dir():
        print(f"no stage1_train/ in {args.data}: nothing to measure (run `dsb fetch` first)")
        return 0
    if not (args.model / "model.keras").is_file():
        print(f"no model.keras in {args.model}: train one first (`make train`)")
        return 0
    from dsb.network.model_folder import load_run_config
    from dsb.training import train
    from dsb.training.cache import load_prepared

    config = load_run_config(args.model)
    stage = args.data / "stage1_train"
    prepared = load_prepared(args.data, config.preprocess)
    members: dict[str, list[str]] = {}
    for image_id, group in zip(prepared.ids, prepared.groups):
        members.setdefault(group, []).append(image_id)
    ns = sorted(int(n) for n in args.n.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    seen = set(prepared.ids) - set(config.validation_ids)
    rows = []
    for group in [g.strip() for g in args.groups.split(",") if g.strip()]:
        if group not in members:
            print(f"note: no group {group!r} (known: {', '.join(sorted(members))})", file=sys.stderr)
            continue
        ids = sorted(members[group])
        trained_on = [i for i in ids if i in seen]
        if trained_on:
            print(f"note: {args.model} trained on {len(trained_on)} of the {len(ids)} images of {group}; "
                  "its 'before' is not that of an unseen experiment", file=sys.stderr)
        order, fits, scored = _plan(ids, ns, args.seed, group)
        if not fits:
            continue
        before = _score(args.model, stage, scored)
        for n in fits:
            folder = _user_folder(work / f"{group}-{n}" / "mine", stage, order[:n])
            run_dir = work / f"{group}-{n}" / "run"
            train(None, data_dir=folder, out_dir=run_dir, init=args.model, time_budget=args.minutes,
                  epochs=args.epochs, steps_per_epoch=args.steps, progress=True)
            minutes = json.loads((run_dir / "manifest.json").read_text())["training_time_s"] / 60
            after = _score(run_dir, stage, scored)
            rows.append((group, n, len(scored), before, after, minutes))
            print(f"{group}: {n} images, {before:.4f} -> {after:.4f} ({minutes:.1f} min)", file=sys.stderr)

    print(f"\nfine-tuning {args.model} for at most {args.minutes:g} training minutes; runs in {work}\n")
    print("| group | n images fine-tuned | images scored | score before | score after | minutes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for group, n, n_scored, before, after, minutes in rows:
        print(f"| {group} | {n} | {n_scored} | {before:.4f} | {after:.4f} | {minutes:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
