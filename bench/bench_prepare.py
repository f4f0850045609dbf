"""Cold and warm start of the prepared training cache (`dsb prepare`, :func:`dsb.training.cache.load_prepared`).

    python bench/bench_prepare.py [--data DIR] [--workers N] [--compare-workers]

Prints, for stage1_train (664 images, 28,986 mask PNGs):

- cold: building the cache from the PNGs (decode, preprocess, compress, write);
- warm: loading it back, in this process and as a fresh process (imports,
  checking the data have not changed, decompressing), which is what a training
  run pays at start;
- the staleness check alone (names, sizes and times of every file);
- the cache's size on disk;
- with ``--compare-workers``, the cold build with one process as well.

The data come from ``--data`` (a folder with ``stage1_train/``), else from
../shared/dsb2018 (or $DSB_SHARED), unzipped into a temporary folder. The
cache always goes to a temporary folder. Says so and exits 0 when there are no
data. Not a test: it prints figures.
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

WARM_CHILD = """
import sys, time
start = time.perf_counter()
from dsb.io.images import load_prepared
from dsb.core.config import PreprocessConfig
prepared = load_prepared(sys.argv[1], PreprocessConfig(), cache_dir=sys.argv[2])
assert not prepared.built, "the cache was rebuilt"
print(f"{time.perf_counter() - start:.2f} {len(prepared)}")
"""


def _shared() -> Path:
    return Path(os.environ.get("DSB_SHARED", REPO.parent / "shared" / "dsb2018"))


def _data(args, tmp: Path) -> Path | None:
    if args.data:
        return Path(args.data)
    zip_path = _shared() / "stage1_train.zip"
    if not zip_path.is_file():
        return None
    data = tmp / "data"
    start = time.perf_counter()
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(data / "stage1_train")
    print(f"unzipped {zip_path} in {time.perf_counter() - start:.1f} s")
    return data


# A training run should not wait longer than this for its data (was an assertion in tests/test_dataset.py).
WARM_BUDGET_S = 20.0


def _verdict(seconds: float, budget: float) -> str:
    return f"within the {budget:g} s budget" if seconds < budget else f"OVER the {budget:g} s budget"


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a folder with stage1_train/ (default: unzip ../shared/dsb2018)")
    parser.add_argument("--workers", type=int, default=None, help="processes for the cold build (default 2)")
    parser.add_argument("--compare-workers", action="store_true", help="also time a one-process cold build")
    args, _ = parser.parse_known_args()  # run_all.py passes its own arguments to every bench

    from dsb.core.config import PreprocessConfig
    from dsb.io.images import find_stage, list_ids
    from dsb.training.cache import _fingerprint, load_prepared

    with tempfile.TemporaryDirectory(prefix="dsb-bench-prepare-") as tmp:
        tmp = Path(tmp)
        data = _data(args, tmp)
        if data is None:
            print(f"no competition files in {_shared()} and no --data: nothing to measure")
            return 0
        config = PreprocessConfig()
        cache = tmp / "cache"

        start = time.perf_counter()
        cold = load_prepared(data, config, cache_dir=cache, workers=args.workers, progress=False)
        cold_s = time.perf_counter() - start
        nuclei = sum(int(lab.max()) for lab in cold.labels)
        print(f"cold build ({args.workers or 2} processes): {cold_s:.1f} s for {len(cold)} images, {nuclei} nuclei")
        del cold

        start = time.perf_counter()
        warm = load_prepared(data, config, cache_dir=cache)
        warm_s = time.perf_counter() - start
        assert not warm.built
        print(f"warm load, in this process: {warm_s:.2f} s ({_verdict(warm_s, WARM_BUDGET_S)})")
        del warm

        child = subprocess.run(
            [sys.executable, "-c", WARM_CHILD, str(data), str(cache)],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if child.returncode:
            print(child.stderr, file=sys.stderr)
            return 1
        inner = float(child.stdout.split()[0])
        print(f"warm load, fresh process: {inner:.2f} s (imports included)")

        stage = find_stage(data)
        start = time.perf_counter()
        _fingerprint(stage, list_ids(stage))
        print(f"  of which the staleness check (sizes and times of every file): {time.perf_counter() - start:.2f} s")
        print(f"cache on disk: {_size(cache) / 2**20:.1f} MiB in {cache}")
        print(f"cold / warm: {cold_s / warm_s:.0f}x")

        if args.compare_workers:
            start = time.perf_counter()
            load_prepared(data, config, cache_dir=tmp / "cache1", workers=1)
            print(f"cold build (1 process): {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
