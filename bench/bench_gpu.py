"""Training and prediction on a GPU: the shipped "gpu" config trained for a few minutes, then the
forward pass and ``dsb.segment`` timed.

    KERAS_BACKEND=jax python bench/bench_gpu.py [--data DIR | --cache DIR] [--minutes 4.5]
                                                [--out DIR] [--images 30]

Needs a GPU that Keras's backend sees (:func:`dsb.network.engines.accelerator`); says so and
exits 0 without one. The training images come from ``--data`` (a fetched data folder; the
prepared cache is built on first use) or ``--cache``, a prepared cache folder copied from
another machine (``images.npz`` may be xz-compressed as ``images.npz.xz``, which is how it fits
the transfer limit of a GPU machine lent for a few minutes; stained images' colours are read
from the ``stage_dir`` of its ``manifest.json``, or its sibling folder ``stage/``).

Prints:

- what ``--precision auto`` measured and chose, the loader threads, and each epoch's time
  (the run's own progress lines), for a run of ``--minutes`` (the cosine follows the budget);
- the bare forward pass in megapixels a second, batches of 8 and 32 tiles of 256x256, of the
  trained model and of the shipped one;
- ``dsb.segment`` on the first ``--images`` held-out images of the run, one at a time, cold (the
  first call of each shape compiles) and warm, with tiles padded to
  :func:`dsb.network.engines.shape_ladder` (the default on a GPU) and without.

``dsb evaluate OUT --data data`` then scores the run on any machine. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _cache_copy(folder: Path, into: Path) -> Path:
    """The cache folder with ``images.npz`` decompressed and ``stage_dir`` pointing at a folder that exists."""
    into.mkdir(parents=True)
    for item in folder.iterdir():
        if item.name == "images.npz.xz":
            with lzma.open(item) as src, open(into / "images.npz", "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
        elif item.is_file():
            shutil.copy(item, into / item.name)
    manifest = json.loads((into / "manifest.json").read_text())
    stage = manifest.get("stage_dir")
    if not (stage and Path(stage).is_dir()) and (folder.parent / "stage").is_dir():
        manifest["stage_dir"] = str((folder.parent / "stage").resolve())
        (into / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return into


def _forward(model, batch: int, side: int = 256, repeats: int = 10) -> float:
    """Megapixels a second of the bare network on ``batch`` random tiles (after one compiling call)."""
    import numpy as np

    x = np.random.default_rng(0).random((batch, side, side, 1), dtype=np.float32)
    model.network(x)
    began = time.perf_counter()
    for _ in range(repeats):
        model.network(x)
    return batch * side * side * repeats / (time.perf_counter() - began) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", type=Path, default=Path("data"))
    source.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--minutes", type=float, default=4.5)
    parser.add_argument("--out", type=Path, default=None, help="the run folder (default: a temporary one)")
    parser.add_argument("--images", type=int, default=30)
    args = parser.parse_args()

    from dsb.network.engines import accelerator

    gpu = accelerator()
    if gpu is None:
        print("no GPU that Keras's backend sees: nothing to measure")
        return 0
    import keras

    import dsb
    from dsb.core.config import shipped_config
    from dsb.network.model_folder import default_model_dir
    from dsb.training.cache import load_prepared, read_prepared
    from dsb.training.session import train_prepared

    print(f"{keras.backend.backend()} on {gpu}, keras {keras.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.cache is not None:
            prepared = read_prepared(_cache_copy(args.cache, Path(tmp) / "cache"))
        elif (args.data / "stage1_train").is_dir():
            prepared = load_prepared(args.data, progress=True)
        else:
            print(f"no {args.data / 'stage1_train'} and no --cache: nothing to train on")
            return 0
        run = args.out or Path(tmp) / "run"
        began = time.perf_counter()
        train_prepared(prepared, shipped_config("gpu"), out_dir=run, time_budget=args.minutes,
                       precision="auto", seed=42)
        manifest = json.loads((run / "manifest.json").read_text())
        print(f"trained {manifest['epochs_run']} epochs in {time.perf_counter() - began:.0f} s"
              f" ({manifest['precision']}, {manifest['loader_threads']} loader threads)", flush=True)
        val_ids = json.loads((run / "config.json").read_text())["validation_ids"]
        index = {i: n for n, i in enumerate(prepared.ids)}
        images = [prepared.images[index[i]] for i in val_ids][: args.images]
        megapixels = sum(im.size for im in images) / 1e6
        print("| model | forward, batch 8 | forward, batch 32 |\n| --- | ---: | ---: |")
        for name, path in (("this run", run), ("shipped", default_model_dir())):
            model = dsb.load_model(path, engine="keras")
            print(f"| {name} | {_forward(model, 8):.1f} MP/s | {_forward(model, 32):.1f} MP/s |", flush=True)
        print(f"\ndsb.segment, shipped model, {len(images)} held-out images ({megapixels:.2f} MP), one at a time:")
        print("| tiles | cold | warm | nuclei |\n| --- | ---: | ---: | ---: |")
        for pad in (True, False):
            model = dsb.load_model(default_model_dir(), engine="keras")  # its own compiled shapes
            model.network.pad_shapes = pad
            seconds, nuclei = [], 0
            for _ in range(2):
                began = time.perf_counter()
                nuclei = sum(int(dsb.segment(im, model).max()) for im in images)
                seconds.append(time.perf_counter() - began)
            print(f"| {'on the ladder' if pad else 'as they come'} | {megapixels / seconds[0]:.2f} MP/s"
                  f" | {megapixels / seconds[1]:.2f} MP/s | {nuclei} |", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.exit(main())
