"""Prediction: probabilities, TTA, a folder to a validated submission, bad images, label images."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import (
    CONFIG,
    make_discs,
    SAMPLES,
    disc_image,
    make_threshold_run,
    threshold_model,
    truth_labels,
    write_disc_stage,
)
from PIL import Image

from dsb.core.config import ModelConfig, PredictConfig
from dsb.core.errors import BadDataError, EnvironmentProblem
from dsb.inference.predict import predict_labels
from dsb.inference.probabilities import predict_probabilities
from dsb.kaggle.metric import score_labels
from dsb.kaggle.submission import read_submission, submission_to_labels
from dsb.workflows.predict_folder import predict_images


class Counting:
    """threshold_model that counts the tiles it sees and can fail on a chosen call."""

    def __init__(self, fail_on: int | None = None):
        self.tiles = 0
        self.calls = 0
        self.fail_on = fail_on

    def __call__(self, batch):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        self.tiles += len(batch)
        return threshold_model(batch)


def check_submission(csv, ids=tuple(sorted(SAMPLES))):
    df = read_submission(csv)
    assert list(pd.unique(df["ImageId"])) == list(ids)  # every id, sorted
    shapes = {i: SAMPLES[i][0] for i in ids}
    pred = submission_to_labels(df, shapes)
    truth = {i: truth_labels(i) for i in ids}
    score, _ = score_labels(truth, {i: pred.get(i, np.zeros(shapes[i], np.int32)) for i in ids})
    return df, score


# ---------------------------------------------------------------- probabilities and TTA


@pytest.mark.parametrize("shape", [(37, 53), (1, 40), (40, 1), (64, 64)])
def test_tta_inverts_every_transform(shape):
    # A pointwise model is equivariant: TTA must give the plain prediction back exactly,
    # which fails if any of the eight transforms is undone wrongly.
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    counting = Counting()
    plain = predict_probabilities(counting, image, CONFIG.predict)
    tiles = counting.tiles
    tta = predict_probabilities(counting, image, CONFIG.predict, tta=True)
    assert tta.shape == (*shape, 2) and tta.dtype == np.float32
    np.testing.assert_allclose(tta, plain, atol=1e-6)
    assert counting.tiles == 9 * tiles  # the plain run, then eight views with as many tiles


def test_tta_averages_orientation_dependent_output():
    # A model that sees only the left half of each tile: its output depends on orientation,
    # and TTA averages the eight views into something symmetric under a left-right flip.
    def left_half(batch):
        out = np.zeros(batch.shape[:3] + (2,), np.float32)
        out[:, :, : batch.shape[2] // 2, 0] = 1.0
        return out

    config = PredictConfig(tile_size=32, overlap=0, batch_size=8)
    image = np.zeros((32, 32), np.float32)
    plain = predict_probabilities(left_half, image, config)
    tta = predict_probabilities(left_half, image, config, tta=True)
    assert plain[:, :16, 0].min() == 1 and plain[:, 16:, 0].max() == 0
    np.testing.assert_allclose(tta[..., 0], 0.5, atol=1e-6)


def test_a_run_tuned_for_tta_predicts_with_it_and_the_caller_can_say_otherwise():
    import dataclasses

    from dsb.inference.predict import predict_nuclei
    from dsb.inference.scale import choose_scale

    image = (make_discs((96, 96), centres=((30, 30), (60, 64)), radius=10) > 0).astype(np.uint8) * 200
    plain_run = CONFIG
    tta_run = CONFIG.replace(predict=dataclasses.replace(CONFIG.predict, tta=True))

    def tiles(config, **kwargs):
        counting = Counting()
        labels = predict_nuclei(counting, config, image, diameter=20, **kwargs).labels
        return counting.tiles, labels

    plain, plain_labels = tiles(plain_run)
    assert plain >= 1
    assert tiles(tta_run)[0] == 8 * plain  # the run's predict.tta: eight views
    assert tiles(tta_run, tta=False)[0] == plain  # the caller's word wins, both ways
    assert tiles(plain_run, tta=True)[0] == 8 * plain
    np.testing.assert_array_equal(tiles(tta_run)[1], plain_labels)  # a symmetric stand-in: same nuclei
    # The scale estimate's passes stay single views.
    counts = []
    for config in (plain_run, tta_run):
        counting = Counting()
        choose_scale(counting, config, image.astype(np.float32) / 255)
        counts.append(counting.tiles)
    assert counts[0] == counts[1] > 0


def test_keras_model_predicts_any_shape():
    from dsb.network.unet import build_unet, size_multiple

    model_config = ModelConfig(depth=3, base_filters=4, dropout=(0.0,))
    model = build_unet(model_config)
    image = np.random.default_rng(1).random((45, 71), dtype=np.float32)
    config = PredictConfig(tile_size=32, overlap=8, batch_size=3)
    prob = predict_probabilities(model, image, config, multiple=size_multiple(model_config))
    assert prob.shape == (45, 71, len(model_config.outputs)) and prob.dtype == np.float32
    assert 0 <= prob.min() and prob.max() <= 1
    # An image within one tile: the model's output on the reflection-padded image, cropped back.
    whole = predict_probabilities(model, image, PredictConfig(tile_size=128, overlap=0), multiple=4)
    padded = np.pad(image, ((1, 2), (0, 1)), mode="reflect")  # 45 x 71 -> 48 x 72, centred
    direct = model.predict_on_batch(padded[None, :, :, None])[0, 1:46, :71]
    np.testing.assert_allclose(whole, direct, atol=1e-5)


def test_predict_labels_finds_the_discs():
    truth = truth_labels("b_two")
    labels = predict_labels(threshold_model, CONFIG, disc_image(truth))
    assert labels.dtype == np.int32 and labels.max() == 2
    score, _ = score_labels({"x": truth}, {"x": labels})
    assert score == 1.0


@pytest.mark.parametrize(
    "make",
    [
        lambda lab: disc_image(lab),  # 2-D grey
        lambda lab: np.dstack([disc_image(lab)] * 3),  # RGB
        lambda lab: np.dstack([disc_image(lab)] * 3 + [np.full(lab.shape, 255, np.uint8)]),  # RGBA
        lambda lab: disc_image(lab).astype(np.uint16) * 257,  # 16-bit
    ],
    ids=["grey", "rgb", "rgba", "16bit"],
)
def test_predict_labels_on_any_image_kind(make):
    truth = truth_labels("a_one")
    labels = predict_labels(threshold_model, CONFIG, make(truth))
    assert score_labels({"x": truth}, {"x": labels})[0] == 1.0


# ---------------------------------------------------------------- folders


def test_folder_to_submission_and_label_images(tmp_path):
    stage = write_disc_stage(tmp_path / "stage")
    out = tmp_path / "sub" / "out.csv"
    table = predict_images(threshold_model, CONFIG, stage, out_csv=out, labels_dir=tmp_path / "labels", progress=False)

    df, score = check_submission(out)
    assert score == 1.0
    pd.testing.assert_frame_equal(df, table.reset_index(drop=True), check_dtype=False)
    assert table.attrs["skipped"] == []
    # One row per nucleus; one empty row for the image without nuclei.
    assert df.groupby("ImageId").size().to_dict() == {"a_one": 1, "b_two": 2, "c_none": 1}
    assert df.loc[df["ImageId"] == "c_none", "EncodedPixels"].tolist() == [""]

    files = sorted(p.name for p in (tmp_path / "labels").iterdir())
    assert files == [f"{i}.png" for i in sorted(SAMPLES)]  # no temporary files left
    saved = np.asarray(Image.open(tmp_path / "labels" / "b_two.png"))
    assert saved.dtype == np.uint16 and saved.shape == SAMPLES["b_two"][0]
    assert score_labels({"x": truth_labels("b_two")}, {"x": saved.astype(np.int32)})[0] == 1.0


def test_flat_folder_gives_the_same_csv(tmp_path):
    stage = write_disc_stage(tmp_path / "stage")
    flat = tmp_path / "flat"
    flat.mkdir()
    for image_id in SAMPLES:
        (stage / image_id / "images" / f"{image_id}.png").rename(flat / f"{image_id}.png")
    predict_images(threshold_model, CONFIG, write_disc_stage(tmp_path / "stage2"), out_csv=tmp_path / "a.csv",
                   progress=False)
    predict_images(threshold_model, CONFIG, flat, out_csv=tmp_path / "b.csv", progress=False)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_same_input_gives_the_same_bytes(tmp_path):
    stage = write_disc_stage(tmp_path / "stage")
    for name in ("1.csv", "2.csv"):
        predict_images(threshold_model, CONFIG, stage, out_csv=tmp_path / name, tta=True, progress=False)
    assert (tmp_path / "1.csv").read_bytes() == (tmp_path / "2.csv").read_bytes()


BAD_FILES = {
    "corrupt": b"\x89PNG\r\n\x1a\n" + b"garbage" * 10,
    "empty": b"",
    "text": b"this is not an image\n",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_image_stops_before_writing(tmp_path, kind):
    stage = write_disc_stage(tmp_path / "stage")
    bad = stage / "b_two" / "images" / "b_two.png"
    bad.write_bytes(BAD_FILES[kind])
    out = tmp_path / "out.csv"
    out.write_text("previous good file\n")
    labels_dir = tmp_path / "labels"
    counting = Counting()
    with pytest.raises(BadDataError) as info:
        predict_images(counting, CONFIG, stage, out_csv=out, labels_dir=labels_dir, progress=False)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    assert counting.calls == 0  # stopped before predicting anything
    assert out.read_text() == "previous good file\n"
    assert not labels_dir.exists() or not any(labels_dir.iterdir())


def test_skip_bad_goes_on_and_says_which(tmp_path):
    stage = write_disc_stage(tmp_path / "stage")
    bad = stage / "b_two" / "images" / "b_two.png"
    bad.write_bytes(b"")
    (stage / "d_nofile" / "images").mkdir(parents=True)
    out = tmp_path / "out.csv"
    table = predict_images(threshold_model, CONFIG, stage, out_csv=out, skip_bad=True, progress=False)
    skipped = [str(skip) for skip in table.attrs["skipped"]]
    assert len(skipped) == 2
    assert any(line.startswith(f"{bad}: ") for line in skipped)
    assert any("d_nofile" in line and "images/d_nofile.png" in line for line in skipped)
    # The unreadable image and the sample without one keep one empty row each (no nuclei), so the
    # file answers for every image.
    assert table.attrs["empty_rows"] == ["b_two", "d_nofile"]
    df = read_submission(out)
    assert list(pd.unique(df["ImageId"])) == ["a_one", "b_two", "c_none", "d_nofile"]
    for skipped in ("b_two", "d_nofile"):
        assert df.loc[df["ImageId"] == skipped, "EncodedPixels"].fillna("").tolist() == [""]
    kept = df[~df["ImageId"].isin(["b_two", "d_nofile"])]
    kept.to_csv(tmp_path / "kept.csv", index=False)
    assert check_submission(tmp_path / "kept.csv", ids=("a_one", "c_none"))[1] == 1.0


def test_flat_folder_with_a_non_image_file(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(disc_image(truth_labels("a_one"))).save(flat / "a_one.png")
    (flat / "README.txt").write_text("notes")
    with pytest.raises(BadDataError, match="README.txt: not an image file"):
        predict_images(threshold_model, CONFIG, flat, out_csv=tmp_path / "out.csv", progress=False)
    table = predict_images(threshold_model, CONFIG, flat, out_csv=tmp_path / "out.csv", skip_bad=True, progress=False)
    assert table["ImageId"].tolist() == ["a_one"]
    assert len(table.attrs["skipped"]) == 1


def test_odd_images_in_a_flat_folder(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    lab = truth_labels("a_one")
    grey = disc_image(lab)
    Image.fromarray(grey).save(flat / "grey.png")
    Image.fromarray(np.dstack([grey] * 3)).save(flat / "rgb.png")
    Image.fromarray(np.dstack([grey] * 3 + [np.full(lab.shape, 255, np.uint8)])).save(flat / "rgba.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(flat / "deep.png")
    tifffile.imwrite(flat / "deep_tiff.tif", grey.astype(np.uint16) * 257)
    Image.fromarray(np.array([[20, 200, 200, 20] * 5], np.uint8)).save(flat / "one_row.png")
    Image.fromarray(np.array([[20]], np.uint8)).save(flat / "one_pixel.png")
    out = tmp_path / "out.csv"
    table = predict_images(threshold_model, CONFIG, flat, out_csv=out, progress=False)
    counts = table.groupby("ImageId")["EncodedPixels"].apply(lambda s: int((s != "").sum())).to_dict()
    assert counts == {"deep": 1, "deep_tiff": 1, "grey": 1, "one_pixel": 0, "one_row": 0, "rgb": 1, "rgba": 1}


def test_interrupted_run_leaves_no_file(tmp_path):
    stage = write_disc_stage(tmp_path / "stage")
    out = tmp_path / "out.csv"
    out.write_text("previous good file\n")
    labels_dir = tmp_path / "labels"
    with pytest.raises(KeyboardInterrupt):
        predict_images(Counting(fail_on=3), CONFIG, stage, out_csv=out, labels_dir=labels_dir, progress=False)
    assert out.read_text() == "previous good file\n"
    assert sorted(os.listdir(tmp_path)) == ["out.csv", "stage"]  # the label folder it made is not left empty


def test_unwritable_output_fails_before_predicting(tmp_path):
    stage = write_disc_stage(tmp_path / "stage")
    blocker = tmp_path / "file"
    blocker.write_text("")
    counting = Counting()
    with pytest.raises(EnvironmentProblem):
        predict_images(counting, CONFIG, stage, out_csv=blocker / "out.csv", progress=False)
    with pytest.raises(EnvironmentProblem, match="is a folder"):
        predict_images(counting, CONFIG, stage, out_csv=stage, progress=False)
    with pytest.raises(EnvironmentProblem):
        predict_images(counting, CONFIG, stage, out_csv=tmp_path / "out.csv", labels_dir=blocker / "x",
                       progress=False)
    assert counting.calls == 0


def test_labels_never_overwrite_the_inputs(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(disc_image(truth_labels("a_one"))).save(flat / "a_one.png")
    before = (flat / "a_one.png").read_bytes()
    with pytest.raises(BadDataError, match="where the input images are"):
        predict_images(threshold_model, CONFIG, flat, out_csv=tmp_path / "out.csv", labels_dir=flat, progress=False)
    assert (flat / "a_one.png").read_bytes() == before and not (tmp_path / "out.csv").exists()


# ---------------------------------------------------------------- a real run folder


def test_predict_folder_with_a_run(tmp_path):
    from dsb.workflows.predict_folder import predict_folder

    run_dir = make_threshold_run(tmp_path / "run")
    stage = write_disc_stage(tmp_path / "stage")
    out = tmp_path / "out.csv"
    table = predict_folder(run_dir, stage, out_csv=out, labels_dir=tmp_path / "labels", tta=True, progress=False)
    _, score = check_submission(out)
    assert score == 1.0
    assert len(table) == 4
    with pytest.raises(BadDataError, match="config.json"):
        predict_folder(tmp_path / "stage", stage, out_csv=tmp_path / "x.csv", progress=False)
    assert not (tmp_path / "x.csv").exists()


# ---------------------------------------------------------------- real files


def test_real_test_images_give_a_valid_submission(test_dir, tmp_path):
    import shutil

    from dsb.io.images import image_shapes
    from dsb.kaggle.submission import validate_submission

    stage = tmp_path / "stage"
    ids = sorted(p.name for p in test_dir.iterdir() if not p.name.startswith("."))[::9]  # 8 of 65
    for image_id in ids:
        shutil.copytree(test_dir / image_id, stage / image_id)
    out = tmp_path / "out.csv"
    table = predict_images(threshold_model, CONFIG.replace(predict=PredictConfig()), stage, out_csv=out,
                           progress=False)
    df = read_submission(out)
    assert list(pd.unique(df["ImageId"])) == ids
    assert validate_submission(df, image_shapes(stage)) == []
    assert len(table) == len(df) > len(ids)  # nuclei found, not just one empty row per image
