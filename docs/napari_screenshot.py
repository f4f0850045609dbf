"""Draw docs/_static/napari.png: the viewer with both dsb widgets docked, a synthetic sample segmented,
one nucleus corrected and the model fine-tuned on it (one epoch of two steps).

Run under a display, or a virtual one: ``xvfb-run -a python docs/napari_screenshot.py``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from napari.settings import get_settings
from PIL import Image
from qtpy.QtWidgets import QApplication

from dsb.napari.finetune_widget import FinetuneWidget
from dsb.napari.samples import fluorescence_nuclei
from dsb.napari.segment_widget import SegmentWidget

OUT = Path(__file__).parent / "_static" / "napari.png"


def wait_for(widget, timeout_s: float = 600) -> None:
    """Let Qt run until the widget's worker is done."""
    end = time.monotonic() + timeout_s
    while widget.worker is not None and time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.05)


def main(out: Path = OUT) -> Path:
    settings = get_settings().application
    level, settings.gui_notification_level = settings.gui_notification_level, "error"  # no toasts on the canvas
    viewer = napari.Viewer(title="napari + dsb")
    viewer.window.resize(1400, 800)
    [(data, meta, _)] = fluorescence_nuclei()
    viewer.add_image(data, **meta)
    segment, finetune = SegmentWidget(viewer), FinetuneWidget(viewer)
    for widget, name in ((segment, "Segment nuclei (dsb)"), (finetune, "Fine-tune on corrections (dsb)")):
        viewer.window.add_dock_widget(widget, name=name, area="right").setMaximumWidth(470)
    segment.run()
    wait_for(segment)
    labels = viewer.layers[f"{meta['name']} nuclei"]
    labels.data = np.where(labels.data == 1, 0, labels.data)  # the correction: one nucleus erased
    with tempfile.TemporaryDirectory() as project:
        finetune.project.value = project
        finetune.epochs.value, finetune.steps.value = 1, 2
        finetune.run()
        wait_for(finetune)
        wait_for(segment)
        # Paths as a user sees them, not the temporary folder's.
        finetune.project.value = "~/dsb-napari-project"
        finetune.model_label.value = segment.model.line_edit.value = "~/dsb-napari-project/models/finetune-001"
        viewer.reset_view()
        for _ in range(20):
            QApplication.processEvents()
            time.sleep(0.05)
        shot = viewer.screenshot(canvas_only=False, flash=False)
    viewer.close()
    settings.gui_notification_level = level
    image = Image.fromarray(shot[..., :3]).quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    return out


if __name__ == "__main__":
    sys.exit(0 if main().is_file() else 1)
