"""The segment widget: the nuclei of the selected image layer as a Labels layer, in a thread worker."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
)
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning

from dsb.core.errors import DsbError
from dsb.napari.child import ChildFailed
from dsb.napari.io import layer_pixel_size, layer_z_step
from dsb.napari.project import spatial_shape
from dsb.napari.segmentation import (
    VIEWER_ENGINES,
    VIEWER_PRECISIONS,
    Failure,
    FrameDone,
    Segmented,
    diameter_words,
    frame_features,
    parse_cell_expansion,
    parse_diameter,
    parse_scale_factor,
    planes_axis,
    segment_frames,
    state_for,
)

__all__ = ["SegmentWidget", "labels_layer_name", "cells_layer_name", "shown_frame"]


def _pixel_size(layer: Image) -> float | None:
    """Micrometres a pixel of ``layer``, where its scale and units give it (:func:`layer_pixel_size`)."""
    return layer_pixel_size({"scale": layer.scale, "units": getattr(layer, "units", None)})


def labels_layer_name(image: Image) -> str:
    """The name of the Labels layer that holds the nuclei of ``image``."""
    return f"{image.name} nuclei"


def cells_layer_name(image: Image) -> str:
    """The name of the Labels layer that holds the cells grown around the nuclei of ``image``."""
    return f"{image.name} cells"


def shown_frame(viewer, layer) -> tuple[int, ...]:
    """The index, on the layer's frame axes, of the frame the viewer shows (empty for a 2-D layer)."""
    lead = spatial_shape(layer.data, bool(getattr(layer, "rgb", False)))[:-2]
    if not lead:
        return ()
    position = layer.world_to_data(viewer.dims.point)
    return tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(position[: len(lead)], lead, strict=True))


def image_layers(viewer) -> list:
    """``(name, layer)`` choices of the viewer's image layers."""
    return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image)]


def follow_selection(combo: ComboBox, viewer, kind: type) -> None:
    """Refresh a layer combo box's choices and show the viewer's active layer when it is a ``kind``,
    else keep the choice, or take the first layer of that kind."""
    combo.reset_choices()
    layers = [layer for layer in viewer.layers if isinstance(layer, kind)]
    active = viewer.layers.selection.active
    if isinstance(active, kind) and active in layers:
        combo.value = active
    elif combo.value not in layers and layers:
        combo.value = layers[-1]


def _work(state, data, rgb: bool, diameter, tta: bool, scale_factor=None, stitch: int | None = None,
          sizes: tuple = (None, None), cell_expansion: float | None = None):
    """The worker: load the model, segment each frame; a problem comes back as a :class:`Failure`.
    ``sizes``: the layer's micrometres a pixel and between planes, or None."""
    try:
        model = state.load()
        result = None
        pixel_size, z_step = sizes
        for event in segment_frames(model, data, rgb=rgb, diameter=diameter, tta=tta, scale_factor=scale_factor,
                                    stitch=stitch, pixel_size=pixel_size, z_step=z_step,
                                    cell_expansion=cell_expansion):
            if isinstance(event, Segmented):
                result = event
            else:
                yield event
        return result
    except (DsbError, ChildFailed, OSError, ValueError, TypeError) as exc:
        return Failure(str(exc))


class SegmentWidget(Container):
    """Segment the selected image layer (grey or RGB, 2-D or a stack frame by frame) into a Labels layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.worker = None
        self._following = weakref.WeakSet()  # stacks whose features follow the frame on screen
        # A bound method: napari holds it weakly, so the viewer does not keep a closed widget alive.
        self.viewer.dims.events.current_step.connect(self._frame_changed)
        self.image = ComboBox(label="image", choices=lambda _: image_layers(self.viewer), nullable=True,
                              tooltip="The image layer to segment; a stack is segmented frame by frame.")
        self.model = FileEdit(label="model folder", mode="d", value="",
                              tooltip="A dsb run folder (dsb train --out); empty: the model shipped with dsb.")
        self.engine = ComboBox(label="engine", choices=list(VIEWER_ENGINES), value=self.state.engine,
                               tooltip="auto: OpenVINO, else ONNX Runtime (a folder without model.onnx "
                                       "gets one first).")
        self.precision = ComboBox(label="precision", choices=list(VIEWER_PRECISIONS), value=self.state.precision,
                                  tooltip="auto: bfloat16 where the CPU has bfloat16 units, else int8 on an x86 "
                                          "CPU where the folder has model.int8.onnx (dsb export --int8), else "
                                          "float32: the fastest format the CPU computes well.")
        self.diameter = LineEdit(label="diameter (px)", value="",
                                 tooltip="Median nucleus diameter in pixels, or in micrometres with a unit ('9 um') "
                                         "where the layer's scale is in a length; empty: estimated from the image.")
        self.estimate = Label(label="", value="diameter: estimated when empty")
        self.scale_factor = LineEdit(label="scale factor", value="",
                                     tooltip="Predict this many times larger than the estimated scale (0.5 to 2); "
                                             "empty: the model's own, which dsb tune --scale-factors chooses.")
        self.tta = CheckBox(text="test-time augmentation (slower, smoother edges)", value=False)
        self.cells = LineEdit(label="cells: grow by (px)", value="",
                              tooltip="Grow each nucleus by up to this many pixels (or micrometres: '5 um') into "
                                      "its cell, as dsb segment --cell-expansion does: a second Labels layer of "
                                      "the cells, and each cell's area and cytoplasm's mean in the features. "
                                      "Empty: no cells.")
        self.stitch = CheckBox(text="3-D nuclei: join a z-stack's planes", value=False,
                               tooltip="Each nucleus one label through the planes, as dsb segment --stitch gives "
                                       "it: the axis the layer calls z, else its last unnamed axis before the "
                                       "image's rows; each time point numbered on its own.")
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="", min=0, max=1, value=0, visible=False)
        self.status = Label(label="", value="")
        self.extend([self.image, self.model, self.engine, self.precision, self.diameter, self.estimate,
                     self.scale_factor, self.tta, self.stitch, self.cells, self.run_button, self.cancel_button,
                     self.progress, self.status])
        self.model.line_edit.value = "" if self.state.path is None else str(self.state.path)
        self.model.changed.connect(self._model_typed)
        self.engine.changed.connect(lambda value: setattr(self.state, "engine", value))
        self.precision.changed.connect(lambda value: setattr(self.state, "precision", value))
        self.tta.changed.connect(lambda value: setattr(self.state, "tta", bool(value)))
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.state.listeners.append(self._model_changed)
        self.state.segmenter = self.segment
        for event in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, event).connect(self._layers_changed)
        napari_viewer.layers.selection.events.active.connect(self._layers_changed)
        self._layers_changed()

    # ------------------------------------------------------------ layer choices and model field

    def _layers_changed(self, event=None) -> None:
        follow_selection(self.image, self.viewer, Image)

    def _model_text(self) -> str:
        return str(self.model.line_edit.value).strip()

    def _model_typed(self, value=None) -> None:
        self.state.set_model(self._model_text() or None)

    def _model_changed(self, state) -> None:
        text = "" if state.path is None else str(state.path)
        if self._model_text() != text:
            self.model.line_edit.value = text
        self.status.value = f"model: {state.describe()}"
        # A run tuned with `dsb tune --tta` predicts as it was tuned unless the box is cleared.
        self.tta.value = state.tuned_tta()

    # ------------------------------------------------------------ running

    def fail(self, message: str) -> None:
        """Show a problem in the widget and as a napari error notification."""
        self.status.value = message
        show_error(message)

    def run(self, value=None) -> None:
        """Segment the chosen image layer with the widget's model and options."""
        layer = self.image.value
        if layer is None or layer not in self.viewer.layers:
            self.fail("No image layer selected: open an image (File > Open) or pick one under 'image'.")
            return
        self.segment(layer)

    def segment(self, layer: Image, on_done=None) -> None:
        """Start segmenting ``layer`` in a thread worker; ``on_done(result)`` is called after success."""
        if self.worker is not None:
            show_warning("dsb is already segmenting; wait for it or cancel it first.")
            return
        try:
            diameter = parse_diameter(self.diameter.value, _pixel_size(layer))
            scale_factor = parse_scale_factor(self.scale_factor.value)
            cell_expansion = parse_cell_expansion(self.cells.value, _pixel_size(layer))
        except DsbError as exc:
            self.fail(str(exc))
            return
        self.state.diameter = diameter
        stitch, z_step = None, None
        if self.stitch.value:
            # The layer's names of its axes (a reader's, or napari's numbers), the frame axes' first.
            names = list(getattr(layer, "axis_labels", [str(-k) for k in range(layer.ndim, 0, -1)]))
            stitch, why = planes_axis(names[:-2])
            if stitch is None:
                show_warning(f"dsb: {layer.name}: {why}; its frames are segmented apart")
            else:
                z_step = layer_z_step({"scale": layer.scale, "units": getattr(layer, "units", None)}, stitch)
        data = layer.data[0] if layer.multiscale else layer.data
        self._set_running(True, f"segmenting {layer.name} with {self.state.describe()} ...")
        worker = create_worker(_work, self.state, data, bool(layer.rgb), diameter, bool(self.tta.value),
                               scale_factor, stitch, (_pixel_size(layer), z_step), cell_expansion)
        worker.yielded.connect(self._frame_done)
        worker.returned.connect(lambda result: self._finished(layer, result, on_done))
        worker.aborted.connect(lambda: self._cancelled(layer))
        worker.finished.connect(lambda: self._set_running(False))
        self.worker = worker
        worker.start()

    def cancel(self, value=None) -> None:
        """Stop after the frame being segmented; the Labels layer is left as it was."""
        if self.worker is not None:
            self.status.value = "cancelling after this frame ..."
            self.worker.quit()

    def _set_running(self, running: bool, message: str | None = None) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        self.progress.visible = running
        if running:
            self.progress.min, self.progress.max, self.progress.value = 0, 0, 0  # busy until a frame is done
        else:
            self.worker = None
        if message is not None:
            self.status.value = message

    def _frame_done(self, event: FrameDone) -> None:
        self.progress.max = event.total
        self.progress.value = event.done

    def _cancelled(self, layer) -> None:
        self.status.value = f"cancelled: the nuclei of {layer.name} are as they were"
        show_warning(self.status.value)

    def _finished(self, layer: Image, result, on_done) -> None:
        if isinstance(result, Failure):
            self.fail(result.message)
            return
        if not isinstance(result, Segmented):
            return
        labels = self._put_labels(layer, result)
        self.estimate.value = diameter_words(result.diameter, result.estimated, _pixel_size(layer))
        count = int(result.labels.max()) if result.labels.size else 0
        if result.stitched:
            what = "3-D nuclei" + (" in the busiest time point" if result.labels.ndim > 3 else "")
        else:
            what = "nuclei" + (" in the busiest frame" if result.labels.ndim > 2 else "")
        self.status.value = (f"{count} {what} in {result.seconds:.2f} s with {Path(result.model).name}"
                             + (f" ({result.network})" if result.network else ""))
        show_info(f"dsb: {self.status.value}")
        if result.warning:
            show_warning(f"dsb: {layer.name}: {result.warning}; split its channels (right-click the layer, "
                         "Split RGB) and segment the DNA stain's layer")
        if on_done is not None:
            on_done(labels)

    def _put_labels(self, layer: Image, result: Segmented) -> Labels:
        """Add the nuclei as a Labels layer above the image, or replace the data of the one it has; with cells,
        the cells as a second one above it, drawn as outlines."""
        name = labels_layer_name(layer)
        metadata = {"dsb_model": str(result.model), "dsb_diameters": result.diameters,
                    "dsb_confidences": result.confidences, "dsb_measurements": result.measurements,
                    "dsb_stitched": result.stitched, "dsb_planes": result.planes, "dsb_volumes": result.volumes}
        labels = self._put_layer(layer, name, result.labels, metadata)
        self._show_confidences(labels)
        if labels.ndim > 2:
            # One features table per layer, and each frame numbers its nuclei from 1: the table
            # is the shown frame's, swapped as the frame on screen changes (_frame_changed).
            self._following.add(labels)
        cells_name = cells_layer_name(layer)
        if result.cells is not None:
            cells = self._put_layer(layer, cells_name, result.cells, {"dsb_cells_of": labels.name})
            cells.contour = max(int(cells.contour), 1)
        elif isinstance(self.viewer.layers[cells_name] if cells_name in self.viewer.layers else None, Labels) \
                and self.viewer.layers[cells_name].metadata.get("dsb_cells_of") == labels.name:
            self.viewer.layers.remove(cells_name)  # the cells of nuclei that are no more
        return labels

    def _put_layer(self, layer: Image, name: str, data: np.ndarray, metadata: dict) -> Labels:
        """The Labels layer ``name`` given ``data`` and ``metadata``, added above the image where there is none."""
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        if isinstance(existing, Labels):
            existing.data = data
            existing.metadata.update(metadata)
            return existing
        lead = data.ndim
        # The image's scale, units and axis names, so that the writers keep its pixel size and planes.
        same = {key: tuple(getattr(layer, key))[:lead] for key in ("units", "axis_labels")
                if getattr(layer, key, None) is not None}
        return self.viewer.add_labels(data, name=name if existing is None else f"{name} (dsb)",
                                      scale=layer.scale[:lead], translate=layer.translate[:lead], metadata=metadata,
                                      **same)

    def _frame_changed(self, _event=None) -> None:
        """The frame on screen changed: each segmented stack shows that frame's confidences."""
        for labels in list(self._following):
            self._show_confidences(labels)

    def _show_confidences(self, labels: Labels | None) -> None:
        """Give the layer the ``features`` of the frame on screen: each nucleus's area, shape, mean
        intensity and confidence by its label, which the viewer shows for the nucleus under the cursor
        (and in a stitched z-stack, each 3-D nucleus's of the time point on screen)."""
        if labels is None or labels not in self.viewer.layers or "dsb_confidences" not in labels.metadata:
            return
        metadata = labels.metadata
        features = frame_features(metadata["dsb_confidences"], labels.data.shape[:-2],
                                  shown_frame(self.viewer, labels), metadata.get("dsb_measurements"),
                                  metadata.get("dsb_volumes"), metadata.get("dsb_planes"))
        labels.features = features if features is not None else {}
