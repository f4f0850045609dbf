"""Prediction speed and memory on the 65 stage-1 test images (11.2 megapixels).

    python bench/bench_predict.py [RUN_DIR] [--tile-size N] [--overlap N] [--batch-size N] [--tta] [--repeat N]

Without RUN_DIR the model is the untrained U-Net of the shipped "cpu" config
(speed does not depend on the weights). Prints, without TTA unless asked:

- end-to-end throughput of ``dsb predict`` (read, preprocess, tile, network,
  watershed, encode, write and validate the CSV) in megapixels per second,
  cold (first pass, graph tracing included) and warm;
- the bare forward pass: ``predict_on_batch`` over the same tile batches and
  nothing else, and the ratio end-to-end / forward (target at most 1.3).
  Warm passes of both alternate ``--repeat`` times and the best of each is
  kept, since the machine may be shared;
- peak memory (ru_maxrss) of a fresh process that predicts the largest image,
  and of one that predicts a synthetic 2048x2048 image of 6-pixel nuclei at
  their diameter (upscaled to the network's: the worst case of scale
  normalisation; target < 3 GiB).

Needs the competition files (../shared/dsb2018 or $DSB_SHARED); says so and
exits 0 when they are absent. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _shared() -> Path:
    return Path(os.environ.get("DSB_SHARED", REPO.parent / "shared" / "dsb2018"))


def _load(run_dir: str | None, args):
    """The model and config to measure, with the command-line overrides applied."""
    import keras

    from dsb.config import shipped_config
    from dsb.model import build_unet

    if run_dir:
        from dsb.run import load_run

        model, config = load_run(run_dir)
    else:
        keras.utils.set_random_seed(0)
        config = shipped_config("cpu")
        model = build_unet(config.model)
    changes = {k: v for k, v in (("tile_size", args.tile_size), ("overlap", args.overlap),
                                 ("batch_size", args.batch_size)) if v is not None}
    if changes:
        import dataclasses

        config = config.replace(predict=dataclasses.replace(config.predict, **changes)).check()
    return model, config


def _peak_memory(args) -> int:
    """Child mode: predict one image in this fresh process, print ru_maxrss before and after (KiB)."""
    import numpy as np

    from dsb.dataset import read_image
    from dsb.predict import predict_labels

    model, config = _load(args.run_dir, args)
    raw = read_image(args.peak_memory)
    model.predict_on_batch(np.zeros((1, 32, 32, 1), np.float32))  # load the backend fully
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    labels = predict_labels(model, config, raw, tta=args.tta, diameter=args.diameter)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(before, after, int(labels.max()))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--tile-size", type=int)
    parser.add_argument("--overlap", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="warm passes of each measurement (best is kept)")
    parser.add_argument("--peak-memory", help=argparse.SUPPRESS)
    parser.add_argument("--diameter", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory:
        return _peak_memory(args)

    zip_path = _shared() / "stage1_test.zip"
    if not zip_path.is_file():
        print(f"skipped: {zip_path} not found (set DSB_SHARED)")
        return 0

    import numpy as np

    from dsb.dataset import read_image
    from dsb.pipeline import folder_images
    from dsb.predict import batch_predictor, predict_images
    from dsb.tiling import plan_axis

    with tempfile.TemporaryDirectory(prefix="dsb-bench-predict-") as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp / "stage1_test")
        images, _ = folder_images(tmp / "stage1_test")
        shapes = {i: read_image(p).shape[:2] for i, p in images.items()}
        megapixels = sum(h * w for h, w in shapes.values()) / 1e6
        largest = max(images, key=lambda i: shapes[i][0] * shapes[i][1])

        model, config = _load(args.run_dir, args)
        p = config.predict
        multiple = 2 ** (len(config.model.level_filters()) - 1)
        tile_pixels = 0
        for h, w in shapes.values():
            rows, cols = (plan_axis(n, p.tile_size, p.overlap, multiple) for n in (h, w))
            tile_pixels += len(rows.starts) * len(cols.starts) * rows.tile * cols.tile
        views = 8 if args.tta else 1
        print(f"model: {args.run_dir or 'untrained shipped cpu config'}; tile {p.tile_size}, overlap {p.overlap},"
              f" batch {p.batch_size}, TTA {'on' if args.tta else 'off'}")
        print(f"images: {len(images)}, {megapixels:.2f} megapixels; tiles cover {tile_pixels / 1e6 * views:.2f}"
              f" megapixels ({tile_pixels / 1e6 / megapixels:.2f}x the image area per view)")

        # Record every batch the network sees, and the time it spends on them.
        forward = batch_predictor(model)
        batches: list[tuple[int, ...]] = []
        spent = [0.0]

        class Timed:
            def predict_on_batch(self, batch):
                batches.append(batch.shape)
                began = time.perf_counter()
                out = forward(batch)
                spent[0] += time.perf_counter() - began
                return out

        def end_to_end(name: str) -> tuple[float, float]:
            batches.clear()
            spent[0] = 0.0
            began = time.perf_counter()
            predict_images(Timed(), config, tmp / "stage1_test", out_csv=tmp / f"{name}.csv", tta=args.tta,
                           progress=False)
            return time.perf_counter() - began, spent[0]

        def bare_forward(arrays) -> float:
            began = time.perf_counter()
            for batch in arrays:
                forward(batch)
            return time.perf_counter() - began

        cold, _ = end_to_end("cold")
        print(f"end to end (cold, graph tracing included): {cold:.2f} s, {megapixels / cold:.2f} MP/s")
        # The machine may be shared: alternate warm passes of both and keep the best of each.
        arrays = [np.random.default_rng(0).random(s, dtype=np.float32) for s in batches]
        warm, bare = [], []
        for _ in range(args.repeat):
            warm.append(end_to_end("warm"))
            bare.append(bare_forward(arrays))
        total, inside = min(warm)
        best_bare = min(bare)
        print(f"end to end (warm, best of {args.repeat}): {total:.2f} s, {megapixels / total:.2f} MP/s;"
              f" network calls inside it {inside:.2f} s ({inside / total:.0%})")
        print(f"bare forward pass over the same {sum(s[0] for s in batches)} tiles in {len(batches)} batches"
              f" (best of {args.repeat}): {best_bare:.2f} s, {megapixels / best_bare:.2f} MP/s")
        print(f"ratio end to end / bare forward: {total / best_bare:.2f} (target <= 1.3);"
              f" end to end / its own network calls: {total / inside:.2f}")

        h, w = shapes[largest]
        measured = _child_peak(args, images[largest])
        if measured is None:
            return 1
        before, after = measured
        print(f"peak memory predicting the largest image ({h}x{w}): {after / 2**20:.2f} GiB"
              f" (process with model loaded: {before / 2**20:.2f} GiB; target < 2 GiB)")
        small = tmp / "small-nuclei-2048.png"
        _write_small_nuclei(small)
        measured = _child_peak(args, small, diameter=6.0)
        if measured is None:
            return 1
        print(f"peak memory predicting 2048x2048 of 6-px nuclei (--diameter 6, resampled to the network's"
              f" diameter): {measured[1] / 2**20:.2f} GiB (target < 3 GiB)")
    return 0


def _write_small_nuclei(path: Path) -> None:
    """A 2048x2048 fluorescence-like image of discs 6 pixels across, 10 pixels apart."""
    import numpy as np
    from PIL import Image

    rr, cc = np.indices((2048, 2048))
    discs = ((rr % 10 - 4.5) ** 2 + (cc % 10 - 4.5) ** 2) <= 9
    Image.fromarray(np.where(discs, 200, 15).astype(np.uint8)).save(path)


def _child_peak(args, image: Path, *, diameter: float | None = None) -> tuple[int, int] | None:
    """ru_maxrss (KiB) of a fresh process before and after predicting ``image``; None if it failed."""
    cmd = [sys.executable, __file__, "--peak-memory", str(image)]
    cmd += [args.run_dir] if args.run_dir else []
    for flag in ("tile_size", "overlap", "batch_size"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    cmd += ["--tta"] if args.tta else []
    cmd += ["--diameter", str(diameter)] if diameter else []
    child = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if child.returncode:
        print(f"peak memory: child failed:\n{child.stderr[-2000:]}")
        return None
    before, after, _ = map(int, child.stdout.split()[-3:])
    return before, after


if __name__ == "__main__":
    sys.exit(main())
