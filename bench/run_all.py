"""Run every benchmark in turn and print its figures (`make bench`).

Each benchmark is its own script, run in a fresh process so that its peak
memory is its own. They need the competition files (../shared/dsb2018 or
$DSB_SHARED), or a fetched data folder, and say so when those are absent.

Usage: python bench/run_all.py [--data DIR] [--run RUN_DIR] [--baseline REV]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="a fetched data folder (with stage1_train/)")
    parser.add_argument("--run", type=Path, default=None, help="the run folder to time prediction with")
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="an earlier commit whose prediction bench_predict times beside today's")
    args = parser.parse_args()
    data = ["--data", str(args.data)] if args.data is not None and (args.data / "stage1_train").is_dir() else []
    run = [str(args.run)] if args.run is not None and (args.run / "model.keras").is_file() else []
    benches = [
        ("bench_score.py", []),
        ("bench_fetch.py", []),
        ("bench_prepare.py", data),
        ("bench_train.py", data),
        ("bench_predict.py", run + (["--baseline", args.baseline] if args.baseline else [])),
        ("bench_crowding.py", run),
        ("bench_confidence.py", run + data),
        ("bench_outlines.py", run + data),
        ("bench_stitch.py", run),
        ("bench_measure.py", []),
        ("bench_blocks.py", []),
        ("bench_plates.py", []),
        ("bench_gpu.py", data),  # says so and exits at once without a GPU
    ]
    here = Path(__file__).parent
    failed = []
    for name, extra in benches:
        print(f"\n=== {name} {' '.join(extra)}".rstrip() + " ===", flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, str(here / name), *extra])
        print(f"({name}: {time.perf_counter() - start:.1f} s wall)", flush=True)
        if result.returncode:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
