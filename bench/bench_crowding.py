"""Crowding and scale on synthetic fields: true nuclei found at IoU 0.5, one size per field, then mixed.

    python bench/bench_crowding.py [RUN_DIR] [--diameters 8,12,20,30,48,72,110]
                                   [--mixed-diameters 12,24,40] [--spread 1]
                                   [--rod-diameters 12,24,40] [--elongation 4]

Fields of textured nuclei made by the project (:func:`dsb.io.synthetic.nuclei_field`), isolated
(1.3 diameters apart) and touching (0.8 apart), as fluorescence, brightfield and stained tissue,
predicted without a diameter (the estimate at work) by the model (default: the shipped one).
Then touching fields of mixed sizes (``size_spread``: from half to twice the median with the
default ``--spread 1``), where small nuclei pressed against large ones get merged into them.
Then fields of rod-like nuclei (``--elongation``: each up to 4 times as long as wide, the
nuclei of some cell lines), 1.3 median diameters apart, so that the longest lie against their
neighbours: the rules that split merged neighbours must not cut a rod in two, which shows as
fewer found and more predicted than true. For each: the estimated diameter, whether the
estimate is sure, found/true nuclei, predicted
nuclei and the competition score; then, for each kind of field, why the true nuclei that were
missed were missed (:func:`dsb.kaggle.metric.miss_causes`: merged into a neighbour, split, absent,
outline). Not a test: it prints figures. Needs no competition data.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--diameters", default="8,12,20,30,48,72,110")
    parser.add_argument("--mixed-diameters", default="12,24,40",
                        help="median diameters of the mixed fields ('' for none)")
    parser.add_argument("--spread", type=float, default=1.0, help="octaves of size either side of the median")
    parser.add_argument("--rod-diameters", default="12,24,40",
                        help="median equivalent diameters of the fields of rod-like nuclei ('' for none)")
    parser.add_argument("--elongation", type=float, default=4.0, help="the longest rods' length over width")
    args = parser.parse_args()
    if args.mixed_diameters and not args.spread > 0:
        parser.error("--spread must be above 0 (one size per field is what --diameters measures)")
    if args.rod_diameters and not args.elongation >= 1:
        parser.error("--elongation must be at least 1")

    import dsb
    from dsb.inference.predict import predict_nuclei
    from dsb.io.synthetic import KINDS, nuclei_field
    from dsb.kaggle.metric import MISS_CAUSES, image_score, miss_causes

    model = dsb.load_model(args.run_dir)
    print(f"model: {model.path} ({model.engine})")
    print("| kind | nuclei | diameter | estimated | sure | found / true | predicted | score | seconds |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    totals = {}
    causes = {}
    # (row name, kind, median diameter, what else nuclei_field is given)
    fields = [("touching" if touching else "isolated", kind, int(d), {"touching": touching})
              for touching in (False, True) for kind in KINDS for d in args.diameters.split(",") if d]
    fields += [("mixed", kind, int(d), {"touching": True, "size_spread": args.spread}) for kind in KINDS
               for d in args.mixed_diameters.split(",") if d]
    fields += [("rods", kind, int(d), {"elongation": args.elongation}) for kind in KINDS
               for d in args.rod_diameters.split(",") if d]
    for what, kind, diameter, field in fields:
        # Mixed sizes and rods: a wider field, so that it holds as many whole nuclei.
        side = max(256, min(1400, (9 if what in ("isolated", "touching") else 12) * diameter))
        image, truth = nuclei_field((side, side), diameter, kind=kind, seed=diameter, **field)
        began = time.perf_counter()
        nuclei = predict_nuclei(model.network, model.config, image)
        seconds = time.perf_counter() - began
        score = image_score(truth, nuclei.labels)
        found, true, predicted = totals.get(what, (0, 0, 0))
        totals[what] = (found + score.tp[0], true + score.n_true, predicted + score.n_pred)
        counts = miss_causes(truth, nuclei.labels)["cause"].value_counts()
        causes[what] = causes.get(what, 0) + counts.reindex(MISS_CAUSES, fill_value=0)
        print(f"| {kind} | {what} | {diameter} | {nuclei.diameter:.1f} |"
              f" {'yes' if nuclei.sure else 'no'} | {score.tp[0]} / {score.n_true} | {score.n_pred} |"
              f" {score.score:.3f} | {seconds:.2f} |", flush=True)
    for what, (found, true, predicted) in totals.items():
        missed = ", ".join(f"{int(n)} {cause}" for cause, n in causes[what].items() if n)
        print(f"{what}: found {found}/{true} ({found / true:.1%}) at IoU 0.5; {predicted} predicted"
              + (f"; missed {missed}" if missed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
