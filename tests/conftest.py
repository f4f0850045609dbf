"""Shared fixtures and helpers: synthetic nuclei, stage folders, zips, and, where present, the real
competition files. Test modules import helpers from here, never from each other."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from dsb.core.config import Config, PredictConfig

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return Path(os.environ.get("DSB_SHARED", REPO.parent / "shared" / "dsb2018"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of competition zips, or skip when this machine has none."""
    path = _shared_dir()
    if not (path / "stage1_train.zip").is_file():
        pytest.skip(f"competition files not found in {path}")
    return path


def _extract(zip_path: Path) -> Path:
    """Unzip once into a cache that outlives the test session.

    pytest keeps and later deletes its last three temporary folders; with 30,000
    files in each, that cleaning alone took minutes. The cache is keyed by the
    zip's size and mtime, and a marker written last says the extraction is whole.
    """
    info = zip_path.stat()
    root = Path(os.environ.get("DSB_TEST_CACHE", Path(tempfile.gettempdir()) / "dsb-test-data"))
    dest = root / f"{zip_path.stem}-{info.st_size}-{int(info.st_mtime)}"
    marker = dest / ".complete"
    if not marker.exists():
        shutil.rmtree(dest, ignore_errors=True)
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(dest)
        marker.touch()
    return dest


@pytest.fixture(scope="session")
def train_dir(shared_data) -> Path:
    """stage1_train unzipped (read-only use: never write into it)."""
    return _extract(shared_data / "stage1_train.zip")


@pytest.fixture(scope="session")
def test_dir(shared_data) -> Path:
    """stage1_test unzipped (read-only use: never write into it)."""
    return _extract(shared_data / "stage1_test.zip")


def make_discs(shape=(64, 64), centres=((20, 20), (40, 44)), radius=8) -> np.ndarray:
    """Instance labels of discs, label i + 1 for centre i; later discs win where they overlap."""
    rr, cc = np.indices(shape)
    labels = np.zeros(shape, np.int32)
    for i, (r, c) in enumerate(centres):
        labels[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = i + 1
    return labels


def same_nuclei(a: np.ndarray, b: np.ndarray) -> bool:
    """The same nuclei, pixel for pixel, up to their numbering."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    if not np.array_equal(a > 0, b > 0):
        return False
    fg = a > 0
    pairs = np.unique(a[fg] * (b.max() + 1) + b[fg])
    return len(pairs) == len(np.unique(a[fg])) == len(np.unique(b[fg]))


@pytest.fixture
def discs() -> np.ndarray:
    return make_discs()


def tiny_prepared(n: int = 10, seed: int = 0) -> SimpleNamespace:
    """Images of discs (bright on dark, with noise) standing in for dsb.training.cache.Prepared."""
    rng = np.random.default_rng(seed)
    ids, images, labels, types = [], [], [], []
    for i in range(n):
        shape = (48, 64) if i % 2 else (32, 40)
        lab = make_discs(shape, rng.integers(6, min(shape) - 6, size=(4, 2)), radius=5)
        labels.append(lab)
        images.append((np.where(lab > 0, 180, 20) + rng.integers(0, 40, shape)).astype(np.uint8))
        ids.append(f"img{i:02d}")
        types.append("fluorescence" if i < 7 else "brightfield")
    return SimpleNamespace(ids=ids, images=images, labels=labels, types=types)


def true_and_predicted_discs() -> tuple[np.ndarray, np.ndarray]:
    """Three true discs; predicted: one exact, one shifted (IoU > 0.5), one missed, one extra."""
    true = make_discs((64, 64), ((14, 14), (14, 46), (46, 30)), 7)
    pred = make_discs((64, 64), ((14, 14), (15, 47), (50, 56)), 7)
    return true, pred


# ---------------------------------------------------------------- network outputs and stand-in models


def targets(labels: np.ndarray, border_width: int = 2) -> np.ndarray:
    """Ideal network output for ``labels``: body = nuclei, border = inner ring incl. contact lines."""
    padded = np.pad(labels, 1, mode="edge")
    differs = np.zeros(labels.shape, bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        differs |= padded[1 + dy : 1 + dy + labels.shape[0], 1 + dx : 1 + dx + labels.shape[1]] != labels
    edge = differs & (labels > 0)
    ring = ndimage.distance_transform_edt(~edge) < border_width
    body = (labels > 0).astype(np.float32)
    border = (ring & (labels > 0)).astype(np.float32)
    return np.stack([body, border], axis=-1)


# id -> (shape, disc centres, radius); the discs do not touch, so thresholding finds them.
SAMPLES = {
    "b_two": ((70, 90), ((20, 20), (45, 62)), 8),
    "a_one": ((40, 33), ((20, 16),), 7),
    "c_none": ((24, 24), (), 0),
}
CONFIG = Config(predict=PredictConfig(tile_size=32, overlap=8, batch_size=4))


def truth_labels(image_id: str) -> np.ndarray:
    shape, centres, radius = SAMPLES[image_id]
    return make_discs(shape, centres, radius)


def disc_image(labels: np.ndarray) -> np.ndarray:
    """Bright nuclei (200) on a dark background (20), uint8."""
    return np.where(labels > 0, 200, 20).astype(np.uint8)


def write_disc_stage(root, samples=SAMPLES, *, masks: bool = False):
    """A folder in stage layout: {id}/images/{id}.png (and masks/*.png when asked)."""
    for image_id in samples:
        labels = truth_labels(image_id)
        (root / image_id / "images").mkdir(parents=True)
        Image.fromarray(disc_image(labels)).save(root / image_id / "images" / f"{image_id}.png")
        if masks:
            (root / image_id / "masks").mkdir()
            for i in range(1, labels.max() + 1):
                Image.fromarray(((labels == i) * 255).astype(np.uint8)).save(root / image_id / "masks" / f"m{i}.png")
    return root


def threshold_model(batch: np.ndarray) -> np.ndarray:
    """Stands in for the network: body where the input is bright, no border."""
    body = (batch > 0.5).astype(np.float32)
    return np.concatenate([body, np.zeros_like(body)], axis=-1)


def make_threshold_run(run_dir, config: Config = CONFIG):
    """A run folder whose model.keras is a 1x1 convolution that thresholds at 0.5 (no training needed)."""
    import keras

    from dsb.core.config import save_config

    # Body where the input is bright; border and contact never.
    model = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(3, 1, activation="sigmoid")])
    model.layers[-1].set_weights([np.array([[[[60.0, 0.0, 0.0]]]], np.float32), np.full(3, -30.0, np.float32)])
    run_dir.mkdir(parents=True)
    model.save(run_dir / "model.keras")
    save_config(config, run_dir / "config.json")
    return run_dir


# ---------------------------------------------------------------- zips of competition files


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def stage_entries(n_images: int, masks: int, *, prefix: str = "", shape=(24, 32)) -> dict[str, bytes]:
    """{ImageId}/images/{ImageId}.png and {ImageId}/masks/*.png of a small synthetic stage."""
    rng = np.random.default_rng(n_images * 10 + masks)
    entries = {}
    for i in range(n_images):
        image_id = f"{i:04x}abcd"
        image = rng.integers(0, 256, shape + (4,), dtype=np.uint8)
        entries[f"{prefix}{image_id}/images/{image_id}.png"] = png_bytes(image)
        for k in range(masks):
            mask = np.zeros(shape, np.uint8)
            mask[k * 2 : k * 2 + 2, :4] = 255
            entries[f"{prefix}{image_id}/masks/mask{k:02d}.png"] = png_bytes(mask)
    return entries


def write_zip(path: Path, entries: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


TRAIN_CSV = b"ImageId,EncodedPixels\n0000abcd,1 2\n"
SAMPLE_CSV = b"ImageId,EncodedPixels\n0000abcd,1 1\n"


def inner_zips(folder: Path, *, train=(3, 2), test=3, extra_stage: bool = False) -> Path:
    """A folder like ../shared/dsb2018: the inner zips of Kaggle's bundle."""
    write_zip(folder / "stage1_train.zip", stage_entries(*train))
    write_zip(folder / "stage1_test.zip", stage_entries(test, 0))
    write_zip(folder / "stage1_train_labels.csv.zip", {"stage1_train_labels.csv": TRAIN_CSV})
    write_zip(folder / "stage1_sample_submission.csv.zip", {"stage1_sample_submission.csv": SAMPLE_CSV})
    if extra_stage:
        write_zip(folder / "stage2_test_final.zip", stage_entries(2, 0))
    (folder / "README.md").write_text("not data\n")
    return folder


def assert_nothing_complete(dest: Path):
    """After a failure: no stage marked complete, no temporary folders left behind."""
    if not dest.exists():
        return
    names = sorted(p.name for p in dest.iterdir())
    assert ".fetched.json" not in names
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".fetch-scratch")], names
    for n in names:
        if n.startswith(".fetched-"):
            stage = n[len(".fetched-") : -len(".json")]
            assert (dest / stage).is_dir()  # a marker only ever sits beside its verified stage


# ---------------------------------------------------------------- the command line


def group_raising(exc: BaseException) -> click.Group:
    """The real `dsb` group with one extra command that raises ``exc``."""
    from dsb.cli import cli

    group = click.Group.__new__(type(cli))
    group.__dict__.update(cli.__dict__)
    group.commands = dict(cli.commands)

    @click.command("boom")
    def boom():
        raise exc

    group.commands["boom"] = boom
    return group


# ---------------------------------------------------------------- driving the CLI on small stage folders

# id -> (shape, disc centres); discs of radius 6 that do not touch.
STAGE = {
    "img_a": ((40, 48), ((12, 12), (26, 34))),
    "img_b": ((32, 36), ((16, 18),)),
    "img_c": ((36, 40), ((10, 28), (24, 12))),
}
RADIUS = 6


def dsb(*args):
    """Run `dsb ARGS...` in this process; stdout and stderr come back apart."""
    from dsb.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def error_line(result, code: int, *words) -> str:
    """The run failed with ``code`` and exactly one line on stderr holding every one of ``words``."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("dsb: error: "), line
    for word in words:
        assert str(word) in line, (word, line)
    assert "Traceback" not in result.stderr + result.stdout
    return line


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def truth(image_id: str) -> np.ndarray:
    shape, centres = STAGE[image_id]
    return make_discs(shape, centres, RADIUS)


def write_stage(root: Path, samples=STAGE) -> Path:
    """``root/{id}/images/{id}.png`` and one mask PNG per nucleus, ``masks/m1.png``..."""
    for image_id in samples:
        labels = truth(image_id)
        png(root / image_id / "images" / f"{image_id}.png", disc_image(labels))
        for k in range(1, labels.max() + 1):
            png(root / image_id / "masks" / f"m{k}.png", ((labels == k) * 255).astype(np.uint8))
    return root
