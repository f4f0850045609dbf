"""Prediction speed and memory per inference engine on the 65 stage-1 test images (11.2 megapixels).

    python bench/bench_predict.py [RUN_DIR] [--engines keras,onnx,openvino,openvino:float32,openvino:int8,...]
                                  [--tile-size N]
                                  [--overlap N] [--batch-size N] [--tta] [--repeat N] [--baseline REV]

Without RUN_DIR the model is the one shipped with the package (speed depends
on the weights through the scales each image's estimated nucleus size picks).
For each engine that is installed (a folder without ``model.onnx`` gets one
in a temporary copy; ``ENGINE`` alone runs at the default precision, ``auto``: bfloat16 on
OpenVINO where the CPU has bfloat16 units, else int8 on an x86 CPU (AVX2 or later) where the
folder has ``model.int8.onnx``, else float32; ``ENGINE:float32`` and
``ENGINE:bfloat16`` ask for one; ``ENGINE:int8`` runs the folder's ``model.int8.onnx``,
skipped when there is none; ``ENGINE/one-look`` runs the scale estimate without its cross-check,
and ``ENGINE/no-split`` the watershed without the split of merged-looking nuclei
(``postprocess.split_ratio`` 0), and ``ENGINE/keep-unsure`` without the drop of unsure nuclei
(``postprocess.min_confidence`` 0), and ``ENGINE/no-small-pass`` without the finer pass for the
small nuclei of shrunk images (``predict.small_pass`` 0), as releases before them did, for each
beside the current prediction; ``ENGINE/x1.25`` predicts at 1.25 times the chosen scale,
``predict.scale_factor``), with scale normalisation on and TTA off unless asked:

- end-to-end throughput of ``dsb predict`` (read, preprocess, estimate the
  scale, tile, network, watershed, encode, write and validate the CSV) in
  megapixels of the images per second, warm (best of ``--repeat``);
- the share of it the scale estimate takes (all of it, windows, network
  passes and their watersheds, less a last pass that serves as the
  prediction, over the time the images spent in prediction, summed over the
  threads when several run at once; target at most 20 %);
- the bare forward pass: the engine over the same batches (estimate passes
  included) and nothing else, the faster of its streams all at once (for an
  engine with several, :meth:`dsb.network.engines.Network.streams`) and one call at a
  time on every core; and the ratio end-to-end / forward (target at most
  1.3), with the spread of the ratio run by run;
- the CPU time spent outside the network, measured by replaying the run
  serially with each batch's recorded output (no engine time at all): what
  a faster engine cannot take away unless it runs beside the network (the
  watershed thread, or the other images of a run in streams);
- peak memory (VmHWM, :func:`_memory.peak_kib`) of a fresh process that
  predicts a 1040x1388 image (a stage1_train image of that size when the
  training zip is there), target at most 2 GiB; and, for an engine with
  streams, of a folder of copies of it, one in flight per stream;

then, for the default engine only, the peak memory of a synthetic 2048x2048
image of 6-pixel nuclei at their diameter (upscaled to the network's: the
worst case of scale normalisation; target < 3 GiB).

``--baseline REV`` (``make bench`` passes ``BENCH_BASELINE``) also times the
prediction of an earlier commit, in the same run on the same machine: REV's
own ``bench/bench_predict.py``, in a temporary git worktree of REV, with REV's
shipped model at REV's default engine and precision (the product as it was
then), and puts its row in the table with the default's speed over it.

Needs the competition files (../shared/dsb2018 or $DSB_SHARED); says so and
exits 0 when they are absent. Not a test: it prints figures.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _memory import peak_kib  # noqa: E402  (bench/ is the script's own folder)


def _shared() -> Path:
    return Path(os.environ.get("DSB_SHARED", REPO.parent / "shared" / "dsb2018"))


def _model_dir(run_dir: str | None, tmp: Path) -> Path:
    """The folder to measure: RUN_DIR or the shipped model, with a model.onnx (exported into a copy if needed)."""
    import shutil

    from dsb.network.model_folder import ONNX_FILE, default_model_dir
    from dsb.workflows.export import export_onnx_in_place

    folder = Path(run_dir) if run_dir else default_model_dir()
    if (folder / ONNX_FILE).is_file():
        return folder
    copy = tmp / "model"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("checkpoints", "logs"))
    export_onnx_in_place(copy)
    return copy


# What each ``ENGINE/VARIANT`` changes: a section of the config and the values it replaces (the
# first two, keep-unsure and no-small-pass leave out what earlier releases lacked; x1.25 predicts 1.25 times larger, as dsb tune
# --scale-factors may choose).
VARIANTS = {"one-look": ("predict", {"cross_check": False}), "no-split": ("postprocess", {"split_ratio": 0.0}),
            "x1.25": ("predict", {"scale_factor": 1.25}), "keep-unsure": ("postprocess", {"min_confidence": 0.0}),
            "no-small-pass": ("predict", {"small_pass": 0.0})}


def _load(model_dir: Path, engine: str, args, precision: str = "auto", variant: str = ""):
    """The network and config to measure, with the command-line overrides applied."""
    import dataclasses

    from dsb.network.engines import load_network

    network, config = load_network(model_dir, engine, precision)
    changes = {k: v for k, v in (("tile_size", args.tile_size), ("overlap", args.overlap),
                                 ("batch_size", args.batch_size)) if v is not None}
    if changes:
        config = config.replace(predict=dataclasses.replace(config.predict, **changes)).check()
    if variant:
        section, values = VARIANTS[variant]
        config = config.replace(**{section: dataclasses.replace(getattr(config, section), **values)}).check()
    return network, config


def _peak_memory(args) -> int:
    """Child mode: predict one image in this fresh process, print its peak memory before and after (KiB)."""
    import numpy as np

    from dsb.inference.predict import predict_labels
    from dsb.io.images import read_image

    network, config = _load(Path(args.run_dir), args.engine, args, args.precision)
    raw = read_image(args.peak_memory)
    network(np.zeros((1, 32, 32, 1), np.float32))  # load the engine fully
    if args.copies > 1:  # a folder of copies, as many at once as the engine has streams
        from dsb.workflows.pipeline import nuclei_predictor, predict_each

        for stream in network.streams():
            stream(np.zeros((1, 32, 32, 1), np.float32))
        before = peak_kib()
        items = [(str(i), None, raw) for i in range(args.copies)]
        found = list(predict_each(nuclei_predictor(network, config, tta=args.tta, diameter=args.diameter), items,
                                  length=len(items)))
        labels = found[-1][-1].labels
    else:
        before = peak_kib()
        labels = predict_labels(network, config, raw, tta=args.tta, diameter=args.diameter)
    after = peak_kib()
    print(before, after, int(labels.max()))
    return 0


def _large_image(tmp: Path) -> Path:
    """A 1040x1388 image: the first stage1_train image of that size, or a synthetic one."""
    zip_path = _shared() / "stage1_train.zip"
    if zip_path.is_file():
        import io

        from PIL import Image

        with zipfile.ZipFile(zip_path) as zf:
            for name in sorted(zf.namelist()):
                if "/images/" in name and name.endswith(".png"):
                    with zf.open(name) as f:
                        data = f.read()
                    if Image.open(io.BytesIO(data)).size == (1388, 1040):
                        path = tmp / "large-1040x1388.png"
                        path.write_bytes(data)
                        return path
    import numpy as np
    from PIL import Image

    rr, cc = np.indices((1040, 1388))
    discs = ((rr % 40 - 19.5) ** 2 + (cc % 40 - 19.5) ** 2) <= 144
    path = tmp / "synthetic-1040x1388.png"
    Image.fromarray(np.where(discs, 180, 20).astype(np.uint8)).save(path)
    return path


class _Timed:
    """The network, timed and with its batch shapes recorded; its streams (the engine's, when it runs
    several at once: :meth:`dsb.network.engines.Network.streams`) are timed into the same record."""

    def __init__(self, network, record, stream=None):
        self.network, self.record, self.stream = network, record, stream or network

    def __call__(self, batch):
        began = time.perf_counter()
        out = self.stream(batch)
        self.record(batch.shape, time.perf_counter() - began, out)
        return out

    def streams(self):
        streams = self.network.streams() if hasattr(self.network, "streams") else [self.network]
        return [self] if len(streams) < 2 else [_Timed(self.network, self.record, s) for s in streams]


def measure(engine: str, model_dir: Path, images_dir: Path, megapixels: float, args, tmp: Path,
            precision: str = "auto", variant: str = "") -> dict:
    """End-to-end, estimate share, bare forward and peak memory of one engine at one precision."""
    import threading

    import numpy as np

    import dsb.inference.predict as predict_module
    import dsb.inference.scale as scale_module
    from dsb.workflows.predict_folder import predict_images

    network, config = _load(model_dir, engine, args, precision, variant)
    streams = network.streams()
    batches: list[tuple[int, ...]] = []
    outputs: list[np.ndarray] = []  # of the cold run, which the replay in _overhead serves again
    spent = {"network": 0.0, "estimate": 0.0, "images": 0.0}
    lock, local = threading.Lock(), threading.local()
    keep = {"outputs": False}

    def record(shape, seconds, out):
        with lock:
            batches.append(shape)
            spent["network"] += seconds
            if keep["outputs"]:
                outputs.append(out)

    # Thread-seconds, summed over the images (several at once with streams): the scale estimate
    # (all of choose_scale_and_pass: windows, network passes and their watersheds) less its last pass when that
    # one serves as the prediction (network, watershed, its split and the drop of unsure nuclei),
    # and each image's two stages.
    choose, at_scale = predict_module.choose_scale_and_pass, scale_module.predict_at_scale
    flood, split = scale_module.labels_from_probabilities, scale_module.finish_nuclei
    stages = predict_module.network_stage, predict_module.watershed_stage

    def timed(step, kind):
        def run(*a, **k):
            began = time.perf_counter()
            out = step(*a, **k)
            if getattr(local, "last", None) is not None:
                local.last[kind] = time.perf_counter() - began
            return out
        return run

    def timed_choose(model, cfg, gray, diameter):
        local.last = {}
        began = time.perf_counter()
        try:
            chosen, prob, labels = choose(model, cfg, gray, diameter)
        finally:
            seconds, last, local.last = time.perf_counter() - began, local.last, None
        if prob is not None:  # the last pass saw the whole image and is the prediction's
            seconds -= last.get("pass", 0.0) + last.get("flood", 0.0) + last.get("split", 0.0)
        with lock:
            spent["estimate"] += seconds
        return chosen, prob, labels

    def timed_stage(stage):
        def run(*a, **k):
            began = time.perf_counter()
            try:
                return stage(*a, **k)
            finally:
                with lock:
                    spent["images"] += time.perf_counter() - began
        return run

    def end_to_end(name: str, model) -> tuple[float, float, float]:
        batches.clear()
        spent.update(network=0.0, estimate=0.0, images=0.0)
        # The estimate's passes and watersheds run in dsb.inference.scale, the prediction's pass in .predict.
        predict_module.choose_scale_and_pass = timed_choose
        predict_module.predict_at_scale = scale_module.predict_at_scale = timed(at_scale, "pass")
        scale_module.labels_from_probabilities = timed(flood, "flood")
        scale_module.finish_nuclei = timed(split, "split")
        predict_module.network_stage, predict_module.watershed_stage = map(timed_stage, stages)
        try:
            began = time.perf_counter()
            predict_images(model, config, images_dir, out_csv=tmp / f"{engine}-{precision}-{name}.csv",
                           tta=args.tta, progress=False)
            return (time.perf_counter() - began, spent["network"] / spent["images"],
                    spent["estimate"] / spent["images"])
        finally:
            predict_module.choose_scale_and_pass = choose
            predict_module.predict_at_scale = scale_module.predict_at_scale = at_scale
            scale_module.labels_from_probabilities = flood
            scale_module.finish_nuclei = split
            predict_module.network_stage, predict_module.watershed_stage = stages

    def bare_forward(arrays, callers) -> float:
        """The engine alone over ``arrays``: one batch at a time on each caller, on as many threads."""
        todo = iter(arrays)
        take = threading.Lock()

        def work(call):
            while True:
                with take:
                    batch = next(todo, None)
                if batch is None:
                    return
                call(batch)

        threads = [threading.Thread(target=work, args=(call,)) for call in callers]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - began

    keep["outputs"] = True
    # First calls of each tile shape, one batch at a time (a plain function has no streams), so
    # that the batches are recorded in the order the replay asks for them.
    end_to_end("cold", _Timed(lambda batch: network(batch), record))
    keep["outputs"] = False
    arrays = [np.random.default_rng(0).random(s, dtype=np.float32) for s in batches]
    model = _Timed(network, record)
    if len(streams) > 1:
        bare_forward(arrays, streams)  # the streams' first calls of each tile shape
    warm, bare, bare_one = [], [], []
    for _ in range(args.repeat):  # the machine may be shared: alternate, keep the best of each
        warm.append(end_to_end("warm", model))
        bare.append(bare_forward(arrays, streams))
        bare_one.append(bare_forward(arrays, [network]) if len(streams) > 1 else bare[-1])
    total, inside, estimate = min(warm)
    # The faster of the engine's two ways through the same batches: all streams at once, or one
    # call at a time on every core.
    fastest = [min(a, b) for a, b in zip(bare, bare_one)]
    forward = min(fastest)
    # Each end-to-end run over the bare pass right after it: the spread says how noisy the machine was.
    paired = sorted(w[0] / b for w, b in zip(warm, fastest))
    large = _large_image(tmp)
    peak = _child_peak(args, model_dir, engine, large, precision=precision)
    # A folder of such images has one in flight per stream.
    peak_streams = (_child_peak(args, model_dir, engine, large, copies=2 * len(streams), precision=precision)
                    if len(streams) > 1 else peak)
    ran = network.precision
    return {
        "engine": (f"{engine} auto ({ran})" if precision == "auto" else f"{engine} {precision}")
        + (f" {variant}" if variant else ""), "precision": precision, "variant": variant,
        "bare_engine": engine,
        "seconds": total, "mp_s": megapixels / total, "estimate_share": estimate,
        "network_share": inside, "forward_s": forward, "forward_mp_s": megapixels / forward,
        "streams": len(streams), "streams_mp_s": megapixels / min(bare), "one_mp_s": megapixels / min(bare_one),
        "ratio": total / forward, "paired": paired, "overhead_s": _overhead(outputs, config, images_dir, args, tmp),
        "tiles": sum(s[0] for s in batches), "batches": len(batches),
        "tile_megapixels": sum(int(np.prod(s[:3])) for s in batches) / 1e6,
        "peak_gib": None if peak is None else peak[1] / 2**20,
        "peak_streams_gib": None if peak_streams is None else peak_streams[1] / 2**20,
    }


def _overhead(recorded: list[np.ndarray], config, images_dir: Path, args, tmp: Path) -> float:
    """CPU seconds ``dsb predict`` spends outside the network (best of ``--repeat``): the run replayed
    with each batch's ``recorded`` output, so no engine time is in the figure."""
    from dsb.workflows.predict_folder import predict_images

    calls = iter(())

    def replay(batch):  # the run is deterministic: the same batches come in the same order
        out = next(calls)
        assert out.shape[:3] == batch.shape[:3], "the replayed run asked for other batches"
        return out

    times = []
    for _ in range(args.repeat):
        calls = iter(recorded)
        began = time.process_time()
        predict_images(replay, config, images_dir, out_csv=tmp / "replay.csv", tta=args.tta, progress=False)
        times.append(time.process_time() - began)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--engines",
                        default="keras,onnx,openvino,openvino:float32,openvino:int8,openvino/one-look,"
                                "openvino/no-split,openvino/no-small-pass,openvino/x1.25",
                        help="ENGINE (at the default precision, auto), ENGINE:float32, ENGINE:bfloat16 or"
                             " ENGINE:int8 (the model folder's model.int8.onnx), comma-separated;"
                             " /one-look: the scale estimate without its cross-check; /no-split: the watershed"
                             " without the split of merged-looking nuclei; /keep-unsure: without the drop of"
                             " nuclei the network is unsure of; /no-small-pass: without the finer pass for small"
                             " nuclei; /x1.25: predict.scale_factor 1.25")
    parser.add_argument("--tile-size", type=int)
    parser.add_argument("--overlap", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--repeat", type=int, default=3, help="warm passes of each measurement (best is kept)")
    parser.add_argument("--baseline", metavar="REV",
                        help="also time the prediction of commit REV (its code and shipped model), side by side")
    parser.add_argument("--peak-memory", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--diameter", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--copies", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory:
        return _peak_memory(args)

    zip_path = _shared() / "stage1_test.zip"
    if not zip_path.is_file():
        print(f"skipped: {zip_path} not found (set DSB_SHARED)")
        return 0

    from dsb.io.folders import folder_images
    from dsb.io.images import read_image
    from dsb.network.engines import bfloat16_units, choose_engine, engine_installed
    from dsb.network.model_folder import network_file

    with tempfile.TemporaryDirectory(prefix="dsb-bench-predict-") as tmp:
        tmp = Path(tmp)
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp / "stage1_test")
        images, _ = folder_images(tmp / "stage1_test")
        megapixels = sum(int(np.prod(read_image(p).shape[:2])) for p in images.values()) / 1e6
        model_dir = _model_dir(args.run_dir, tmp)
        default = choose_engine(model_dir, "auto")
        _, config = _load(model_dir, "keras" if default == "keras" else default, args)
        p = config.predict
        print(f"model: {model_dir}; tile {p.tile_size}, overlap {p.overlap}, context {p.context},"
              f" batch {p.batch_size}; scale estimate {p.estimate_size} px windows from scale {p.estimate_scale};"
              f" TTA {'on' if args.tta else 'off'}")
        print(f"images: {len(images)}, {megapixels:.2f} megapixels; cores: {len(os.sched_getaffinity(0))}")
        rows = []
        for entry in args.engines.split(","):
            entry, _, variant = entry.partition("/")
            engine, _, precision = entry.partition(":")
            precision = precision or "auto"
            if variant and variant not in VARIANTS:
                print(f"{entry}/{variant}: unknown variant ({', '.join(VARIANTS)} are known), skipped")
                continue
            if not engine_installed(engine):
                print(f"{entry}: not installed, skipped")
                continue
            if engine == "keras" and precision not in ("auto", "float32"):
                print(f"{entry}: Keras runs float32 only, skipped")
                continue
            if precision == "bfloat16" and not (engine == "openvino" and bfloat16_units()):
                print(f"{entry}: bfloat16 runs on OpenVINO on a CPU with bfloat16 units only, skipped")
                continue
            if engine != "keras" and not network_file(model_dir, precision).is_file():
                print(f"{entry}: no {network_file(model_dir, precision).name} in {model_dir}, skipped")
                continue
            row = measure(engine, model_dir, tmp / "stage1_test", megapixels, args, tmp, precision,
                          variant=variant)
            engine = row["engine"]
            rows.append(row)
            peak = "failed" if row["peak_gib"] is None else f"{row['peak_gib']:.2f} GiB"
            paired = row["paired"]
            print(f"{engine}: end to end {row['seconds']:.2f} s, {row['mp_s']:.2f} MP/s"
                  f" (scale estimate {row['estimate_share']:.0%}, network {row['network_share']:.0%});"
                  f" bare forward over the same {row['tiles']} tiles ({row['tile_megapixels']:.1f} MP at the"
                  f" working scale) {row['forward_s']:.2f} s, {row['forward_mp_s']:.2f} MP/s"
                  f" ({row['streams']} stream(s) at once {row['streams_mp_s']:.2f}, one call at a time"
                  f" {row['one_mp_s']:.2f});"
                  f" ratio {row['ratio']:.2f} (run by run {paired[0]:.2f} to {paired[-1]:.2f});"
                  f" CPU time outside the network {row['overhead_s']:.2f} s;"
                  f" peak memory on 1040x1388: {peak}", flush=True)
            if row["streams"] > 1 and row["peak_streams_gib"] is not None:
                print(f"{engine}: peak memory on a folder of 1040x1388 images, {row['streams']} at once:"
                      f" {row['peak_streams_gib']:.2f} GiB", flush=True)
        if args.baseline and rows and args.run_dir:
            print(f"baseline {args.baseline}: its own shipped model, beside {args.run_dir}")
        baseline = _baseline(args.baseline, args.repeat) if args.baseline and rows else None
        # The default's row: the default engine at the default precision, no variant.
        plain = next((row for row in rows if row["precision"] == "auto" and not row["variant"]
                      and row["bare_engine"] == default), None)
        if rows:
            print("\n| engine | end to end MP/s | scale estimate | bare forward MP/s | ratio | CPU outside the network |"
                  " peak memory 1040x1388 |")
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
            for row in rows:
                peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.2f} GiB"
                mark = " (default)" if row is plain else ""
                print(f"| {row['engine']}{mark} | {row['mp_s']:.2f} | {row['estimate_share']:.0%} |"
                      f" {row['forward_mp_s']:.2f} | {row['ratio']:.2f} | {row['overhead_s']:.2f} s | {peak} |")
            if baseline is not None:
                print(baseline[0])
                if plain is not None:
                    print(f"default against {args.baseline}: {plain['mp_s'] / baseline[1]:.2f} times its end-to-end"
                          " speed (target at least 0.85)")
            print("targets: at least 2 MP/s end to end for the default engine, ratio at most 1.3,"
                  " scale estimate at most 20 %, peak memory at most 2 GiB")
        small = tmp / "small-nuclei-2048.png"
        _write_small_nuclei(small)
        measured = _child_peak(args, model_dir, default, small, diameter=6.0)
        if measured is not None:
            print(f"peak memory, {default}, predicting 2048x2048 of 6-px nuclei (--diameter 6, resampled to the"
                  f" network's diameter): {measured[1] / 2**20:.2f} GiB (target < 3 GiB)")
    return 0


def _write_small_nuclei(path: Path) -> None:
    """A 2048x2048 fluorescence-like image of discs 6 pixels across, 10 pixels apart."""
    import numpy as np
    from PIL import Image

    rr, cc = np.indices((2048, 2048))
    discs = ((rr % 10 - 4.5) ** 2 + (cc % 10 - 4.5) ** 2) <= 9
    Image.fromarray(np.where(discs, 200, 15).astype(np.uint8)).save(path)


# The longest a baseline's bench may take (its own prediction runs, warm passes and peak-memory children).
BASELINE_TIMEOUT_S = 1800


def _baseline(rev: str, repeat: int, repo: Path = REPO,
              timeout: float = BASELINE_TIMEOUT_S) -> tuple[str, float] | None:
    """The table row (relabelled) and end-to-end MP/s of commit ``rev``'s own bench, its shipped model at
    its default engine, run from a temporary git worktree of ``rev`` of ``repo``; None (and why, printed)
    on failure or after ``timeout`` seconds. The worktree is removed either way (and one that a killed
    run left behind is pruned first)."""
    subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True, check=False)
    with tempfile.TemporaryDirectory(prefix="dsb-bench-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        added = subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), rev],
                               capture_output=True, text=True, check=False)
        if added.returncode:
            print(f"baseline {rev}: no worktree ({(added.stderr.strip().splitlines() or ['git failed'])[-1]})")
            return None
        try:
            print(f"baseline {rev}: timing its prediction (its code and shipped model, its default engine)",
                  flush=True)
            child = subprocess.run(
                [sys.executable, str(tree / "bench" / "bench_predict.py"), "--engines", "openvino",
                 "--repeat", str(repeat)],
                cwd=tree, env=dict(os.environ, PYTHONPATH=str(tree), DSB_SHARED=str(_shared())),
                capture_output=True, text=True, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"baseline {rev}: its bench took over {timeout:.0f} s, stopped")
            return None
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                           capture_output=True, check=False)
    row = next((line for line in child.stdout.splitlines() if line.startswith("| openvino")), None)
    if child.returncode or row is None:
        print(f"baseline {rev}: its bench failed (exit {child.returncode}):\n{child.stdout[-1500:]}"
              f"{child.stderr[-1500:]}")
        return None
    for line in child.stdout.splitlines():  # its own line of detail (tiles, megapixels at the working scale)
        if line.startswith("openvino:"):
            print(f"baseline {rev}: {line}", flush=True)
    cells = row.split("|")
    cells[1] = f" {rev}: openvino, its default "
    return "|".join(cells), float(cells[2])


def _child_peak(args, model_dir: Path, engine: str, image: Path, *,
                diameter: float | None = None, copies: int = 1,
                precision: str = "auto") -> tuple[int, int] | None:
    """Peak memory (KiB) of a fresh process before and after predicting ``image`` (``copies`` of it, as
    a folder); None if it failed."""
    cmd = [sys.executable, __file__, "--peak-memory", str(image), str(model_dir), "--engine", engine,
           "--copies", str(copies), "--precision", precision]
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
