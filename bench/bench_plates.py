"""What an OME-Zarr screening plate costs beside the same fields as a folder of TIFFs.

    python bench/bench_plates.py [--wells 4] [--fields 4] [--side 1024] [--workers 2]

Writes WELLS wells of FIELDS synthetic fields each (``nuclei_field((SIDE, SIDE), 20, seed=i)``)
twice: as an OME-Zarr plate (``dsb.io.synthetic.write_plate``, OME-NGFF 0.4) and as a folder of
TIFFs of the same pixels. Then ``dsb segment`` of the folder, of the plate (which adds reading
the plate's metadata, each field's header and PLATE_wells.csv), and of the plate with
``--workers N``: time, peak memory of the process that runs ``dsb`` (not the workers') and
seconds a field, each in a fresh process. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _child import run_dsb  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wells", type=int, default=4)
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2, help="Dask workers of the third run; 0 to skip it")
    args = parser.parse_args()
    try:
        import tifffile
        import zarr  # noqa: F401
    except ImportError as exc:
        print(f"skipped: {exc.name} is not installed (pip install -e '.[distributed]')")
        return 0
    from dsb.io.synthetic import nuclei_field, write_plate

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "tiffs").mkdir()
        wells, seed, nuclei = {}, 0, 0
        for w in range(args.wells):
            well = ("ABCDEFGH"[w // 12 % 8], f"{w % 12 + 1:02d}")
            wells[well] = []
            for f in range(args.fields):
                seed += 1
                image, labels = nuclei_field((args.side, args.side), 20, seed=seed)
                nuclei += int(labels.max())
                wells[well].append(image)
                tifffile.imwrite(folder / "tiffs" / f"{''.join(well)}_{f}.tif", image)
        write_plate(folder / "plate.ome.zarr", wells, axes="yx", pixel_size=0.65)
        count = args.wells * args.fields
        print(f"{count} fields of {args.side} x {args.side} ({nuclei} true nuclei), each run in a fresh process")
        runs = [("folder of TIFFs", [str(folder / "tiffs")]), ("OME-Zarr plate", [str(folder / "plate.ome.zarr")])]
        if args.workers:
            runs.append((f"plate, --workers {args.workers}",
                         [str(folder / "plate.ome.zarr"), "--workers", str(args.workers)]))
        print("input | seconds | s a field | peak GiB (dsb's process)")
        for i, (what, given) in enumerate(runs):
            try:
                run = run_dsb(["segment", *given, "--out", str(folder / f"out{i}")])
            except RuntimeError as exc:
                print(f"{what} | failed: {exc}")
                continue
            print(f"{what} | {run['seconds']:.2f} | {run['seconds'] / count:.3f} | {run['peak_kib'] / 2 ** 20:.2f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
