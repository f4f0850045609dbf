"""The command line of the benchmarks that score a run on its held-out validation images."""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_and_data(description: str) -> argparse.Namespace | None:
    """Parse ``[RUN_DIR] [--data DIR]`` (no RUN_DIR: the shipped model); None, having said so, when
    DIR holds no stage1_train to score on."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--data", type=Path, default=REPO / "data", help="a fetched data folder (with stage1_train/)")
    args = parser.parse_args()
    if not (args.data / "stage1_train").is_dir():
        print(f"skipped: no stage1_train in {args.data} (dsb fetch first)")
        return None
    return args
