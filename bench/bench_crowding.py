"""Crowding and scale on synthetic fields: true nuclei found at IoU 0.5, one size per field.

    python bench/bench_crowding.py [RUN_DIR] [--diameters 8,12,20,30,48,72,110]

Fields of textured nuclei made by the project (:func:`dsb.io.synthetic.nuclei_field`), isolated
(1.3 diameters apart) and touching (0.8 apart), as fluorescence, brightfield and stained tissue,
predicted without a diameter (the estimate at work) by the model (default: the shipped one).
For each: the estimated diameter, whether the estimate is sure, found/true nuclei, predicted
nuclei and the competition score. Not a test: it prints figures. Needs no competition data.
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
    args = parser.parse_args()

    import dsb
    from dsb.inference.predict import predict_nuclei
    from dsb.io.synthetic import KINDS, nuclei_field
    from dsb.kaggle.metric import image_score

    model = dsb.load_model(args.run_dir)
    print(f"model: {model.path} ({model.engine})")
    print("| kind | nuclei | diameter | estimated | sure | found / true | predicted | score | seconds |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    totals = {}
    for touching in (False, True):
        for kind in KINDS:
            for diameter in (int(d) for d in args.diameters.split(",")):
                side = max(256, min(1400, 9 * diameter))
                image, truth = nuclei_field((side, side), diameter, kind=kind, touching=touching, seed=diameter)
                began = time.perf_counter()
                nuclei = predict_nuclei(model.network, model.config, image)
                seconds = time.perf_counter() - began
                score = image_score(truth, nuclei.labels)
                found, true = totals.get(touching, (0, 0))
                totals[touching] = (found + score.tp[0], true + score.n_true)
                print(f"| {kind} | {'touching' if touching else 'isolated'} | {diameter} | {nuclei.diameter:.1f} |"
                      f" {'yes' if nuclei.sure else 'no'} | {score.tp[0]} / {score.n_true} | {score.n_pred} |"
                      f" {score.score:.3f} | {seconds:.2f} |", flush=True)
    for touching, (found, true) in totals.items():
        print(f"{'touching' if touching else 'isolated'}: found {found}/{true} ({found / true:.1%}) at IoU 0.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
