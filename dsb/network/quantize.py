"""The network in 8-bit integers, faster than float32 on x86 CPUs: ``model.int8.onnx``.

:func:`quantize_onnx` turns a run's ``model.onnx`` into a static int8 model:
weights per output channel in int8, activations in uint8 with ranges
measured on calibration images, written as QuantizeLinear/DequantizeLinear
pairs around each convolution (the QDQ form, which OpenVINO and ONNX Runtime
both fuse into integer convolutions). The tool is ONNX Runtime's own
quantizer (``onnxruntime.quantization``), needed only to write the file.

The calibration images are the run's training images, never its validation
images (whose score judges the result) nor any test image: a few from every
imaging-experiment group (:func:`calibration_batches`), resampled to the
network's nucleus diameter as prediction resamples them, so the measured
ranges cover every kind of image the run was trained on.

On OpenVINO the network runs two to three times as fast as in float32 on x86
CPUs with AVX2 or later (the most with the dot-product units of VNNI or AMX);
prediction end to end, whose work around the network stays, 1.5 to 2.6 times.
Probabilities move by about 0.0003 to 0.002 on average and by more at a few
pixels: the float32 engines agree within 1e-4, and int8 does not. So
``--precision int8`` asks for it, and ``auto`` takes it on OpenVINO only where
the CPU has no bfloat16 units and the file comes from the folder's own model
(:func:`dsb.network.engines.resolve_precision`). What it costs in held-out
score is on the documentation's engines page.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from pathlib import Path

import numpy as np

from dsb.core.atomic import atomic_path, os_error
from dsb.core.errors import BadDataError, EnvironmentProblem
from dsb.inference.preprocess import to_network_input
from dsb.inference.resample import resample
from dsb.network.model_folder import read_onnx_metadata
from dsb.network.onnx_export import INPUT_NAME

__all__ = [
    "CALIBRATION_IMAGES",
    "CALIBRATION_SIDE",
    "calibration_batches",
    "require_quantizer",
    "quantize_onnx",
]


# Enough to see every group of stage1_train several times; the ranges barely move beyond it.
CALIBRATION_IMAGES = 32


# Calibration crops of at most this side (the network's input at its scale).
CALIBRATION_SIDE = 512


def calibration_batches(prepared, config, *, count: int = CALIBRATION_IMAGES,
                        side: int = CALIBRATION_SIDE, groups=None) -> list[np.ndarray]:
    """Network inputs to measure activation ranges on: ``(1, h, w, 1)`` float32 batches.

    Parameters
    ----------
    prepared : dsb.training.cache.Prepared
        The training images (:func:`dsb.training.cache.load_prepared`).
    config : dsb.core.config.Config
        The run's config: its ``validation_ids`` are left out, and each image
        is resampled by ``preprocess.diameter`` over its nucleus diameter
        (within ``predict.min_scale .. max_scale``), as prediction does.
    count : int
        How many images; taken in turn from each group, so that every
        imaging experiment contributes.
    side : int
        The largest crop side (the middle of the image, cut to the network's
        size multiple).
    groups : collection of str, optional
        Only images of these imaging-experiment groups: those the run trained
        on (its manifest's ``train_groups``), when ``prepared`` holds more,
        as the data of a cross-validation fold, which never saw its held-out
        groups, do. None: every group.

    Raises
    ------
    BadDataError
        No training image is left once the validation images (and the groups
        not asked for) are out.
    """
    from dsb.inference.scale import network_zoom

    held_out = set(config.validation_ids)
    by_group: dict[str, list[int]] = {}
    for i, image_id in enumerate(prepared.ids):
        group = prepared.groups[i] if prepared.groups else ""
        if image_id not in held_out and (groups is None or group in groups):
            by_group.setdefault(group, []).append(i)
    if not by_group:
        if groups is not None:
            raise BadDataError("no training image to calibrate on: none of the groups the run trained on "
                               f"({', '.join(sorted(groups)) or 'none'}) is here outside its validation images; "
                               "give the data it trained on", path=prepared.path)
        raise BadDataError("no training image to calibrate on: every prepared image is a validation image",
                           path=prepared.path)
    order, queues = [], [list(members) for _, members in sorted(by_group.items())]
    while len(order) < count and any(queues):
        for queue in queues:
            if queue and len(order) < count:
                # Spread over the group, not its first images (ids are sorted, not ordered by anything).
                order.append(queue.pop(len(queue) // 2))
    multiple = config.model.size_multiple()
    batches = []
    for i in order:
        diameter = prepared.diameters[i] if prepared.diameters else math.nan
        image = resample(to_network_input(prepared.images[i]), network_zoom(diameter, config))
        h, w = (min(n, side) // multiple * multiple for n in image.shape)
        if h == 0 or w == 0:
            continue
        top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        batches.append(np.ascontiguousarray(image[top : top + h, left : left + w]).reshape(1, h, w, 1))
    if not batches:
        raise BadDataError("no training image is large enough to calibrate on", path=prepared.path)
    return batches


class _Reader:
    """The calibration batches, as ``onnxruntime.quantization`` reads them."""

    def __init__(self, batches, input_name: str):
        self._feeds = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self._feeds, None)


@contextlib.contextmanager
def _quiet_logging():
    """The quantizer logs advice to the root logger; it is not the user's business."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def require_quantizer() -> None:
    """Raise :class:`EnvironmentProblem` unless ONNX Runtime's quantizer and ``onnx`` import: checked
    before any other work of an int8 export, so that a missing package is said first."""
    try:
        import onnx  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:
        raise EnvironmentProblem(
            f"int8 export needs onnxruntime and onnx ({exc.name or exc} is not installed);"
            " install them with: pip install onnxruntime onnx"
        ) from None


def quantize_onnx(src, dst, batches, *, note: str = "") -> Path:
    """Write the int8 form of the ONNX model ``src`` to ``dst``, atomically.

    Parameters
    ----------
    src : path
        A ``model.onnx`` written by :func:`dsb.network.onnx_export.export_onnx`.
    dst : path
        The file to write (``model.int8.onnx``).
    batches : list of ndarray
        Calibration inputs (:func:`calibration_batches`).
    note : str
        Recorded as ``dsb.calibration`` in the file's metadata.

    Returns
    -------
    pathlib.Path
        ``dst``. Its metadata is ``src``'s (the output channels and the
        digest of the ``model.keras`` it came from, which the engines check)
        with ``dsb.precision`` set to ``int8``.

    Raises
    ------
    EnvironmentProblem
        ``onnxruntime`` or ``onnx`` is not installed.
    BadDataError
        ``src`` cannot be read or quantized.
    """
    require_quantizer()
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    src, dst = Path(src), Path(dst)
    if not batches:
        raise ValueError("`batches` is empty: calibration needs at least one image")
    with tempfile.TemporaryDirectory(prefix="dsb-int8-") as tmp:
        raw = Path(tmp) / "model.int8.onnx"
        try:
            with _quiet_logging():
                quantize_static(
                    str(src), str(raw), _Reader(batches, INPUT_NAME),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                )
            model = onnx.load(str(raw))
        except MemoryError:
            raise
        except OSError as exc:  # a full or unwritable temporary folder is the machine's problem, not the file's
            raise os_error(exc, Path(exc.filename) if exc.filename else src) from None
        except Exception as exc:  # the quantizer raises many types for a file it cannot use
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            raise BadDataError(f"cannot quantize it ({type(exc).__name__}: {lines[0][:300]})", path=src) from None
    meta = read_onnx_metadata(src)
    meta.update({"dsb.precision": "int8", "dsb.calibration": note or f"{len(batches)} images"})
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    with atomic_path(dst) as tmp_path:
        onnx.save(model, str(tmp_path))
    return dst
