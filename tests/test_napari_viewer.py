"""The napari plugin in a real viewer: tests/napari_viewer_cases.py, run by pytest in a fresh interpreter.

A fresh one, because the rest of the suite imports TensorFlow, whose libraries
export the symbols of the LLVM they embed, and a viewer's OpenGL canvas loads
Mesa's drivers, which bring a system LLVM of their own: in one process the two
collide, and drawing segfaults or the process aborts at exit (see
:mod:`dsb.napari.child`, which keeps TensorFlow out of the viewer's process for
the same reason).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("napari_viewer_cases.py")


def test_plugin_in_a_real_viewer():
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    run = subprocess.run([sys.executable, "-m", "pytest", str(CASES), "-q", "-p", "no:cacheprovider", "-rs"],
                         cwd=CASES.parents[1], capture_output=True, text=True, timeout=900)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    assert run.returncode == 0, f"{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    if " passed" not in summary:
        pytest.skip(f"the viewer tests did not run: {summary}")
