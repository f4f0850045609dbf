"""``dsb ARGS`` in a fresh process of its own, timed, for the benchmarks: :func:`run_dsb` returns its
seconds and peak memory (``VmHWM``: :func:`_memory.peak_kib`), the process's own and not its parent's."""

from __future__ import annotations

import json
import subprocess
import sys
import time


def run_dsb(argv: list[str]) -> dict:
    """``{"seconds": ..., "peak_kib": ...}`` of ``dsb ARGV`` run in a fresh process; RuntimeError with the
    last line it wrote to stderr where it failed."""
    result = subprocess.run([sys.executable, __file__, json.dumps(argv)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError((result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1])
    return json.loads(result.stdout.strip().splitlines()[-1])


def _child(argv: list[str]) -> None:
    from _memory import peak_kib

    from dsb.cli import cli

    start = time.perf_counter()
    cli.main(argv, prog_name="dsb", standalone_mode=False)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_kib": peak_kib()}))


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
