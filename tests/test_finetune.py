"""Your own microscope: annotation layouts (napari, Fiji, Cellpose, StarDist), their bad pairs, and fine-tuning.

The layouts and their errors go through ``dsb prepare`` / ``dsb train`` as a user
runs them (one line, exit 3, the file named). Fine-tuning starts from a tiny
U-Net, trains a step or two on a few images of discs (always) or on crops of
real stage1_train images (skipped when the data are absent), and segments.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import dsb, error_line, make_discs, png, write_stage
from PIL import Image

from dsb.core.config import (
    Config,
    ModelConfig,
    PredictConfig,
    PreprocessConfig,
    TrainConfig,
    save_config,
)
from dsb.core.errors import BadDataError
from dsb.io.annotations import find_samples, read_label_image
from dsb.io.images import read_labels
from dsb.network.engines import engine_installed, resolve_precision
from dsb.training.cache import load_prepared
from dsb.training.finetune import (
    FINETUNE_EPOCHS,
    check_architecture,
    finetune_config,
    finetune_split,
)

REPO = Path(__file__).resolve().parents[1]
CENTRES = (((12, 12), (30, 34)), ((14, 30), (34, 14)), ((24, 24),), ((10, 36), (36, 10), (24, 24)))


def disc_pair(k: int, shape=(48, 48)) -> tuple[np.ndarray, np.ndarray]:
    """Image ``k`` of discs (bright on dark, noisy) and its labels with values 10, 20, ... (not consecutive)."""
    labels = make_discs(shape, CENTRES[k % len(CENTRES)], 7) * 10
    rng = np.random.default_rng(k)
    image = (np.where(labels > 0, 180, 30) + rng.integers(0, 30, shape)).astype(np.uint8)
    return image, labels


def tif(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array)
    return path


def layout_a(folder: Path, n: int = 2, *, shape=(48, 48)) -> Path:
    """``folder/images/cell{k}.png`` and ``folder/masks/cell{k}.tif`` (16-bit labels), as StarDist keeps them."""
    for k in range(n):
        image, labels = disc_pair(k, shape)
        png(folder / "images" / f"cell{k}.png", image)
        tif(folder / "masks" / f"cell{k}.tif", labels.astype(np.uint16))
    return folder


def layout_b(folder: Path) -> Path:
    """Cellpose's and napari's names beside the images: _masks.tif, _labels.png (16-bit), _cp_masks.png."""
    image, labels = disc_pair(0)
    png(folder / "a.png", image)
    tif(folder / "a_masks.tif", labels.astype(np.uint32))
    image, labels = disc_pair(1)
    tif(folder / "b.tif", image)
    png(folder / "b_labels.png", labels.astype(np.uint16))
    image, labels = disc_pair(2)
    png(folder / "c.png", image)
    png(folder / "c_cp_masks.png", labels.astype(np.uint8))
    return folder


def prepared(data: Path):
    result = dsb("prepare", "--data", data)
    assert result.exit_code == 0, (result.stderr, result.exception)
    return load_prepared(data, PreprocessConfig(), workers=1)


def check_discs(prep, image_id: str, k: int) -> None:
    labels = dict(zip(prep.ids, prep.labels))[image_id]
    want = disc_pair(k)[1]
    assert labels.max() == len(CENTRES[k]) and labels.dtype == np.int32
    assert ((labels > 0) == (want > 0)).all()  # the same nuclei, renumbered 1..N


# ---------------------------------------------------------------- layouts


def test_layout_a_images_and_masks_folders(tmp_path):
    data = layout_a(tmp_path / "mine", 3)
    prep = prepared(data)
    assert prep.ids == ["mine-cell0", "mine-cell1", "mine-cell2"]
    assert set(prep.groups) == {"user:mine"} and set(prep.types) == {"fluorescence"}
    for k in range(3):
        check_discs(prep, f"mine-cell{k}", k)


def test_layout_b_labels_beside_images(tmp_path):
    data = layout_b(tmp_path / "cp")
    prep = prepared(data)
    assert prep.ids == ["cp-a", "cp-b", "cp-c"]
    assert set(prep.groups) == {"user:cp"}
    for k, name in enumerate("abc"):
        check_discs(prep, f"cp-{name}", k)


def test_both_layouts_in_one_folder_are_both_read(tmp_path):
    """Pairs beside images/ and masks/ were dropped without a word."""
    data = layout_b(layout_a(tmp_path / "mixed", 2))
    prep = prepared(data)
    assert prep.ids == ["mixed-a", "mixed-b", "mixed-c", "mixed-cell0", "mixed-cell1"]
    for k, name in enumerate(["a", "b", "c", "cell0", "cell1"]):
        check_discs(prep, f"mixed-{name}", k % 3 if k < 3 else k - 3)
    tif(data / "d_masks.tif", disc_pair(0)[1].astype(np.uint16))  # a flat label image without its image
    error_line(dsb("prepare", "--data", data), 3, data / "d_masks.tif", "labels without an image")


def test_a_folder_of_user_folders_whose_images_are_ome_tiffs(tmp_path):
    """images/w1.ome.tif with masks/w1.tif made the folder look like a competition sample (w1.ome is not w1),
    and the parent a stage folder: 'ann/images/ann.png: file not found'."""
    image, labels = disc_pair(0)
    tif(tmp_path / "parent" / "ann" / "images" / "w1.ome.tif", image)
    tif(tmp_path / "parent" / "ann" / "masks" / "w1.tif", labels.astype(np.uint16))
    layout_b(tmp_path / "parent" / "cp")
    prep = prepared(tmp_path / "parent")
    assert prep.ids == ["ann-w1", "cp-a", "cp-b", "cp-c"]
    check_discs(prep, "ann-w1", 0)


def test_a_label_file_of_no_nucleus_is_warned_about(tmp_path):
    data = layout_b(tmp_path / "cp")
    tif(data / "a_masks.tif", np.zeros((48, 48), np.uint32))  # an empty export, or another image's file
    result = dsb("prepare", "--data", data)
    assert result.exit_code == 0, (result.stderr, result.exception)
    warned = [line for line in result.stderr.splitlines() if "holds no nucleus" in line]
    assert len(warned) == 1 and str(data / "a_masks.tif") in warned[0] and "learnt as background" in warned[0]
    again = dsb("prepare", "--data", layout_b(tmp_path / "fine"))
    assert "holds no nucleus" not in again.stderr


def test_a_binary_mask_is_taken_object_by_object_and_warned_about(tmp_path):
    """A 0/1 and a 0/255 mask of separate discs: each disc its own nucleus, said once on stderr and in the
    mask fixes; a label image of one value over one disc (c_cp_masks.png) is no binary mask to fix."""
    data = layout_b(tmp_path / "cp")
    tif(data / "a_masks.tif", (disc_pair(0)[1] > 0).astype(np.uint8))
    png(data / "b_labels.png", (disc_pair(1)[1] > 0).astype(np.uint8) * 255)
    result = dsb("prepare", "--data", data)
    assert result.exit_code == 0, (result.stderr, result.exception)
    prep = load_prepared(data, PreprocessConfig(), workers=1)
    for k, name in enumerate("abc"):
        check_discs(prep, f"cp-{name}", k)
    warned = [line for line in result.stderr.splitlines() if line.startswith("dsb: warning:")]
    assert warned == [f"dsb: warning: {data / 'a_masks.tif'} (and 1 more of your label files): a binary mask "
                      "(one value, 2 separate objects), not a label image: each object taken as one nucleus; "
                      "touching nuclei stay merged, give each its own value"]
    assert "2 binary mask(s) taken object by object" in result.stderr
    assert "cp-b: b_labels.png: a binary mask (one value, 2 separate objects)" in result.stderr
    assert set(prep.fixes) == {"cp-a", "cp-b"} and prep.fixes["cp-a"].binary == (("a_masks.tif", 2),)


def test_read_label_image_splits_a_binary_mask_only(tmp_path):
    """One value over several objects (8-connected: a diagonal step is one object) is a binary mask; several
    values, one of them in two pieces, or one value over one object, are label images as they are."""
    from dsb.io.images import MaskFixWarning

    mask = np.zeros((6, 8), np.uint16)
    mask[0:2, 0:2] = mask[2, 2] = mask[4:6, 5:8] = 7
    with pytest.warns(MaskFixWarning, match=r"^m_masks\.tif: a binary mask \(one value, 2 separate objects\)"):
        got = read_label_image(tif(tmp_path / "m_masks.tif", mask), renumbered=False)
    assert got.tolist() == np.where(mask > 0, np.where(np.arange(8) < 4, 1, 2), 0).tolist()
    labels, fixes = read_label_image(tmp_path / "m_masks.tif", return_fixes=True)
    assert labels.max() == 2 and fixes.binary == (("m_masks.tif", 2),)
    two_values = mask.copy()
    two_values[4:6, 5:8] = 9
    two_values[0, 7] = 9  # a stray fragment of 9
    one_object = np.where(np.arange(8) < 4, mask, 0)
    for kept in (two_values, one_object, np.zeros_like(mask)):
        labels, fixes = read_label_image(tif(tmp_path / "k.tif", kept), renumbered=False, return_fixes=True)
        assert labels.tolist() == kept.tolist() and not fixes


def test_mixed_with_stage1_train_keeps_the_competition_groups(tmp_path):
    alone = write_stage(tmp_path / "alone" / "stage1_train")
    data = tmp_path / "data"
    write_stage(data / "stage1_train")
    layout_a(data / "my_images", 2)
    layout_b(data / "cellpose")
    (data / "stage1_test" / "t1" / "images").mkdir(parents=True)  # no labels, not training data: ignored
    png(data / "stage1_test" / "t1" / "images" / "t1.png", disc_pair(0)[0])
    prep = prepared(data)
    ref = load_prepared(alone.parent, PreprocessConfig(), workers=1)
    groups = dict(zip(prep.ids, prep.groups))
    assert sorted(prep.ids) == prep.ids
    assert set(prep.ids) == {*ref.ids, "my_images-cell0", "my_images-cell1", "cellpose-a", "cellpose-b", "cellpose-c"}
    assert {i: groups[i] for i in ref.ids} == dict(zip(ref.ids, ref.groups))  # unchanged by user images
    assert groups["my_images-cell0"] == "user:my_images" and groups["cellpose-b"] == "user:cellpose"
    manifest = json.loads((prep.path / "manifest.json").read_text())
    assert Path(manifest["user_images"]["cellpose-b"]).name == "b.tif"
    # A layout-(a) folder inside the stage folder is a user folder, not a stage sample.
    layout_a(alone / "extra", 2)
    assert {s.id for s in find_samples(alone) if s.user} == {"extra-cell0", "extra-cell1"}


def test_a_folder_of_several_types_gets_a_group_per_type(tmp_path):
    data = layout_a(tmp_path / "mix", 2)
    image, labels = disc_pair(2)
    png(data / "images" / "bf.png", (255 - image))  # dark nuclei on a bright background
    tif(data / "masks" / "bf.tif", labels.astype(np.uint16))
    prep = prepared(data)
    groups = dict(zip(prep.ids, prep.groups))
    assert groups["mix-bf"] == "user:mix-brightfield" and groups["mix-cell0"] == "user:mix-fluorescence"


def test_read_label_image_renumbers_any_integer_type(tmp_path):
    labels = np.array([[0, 70000, 70000], [5, 0, 2**31 + 3]], np.uint32)
    got = read_label_image(tif(tmp_path / "l.tif", labels))
    assert got.tolist() == [[0, 2, 2], [1, 0, 3]] and got.dtype == np.int32
    palette = Image.fromarray(np.array([[0, 3], [3, 9]], np.uint8)).convert("P")
    palette.save(tmp_path / "p.png")
    assert read_label_image(tmp_path / "p.png").tolist() == [[0, 1], [1, 2]]


def _rgb(folder):
    tif(folder / "masks" / "cell1.tif", np.repeat(disc_pair(1)[1][..., None], 3, axis=2).astype(np.uint8))


BAD_PAIRS = [
    ("size mismatch", lambda f: tif(f / "masks" / "cell1.tif", np.zeros((40, 48), np.uint16)),
     "masks/cell1.tif", ["label image is 40x48 but its image cell1.png is 48x48"]),
    ("float labels", lambda f: tif(f / "masks" / "cell1.tif", disc_pair(1)[1].astype(np.float32) / 4),
     "masks/cell1.tif", ["floating point (float32) with values that are not whole numbers", "16-bit"]),
    ("negative labels", lambda f: tif(f / "masks" / "cell1.tif", -disc_pair(1)[1].astype(np.int16)),
     "masks/cell1.tif", ["negative values"]),
    ("RGB labels", _rgb, "masks/cell1.tif", ["3 channels", "one channel"]),
    ("image without labels", lambda f: (f / "masks" / "cell1.tif").unlink(),
     "images/cell1.png", ["image without labels", "masks/cell1.tif"]),
    ("labels without image", lambda f: (f / "images" / "cell1.png").unlink(),
     "masks/cell1.tif", ["labels without an image", "images/cell1.png"]),
    ("unreadable labels", lambda f: (f / "masks" / "cell1.tif").write_bytes(b"not a tiff at all"),
     "masks/cell1.tif", ["corrupt or unreadable TIFF"]),
]


@pytest.mark.parametrize("what, damage, name, words", BAD_PAIRS, ids=[b[0] for b in BAD_PAIRS])
def test_a_bad_pair_is_one_line_naming_the_file(tmp_path, what, damage, name, words):
    data = tmp_path / "data"
    write_stage(data / "stage1_train")
    folder = layout_a(data / "mine", 2)
    damage(folder)
    error_line(dsb("prepare", "--data", data), 3, folder / name, *words)
    assert not (data / ".cache").exists() or not any((data / ".cache").iterdir())


def test_bad_pairs_of_layout_b_and_through_dsb_train(tmp_path):
    folder = layout_b(tmp_path / "cp")
    (folder / "b_labels.png").unlink()
    error_line(dsb("train", "--data", folder, "--out", tmp_path / "run"), 3, folder / "b.tif",
               "image without labels", "b_masks.tif")
    assert not (tmp_path / "run").exists()
    (folder / "b.tif").unlink()
    png(folder / "z_masks.png", np.zeros((48, 48), np.uint8))
    error_line(dsb("prepare", "--data", folder), 3, folder / "z_masks.png", "labels without an image")


def test_a_folder_with_nothing_to_train_on(tmp_path):
    (tmp_path / "empty" / "loose").mkdir(parents=True)
    png(tmp_path / "empty" / "loose" / "x.png", disc_pair(0)[0])
    error_line(dsb("prepare", "--data", tmp_path / "empty"), 3, tmp_path / "empty", "no stage1_train/ folder",
               "NAME_masks.tif")


# ---------------------------------------------------------------- the plan of a fine-tune


def test_finetune_config_takes_the_init_model_and_a_tenth_of_the_rate():
    init = Config(model=ModelConfig(depth=2, base_filters=4, dropout=(0.0,), outputs=("body", "border")),
                  train=TrainConfig(learning_rate=1e-3, epochs=40), validation_ids=("x",))
    other = Config(train=TrainConfig(learning_rate=5e-4, crop_size=64, steps_per_epoch=3))
    config = finetune_config(init)
    assert config.model == init.model and config.preprocess == init.preprocess
    assert config.train.learning_rate == pytest.approx(1e-4) and config.train.epochs == FINETUNE_EPOCHS
    assert config.validation_ids == () and config.train.split == "random" and config.train.steps_per_epoch > 0
    config = finetune_config(init, other, learning_rate=2e-5, epochs=3)
    assert config.model == init.model and config.train.crop_size == 64 and config.train.steps_per_epoch == 3
    assert config.train.learning_rate == 2e-5 and config.train.min_learning_rate <= 2e-5 and config.train.epochs == 3


def test_check_architecture_names_the_key():
    a = ModelConfig(depth=2, base_filters=4)
    check_architecture(a, ModelConfig(filters=(4, 8), dropout=(0.3,)))  # the same weights
    with pytest.raises(BadDataError, match=r"model\.filters.*\[8, 16\].*\[4, 8\]"):
        check_architecture(a, ModelConfig(depth=2, base_filters=8))
    with pytest.raises(BadDataError, match=r"model\.outputs"):
        check_architecture(a, ModelConfig(depth=2, base_filters=4, outputs=("body", "border")))
    # Of a config file, only what the keys it gives decide: defaults of the others are not its U-Net.
    check_architecture(a, ModelConfig(dropout=(0.2,)), given={"dropout"})
    with pytest.raises(BadDataError, match=r"model\.filters"):
        check_architecture(a, ModelConfig(depth=3, base_filters=4), given={"depth"})


def test_finetune_split_holds_out_user_images_only():
    ids = [f"s{i}" for i in range(6)] + [f"u{i}" for i in range(10)]
    groups = ["fluorescence-1"] * 6 + ["user:mine"] * 10
    train, val = finetune_split(ids, groups, fraction=0.15, seed=1)
    assert len(val) == 2 and all(v.startswith("u") for v in val) and set(train) | set(val) == set(ids)
    assert finetune_split(ids, groups, fraction=0.15, seed=1) == (train, val)
    assert finetune_split(ids[:8], groups[:8], fraction=0.15, seed=1) == (ids[:8], [])  # two user images
    assert len(finetune_split(ids[:9], groups[:9], fraction=0.01, seed=1)[1]) == 1  # three: one held out


# ---------------------------------------------------------------- fine-tuning


@pytest.fixture(scope="module")
def init_run(tmp_path_factory) -> Path:
    """An untrained two-level U-Net run folder to fine-tune from."""
    pytest.importorskip("keras")
    from dsb.network.unet import build_unet

    run = tmp_path_factory.mktemp("init") / "run"
    run.mkdir()
    config = Config(
        model=ModelConfig(depth=2, base_filters=4, convs_per_block=1, dropout=(0.0,), batch_norm=False),
        train=TrainConfig(crop_size=32, batch_size=2, learning_rate=2e-3),
        predict=PredictConfig(tile_size=32, overlap=8, batch_size=4),
    )
    build_unet(config.model).save(run / "model.keras")
    save_config(config, run / "config.json")
    return run


def finetune(data: Path, out: Path, *extra):
    result = dsb("train", "--data", data, "--out", out, "--epochs", 1, "--steps-per-epoch", 2, *extra)
    assert result.exit_code == 0, (result.stderr, result.exception)
    return result


def segment(run: Path, images: Path, out: Path) -> list[Path]:
    result = dsb("segment", images, "--model", run, "--out", out)
    assert result.exit_code == 0, (result.stderr, result.exception)
    return sorted(out.glob("*_labels.tif"))


def test_finetune_discs_then_segment(init_run, tmp_path):
    keras = pytest.importorskip("keras")
    from dsb.core.config import load_config
    from dsb.training import train_prepared

    data = layout_a(tmp_path / "mine", 4)
    result = finetune(data, tmp_path / "ft", "--init", init_run)
    run = tmp_path / "ft"
    assert "fine-tuning from" in result.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["init"] == str(init_run.resolve())
    assert manifest["train_images"] == 3 and manifest["validation_images"] == 1
    config = load_config(run / "config.json")
    assert config.train.learning_rate == pytest.approx(2e-4) and config.model == load_config(
        init_run / "config.json").model
    assert len(config.validation_ids) == 1 and config.validation_ids[0].startswith("mine-")
    assert len(segment(run, data / "images", tmp_path / "seg")) == 4
    for command in ("tune", "evaluate"):  # on the held-out image of one's own
        result = dsb(command, run, "--data", data)
        assert result.exit_code == 0, (command, result.stderr, result.exception)
    assert "user:mine" in result.stdout
    # The int8 file, calibrated on one's own training images, is what auto runs on a CPU without bfloat16 units.
    if engine_installed("onnx") and engine_installed("openvino"):
        result = dsb("export", run, "--int8", "--data", data)
        assert result.exit_code == 0, (result.stderr, result.exception)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("dsb.network.engines.bfloat16_units", lambda: False)
            patch.setattr("dsb.network.engines.int8_units", lambda: True)
            assert resolve_precision("auto", "openvino", run) == "int8"
            result = dsb("segment", data / "images", "--model", run, "--out", tmp_path / "seg8")
            assert result.exit_code == 0 and result.stdout.strip().endswith("(openvino, int8)"), result.output

    # The weights start from the init model's: seen at the first batch of a library-level run.
    class First(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.weights = [w.copy() for w in self.model.get_weights()]

    first = First()
    prep = load_prepared(data, config.preprocess, workers=1)
    train_prepared(prep, config, out_dir=tmp_path / "lib", epochs=1, steps_per_epoch=1, progress=False,
                   callbacks=[first], init=init_run)
    want = keras.saving.load_model(init_run / "model.keras", compile=False).get_weights()
    for got, w in zip(first.weights, want):
        np.testing.assert_array_equal(got, w)
    other = config.replace(model=ModelConfig(depth=2, base_filters=8, convs_per_block=1, dropout=(0.0,),
                                             batch_norm=False))
    with pytest.raises(BadDataError, match=r"model\.filters"):
        train_prepared(prep, other, out_dir=tmp_path / "bad", progress=False, init=init_run)


def test_finetune_few_images_default_init_and_resume(init_run, tmp_path, monkeypatch):
    pytest.importorskip("keras")
    from dsb.network import model_folder as runs

    monkeypatch.setattr(runs, "default_model_dir", lambda: init_run)  # the shipped model stands in
    data = tmp_path / "data"
    write_stage(data / "stage1_train")
    layout_b(data / "cp")
    (data / "cp" / "c.png").unlink()
    (data / "cp" / "c_cp_masks.png").unlink()
    run = tmp_path / "ft"
    result = dsb("train", "--data", data, "--out", run, "--epochs", 1, "--steps-per-epoch", 1, "--init",
                 "--learning-rate", "3e-4")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "no validation: 2 image(s) of your own" in result.stderr  # too few to hold some out
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["init"] == str(init_run.resolve()) and manifest["validation_images"] == 0
    assert manifest["train_images"] == 5  # three competition images and two of one's own
    assert json.loads((run / "config.json").read_text())["train"]["learning_rate"] == 3e-4

    result = dsb("train", "--data", data, "--out", run, "--resume", "--epochs", 2)
    assert result.exit_code == 0, (result.stderr, result.exception)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["epochs_run"] == 2 and manifest["init"] == str(init_run.resolve())
    assert manifest["validation_images"] == 0
    assert dsb("train", "--data", data, "--out", run, "--resume", "--init").exit_code == 2


def test_a_finetune_that_diverges_fails_with_one_line_and_keeps_no_model(init_run, tmp_path):
    """A learning rate far too high: the loss turns NaN, training stops there, exit 3, and nothing
    a user could segment with is left behind; the run cannot be resumed into the same fate."""
    pytest.importorskip("keras")
    data = layout_a(tmp_path / "mine", 4)
    run = tmp_path / "ft"
    result = dsb("train", "--data", data, "--out", run, "--epochs", 2, "--steps-per-epoch", 3, "--init", init_run,
                 "--learning-rate", "1e30")
    assert result.exit_code == 3, (result.stderr, result.exception)
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == result.stderr.splitlines()[-1:], result.stderr  # one line, the last, after the progress
    assert errors[0].startswith(f"dsb: error: {run}: training diverged (")
    assert errors[0].endswith("; no model was kept; start a new run with a lower --learning-rate (it was 1e+30)")
    assert "Traceback" not in result.stderr and "done (" not in result.stderr
    assert not (run / "model.keras").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "diverged" and manifest["diverged"]["epoch"] == 1
    error_line(dsb("train", "--data", data, "--out", run, "--resume"), 3, run, "the run diverged (",
               "start a new run with a lower --learning-rate")
    assert dsb("segment", data / "images", "--model", run, "--out", tmp_path / "seg").exit_code == 3


def test_finetune_from_a_folder_that_is_no_run(tmp_path):
    pytest.importorskip("keras")
    data = layout_a(tmp_path / "mine", 2)
    error_line(dsb("train", "--data", data, "--init", tmp_path / "nowhere", "--out", tmp_path / "ft"), 3,
               tmp_path / "nowhere", "run folder not found")
    assert not (tmp_path / "ft").exists()


def _real_stage() -> Path | None:
    for path in (REPO / "data" / "stage1_train",):
        if path.is_dir():
            return path
    return None


def _real_crops(stage: Path, n: int):
    """``n`` 96x96 crops of real grey 256x256 (fluorescence) training images with 3+ nuclei, and their ids."""
    from dsb.io.images import image_path, list_ids, read_image

    picked = []
    for image_id in list_ids(stage):
        raw = read_image(image_path(stage, image_id))
        if raw.shape[:2] != (256, 256) or raw.ndim == 3 and np.ptp(raw[..., :3].astype(int), axis=-1).max() > 0:
            continue  # a grey 256x256 image: fluorescence
        labels = read_labels(stage / image_id, raw.shape[:2], return_fixes=True)[0][:96, :96]
        if labels.max() >= 3:
            picked.append((image_id, raw[:96, :96], labels.astype(np.uint16)))
        if len(picked) == n:
            return picked
    raise AssertionError(f"fewer than {n} usable real images")


@pytest.mark.parametrize("layout", ["images-and-masks", "labels-beside-images", "mixed-with-stage1_train"])
def test_finetune_on_crops_of_real_images(init_run, tmp_path, request, layout):
    """Annotate 96x96 crops of four real fluorescence images in each layout (16-bit TIFF and PNG
    labels), fine-tune, segment."""
    pytest.importorskip("keras")
    stage = _real_stage() or request.getfixturevalue("train_dir")
    stage = stage / "stage1_train" if (stage / "stage1_train").is_dir() else stage
    data = tmp_path / "data"
    mine = data / "mine" if layout == "mixed-with-stage1_train" else data
    crops = _real_crops(stage, 6 if layout == "mixed-with-stage1_train" else 4)
    for k, (_, crop, labels) in enumerate(crops[:4]):
        save = png if k % 2 else tif
        if layout == "labels-beside-images":
            png(mine / f"n{k}.png", crop)
            save(mine / f"n{k}_masks.{'png' if k % 2 else 'tif'}", labels)
        else:
            png(mine / "images" / f"n{k}.png", crop)
            save(mine / "masks" / f"n{k}.{'png' if k % 2 else 'tif'}", labels)
    for image_id, crop, labels in crops[4:]:  # two competition samples beside the user folder
        png(data / "stage1_train" / image_id / "images" / f"{image_id}.png", crop)
        for j in range(1, int(labels.max()) + 1):
            png(data / "stage1_train" / image_id / "masks" / f"m{j}.png", ((labels == j) * 255).astype(np.uint8))
    finetune(data, tmp_path / "ft", "--init", init_run)
    manifest = json.loads((tmp_path / "ft" / "manifest.json").read_text())
    assert manifest["validation_images"] == 1  # a share of the four user images
    assert manifest["train_images"] == (5 if layout == "mixed-with-stage1_train" else 3)
    if layout == "labels-beside-images":  # segment the images alone, not their label files
        images = tmp_path / "to_segment"
        images.mkdir()
        for k in range(4):
            shutil.copy(mine / f"n{k}.png", images)
    else:
        images = mine / "images"
    assert len(segment(tmp_path / "ft", images, tmp_path / "seg")) == 4


def test_bench_finetune_prints_its_table_on_a_tiny_setting(init_run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("keras")
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_finetune", REPO / "bench" / "bench_finetune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    stage = tmp_path / "data" / "stage1_train"
    for k in range(5):
        image, labels = disc_pair(k)
        png(stage / f"img{k}" / "images" / f"img{k}.png", image)
        for n, value in enumerate(np.unique(labels)[1:]):
            png(stage / f"img{k}" / "masks" / f"m{n}.png", ((labels == value) * 255).astype(np.uint8))
    prep = load_prepared(tmp_path / "data", PreprocessConfig(), workers=1)
    group = prep.groups[0]
    monkeypatch.setattr("sys.argv", ["bench_finetune.py", "--data", str(tmp_path / "data"), "--model", str(init_run),
                                     "--groups", group, "--n", "2", "--epochs", "1", "--steps", "1",
                                     "--work", str(tmp_path / "work")])
    assert bench.main() == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith(f"| {group} |")]
    assert len(row) == 1 and row[0].split("|")[2:4] == [" 2 ", " 3 "], out
    assert (tmp_path / "work" / f"{group}-2" / "mine" / "masks").is_dir()


# ---------------------------------------------------------------- one channel of multi-channel images


def two_channel_folder(folder: Path, n: int = 4) -> Path:
    """Layout A of two-channel TIFFs: a stain of bands on a dark background in channel 0, the nuclei
    (discs) in channel 1."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for k in range(n):
        image, labels = disc_pair(k)
        rows, cols = np.indices(image.shape)
        cytoplasm = np.where((rows // 6 + cols // 6 + k) % 3 == 0, 150, 10).astype(np.uint8)
        tifffile.imwrite(folder / "images" / f"cell{k}.tif", np.stack([cytoplasm, image]), imagej=True,
                         metadata={"axes": "CYX"})
        tif(folder / "masks" / f"cell{k}.tif", labels.astype(np.uint16))
    return folder


def test_training_on_one_channel_of_ones_own_images(init_run, tmp_path):
    pytest.importorskip("keras")
    from dsb.core.config import load_config
    from dsb.inference.preprocess import preprocess_image, to_uint8
    from dsb.io.annotations import read_sample
    from dsb.training import cache

    data = two_channel_folder(tmp_path / "mine")
    two = {s.id: s for s in find_samples(data)}["mine-cell0"]
    np.testing.assert_array_equal(read_sample(two, 1)[0], disc_pair(0)[0])
    # The cache reads channel 1, under a key of its own; without a channel the key is the one before.
    plain, picked = PreprocessConfig(), PreprocessConfig(channel=1)
    assert "channel" not in cache._cache_key(plain)[1] and cache._cache_key(picked)[0] != cache._cache_key(plain)[0]
    prep = load_prepared(data, picked, workers=1)
    images = dict(zip(prep.ids, prep.images))
    np.testing.assert_array_equal(images["mine-cell0"],
                                  to_uint8(preprocess_image(disc_pair(0)[0], picked, kind="fluorescence")))
    run = tmp_path / "ft"
    result = finetune(data, run, "--init", init_run, "--channel", 1)
    assert "channel 1" in result.stderr  # said at the start
    assert load_config(run / "config.json").preprocess.channel == 1
    for command in ("tune", "evaluate"):  # they read the run's validation image's channel 1
        result = dsb(command, run, "--data", data)
        assert result.exit_code == 0, (command, result.stderr, result.exception)
    # dsb segment says which channel the model learnt from when none is given.
    result = dsb("segment", data / "images" / "cell0.tif", "--model", run, "--out", tmp_path / "seg")
    assert result.exit_code == 0 and "learnt from channel 1" in result.stderr, result.stderr
    result = dsb("segment", data / "images" / "cell0.tif", "--model", run, "--out", tmp_path / "seg1", "--channel", 1)
    assert result.exit_code == 0 and "learnt from" not in result.stderr, result.stderr
    assert dsb("train", "--data", data, "--out", run, "--resume", "--channel", 1).exit_code == 2
    # A channel named in the --config of a fine-tune is the user's images', and is kept.
    config = tmp_path / "channel.json"
    config.write_text(json.dumps({"preprocess": {"channel": 1}}))
    finetune(data, tmp_path / "ft2", "--init", init_run, "--config", config)
    assert load_config(tmp_path / "ft2" / "config.json").preprocess.channel == 1
    # One that gives dropout only (not an architecture key) is taken; the init model's dropout stays.
    config.write_text(json.dumps({"model": {"dropout": [0.2]}, "preprocess": {"channel": 1}}))
    finetune(data, tmp_path / "ft4", "--init", init_run, "--config", config)
    # One that gives another U-Net is refused, naming the file and the key; it was dropped without a word.
    config.write_text(json.dumps({"model": {"depth": 3, "base_filters": 8, "dropout": [0.1]},
                                  "train": {"batch_size": 2}}))
    error_line(dsb("train", "--data", data, "--init", init_run, "--config", config, "--out", tmp_path / "ft3"), 3,
               config, "model.filters", "the weights fit only the same U-Net")
    assert not (tmp_path / "ft3").exists()


def test_one_channel_of_images_that_lack_it_or_hold_nothing_there(init_run, tmp_path):
    """As dsb segment reads it: channel 0 of a grey image is the image, another channel of it is bad
    input; so is a channel of one value (an alpha channel). Without a channel, images whose channels
    look like separate stains get dsb segment's warning."""
    data = two_channel_folder(tmp_path / "mine")
    image, labels = disc_pair(1)
    png(tmp_path / "grey" / "images" / "g.png", image)
    tif(tmp_path / "grey" / "masks" / "g.png".replace(".png", ".tif"), labels.astype(np.uint16))
    error_line(dsb("train", "--data", tmp_path / "grey", "--channel", 1, "--init", init_run, "--out", tmp_path / "r1"),
               3, "g.png", "no channel 1")
    png(tmp_path / "alpha" / "images" / "a.png", np.dstack([image, np.full_like(image, 255)]))
    tif(tmp_path / "alpha" / "masks" / "a.tif", labels.astype(np.uint16))
    error_line(dsb("train", "--data", tmp_path / "alpha", "--channel", 1, "--init", init_run, "--out", tmp_path / "r2"),
               3, "a.png", "channel 1 holds one value (255) everywhere")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
    result = finetune(data, tmp_path / "whole", "--init", init_run)
    assert "dsb: warning:" in result.stderr and "--channel N" in result.stderr, result.stderr


def test_training_on_the_channel_of_a_name(init_run, tmp_path):
    """OME-TIFFs that keep their DNA stain in different channels, found by its name in each."""
    pytest.importorskip("keras")
    from dsb.core.config import load_config
    from dsb.io.annotations import read_sample

    data = tmp_path / "ome"
    (data / "images").mkdir(parents=True)
    for k in range(4):
        image, labels = disc_pair(k)
        other = np.full_like(image, 40)
        planes, names = ([image, other], ["Hoechst", "GFP"]) if k % 2 else ([other, image], ["GFP", "hoechst"])
        tifffile.imwrite(data / "images" / f"w{k}.ome.tif", np.stack(planes), ome=True,
                         metadata={"axes": "CYX", "Channel": {"Name": names}})
        tif(data / "masks" / f"w{k}.tif", labels.astype(np.uint16))
    for sample in find_samples(data):
        k = int(sample.id[-1])
        np.testing.assert_array_equal(read_sample(sample, "HOECHST")[0], disc_pair(k)[0])
    run = tmp_path / "ft"
    result = finetune(data, run, "--init", init_run, "--channel", "Hoechst")
    assert "the channel named 'Hoechst'" in result.stderr
    assert load_config(run / "config.json").preprocess.channel == "Hoechst"
    result = dsb("segment", data / "images" / "w1.ome.tif", "--model", run, "--out", tmp_path / "seg")
    assert result.exit_code == 0 and "give --channel Hoechst" in result.stderr, result.stderr
    # A file that names no channels has none of that name: one line, nothing trained.
    png(tmp_path / "grey" / "images" / "g.png", disc_pair(1)[0])
    tif(tmp_path / "grey" / "masks" / "g.tif", disc_pair(1)[1].astype(np.uint16))
    error_line(dsb("train", "--data", tmp_path / "grey", "--channel", "Hoechst", "--init", init_run, "--out",
                   tmp_path / "r1"), 3, "g.png", "names no channels")
    assert not (tmp_path / "r1").exists()


def test_a_negative_channel_in_a_config_is_refused(tmp_path):
    from dsb.core.config import Config

    with pytest.raises(BadDataError, match="preprocess.channel"):
        Config.from_dict({"preprocess": {"channel": -1}})
    assert Config.from_dict({"preprocess": {"channel": None}}).preprocess.channel is None
    assert Config.from_dict({"preprocess": {"channel": "DAPI"}}).preprocess.channel == "DAPI"
    assert Config.from_dict({"preprocess": {"channel": 2}}).preprocess.channel == 2
    with pytest.raises(BadDataError, match="empty name"):
        Config.from_dict({"preprocess": {"channel": " "}})
    with pytest.raises(BadDataError, match=r"is 1.5 \(float\), expected int or str"):
        Config.from_dict({"preprocess": {"channel": 1.5}})


def test_user_folders_of_geojson_masks_beside_each_other(tmp_path):
    """masks/NAME.geojson pairs with images/NAME.png in the strict test too, or the parent reads as a stage."""
    from dsb.io.geojson import write_geojson

    for name in ("ann1", "ann2"):
        image, labels = disc_pair(0)
        png(tmp_path / "data" / name / "images" / f"{name}x.png", image)
        (tmp_path / "data" / name / "masks").mkdir(parents=True)
        write_geojson(tmp_path / "data" / name / "masks" / f"{name}x.geojson", labels)
    assert [s.id for s in find_samples(tmp_path / "data")] == ["ann1-ann1x", "ann2-ann2x"]
