"""Training speed, input-pipeline overhead and peak memory on stage1_train.

    python bench/bench_train.py [--data DIR] [--cache-dir DIR] [--config cpu|gpu|FILE]
                                [--steps N] [--workers N] [--memory-steps N]

Prints, for the shipped "cpu" config unless told otherwise:

- train-step time per 256x256 image: ``fit`` on one constant batch of real
  crops (graph tracing excluded), divided by the batch size;
- the input pipeline's overhead: the same ``fit`` fed by the real augmenting
  :class:`dsb.training.loader.CropLoader` instead of the constant batch (target at most
  10 %), and the loader's own time per batch without a model;
- peak memory (VmHWM, :func:`_memory.peak_kib`) of a fresh process that
  runs a short :func:`dsb.training.train_prepared` on all of stage1_train
  (validation included);
- training throughput in crops per second (``--throughput``, on by default in
  ``make bench``): each setting in a fresh process (the backend's threads and
  oneDNN are fixed at start-up), on one constant batch of random crops:
  float32 against ``mixed_bfloat16``, TensorFlow's op determinism (on by
  default on CPUs), oneDNN off, one thread between ops, and batch and crop
  sizes. Crops per second compare settings with the same crop; megapixels per
  second compare crop sizes.

The data come from ``--data`` (a folder with ``stage1_train/``; default
``data/`` when it has one), else from ../shared/dsb2018 (or $DSB_SHARED),
unzipped into a temporary folder; the prepared cache is built on first use.
Says so and exits 0 when there are no data. Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _memory import peak_kib  # noqa: E402  (bench/ is the script's own folder)


def _shared() -> Path:
    return Path(os.environ.get("DSB_SHARED", REPO.parent / "shared" / "dsb2018"))


def _config(name: str):
    from dsb.core.config import SHIPPED_CONFIGS, load_config, shipped_config

    return shipped_config(name) if name in SHIPPED_CONFIGS else load_config(name)


def _prepared(args, tmp: Path):
    from dsb.training.cache import load_prepared

    data = Path(args.data) if args.data else REPO / "data"
    if not (data / "stage1_train").is_dir():
        zip_path = _shared() / "stage1_train.zip"
        if not zip_path.is_file():
            return None
        data = tmp / "data"
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(data / "stage1_train")
    config = _config(args.config)
    return load_prepared(data, config.preprocess, cache_dir=args.cache_dir, progress=True)


def _timed_fit(model, data, steps: int) -> float:
    start = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    return time.perf_counter() - start


def speed(args, prepared) -> None:
    import keras

    from dsb.network.unet import build_unet, compile_model
    from dsb.training.environment import Environment
    from dsb.training.loader import CropLoader, split_ids

    config = _config(args.config)
    tc = config.train
    train_ids, _ = split_ids(prepared.ids, prepared.types, fraction=tc.validation_fraction, seed=tc.seed)
    keep = set(train_ids)
    idx = [i for i, id_ in enumerate(prepared.ids) if id_ in keep]
    images = [prepared.images[i] for i in idx]
    labels = [prepared.labels[i] for i in idx]

    with Environment("default", "float32", None) as env:
        keras.utils.set_random_seed(tc.seed)
        model = compile_model(build_unet(config.model), config, total_steps=10_000)
        loader = CropLoader(images, labels, batch_size=tc.batch_size, steps_per_epoch=10_000, seed=tc.seed,
                            crop_size=tc.crop_size, targets=TargetSpec.for_config(config), augment=tc,
                            workers=args.workers)
        x, y = loader[0]

        class Constant(keras.utils.PyDataset):
            def __init__(self):
                super().__init__()

            @property
            def num_batches(self):
                return None

            def __getitem__(self, index):
                return x, y

        t = time.perf_counter()
        for i in range(10):
            loader[i]
        loader_alone = (time.perf_counter() - t) / 10
        _timed_fit(model, Constant(), 3)  # graph tracing and warm-up
        _timed_fit(model, loader, 2)
        const_times, loader_times = [], []
        for _ in range(args.rounds):  # interleaved, so that load from elsewhere hits both alike
            const_times.append(_timed_fit(model, Constant(), args.steps) / args.steps)
            loader_times.append(_timed_fit(model, loader, args.steps) / args.steps)
        const, fed = min(const_times), min(loader_times)
        ratios = sorted(f / c for c, f in zip(const_times, loader_times))
        median_ratio = ratios[len(ratios) // 2] if len(ratios) % 2 else sum(ratios[len(ratios) // 2 - 1:][:2]) / 2
        print(f"backend {env.backend} on {', '.join(env.devices)}, deterministic ops {env.deterministic}, "
              f"{os.cpu_count()} CPUs")
        print(f"config {args.config}: depth {len(config.model.level_filters())}, filters "
              f"{list(config.model.level_filters())}, {model.count_params():,} parameters, "
              f"batch {tc.batch_size} x {tc.crop_size}x{tc.crop_size}")
        print(f"train step, constant batch: {const:.3f} s/step = {const / tc.batch_size * 1000:.0f} ms per "
              f"{tc.crop_size}x{tc.crop_size} image (best of {args.rounds} x {args.steps} steps; all: "
              f"{', '.join(f'{v:.3f}' for v in const_times)})")
        print(f"train step, CropLoader ({args.workers} worker(s)): {fed:.3f} s/step "
              f"(all: {', '.join(f'{v:.3f}' for v in loader_times)})")
        print(f"input pipeline overhead: {100 * (fed / const - 1):+.1f} % best vs best, "
              f"{100 * (median_ratio - 1):+.1f} % median of paired rounds (target <= 10 %); "
              f"loader alone {loader_alone * 1000:.0f} ms per batch ({100 * loader_alone / const:.1f} % of a step)")


# (label, precision, deterministic, environment, batch, crop): the first is the shipped cpu config.
SETTINGS = [
    ("float32, deterministic (shipped)", "float32", True, {}, 8, 256),
    ("float32, not deterministic", "float32", False, {}, 8, 256),
    ("mixed_bfloat16, deterministic", "bfloat16", True, {}, 8, 256),
    ("float32, oneDNN off", "float32", True, {"TF_ENABLE_ONEDNN_OPTS": "0"}, 8, 256),
    ("float32, 2 intra-op / 1 inter-op threads", "float32", True,
     {"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "1"}, 8, 256),
    ("float32, batch 4", "float32", True, {}, 4, 256),
    ("float32, batch 16", "float32", True, {}, 16, 256),
    ("float32, batch 14 of 192", "float32", True, {}, 14, 192),
    ("float32, batch 4 of 384", "float32", True, {}, 4, 384),
]


def throughput_child(args) -> None:
    """One setting, in this fresh process: train steps per second on a constant batch of random crops."""
    import keras
    import numpy as np

    from dsb.network.unet import build_unet, compile_model
    from dsb.training.environment import Environment

    config = _config(args.config)
    with Environment("default", args.precision, args.deterministic == "1"):
        keras.utils.set_random_seed(0)
        model = compile_model(build_unet(config.model), config, total_steps=10_000)
        rng = np.random.default_rng(0)
        x = rng.random((args.batch, args.crop, args.crop, 1), dtype=np.float32)
        y = (rng.random((args.batch, args.crop, args.crop, len(config.model.outputs))) > 0.7).astype(np.float32)
        model.fit(x, y, batch_size=args.batch, epochs=1, steps_per_epoch=None, verbose=0)  # tracing
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(x, y)
            times.append((time.perf_counter() - start) / args.steps)
    step = min(times)
    print(f"{step:.4f} {args.batch / step:.2f} {args.batch * args.crop**2 / step / 1e6:.3f}")


def throughput(args) -> None:
    """Each setting of :data:`SETTINGS` in its own process; print crops/s and megapixels/s."""
    print(f"training throughput, {args.config} config, best of {args.rounds} x {args.steps} steps "
          f"on a constant batch, {len(os.sched_getaffinity(0))} cores:")
    print("| setting | s/step | crops/s | MP/s |")
    print("| --- | ---: | ---: | ---: |")
    for label, precision, deterministic, env, batch, crop in SETTINGS:
        cmd = [sys.executable, __file__, "--throughput-child", "--config", args.config, "--precision", precision,
               "--deterministic", "1" if deterministic else "0", "--batch", str(batch), "--crop", str(crop),
               "--steps", str(args.steps), "--rounds", str(args.rounds)]
        child = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, check=False)
        if child.returncode:
            print(f"| {label} | failed: {child.stderr.strip().splitlines()[-1][:120] if child.stderr else ''} | | |")
            continue
        step, crops, mp = child.stdout.split()[-3:]
        print(f"| {label} | {float(step):.3f} | {float(crops):.1f} | {float(mp):.2f} |", flush=True)


def memory(args) -> None:
    """Run in a fresh process: a short training on all of stage1_train, then print its peak memory."""
    from dsb.training import train_prepared

    with tempfile.TemporaryDirectory() as tmp:
        prepared = _prepared(args, Path(tmp))
        start = time.perf_counter()
        train_prepared(prepared, _config(args.config), out_dir=Path(tmp) / "run", epochs=1,
                       steps_per_epoch=args.memory_steps, progress=False)
        took = time.perf_counter() - start
    peak = peak_kib() / 1024**2  # KiB -> GiB
    print(f"peak memory of training on all of stage1_train ({len(prepared.ids)} images, 1 epoch of "
          f"{args.memory_steps} steps plus validation, {took:.0f} s): {peak:.2f} GiB (target < 4 GiB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--config", default="cpu")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--memory-steps", type=int, default=5)
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--throughput-only", action="store_true")
    parser.add_argument("--throughput-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--deterministic", default="1", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--crop", type=int, default=256, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()  # run_all.py passes its arguments to every bench

    if args.throughput_child:
        throughput_child(args)
        return 0
    if args.throughput_only:
        throughput(args)
        return 0

    if args.memory_only:
        memory(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        prepared = _prepared(args, Path(tmp))
        if prepared is None:
            print(f"no training data (no data/stage1_train, no {_shared() / 'stage1_train.zip'}): skipped")
            return 0
        if args.data is None and not (REPO / "data" / "stage1_train").is_dir():
            args.data = str(Path(tmp) / "data")  # reuse the unzipped copy in the memory run
        speed(args, prepared)
        sys.stdout.flush()
        if not args.skip_memory:
            cmd = [sys.executable, __file__, "--memory-only", "--config", args.config,
                   "--memory-steps", str(args.memory_steps), "--data", args.data or str(REPO / "data")]
            if args.cache_dir:
                cmd += ["--cache-dir", args.cache_dir]
            subprocess.run(cmd, check=False)
    if not args.skip_throughput:
        sys.stdout.flush()
        throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
