"""Run every benchmark in turn and print its figures (`make bench`).

Each benchmark is its own script, run in a fresh process so that its peak
memory is its own. They need the competition files (../shared/dsb2018 or
$DSB_SHARED) and skip with a message when those are absent.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCHES = ["bench_score.py", "bench_prepare.py", "bench_train.py", "bench_predict.py"]


def main() -> int:
    here = Path(__file__).parent
    failed = []
    for name in BENCHES:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, str(here / name), *sys.argv[1:]])
        print(f"({name}: {time.perf_counter() - start:.1f} s wall)", flush=True)
        if result.returncode:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
