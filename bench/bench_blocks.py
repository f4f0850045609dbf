"""Block-wise segmentation (dsb.workflows.blocks) on synthetic fields: throughput, memory, agreement.

    python bench/bench_blocks.py [--size 20000] [--small 4096]

Prints, with the shipped model at a given diameter (20 px, the network's own
scale, so that the figures do not hang on the scale estimate):

- throughput of ``dsb segment`` on a SMALL x SMALL Zarr field, block by
  block, on a local Dask cluster of 1 and of 2 worker processes (one thread
  each), in megapixels per second, with and without the cluster's start;
- for a SIZE x SIZE field (20,000 x 20,000 by default, written as a Zarr
  store chunk by chunk, never held whole) on 2 workers: the time and the
  peak memory (VmHWM) of each worker and of the client; target at most
  2 GiB per worker, whatever the size;
- for the SMALL field, which fits in memory: one-piece segmentation
  (``dsb.segment``) against the block-wise run in this process, time and
  peak memory of each (a fresh process each), and how many nuclei differ
  (no match at IoU > 0.5, and not identical pixel for pixel).

Needs the ``distributed`` extra. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _memory import peak_kib

DIAMETER = 20
SPACING, RADIUS = 28, 8  # a lattice of discs 16 px across, jittered: about 1,300 nuclei a megapixel


def field_region(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """Rows r0:r1 and columns c0:c1 of one endless synthetic field, the same whichever way it is cut:
    blurred bright discs on a jittered lattice, with noise, as uint8."""
    from scipy import ndimage

    pad = 8
    rows = np.arange(r0 - pad, r1 + pad)[:, None]
    cols = np.arange(c0 - pad, c1 + pad)[None, :]
    discs = np.zeros((rows.size, cols.size), bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            i, j = rows // SPACING + di, cols // SPACING + dj
            code = (i * 73856093) ^ (j * 19349663)
            cr, cc = i * SPACING + SPACING // 2 + code % 7 - 3, j * SPACING + SPACING // 2 + (code >> 3) % 7 - 3
            keep = code % 11 != 0  # a few gaps
            discs |= keep & ((rows - cr) ** 2 + (cols - cc) ** 2 <= RADIUS**2)
    blurred = ndimage.gaussian_filter(discs * 180.0, 1.5)[pad:-pad, pad:-pad]
    noise = np.random.default_rng([r0, c0]).normal(0, 3, blurred.shape)
    return np.clip(blurred + 15 + noise, 0, 255).astype(np.uint8)


def write_field(path: Path, size: int, chunk: int = 1024) -> None:
    import zarr

    array = zarr.create_array(store=str(path), shape=(size, size), chunks=(chunk, chunk), dtype="uint8")
    for r0 in range(0, size, chunk):
        for c0 in range(0, size, chunk):
            r1, c1 = min(r0 + chunk, size), min(c0 + chunk, size)
            array[r0:r1, c0:c1] = field_region(r0, r1, c0, c1)


def _worker_peak_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


# ---------------------------------------------------------------- children (fresh processes)


def child_cluster(zarr_path: str, out: str, workers: int, block: int | None) -> dict:
    from dsb.network.model_folder import default_model_dir
    from dsb.workflows.blocks import segment_image_file
    from dsb.workflows.calibration import Calibration
    from dsb.workflows.cluster import ModelSpec, cluster_client

    spec = ModelSpec(str(default_model_dir()))  # the default engine and precision, as dsb segment
    start = time.perf_counter()
    with cluster_client(workers=workers) as client:
        started = time.perf_counter()
        row = segment_image_file(zarr_path, spec=spec, out_dir=out, calibration=Calibration(diameter=DIAMETER), block_size=block,
                                 client=client, progress=False)
        done = time.perf_counter()
        peaks = sorted(client.run(_worker_peak_kib).values())
    return {"seconds": done - started, "with_start": done - start, "nuclei": int(row["nuclei"]),
            "worker_peaks_kib": peaks, "client_peak_kib": peak_kib()}


def child_one_piece(size: int, out: str) -> dict:
    import dsb

    image = field_region(0, size, 0, size)
    dsb.load_model()
    before = peak_kib()
    start = time.perf_counter()
    labels = dsb.segment(image, diameter=DIAMETER)
    seconds = time.perf_counter() - start
    np.save(out, labels)
    return {"seconds": seconds, "peak_kib": peak_kib(), "before_kib": before, "nuclei": int(labels.max())}


def child_blockwise(zarr_path: str, out: str, block: int) -> dict:
    import zarr

    import dsb
    from dsb.network.model_folder import default_model_dir
    from dsb.workflows.blocks import segment_image_file
    from dsb.workflows.calibration import Calibration
    from dsb.workflows.cluster import ModelSpec

    dsb.load_model()
    before = peak_kib()
    spec = ModelSpec(str(default_model_dir()))  # the default engine and precision, as dsb segment
    start = time.perf_counter()
    row = segment_image_file(zarr_path, spec=spec, out_dir=out, calibration=Calibration(diameter=DIAMETER), block_size=block, progress=False)
    seconds = time.perf_counter() - start
    np.save(Path(out) / "labels.npy", zarr.open_array(row["labels"], mode="r")[:])
    return {"seconds": seconds, "peak_kib": peak_kib(), "before_kib": before, "nuclei": int(row["nuclei"])}


def _child(*args) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"child {args[0]} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- comparing


def differing_nuclei(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int]:
    """(nuclei in a, in b, a's nuclei with no match in b at IoU > 0.5, a's nuclei not identical in b)."""
    a, b = a.astype(np.int64).ravel(), b.astype(np.int64).ravel()
    fg = (a > 0) | (b > 0)
    pairs, inter = np.unique(a[fg] * (b.max() + 1) + b[fg], return_counts=True)
    pa, pb = pairs // (b.max() + 1), pairs % (b.max() + 1)
    area_a, area_b = np.bincount(a, minlength=a.max() + 1), np.bincount(b, minlength=b.max() + 1)
    real = (pa > 0) & (pb > 0)
    iou = inter[real] / (area_a[pa[real]] + area_b[pb[real]] - inter[real])
    matched = np.unique(pa[real][iou > 0.5])
    identical = np.unique(pa[real][iou == 1.0])
    n_a = int((area_a[1:] > 0).sum())
    return n_a, int((area_b[1:] > 0).sum()), n_a - matched.size, n_a - identical.size


def _gib(kib: int) -> str:
    return f"{kib / 2**20:.2f} GiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="side of the large field (0: skip it)")
    parser.add_argument("--small", type=int, default=4096, help="side of the field that fits in memory")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        name, *rest = json.loads(args.child)
        print(json.dumps({"cluster": child_cluster, "one": child_one_piece, "blockwise": child_blockwise}[name](*rest)))
        return 0
    try:
        import distributed  # noqa: F401
        import zarr  # noqa: F401
    except ImportError:
        print("skipped: needs the distributed extra (pip install -e '.[distributed]')")
        return 0
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"cores: {len(os.sched_getaffinity(0))} ({cpu}); diameter {DIAMETER} px (scale 1)")
    with tempfile.TemporaryDirectory(prefix="dsb-bench-blocks.") as tmp:
        tmp = Path(tmp)
        small = tmp / "small.zarr"
        write_field(small, args.small)
        mp = args.small**2 / 1e6
        for workers, block in ((1, None), (2, None), (2, 1024)):
            row = _child("cluster", str(small), str(tmp / f"out-{workers}-{block}"), workers, block)
            print(f"{args.small}x{args.small} ({mp:.1f} MP), {workers} worker(s), block {block or 'default 2048'}:"
                  f" {row['seconds']:.1f} s, {mp / row['seconds']:.2f} MP/s ({mp / row['with_start']:.2f} with the"
                  f" cluster's start); peak per worker {', '.join(_gib(k) for k in row['worker_peaks_kib'])};"
                  f" {row['nuclei']} nuclei")
        one = _child("one", args.small, str(tmp / "one.npy"))
        block = _child("blockwise", str(small), str(tmp / "blockwise"), 1024)
        n_one, n_block, unmatched, changed = differing_nuclei(np.load(tmp / "one.npy"),
                                                              np.load(tmp / "blockwise" / "labels.npy"))
        print(f"{args.small}x{args.small} in one process: one piece {one['seconds']:.1f} s, peak {_gib(one['peak_kib'])}"
              f" (model loaded: {_gib(one['before_kib'])}); block-wise (1024-px blocks) {block['seconds']:.1f} s,"
              f" peak {_gib(block['peak_kib'])} (model loaded: {_gib(block['before_kib'])})")
        print(f"nuclei: {n_one} one piece, {n_block} block-wise; {unmatched} of one piece's without a block-wise"
              f" match at IoU > 0.5, {changed} not identical pixel for pixel")
        if args.size:
            big = tmp / "big.zarr"
            start = time.perf_counter()
            write_field(big, args.size)
            print(f"{args.size}x{args.size} field written as Zarr in {time.perf_counter() - start:.0f} s")
            row = _child("cluster", str(big), str(tmp / "out-big"), 2, None)
            mp = args.size**2 / 1e6
            worst = max(row["worker_peaks_kib"])
            print(f"{args.size}x{args.size} ({mp:.0f} MP), 2 workers, default blocks: {row['seconds']:.0f} s,"
                  f" {mp / row['seconds']:.2f} MP/s, {row['nuclei']} nuclei; peak per worker"
                  f" {', '.join(_gib(k) for k in row['worker_peaks_kib'])} (target at most 2 GiB:"
                  f" {'met' if worst <= 2 * 2**20 else 'MISSED'}); client {_gib(row['client_peak_kib'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
