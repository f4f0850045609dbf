"""The napari plugin in a real viewer (pytest-qt's qtbot, napari's make_napari_viewer), under Xvfb.

Run in an interpreter of their own by tests/test_napari_viewer.py (see there
why), or directly: ``python -m pytest tests/napari_viewer_cases.py``. Skipped
where napari or Qt is not installed. One synthetic image, the shipped model,
fine-tunes of one epoch of two steps.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
pytest.importorskip("PyQt6")
if not os.environ.get("DISPLAY") and not shutil.which("Xvfb"):
    pytest.skip("no display, and no Xvfb for pytest-xvfb to start", allow_module_level=True)

import tifffile  # noqa: E402
from scipy import ndimage  # noqa: E402

from dsb.napari.finetune_widget import FinetuneWidget
from dsb.napari.project import Project
from dsb.napari.segment_widget import SegmentWidget
from dsb.network.engines import resolve_precision
from dsb.network.model_folder import default_model_dir
from dsb.workflows.bioimageio import synthetic_image

WAIT_MS = 300_000  # a fine-tune takes 30 s on 2 idle cores


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(synthetic_image(20, 128, seed=3), name="cells")
    return viewer


def _run_and_wait(qtbot, widget) -> None:
    """Click the widget's run button and let Qt run until its worker is done (or it started none).

    The widget forgets its worker on the worker's ``finished`` signal, which it connects before the
    start; a signal connected here could come too late for a worker that fails at once.
    """
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def _segmented(qtbot, viewer, segment: SegmentWidget):
    _run_and_wait(qtbot, segment)
    return viewer.layers["cells nuclei"]


def test_segment_correct_finetune_segment_again(viewer, qtbot, tmp_path):
    segment = SegmentWidget(viewer)
    finetune = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment nuclei")
    viewer.window.add_dock_widget(finetune, name="Fine-tune")
    assert segment.image.value is viewer.layers["cells"]

    labels = _segmented(qtbot, viewer, segment)
    found = int(labels.data.max())
    assert 14 <= found <= 18, segment.status.value  # a 4 x 4 grid of discs
    # The engine and number format that computed them: what auto is on this CPU for the shipped model.
    expected = resolve_precision("auto", "openvino", default_model_dir())
    assert segment.status.value.endswith(f"(openvino, {expected})"), segment.status.value
    assert segment.precision.value == "auto" and segment.state.precision == "auto"
    assert "estimated" in segment.estimate.value and "px" in segment.estimate.value
    assert labels.metadata["dsb_model"].endswith(os.path.join("models", "default"))
    # Each nucleus's confidence, by its label, for the viewer to show under the cursor.
    assert labels.features["index"].tolist() == list(range(1, found + 1))
    assert labels.features["confidence"].between(0.5, 1).all()
    # And its size, shape and brightness, as dsb segment measures them.
    assert labels.features["area"].tolist() == np.bincount(labels.data.ravel())[1:].tolist()
    assert labels.features["solidity"].between(0.8, 1).all() and (labels.features["mean_intensity"] > 0).all()

    # The correction: one nucleus erased, as the eraser would.
    corrected = labels.data.copy()
    corrected[corrected == 1] = 0
    labels.data = corrected
    assert finetune.labels.value is labels

    # Two images corrected earlier, so that the fine-tune holds one of the three out for validation.
    project = Project(tmp_path / "project")
    for seed in (5, 6):
        image = synthetic_image(20, 128, seed=seed)
        project.save_correction(f"earlier-{seed}", image, ndimage.label(image > 100)[0])
    finetune.project.value = str(project.path)
    finetune.epochs.value, finetune.steps.value = 1, 2
    _run_and_wait(qtbot, finetune)
    run_dir = tmp_path / "project" / "models" / "finetune-001"
    assert finetune.state.path == run_dir, finetune.status.value
    assert (run_dir / "model.keras").is_file() and (run_dir / "model.onnx").is_file()
    assert project.names() == ["cells", "earlier-5", "earlier-6"]
    np.testing.assert_array_equal(tifffile.imread(project.corrections / "cells_masks.tif"), corrected)
    assert re.fullmatch(r"\d\.\d{4} \(epoch 1/1, step 2/2\)", finetune.loss.value), finetune.loss.value
    assert re.fullmatch(r"score [01]\.\d{3}, loss \d+\.\d{4} \(epoch 1\)", finetune.validation.value), \
        finetune.validation.value
    assert segment.model.line_edit.value == str(run_dir)  # the segment widget uses the new model

    # The image is segmented again, with the new model, into the same layer.
    qtbot.waitUntil(lambda: labels.metadata["dsb_model"] == str(run_dir) and segment.worker is None,
                    timeout=WAIT_MS)
    assert viewer.layers["cells nuclei"] is labels
    assert not np.array_equal(labels.data, corrected)
    assert 14 <= labels.data.max() <= 18

    # Save: the writer writes the CLI's 16-bit label TIFF.
    written = labels.save(str(tmp_path / "nuclei.tif"), plugin="dsb")
    assert tifffile.imread(written[0]).dtype == np.uint16


def test_a_stack_is_segmented_and_its_shown_frame_saved(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    frame = synthetic_image(20, 96, seed=4)
    viewer.add_image(np.stack([frame, frame[::-1], frame[:, ::-1]]), name="movie")
    segment, finetune = SegmentWidget(viewer), FinetuneWidget(viewer)
    _run_and_wait(qtbot, segment)
    labels = viewer.layers["movie nuclei"]
    assert labels.data.shape == (3, 96, 96) and all(f.max() >= 4 for f in labels.data)
    assert segment.progress.max == 3
    # The features are the shown frame's (each frame numbers its nuclei from 1), and follow the slider.
    confidences = labels.metadata["dsb_confidences"]
    for step in (0, 2):
        viewer.dims.set_current_step(0, step)
        assert labels.features["index"].tolist() == list(range(1, int(labels.data[step].max()) + 1))
        np.testing.assert_allclose(labels.features["confidence"], np.round(confidences[step], 3))
    finetune.project.value = str(tmp_path)
    finetune.save_correction()
    saved = tmp_path / "corrections" / "movie-t002.tif"
    np.testing.assert_array_equal(tifffile.imread(saved), frame[:, ::-1])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "corrections" / "movie-t002_masks.tif"),
                                  labels.data[2])


def test_a_z_stack_is_joined_into_3d_nuclei_when_asked(make_napari_viewer, qtbot, tmp_path):
    from dsb.io.synthetic import nuclei_volume

    viewer = make_napari_viewer()
    image, truth = nuclei_volume((8, 96, 96), diameter=20, z_step=2.0, seed=11)
    viewer.add_image(image, name="volume", scale=(2.0, 0.5, 0.5), units=("um", "um", "um"))
    segment = SegmentWidget(viewer)
    segment.diameter.value = "20"
    segment.stitch.value = True
    _run_and_wait(qtbot, segment)
    labels = viewer.layers["volume nuclei"]
    count = int(labels.data.max())
    assert abs(count - int(truth.max())) <= 1 and segment.status.value.startswith(f"{count} 3-D nuclei in ")
    viewer.dims.set_current_step(0, 4)  # the features follow the plane on screen, by the 3-D labels
    held = np.unique(labels.data[4][labels.data[4] > 0])
    table = labels.features.set_index("index")
    assert table.loc[held, "area"].tolist() == np.bincount(labels.data[4].ravel())[held].tolist()
    assert labels.metadata["dsb_stitched"]
    assert [str(u) for u in labels.units] == ["micrometer"] * 3  # the image's calibration kept for the writers
    # Saved as QuPath detections through napari: each on its plane, the joined planes on z.
    import json

    [written] = labels.save(str(tmp_path / "volume.geojson"), plugin="dsb")
    planes = {(f["geometry"]["plane"]["z"], int(f["properties"]["name"])) for f in
              json.loads(Path(written).read_text())["features"]}
    assert planes == {(z, int(k)) for z in range(8) for k in np.unique(labels.data[z]) if k}
    # Opened again in the viewer (dsb's reader): the same 3-D nuclei, on z, over the image.
    [opened] = viewer.open(written, plugin="dsb")
    last = max(z for z, _ in planes) + 1
    assert opened.axis_labels == ("z", "y", "x") and opened.data.shape[0] == last
    np.testing.assert_array_equal(opened.data, labels.data[:last, : opened.data.shape[1], : opened.data.shape[2]])
    height, width = opened.data.shape[1:]
    assert not labels.data[:last, height:].any() and not labels.data[:last, :, width:].any()
    viewer.layers.remove(opened)
    # Every 3-D nucleus has its row, with its volume in voxels and, from the layer's scale, cubic micrometres.
    voxels = np.bincount(labels.data.ravel())
    assert table.index.tolist() == list(range(1, count + 1)) and table["volume"].tolist() == voxels[1:].tolist()
    np.testing.assert_allclose(table["volume_um3"], voxels[1:] * 0.5 ** 2 * 2.0, rtol=1e-3)
    # A layer whose axes are time points has no planes to join: segmented frame by frame, and said.
    viewer.add_image(image[:3], name="movie", axis_labels=("t", "y", "x"))
    segment.image.value = viewer.layers["movie"]
    _run_and_wait(qtbot, segment)
    assert not viewer.layers["movie nuclei"].metadata["dsb_stitched"]
    assert " nuclei in the busiest frame " in segment.status.value


def test_a_diameter_in_micrometres_for_a_layer_of_micrometres(make_napari_viewer, qtbot):
    """A layer whose scale is in micrometres (as OME readers set it) takes '10 um', made pixels by its scale;
    one in pixels says it cannot."""
    viewer = make_napari_viewer()
    image = synthetic_image(20, 128, seed=3)
    viewer.add_image(image, name="cells", scale=(0.5, 0.5), units=("um", "um"))
    segment = SegmentWidget(viewer)
    segment.diameter.value = "10 um"
    _run_and_wait(qtbot, segment)
    assert segment.estimate.value == "diameter: 20.0 px = 10.0 \u00b5m (given)", segment.estimate.value
    assert viewer.layers["cells nuclei"].data.max() >= 10
    viewer.add_image(image, name="plain")
    segment.image.value = viewer.layers["plain"]
    _run_and_wait(qtbot, segment)
    assert "no size in micrometres" in segment.status.value and "plain nuclei" not in viewer.layers
    # Cells grown by 2 um (4 px on this layer): a second Labels layer, outlines over the nuclei, in micrometres.
    from dsb.workflows.cells import grow_cells

    segment.image.value = viewer.layers["cells"]
    segment.cells.value = "2 um"
    _run_and_wait(qtbot, segment)
    nuclei, cells = viewer.layers["cells nuclei"], viewer.layers["cells cells"]
    np.testing.assert_array_equal(cells.data, grow_cells(nuclei.data, 4))
    assert cells.contour >= 1 and tuple(cells.scale) == (0.5, 0.5)
    assert viewer.layers.index(cells) > viewer.layers.index(nuclei)
    assert (nuclei.features["cell_area"] > nuclei.features["area"]).all()
    segment.cells.value = ""  # no cells asked: the old cells go with the old nuclei
    segment.image.value = viewer.layers["cells"]
    _run_and_wait(qtbot, segment)
    assert "cells cells" not in viewer.layers and "cell_area" not in viewer.layers["cells nuclei"].features


def test_bad_states_give_messages_not_tracebacks(viewer, qtbot, tmp_path):
    segment = SegmentWidget(viewer)
    finetune = FinetuneWidget(viewer)
    finetune.project.value = str(tmp_path / "project")

    # A model folder that is not a model: a message, and no labels.
    segment.model.value = str(tmp_path)
    _run_and_wait(qtbot, segment)
    assert "config.json" in segment.status.value and "cells nuclei" not in viewer.layers
    assert segment.tta.value is False

    # A run tuned with `dsb tune --tta` ticks the box; the shipped model clears it.
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "config.json").write_text('{"predict": {"tta": true}}')
    segment.model.value = str(tuned)
    assert segment.tta.value is True
    segment.model.value = ""
    assert segment.tta.value is False

    # An empty Labels layer given to fine-tuning.
    viewer.add_labels(np.zeros((128, 128), np.int32), name="cells nuclei")
    finetune.run()
    assert finetune.worker is None and "no nucleus" in finetune.status.value

    # A Labels layer of another shape.
    other = viewer.add_labels(np.ones((64, 64), np.int32), name="other")
    finetune.labels.value = other
    finetune.run()
    assert finetune.worker is None and "shape (64, 64)" in finetune.status.value

    # A scale factor out of range: a message, and no worker started.
    segment.scale_factor.value = "3"
    segment.run()
    assert segment.worker is None and "'3' is not a factor from 0.5 to 2" in segment.status.value
    segment.scale_factor.value = ""

    # No image layer.
    viewer.layers.remove("cells")
    segment.run()
    assert segment.worker is None and "No image layer" in segment.status.value
    finetune.run()
    assert finetune.worker is None and "No image layer" in finetune.status.value


def test_cancelled_finetune_keeps_the_model(viewer, qtbot, tmp_path):
    segment = SegmentWidget(viewer)
    finetune = FinetuneWidget(viewer)
    labels = viewer.add_labels(np.zeros((128, 128), np.int32), name="cells nuclei")
    labels.data[30:50, 30:50] = 1
    finetune.project.value = str(tmp_path / "project")
    finetune.epochs.value, finetune.steps.value = 1, 50
    before = finetune.state.path
    finetune.run()
    finetune.worker.yielded.connect(lambda event: finetune.cancel())  # cancel at the first step
    qtbot.waitUntil(lambda: finetune.worker is None, timeout=WAIT_MS)
    assert "cancelled" in finetune.status.value
    assert finetune.state.path == before and segment.model.line_edit.value == ""
    assert not list((tmp_path / "project" / "models").glob("finetune-*"))
