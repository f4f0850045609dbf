"""The network as an ONNX file, for the fast CPU engines (:mod:`dsb.network.engines`) and other tools.

:func:`export_onnx` writes ``model.onnx`` through Keras's own ONNX export
(tf2onnx on TensorFlow, jax2onnx on JAX), then names the tensors for people
who open the file elsewhere (input ``image``, output ``probabilities``, axes
``batch, height, width, channel``), drops the crop and pad that the
converter puts after each transposed convolution (:func:`drop_empty_crops`),
and records in its metadata what
:func:`dsb.network.engines.open_network` checks before it trusts the file:

- ``dsb.outputs``: the output channels in order (``body,border,contact``);
- ``dsb.model_keras_sha256``: the digest of the ``model.keras`` it came from,
  so that an ONNX file left behind by an earlier model is refused, not used.

Export needs the ``onnx`` package and the backend's converter; inference
needs neither (only ONNX Runtime or OpenVINO).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

from dsb.core.atomic import atomic_path
from dsb.core.errors import EnvironmentProblem
from dsb.network.model_folder import file_digest

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "OPSET",
    "export_onnx",
    "drop_empty_crops",
]


INPUT_NAME = "image"


OUTPUT_NAME = "probabilities"


# Opset 17 runs in every ONNX Runtime and OpenVINO release of the last years, and in deepImageJ's.
OPSET = 17


_AXES = ("batch", "height", "width", "channel")


def _converter_missing(exc: ImportError) -> EnvironmentProblem:
    return EnvironmentProblem(
        f"ONNX export needs the onnx and tf2onnx packages ({exc.name or exc} is not installed);"
        " install them with: pip install onnx tf2onnx"
    )


def export_onnx(model, path, *, outputs, source=None) -> Path:
    """Write ``model`` as ONNX to ``path``, atomically.

    Parameters
    ----------
    model : keras.Model
        A fully convolutional network from ``(B, H, W, 1)`` to ``(B, H, W, C)``.
    path : str or os.PathLike
        The file to write, usually ``RUN_DIR/model.onnx``.
    outputs : sequence of str
        The names of the C output channels, recorded in the file.
    source : str or os.PathLike, optional
        The ``model.keras`` the model was loaded from; its digest is recorded.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    EnvironmentProblem
        Keras runs on another backend than TensorFlow, the converter is not installed, or ``path``
        cannot be written.
    """
    import keras

    if keras.backend.backend() != "tensorflow":  # Keras would look for jax2onnx, which dsb does not use
        raise EnvironmentProblem(
            f"ONNX export runs through TensorFlow (tf2onnx), and Keras runs on {keras.backend.backend()} here: "
            "export with KERAS_BACKEND=tensorflow (or unset), the cpu or gpu extra installed"
        )
    try:
        import onnx
    except ImportError as exc:
        raise _converter_missing(exc) from None
    path = Path(path)
    if tuple(model.input_shape[1:]) != (None, None, 1):
        raise ValueError(f"`model` takes inputs of shape {model.input_shape}; expected (None, None, None, 1)")
    signature = [keras.InputSpec(shape=(None, None, None, 1), dtype="float32")]
    with tempfile.TemporaryDirectory(prefix="dsb-onnx-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            with warnings.catch_warnings():
                # Keras's tf2onnx shim probes np.object, which numpy 2 warns about: not the user's concern.
                warnings.filterwarnings("ignore", category=FutureWarning, module=r"keras\.src\.export")
                model.export(str(raw), format="onnx", input_signature=signature, opset_version=OPSET,
                             verbose=False)
        except ImportError as exc:
            raise _converter_missing(exc) from None
        proto = onnx.load(str(raw))
    drop_empty_crops(proto.graph)
    _rename(proto.graph, proto.graph.input[0].name, INPUT_NAME)
    _rename(proto.graph, proto.graph.output[0].name, OUTPUT_NAME)
    for value in (proto.graph.input[0], proto.graph.output[0]):
        for dim, axis in zip(value.type.tensor_type.shape.dim, _AXES):
            if not dim.HasField("dim_value"):
                dim.dim_param = axis
    meta = {"dsb.outputs": ",".join(outputs)}
    if source is not None:
        meta["dsb.model_keras_sha256"] = file_digest(source)
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "dsb"
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp_path:
        onnx.save(proto, os.fspath(tmp_path))
    return path


def _rename(graph, old: str, new: str) -> None:
    """Rename a tensor everywhere in ``graph``: graph inputs and outputs, and node inputs and outputs."""
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new
    for node in graph.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name == old:
                    field[i] = new


def _exact_upsampling(node) -> bool:
    """Whether ``node`` is a ConvTranspose whose output is exactly ``strides`` times its input:
    a kernel as long as the stride, no padding, output padding, output shape or dilation."""
    import onnx

    if node.op_type != "ConvTranspose":
        return False
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    strides = list(attrs.get("strides", ()))
    return (
        bool(strides)
        and list(attrs.get("kernel_shape", ())) == strides
        and not any(attrs.get("pads", ()))
        and not any(attrs.get("output_padding", ()))
        and "output_shape" not in attrs
        and all(d == 1 for d in attrs.get("dilations", ()))
        and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    )


def drop_empty_crops(graph) -> int:
    """Bypass the Slice and Pad that follow a transposed convolution of kernel as long as its stride.

    tf2onnx brings a transposed convolution's output to the size TensorFlow
    computes at run time with a Slice, then a Pad. For a kernel as long as the
    stride (the U-Net's 2x2, stride 2) that size is stride x input with
    ``"same"`` and ``"valid"`` padding alike, which is what the ONNX operator
    gives: the pair crops and pads nothing. With the height and width dynamic
    the engines cannot see that and copy three full-size feature maps twice
    each, about a tenth of OpenVINO's time, for probabilities the same to
    the bit. The Pad's readers read
    the convolution's output instead, and the nodes that then feed nothing
    (the pair and its shape arithmetic) are dropped.

    Returns
    -------
    int
        How many pairs were bypassed.
    """
    readers = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            readers[name].append(node)
    outputs = {value.name for value in graph.output}
    bypass = {}
    for node in graph.node:
        if not _exact_upsampling(node):
            continue
        upsampled = node.output[0]
        for crop in readers[upsampled]:
            if crop.op_type != "Slice" or crop.input[0] != upsampled:
                continue
            for pad in readers[crop.output[0]]:
                if pad.op_type == "Pad" and pad.input[0] == crop.output[0] and pad.output[0] not in outputs:
                    bypass[pad.output[0]] = upsampled
    if not bypass:
        return 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in bypass:
                node.input[i] = bypass[name]
    _drop_unused(graph)
    return len(bypass)


def _drop_unused(graph) -> None:
    """Remove the nodes and initializers that no graph output depends on (a graph with subgraphs,
    whose nodes may read outer names, is left as it is)."""
    import onnx

    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return
    needed = {value.name for value in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    for field in (graph.initializer, graph.value_info):
        used = [item for item in field if item.name in needed]
        del field[:]
        field.extend(used)
