"""The fine-tune widget: the human in the loop.

Correct the nuclei in the Labels layer, click one button: the image and its
corrections join the earlier ones in the project folder
(:class:`dsb.napari.project.Project`), the current model is fine-tuned on them
all (:func:`dsb.napari.finetuning.finetune_project`) in a thread worker, the new
model becomes the plugin's model and the image is segmented again.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning

from dsb.core.errors import DsbError
from dsb.napari.child import ChildFailed
from dsb.napari.finetuning import Outcome, Progress, finetune_events
from dsb.napari.project import Project, correction_name, spatial_shape
from dsb.napari.segment_widget import (
    SegmentWidget,
    follow_selection,
    image_layers,
    labels_layer_name,
    shown_frame,
)
from dsb.napari.segmentation import Failure, state_for
from dsb.training.finetune import FINETUNE_EPOCHS, FINETUNE_STEPS, MIN_VALIDATION_IMAGES

__all__ = ["FinetuneWidget", "DEFAULT_PROJECT"]

#: Where corrections and fine-tuned models go unless the user picks another folder.
DEFAULT_PROJECT = Path.home() / "dsb-napari-project"


def _train(project: Project, init, cancel: threading.Event, options: dict):
    """The worker: yields each :class:`Progress`, returns the :class:`Outcome` or a :class:`Failure`."""
    try:
        for event in finetune_events(project, init, cancel=cancel, **options):
            if isinstance(event, Outcome):
                return event
            yield event
    except (DsbError, ChildFailed, OSError, ValueError) as exc:
        return Failure(str(exc))
    return Failure("fine-tuning ended without a result")


class FinetuneWidget(Container):
    """Save the corrected Labels layer into a project folder and fine-tune the current model on it.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer):
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.worker = None
        self.cancel_event = threading.Event()
        self.image = ComboBox(label="image", choices=lambda _: image_layers(self.viewer), nullable=True)
        self.labels = ComboBox(label="corrected labels", choices=lambda _: self._labels_choices(), nullable=True,
                               tooltip="The Labels layer you corrected (paint, erase, split, merge).")
        self.project = FileEdit(label="project folder", mode="d", value=str(DEFAULT_PROJECT),
                                tooltip="Keeps your corrected images (corrections/) and fine-tuned models (models/).")
        self.epochs = SpinBox(label="epochs", value=FINETUNE_EPOCHS, min=1, max=1000)
        self.steps = SpinBox(label="steps per epoch", value=FINETUNE_STEPS, min=1, max=10000)
        self.budget = FloatSpinBox(label="time budget (min)", value=10.0, min=0.0, max=24 * 60.0, step=1.0,
                                   tooltip="Training stops after this many minutes, keeping the best model; 0: none.")
        self.run_button = PushButton(text="Save correction and fine-tune")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="", min=0, max=100, value=0, visible=False)
        self.loss = Label(label="training loss", value="-")
        self.validation = Label(label="validation", value="-")
        self.model_label = Label(label="model", value=self.state.describe())
        self.status = Label(label="", value="")
        self.extend([self.image, self.labels, self.project, self.epochs, self.steps, self.budget, self.run_button,
                     self.cancel_button, self.progress, self.loss, self.validation, self.model_label, self.status])
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.image.changed.connect(self._pick_labels)
        self.state.listeners.append(lambda state: setattr(self.model_label, "value", state.describe()))
        for event in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, event).connect(self._layers_changed)
        napari_viewer.layers.selection.events.active.connect(self._layers_changed)
        self._layers_changed()

    def _labels_choices(self) -> list:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _layers_changed(self, event=None) -> None:
        follow_selection(self.image, self.viewer, Image)
        follow_selection(self.labels, self.viewer, Labels)
        self._pick_labels()

    def _pick_labels(self, value=None) -> None:
        """Take the image's own Labels layer (the segment widget's), unless a Labels layer is active."""
        image = self.image.value
        if isinstance(self.viewer.layers.selection.active, Labels) or image is None:
            return
        name = labels_layer_name(image)
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
            self.labels.value = self.viewer.layers[name]

    def fail(self, message: str) -> None:
        """Show a problem in the widget and as a napari error notification."""
        self.status.value = message
        show_error(message)

    # ------------------------------------------------------------ saving the correction

    def _frame(self, image: Image) -> tuple[tuple[int, ...], int | None]:
        """The index of the frame shown (empty for a 2-D image) and its number in the stack."""
        index = shown_frame(self.viewer, image)
        if not index:
            return (), None
        return index, int(np.ravel_multi_index(index, spatial_shape(image.data, image.rgb)[: len(index)]))

    def save_correction(self) -> Project:
        """Save the shown frame of the image and of its corrected labels into the project folder.

        Raises
        ------
        DsbError
            No image or Labels layer chosen, labels of another shape, empty labels, or an unwritable folder.
        """
        image, labels = self.image.value, self.labels.value
        if image is None or image not in self.viewer.layers:
            raise DsbError("No image layer selected: open an image and segment it first.")
        if labels is None or labels not in self.viewer.layers:
            raise DsbError("No Labels layer to learn from: segment the image, then correct its nuclei.")
        shape = spatial_shape(image.data, image.rgb)
        if tuple(labels.data.shape) != shape:
            raise DsbError(f"The Labels layer '{labels.name}' has shape {tuple(labels.data.shape)} but the image "
                           f"'{image.name}' has {shape}: pick the labels drawn on this image.")
        text = str(self.project.line_edit.value).strip()
        if not text:
            raise DsbError("No project folder: choose where your corrections and models are kept.")
        project = Project(text)
        index, frame = self._frame(image)
        data = image.data[0] if image.multiscale else image.data
        project.save_correction(correction_name(image.name, frame), np.asarray(data[index]),
                                np.asarray(labels.data[index]), rgb=bool(image.rgb))
        return project

    # ------------------------------------------------------------ training

    def run(self, value=None) -> None:
        """Save the correction, then fine-tune the current model on every correction of the project."""
        if self.worker is not None:
            show_warning("dsb is already fine-tuning; wait for it or cancel it first.")
            return
        try:
            project = self.save_correction()
            count = project.check()
        except (DsbError, OSError) as exc:
            self.fail(str(exc))
            return
        image = self.image.value
        self.cancel_event = threading.Event()
        options = {"epochs": int(self.epochs.value), "steps_per_epoch": int(self.steps.value),
                   "time_budget": float(self.budget.value) or None}
        self.loss.value = "-"
        self.validation.value = ("-" if count >= MIN_VALIDATION_IMAGES
                                  else f"none yet: one is held out from {MIN_VALIDATION_IMAGES} corrected images on")
        self._set_running(True, f"fine-tuning {self.state.describe()} on {count} corrected image(s) ...")
        worker = create_worker(_train, project, self.state.path, self.cancel_event, options)
        worker.yielded.connect(self._progress)
        worker.returned.connect(lambda result: self._finished(image, result))
        worker.finished.connect(lambda: self._set_running(False))
        self.worker = worker
        worker.start()

    def cancel(self, value=None) -> None:
        """Stop training at the end of the current step; the current model stays the plugin's."""
        if self.worker is not None:
            self.cancel_event.set()
            self.status.value = "cancelling after this step ..."

    def _set_running(self, running: bool, message: str | None = None) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        self.progress.visible = running
        self.progress.value = 0
        if not running:
            self.worker = None
        if message is not None:
            self.status.value = message

    def _progress(self, event: Progress) -> None:
        self.progress.value = int(round(100 * event.fraction))
        self.loss.value = f"{event.loss:.4f} (epoch {event.epoch}/{event.epochs}, step {event.step}/{event.steps})"
        if event.end_of_epoch and math.isfinite(event.val_loss):
            self.validation.value = f"score {event.val_score:.3f}, loss {event.val_loss:.4f} (epoch {event.epoch})"

    def _finished(self, image, result) -> None:
        if isinstance(result, Failure):
            self.fail(result.message)
            return
        if result.cancelled:
            self.status.value = f"fine-tuning cancelled: still using {self.state.describe()}"
            show_warning(self.status.value)
            return
        self.state.set_model(result.run_dir)
        self.status.value = f"fine-tuned into {result.run_dir}; segmenting {image.name} again ..."
        show_info(f"dsb: new model {result.run_dir}")
        if image is not None and image in self.viewer.layers:
            segment = self.state.segmenter or self._own_segmenter().segment
            segment(image, on_done=lambda labels: setattr(
                self.status, "value", f"segmented again with {result.run_dir.name}"))

    def _own_segmenter(self) -> SegmentWidget:
        """A segment widget, not shown, for when the user has not opened one."""
        if getattr(self, "_segmenter", None) is None:
            self._segmenter = SegmentWidget(self.viewer)
        return self._segmenter
