"""What the per-nucleus outputs cost: measurements, Fiji ROIs, QuPath GeoJSON and cells around nuclei.

    python bench/bench_measure.py [--side 1024] [--repeat 5] [--slide 4096]

On a synthetic field of touching nuclei 20 pixels across (``nuclei_field((SIDE, SIDE), 20,
touching=True, seed=1)``: 1,668 nuclei at 1024, the dense worst case), the library calls that
``dsb segment`` and ``dsb measure`` make after segmenting, each timed REPEAT times in seconds:
``measure_nuclei`` with and without cells, ``write_rois``, ``write_geojson`` as detections and as
QuPath cells (with the files' sizes), reading the GeoJSON back as labels, ``grow_cells`` and the
overlay with and without cells. Then, unless ``--slide 0``, ``dsb segment`` of a SLIDE x SLIDE
TIFF of sparser nuclei block by block (``--block-size 1024 --diameter 20``) with and without
``--cell-expansion 10``: time and peak memory of each (a fresh process each). Not a test: it prints
figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _child import run_dsb  # noqa: E402


def _times(function, repeat: int) -> str:
    taken = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        taken.append(time.perf_counter() - start)
    return ", ".join(f"{t:.3f}" for t in taken)


def library(side: int, repeat: int, folder: Path) -> None:
    from dsb.io.geojson import read_geojson_labels, write_geojson
    from dsb.io.rois import write_rois
    from dsb.io.synthetic import nuclei_field
    from dsb.workflows.cells import grow_cells
    from dsb.workflows.drawing import outline_overlay
    from dsb.workflows.segment_files import measure_nuclei

    image, labels = nuclei_field((side, side), 20, touching=True, seed=1)
    intensity = image.astype(float)
    cells = grow_cells(labels, 10)
    table = measure_nuclei(labels, intensity)
    print(f"{side} x {side} field of {labels.max()} touching nuclei, 20 px; seconds, {repeat} runs each")
    rows = [
        ("measure_nuclei(labels, image)", lambda: measure_nuclei(labels, intensity)),
        ("grow_cells(labels, 10)", lambda: grow_cells(labels, 10)),
        ("measure_nuclei(labels, image, cells=cells)", lambda: measure_nuclei(labels, intensity, cells=cells)),
        ("write_rois(path, labels)", lambda: write_rois(folder / "a_rois.zip", labels)),
        ("write_geojson(path, labels, measurements=table)",
         lambda: write_geojson(folder / "a.geojson", labels, measurements=table)),
        ("write_geojson(path, labels, cells=cells)", lambda: write_geojson(folder / "c.geojson", labels, cells=cells)),
        ("read_geojson_labels(path, shape)", lambda: read_geojson_labels(folder / "a.geojson", labels.shape)),
        ("outline_overlay(image, labels)", lambda: outline_overlay(image, labels)),
        ("outline_overlay(image, labels, cells=cells)", lambda: outline_overlay(image, labels, cells=cells)),
    ]
    for name, function in rows:
        print(f"{name} | {_times(function, repeat)}", flush=True)
    for name in ("a_rois.zip", "a.geojson", "c.geojson"):
        print(f"{name}: {(folder / name).stat().st_size / 1e6:.2f} MB")


def slide(side: int, folder: Path) -> None:
    import tifffile

    from dsb.io.synthetic import nuclei_field

    image, labels = nuclei_field((side, side), 20, seed=3)
    tifffile.imwrite(folder / "slide.tif", image)
    print(f"\ndsb segment of a {side} x {side} TIFF of {labels.max()} nuclei, --block-size 1024 --diameter 20; "
          "each in a fresh process")
    for extra in ([], ["--cell-expansion", "10"]):
        args = ["segment", str(folder / "slide.tif"), "--out", str(folder / "out"), "--block-size", "1024",
                "--diameter", "20", *extra]
        try:
            child = run_dsb(args)
        except RuntimeError as exc:
            print(f"failed: {exc}")
            continue
        print(f"{' '.join(extra) or 'no cells'} | {child['seconds']:.2f} s | {child['peak_kib'] / 2 ** 20:.2f} GiB peak",
              flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--slide", type=int, default=4096, help="side of the block-wise TIFF; 0 to skip it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        library(args.side, args.repeat, Path(tmp))
        if args.slide:
            slide(args.slide, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
