"""A model folder as a BioImage Model Zoo package (bioimage.io model RDF, format 0.5).

:func:`export_bioimageio` writes a folder that bioimage.io tools (the
``bioimageio.spec`` validator, ``bioimageio.core``, deepImageJ, ilastik)
can read:

============================  ==================================================
``rdf.yaml``                  the model description, with a SHA-256 per file
``model.keras``               the Keras 3 weights (format ``keras_v3``)
``model.onnx``                the same network as ONNX (format ``onnx``)
``test_input.npy``            a preprocessed test image, axes (batch, y, x, channel)
``test_output.npy``           the Keras model's output for exactly that input
``sample_input.tif``          the test tensors as float32 TIFFs, (y, x) and
``sample_output.tif``         (y, x, channel), for people and viewers
``cover.png``                 the test image beside its body probability
``README.md``                 what the network does, its inputs, its outputs
``config.json``               the dsb config (an attachment): the package is
                              also a dsb model folder (``dsb segment --model``)
============================  ==================================================

The network gives probability maps (body, border, contact); turning them into
one label per nucleus (a marker-controlled watershed) is dsb's code, not part
of the network, and the package says so, as StarDist and Cellpose packages do
for their post-processing. The format has a weights entry for Keras 3
``.keras`` files (``keras_v3``, with the Keras version and the backend that
made them); ``keras_hdf5`` is for the older HDF5 files and is not used.

Only part of dsb's preprocessing can be written in the format: the percentile
stretch (``scale_range`` then ``clip``). The grey conversion, the polarity
(nuclei bright) and the resampling to the trained nucleus size are dsb's
(:func:`dsb.inference.preprocess.preprocess_image`, :mod:`dsb.inference.scale`), and the README
says what a consumer must do instead.

``rdf.yaml`` is written with PyYAML when it is installed, else as JSON (which
is valid YAML), so that exporting adds no dependency.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from dsb.core.atomic import atomic_dir, write_text
from dsb.core.errors import BadDataError, EnvironmentProblem
from dsb.inference.preprocess import preprocess_image
from dsb.io.channel_names import channel_words
from dsb.network.engines import KerasNetwork
from dsb.network.model_folder import check_onnx, file_digest, load_run, read_manifest, read_onnx_opset
from dsb.network.onnx_export import export_onnx
from dsb.workflows.drawing import to_rgb8

__all__ = ["FORMAT_VERSION", "PACKAGE_FILES", "NAME", "check_package_folder", "export_bioimageio", "synthetic_image"]

# The model RDF format that bioimageio.spec 0.5.14 implements (the latest 0.5.x).
FORMAT_VERSION = "0.5.14"
NAME = "dsb nucleus U-Net"
RDF_FILE = "rdf.yaml"
KERAS_FILE = "model.keras"
ONNX_FILE = "model.onnx"
TEST_INPUT = "test_input.npy"
TEST_OUTPUT = "test_output.npy"
COVER = "cover.png"
SAMPLE_INPUT = "sample_input.tif"
SAMPLE_OUTPUT = "sample_output.tif"
README = "README.md"
CONFIG = "config.json"
PACKAGE_FILES = (
    RDF_FILE, KERAS_FILE, ONNX_FILE, TEST_INPUT, TEST_OUTPUT, SAMPLE_INPUT, SAMPLE_OUTPUT, COVER, README, CONFIG
)
INPUT_ID = "image"
OUTPUT_ID = "probabilities"
_MIN_STEP = 16  # spatial sizes: a multiple of 16 and of the U-Net's size multiple
_MAX_SAMPLE = 256  # a given sample is cropped to at most this many pixels a side
_BACKENDS = ("tensorflow", "jax", "torch")  # the Keras backends the format can record
_DSB2018 = {
    "text": "Caicedo et al. (2019), Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl, "
    "Nature Methods 16, 1247-1253. The Kaggle DSB2018 data set (BBBC038) the network was trained on.",
    "doi": "10.1038/s41592-019-0612-7",
}
_UNET = {
    "text": "Ronneberger, Fischer and Brox (2015), U-Net: convolutional networks for biomedical image segmentation, "
    "MICCAI 2015. The architecture.",
    "doi": "10.1007/978-3-319-24574-4_28",
}
_CHANNEL_TEXT = {
    "body": "probability that the pixel belongs to a nucleus",
    "border": "probability that the pixel lies on the inner ring of a nucleus (contact lines included)",
    "contact": "probability that the pixel lies within a few pixels of two different nuclei",
    "core": "probability that the pixel lies in the inner part of a nucleus, a seed per nucleus",
}


def synthetic_image(diameter: float, size: int, *, seed: int = 0) -> np.ndarray:
    """A fluorescence-like test image: bright blurred discs on a dark, noisy background.

    Parameters
    ----------
    diameter : float
        The discs' median diameter in pixels (each varies by up to 15 %).
    size : int
        Height and width.
    seed : int
        The same seed gives the same image.

    Returns
    -------
    (size, size) ndarray of uint8
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    spacing = 1.6 * diameter
    n = max(1, int(size // spacing))
    offset = (size - (n - 1) * spacing) / 2
    rr, cc = np.indices((size, size), dtype=np.float32)
    image = np.full((size, size), 0.06, np.float32)
    for i in range(n):
        for j in range(n):
            cy, cx = offset + np.array([i, j]) * spacing + rng.uniform(-0.15, 0.15, 2) * diameter
            radius = diameter / 2 * rng.uniform(0.85, 1.15)
            disc = (rr - cy) ** 2 + (cc - cx) ** 2 <= radius**2
            image[disc] = rng.uniform(0.45, 0.9)
    image = ndimage.gaussian_filter(image, 1.0) + rng.normal(0, 0.02, image.shape).astype(np.float32)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def check_package_folder(model_dir, out_dir) -> None:
    """Refuse ``out_dir`` as the package folder of ``model_dir`` (:class:`BadDataError`): the model folder
    itself, a file, or a folder holding more than an earlier package. ``dsb export`` asks before it writes
    anything else."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise BadDataError("the package folder is the model folder itself; give a new folder", path=out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise BadDataError("exists and is not a folder", path=out_dir)
    foreign = sorted({p.name for p in out_dir.iterdir()} - set(PACKAGE_FILES))
    if foreign:
        # Replacing is for an earlier package; any other folder would be deleted with everything in it.
        raise BadDataError(
            f"exists and holds more than a bioimage.io package (e.g. {foreign[0]!r}); give a new or empty folder",
            path=out_dir,
        )


def _test_image(config, sample) -> np.ndarray:
    """The network's input for the test tensor: (H, W) float32, H and W multiples of the size step."""

    step = max(_MIN_STEP, config.model.size_multiple())
    if sample is None:
        diameter = config.preprocess.diameter or 20.0
        size = step * math.ceil(max(128, 4 * diameter) / step)
        raw = synthetic_image(diameter, size)
    else:
        if isinstance(sample, (str, os.PathLike)):
            from dsb.io.images import read_image

            raw = read_image(sample, config.preprocess.channel)
        else:
            raw = sample
        raw = np.asarray(raw)
        if raw.ndim < 2 or min(raw.shape[:2]) < step:
            raise BadDataError(
                f"`sample` is {'x'.join(map(str, raw.shape))}; the network needs at least {step}x{step} pixels"
            )
    try:
        gray = preprocess_image(raw, config.preprocess)
    except (TypeError, ValueError) as exc:
        raise BadDataError(f"`sample` cannot be preprocessed: {exc}") from None
    h, w = (min(_MAX_SAMPLE, s) // step * step for s in gray.shape)
    top, left = (gray.shape[0] - h) // 2, (gray.shape[1] - w) // 2
    return np.ascontiguousarray(gray[top : top + h, left : left + w], np.float32)


def _write_onnx(model_dir: Path, model, config, dest: Path) -> None:
    """``dest`` gets the folder's ``model.onnx`` when it was exported from its ``model.keras``, else a fresh export."""

    onnx_path, keras_path = model_dir / ONNX_FILE, model_dir / KERAS_FILE
    if onnx_path.is_file():
        try:
            check_onnx(onnx_path, config.model.outputs, keras_path)
        except BadDataError:
            pass  # left by another model, or not dsb's: export again
        else:
            shutil.copyfile(onnx_path, dest)
            return
    export_onnx(model, dest, outputs=config.model.outputs, source=keras_path)


def _keras_provenance(model_dir: Path) -> tuple[str, str, str]:
    """(Keras version, backend, backend version) the weights were made with: the run's manifest, else this process."""
    import importlib

    import keras

    manifest = read_manifest(model_dir)
    versions = manifest.get("versions")
    backend = manifest.get("backend") if isinstance(versions, dict) else None
    if backend in _BACKENDS and versions.get(backend) and versions.get("keras"):
        return str(versions["keras"]), backend, str(versions[backend])
    backend = keras.backend.backend()
    if backend not in _BACKENDS:
        raise EnvironmentProblem(
            f"Keras runs on the {backend!r} backend; the bioimage.io format records Keras weights made with "
            f"{', '.join(_BACKENDS)} only"
        )
    return keras.__version__, backend, importlib.import_module(backend).__version__


def _cover(image: np.ndarray, body: np.ndarray) -> np.ndarray:
    """The test image beside the same image with the body probability in magenta over it (2:1, RGB uint8)."""

    rgb = to_rgb8(image).astype(np.float32)
    alpha = 0.6 * np.clip(body, 0, 1)[..., None]
    overlay = (1 - alpha) * rgb + alpha * np.array([255, 0, 255], np.float32)
    both = np.concatenate([rgb, overlay], axis=1)
    zoom = max(1, 256 // image.shape[0])
    return np.round(np.repeat(np.repeat(both, zoom, axis=0), zoom, axis=1)).astype(np.uint8)


def _shift_headings(markdown: str, levels: int) -> str:
    """Markdown with every ATX heading ``levels`` deeper; code blocks are left alone."""
    out, fence = [], None
    for line in markdown.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            marker = stripped[:3]
            fence = marker if fence is None else (None if marker == fence else fence)
        elif fence is None and stripped.startswith("#"):
            line = "#" * levels + stripped
        out.append(line)
    return "\n".join(out)


def _readme(config, step: int, training: str | None) -> str:
    pre, post = config.preprocess, config.postprocess
    outputs = list(config.model.outputs)
    # The diameter the run predicts at: the training's, times the factor dsb tune chose.
    factor = config.predict.scale_factor
    if pre.diameter:
        diameter = f"{pre.diameter * factor:g} pixels"
    elif factor == 1:
        diameter = "the size the training images had (no resampling)"
    else:
        diameter = f"{factor:g} times the size the training images had"
    channels = "\n".join(
        f"| {i} | `{name}` | {_CHANNEL_TEXT.get(name, name)} |" for i, name in enumerate(outputs)
    )
    contact = f" and contact under {post.contact_threshold:g}" if "contact" in outputs else ""
    if "core" in outputs and post.core_threshold > 0:
        contact += f" and core over {post.core_threshold:g}"
    lines = [
        f"# {NAME}",
        "",
        "A U-Net that finds cell nuclei in 2-D light-microscopy images (fluorescence, brightfield, stained tissue).",
        f"It maps one grey image to {len(outputs)} per-pixel probability maps ({', '.join(outputs)}), from which the",
        "`dsb` package's post-processing makes one label per nucleus.",
        "It was trained by the `dsb` package on the images of the Kaggle 2018 Data Science Bowl.",
        "",
        "## Instance segmentation is separate code",
        "",
        "The network gives probabilities, not nuclei. Splitting them into one label per nucleus is a",
        f"marker-controlled watershed: one marker per core of body over {post.marker_threshold:g} with border under "
        f"{post.border_threshold:g}{contact},",
        f"flooded over the pixels of body over {post.mask_threshold:g} (this model's tuned thresholds, in `config.json`).",
        "This watershed is **not part of",
        "the network and not part of this package's weights**: it is the `dsb` package's code",
        "(`dsb segment IMAGE --model THIS_FOLDER` on the command line, `dsb.segment(image, model)` in Python,",
        "`dsb.inference.watershed` underneath). A bioimage.io consumer that runs only the weights gets the probability maps.",
        "",
        "## Input",
        "",
        f"Tensor `{INPUT_ID}`, float32, axes `batch, y, x, channel` with one channel. Height and width may be any",
        f"multiple of {step} from {step} up (the U-Net halves them {int(math.log2(config.model.size_multiple()))} times).",
        "",
        "The network expects the input that `dsb.inference.preprocess.preprocess_image` and dsb's resampling make:",
        "",
        ("1. **grey**: one channel (colour images: luminance; stained tissue: the geometric mean of the"
         if pre.channel is None else
         f"1. **grey**: {channel_words(pre.channel)}{' (counted from 0)' if isinstance(pre.channel, int) else ''} "
         "of multi-channel images, which the model learnt from;"
         " else one channel (colour images: luminance; stained tissue: the geometric mean of the"),
        "   haematoxylin channel and inverted luminance);",
        "2. **polarity**: nuclei bright on a dark background (brightfield and stained images are inverted;",
        f"   `polarity` = `{pre.polarity}`);",
        f"3. **percentile stretch**: the {pre.percentile_low:g}th percentile of the image to 0 and the "
        f"{pre.percentile_high:g}th to 1, clipped to [0, 1];",
        f"4. **scale**: the image resampled so that its median nucleus is {diameter} across",
        "   (dsb estimates each image's nucleus size from the network's own output and resamples).",
        "",
        "`rdf.yaml` can express step 3 only, as `scale_range` (per image, over y and x, percentiles "
        f"{pre.percentile_low:g} and {pre.percentile_high:g})",
        "followed by `clip` to [0, 1]. Steps 1, 2 and 4 cannot be written in the format: a consumer must give a",
        f"grey image with bright nuclei about {diameter} across, or let `dsb` do it all.",
        "",
        "## Output",
        "",
        f"Tensor `{OUTPUT_ID}`, float32, axes `batch, y, x, channel`, the same height and width as the input;",
        "sigmoid probabilities in [0, 1] (the sigmoid is inside the network: no post-processing step is declared).",
        "",
        "| channel | name | meaning |",
        "| --- | --- | --- |",
        channels,
        "",
        "## Validation",
        "",
        "`test_output.npy` is the Keras model's output for exactly `test_input.npy` (already preprocessed); the",
        "ONNX weights reproduce it within 1e-4. To measure the segmentation on unseen images with the",
        "competition metric (mean average precision over IoU thresholds 0.5 to 0.95), use dsb:",
        "`dsb evaluate RUN_DIR` scores the held-out imaging-experiment groups of the run, and",
        "`dsb score SUBMISSION --truth SOLUTION` scores a Kaggle submission.",
        "",
        "## Training",
        "",
    ]
    if training:
        lines += [_shift_headings(training.strip(), 2), ""]
    else:
        lines += ["This folder came with no `TRAINING.md`; `config.json` holds the training settings.", ""]
    lines += [
        "## Data and citation",
        "",
        "Trained on stage1_train of the Kaggle 2018 Data Science Bowl (BBBC038): please cite",
        "Caicedo et al., Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl,",
        "Nature Methods 16, 1247-1253 (2019), doi:10.1038/s41592-019-0612-7.",
        "",
        "## License",
        "",
        "MIT.",
        "",
    ]
    return "\n".join(lines)


def _dump_rdf(rdf: dict) -> str:
    try:
        import yaml
    except ImportError:
        return json.dumps(rdf, indent=2) + "\n"  # JSON is YAML too
    return yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True, width=100)


def _tensors(config, file, step: int) -> tuple[list, list]:
    """The RDF's ``inputs`` and ``outputs``: one grey image in, the probability channels out."""
    pre = config.preprocess
    outputs = list(config.model.outputs)

    def space(axis: str) -> dict:
        return {"type": "space", "id": axis, "size": {"min": step, "step": step}}

    def same_as_input(axis: str) -> dict:
        return {"type": "space", "id": axis, "size": {"tensor_id": INPUT_ID, "axis_id": axis}}

    inputs = [
        {
            "id": INPUT_ID,
            "description": "grey image, nuclei bright, percentile-stretched to [0, 1]",
            "axes": [{"type": "batch"}, space("y"), space("x"), {"type": "channel", "channel_names": ["grey"]}],
            "data": {"type": "float32"},
            "test_tensor": file(TEST_INPUT),
            "sample_tensor": file(SAMPLE_INPUT),
            "preprocessing": [
                {
                    "id": "scale_range",
                    "kwargs": {
                        "axes": ["y", "x"],
                        "min_percentile": pre.percentile_low,
                        "max_percentile": pre.percentile_high,
                    },
                },
                {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}},
            ],
        }
    ]
    outputs = [
        {
            "id": OUTPUT_ID,
            "description": f"sigmoid probabilities of {', '.join(outputs)}",
            "axes": [
                {"type": "batch"}, same_as_input("y"), same_as_input("x"),
                {"type": "channel", "channel_names": outputs},
            ],
            "data": {"type": "float32", "range": [0.0, 1.0]},
            "test_tensor": file(TEST_OUTPUT),
            "sample_tensor": file(SAMPLE_OUTPUT),
        }
    ]
    return inputs, outputs


def _rdf(config, files: dict[str, str], *, step: int, keras_info, opset: int, tags) -> dict:
    import dsb

    pre = config.preprocess
    outputs = list(config.model.outputs)
    keras_version, backend, backend_version = keras_info

    def file(name: str) -> dict:
        return {"source": name, "sha256": files[name]}

    inputs, output_tensors = _tensors(config, file, step)
    return {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": NAME,
        "description": (
            f"U-Net for 2-D nuclei: a grey image (nuclei bright) to per-pixel probabilities of {', '.join(outputs)}. "
            "The instance segmentation (a marker-controlled watershed into one label per nucleus) is done by the "
            "dsb package, not by the network. Trained on the Kaggle 2018 Data Science Bowl images."
        ),
        "authors": [{"name": "dsb contributors"}],
        "cite": [_DSB2018, _UNET],
        "license": "MIT",
        "tags": tags,
        "version": dsb.__version__,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "documentation": file(README),
        "covers": [file(COVER)],
        "attachments": [file(CONFIG)],
        "inputs": inputs,
        "outputs": output_tensors,
        "weights": {
            "keras_v3": {
                **file(KERAS_FILE),
                "keras_version": keras_version,
                "backend": [backend, backend_version],
            },
            "onnx": {
                **file(ONNX_FILE),
                "opset_version": opset,
                "parent": "keras_v3",
                "comment": "converted from model.keras by dsb.network.onnx_export (Keras's ONNX export)",
            },
        },
        "config": {
            "dsb": {
                "version": dsb.__version__,
                "outputs": list(outputs),
                "preprocess": {
                    "polarity": pre.polarity,
                    "stained_channel": pre.stained_channel,
                    "percentile_low": pre.percentile_low,
                    "percentile_high": pre.percentile_high,
                    "diameter": pre.diameter,
                    "channel": pre.channel,
                },
                "postprocess": dict(vars(config.postprocess)),
                "instance_segmentation": "dsb segment / dsb.segment (not part of the network)",
            }
        },
    }


def export_bioimageio(model_dir, out_dir, *, sample=None) -> Path:
    """Write a dsb model folder as a bioimage.io model package (RDF format 0.5).

    Parameters
    ----------
    model_dir : str or os.PathLike
        A run or model folder that :func:`dsb.network.model_folder.load_run` accepts
        (``config.json`` and ``model.keras``; ``model.onnx`` is used when it
        was exported from that ``model.keras``, otherwise a new one is
        exported into the package; the folder itself is not changed).
    out_dir : str or os.PathLike
        The package folder, written atomically; an existing one is replaced
        only when it holds nothing but an earlier package's files.
    sample : ndarray or path, optional
        A raw image (any kind dsb reads) for the test tensors, its nuclei
        already about ``config.preprocess.diameter`` pixels across; it is
        preprocessed and centre-cropped to at most 256 x 256 (multiples of 16).
        By default a synthetic fluorescence-like image of discs
        (:func:`synthetic_image`, 128 x 128 for diameters up to 32).

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    BadDataError
        The model folder is incomplete or damaged, ``out_dir`` holds other
        files, or ``sample`` is not a usable image.
    EnvironmentProblem
        ONNX export is needed and its packages are missing, or ``out_dir``
        cannot be written.
    """
    import tifffile
    from PIL import Image

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_package_folder(model_dir, out_dir)
    model, config = load_run(model_dir)
    if config.preprocess.percentile_high <= 1:
        raise BadDataError(
            f"is {config.preprocess.percentile_high}; bioimage.io's scale_range needs an upper percentile above 1",
            path=model_dir / CONFIG, where="preprocess.percentile_high",
        )
    step = max(_MIN_STEP, config.model.size_multiple())
    image = _test_image(config, sample)
    test_input = image[None, :, :, None]
    test_output = KerasNetwork(model, pad_shapes=False)(test_input)  # the network's own output, bit for bit
    keras_info = _keras_provenance(model_dir)
    training = None
    if (model_dir / "TRAINING.md").is_file():
        training = (model_dir / "TRAINING.md").read_text(encoding="utf-8")
    tags = ["nuclei", "2d", "unet", "semantic-segmentation", "instance-segmentation",
            "fluorescence-light-microscopy", "transmission-light-microscopy", "tensorflow", "keras", "onnx", "dsb2018"]

    with atomic_dir(out_dir) as tmp:
        shutil.copyfile(model_dir / KERAS_FILE, tmp / KERAS_FILE)
        shutil.copyfile(model_dir / CONFIG, tmp / CONFIG)
        _write_onnx(model_dir, model, config, tmp / ONNX_FILE)
        np.save(tmp / TEST_INPUT, test_input)
        np.save(tmp / TEST_OUTPUT, test_output)
        tifffile.imwrite(tmp / SAMPLE_INPUT, test_input[0, :, :, 0], photometric="minisblack")
        tifffile.imwrite(tmp / SAMPLE_OUTPUT, test_output[0], photometric="minisblack")  # channels, not RGB
        Image.fromarray(_cover(image, test_output[0, :, :, 0])).save(tmp / COVER, format="PNG")
        write_text(tmp / README, _readme(config, step, training))
        files = {name: file_digest(tmp / name) for name in PACKAGE_FILES if name != RDF_FILE}
        rdf = _rdf(config, files, step=step, keras_info=keras_info, opset=read_onnx_opset(tmp / ONNX_FILE), tags=tags)
        write_text(tmp / RDF_FILE, _dump_rdf(rdf))
    return out_dir
