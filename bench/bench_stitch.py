"""Nuclei of synthetic z-stacks counted once: ``dsb segment --stitch`` against the truth.

    python bench/bench_stitch.py [RUN_DIR]

For synthetic fluorescence z-stacks (:func:`dsb.io.synthetic.nuclei_volume`) of several nucleus
sizes, plane spacings and crowding, each plane is segmented with the run (default: the shipped
model, its own diameter estimate per plane, as ``dsb segment`` does), then the planes are joined
(:func:`dsb.core.stitch.stitch_planes`) at the default overlap. Printed per stack: the true 3-D
nuclei, the nuclei the planes hold between them (what a count without ``--stitch`` says), the
stitched nuclei, the true ones found at 3-D IoU above 0.5, and the time to segment and to stitch a
plane. Not a test: it prints figures.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (planes, side, diameter, z step in pixels, least centre distance in diameters)
STACKS = (
    (24, 256, 24, 2.0, 1.2),
    (24, 256, 24, 4.0, 1.2),
    (40, 256, 24, 1.0, 1.2),
    (16, 256, 16, 2.0, 1.2),
    (24, 256, 40, 2.0, 1.2),
    (24, 256, 24, 2.0, 0.9),
)


def main() -> int:
    import numpy as np

    import dsb
    from dsb.core.labels import overlapping_pairs
    from dsb.core.stitch import stitch_planes
    from dsb.io.synthetic import nuclei_volume

    model = dsb.load_model(sys.argv[1] if len(sys.argv) > 1 else None)
    print("planes x side, diameter, z step, spacing | true | planes' nuclei | stitched | found (IoU > 0.5) | "
          "segment s/plane | stitch ms/plane")
    for seed, (depth, side, diameter, z_step, spacing) in enumerate(STACKS):
        image, truth = nuclei_volume((depth, side, side), diameter, z_step=z_step, spacing=spacing, seed=seed)
        start = time.perf_counter()
        planes = np.stack([dsb.segment(plane, model) for plane in image])
        segmenting = (time.perf_counter() - start) / depth
        start = time.perf_counter()
        stitched = stitch_planes(planes)
        stitching = (time.perf_counter() - start) / depth
        ti, pi, inter, area_true, area_pred, _, _ = overlapping_pairs(truth.ravel(), stitched.ravel())
        iou = inter / (area_true[ti] + area_pred[pi] - inter)
        found = len(np.unique(ti[iou > 0.5]))
        per_plane = sum(int(np.unique(p).size) - 1 for p in planes)
        print(f"{depth} x {side}, {diameter}, {z_step:g}, {spacing:g} | {truth.max()} | {per_plane} | "
              f"{stitched.max()} | {found} ({found / truth.max():.0%}) | {segmenting:.2f} | {1e3 * stitching:.1f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
