"""Leave-groups-out cross-validation: folds of whole groups, one run per fold, every group scored once."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from dsb.cli import cli
from dsb.core.config import Config, ModelConfig, TrainConfig, load_config
from dsb.core.errors import BadDataError
from dsb.training.session import TrainingInterrupted
from dsb.io.synthetic import nuclei_field
from dsb.workflows.crossval import crossval, deal_groups

TINY = Config(
    model=ModelConfig(depth=2, base_filters=4, convs_per_block=1, dropout=(0.0, 0.2)),
    train=TrainConfig(crop_size=32, batch_size=2, epochs=1, steps_per_epoch=1, early_stopping_patience=10),
)


def test_groups_are_dealt_whole_balanced_and_types_apart():
    groups = ["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"] * 2 + ["e"]
    types = ["x"] * 5 + ["y"] * 4 + ["x"] * 3 + ["y"] * 2 + ["z"]
    folds = deal_groups(groups, types, 2)
    assert sorted(g for fold in folds for g in fold) == ["a", "b", "c", "d", "e"]
    # Each fold holds one group of each of x and y, so each trains on the other of each type.
    kind = dict(zip(groups, types))
    for fold in folds:
        assert sorted(kind[g] for g in fold if kind[g] != "z") == ["x", "y"]
    with pytest.raises(ValueError, match="between 2 and the number of groups"):
        deal_groups(groups, types, 6)


@pytest.fixture
def two_experiments(tmp_path):
    """Two folders of annotated images (Cellpose's layout): two groups, user:exp1 and user:exp2."""
    data = tmp_path / "data"
    for k, (folder, diameter) in enumerate((("exp1", 10), ("exp2", 16))):
        (data / folder).mkdir(parents=True)
        for n in range(2):
            image, labels = nuclei_field((64, 64), diameter, seed=10 * k + n)
            Image.fromarray(image).save(data / folder / f"img{n}.png")
            tifffile.imwrite(data / folder / f"img{n}_masks.tif", labels.astype(np.uint16))
    return data


def test_every_group_is_scored_by_the_run_that_never_saw_it(two_experiments, tmp_path):
    out = tmp_path / "cv"
    value, summary = crossval(two_experiments, out, TINY, folds=2, epochs=1, precision="bfloat16", tune=False,
                              engine="keras", progress=False)
    assert not (out / "fold-1" / "model.onnx").exists()  # Keras scores the folds: nothing to export
    table = pd.read_csv(out / "crossval.csv")
    assert json.loads((out / "fold-2" / "manifest.json").read_text())["precision"] == "bfloat16"
    assert len(table) == 4 and set(table["group"]) == {"user:exp1", "user:exp2"}
    # One fold per group, and each fold's run validated on its own group's images only.
    assert table.groupby("group")["fold"].nunique().tolist() == [1, 1]
    assert set(table["fold"]) == {1, 2}
    for k in (1, 2):
        assert (out / f"fold-{k}" / "model.keras").is_file()
        # The manifest names the groups the fold trained on, which int8 calibration keeps to.
        held = set(table.loc[table["fold"] == k, "group"])
        trained = json.loads((out / f"fold-{k}" / "manifest.json").read_text())["train_groups"]
        assert trained == sorted({"user:exp1", "user:exp2"} - held)
    rows = summary.set_index(["level", "name"])
    assert rows.loc[("group", "user:exp1"), "images"] == 2 and rows.loc[("all", "all"), "images"] == 4
    assert value == pytest.approx(table["score"].mean())
    # Finished folds are scored again, not trained again.
    stamp = (out / "fold-1" / "model.keras").stat().st_mtime_ns
    again, _ = crossval(two_experiments, out, TINY, folds=2, epochs=1, tune=False, progress=False)
    assert again == pytest.approx(value) and (out / "fold-1" / "model.keras").stat().st_mtime_ns == stamp
    assert not table["tuned"].any()
    # Those folds validated on their held-out groups: tuning them there is refused, naming the fold.
    with pytest.raises(BadDataError, match="held-out groups as validation") as caught:
        crossval(two_experiments, out, TINY, folds=2, epochs=1, progress=False)
    assert "fold-1" in str(caught.value)


@pytest.fixture
def three_experiments(two_experiments):
    """``two_experiments`` and a third folder, exp3: one fold then trains on two groups."""
    folder = two_experiments / "exp3"
    folder.mkdir()
    for n in range(2):
        image, labels = nuclei_field((64, 64), 12, seed=30 + n)
        Image.fromarray(image).save(folder / f"img{n}.png")
        tifffile.imwrite(folder / f"img{n}_masks.tif", labels.astype(np.uint16))
    return two_experiments


def test_tuned_folds_never_see_their_held_out_groups(three_experiments, tmp_path, monkeypatch):
    import dsb.workflows.crossval as module

    trained_on = []
    train = module.train_prepared

    def spy(prepared, config, **kwargs):
        trained_on.append(set(prepared.ids))
        return train(prepared, config, **kwargs)

    monkeypatch.setattr(module, "train_prepared", spy)
    out = tmp_path / "cv"
    value, summary = crossval(three_experiments, out, TINY, folds=2, epochs=1, progress=False)
    table = pd.read_csv(out / "crossval.csv")
    assert len(table) == 6 and value == pytest.approx(table["score"].mean())
    held = {k: set(rows["ImageId"]) for k, rows in table.groupby("fold")}
    # Fold 1 holds out exp1 and exp3 (4 images); fold 2 holds out exp2.
    assert sorted(len(h) for h in held.values()) == [2, 4]
    for k, seen in zip((1, 2), trained_on):
        config = load_config(out / f"fold-{k}" / "config.json")
        assert not seen & held[k] and len(seen) == 6 - len(held[k])
        assert not set(config.validation_ids) & held[k]
    # Fold 2 trains on two groups and keeps one back to tune on; fold 1's single group leaves none.
    tuned = table.groupby("fold")["tuned"].first()
    assert tuned[2] and not tuned[1]
    assert (out / "fold-2" / "tuning.csv").is_file() and not (out / "fold-1" / "tuning.csv").exists()
    rows = summary.set_index(["level", "name"])
    assert rows.loc[("group", "user:exp2"), "tuned"] and not rows.loc[("group", "user:exp1"), "tuned"]
    fold2 = load_config(out / "fold-2" / "config.json")
    assert len(fold2.validation_ids) == 2 and set(fold2.validation_ids) <= set(trained_on[1])
    # Scored again without training or tuning again.
    stamp = (out / "fold-2" / "tuning.csv").stat().st_mtime_ns
    again, _ = crossval(three_experiments, out, TINY, folds=2, epochs=1, progress=False)
    assert again == pytest.approx(value) and len(trained_on) == 2
    assert (out / "fold-2" / "tuning.csv").stat().st_mtime_ns == stamp
    # And at other magnifications: every image at each zoom, the lowest zoom's mean returned.
    lowest, sweep = crossval(three_experiments, out, TINY, folds=2, epochs=1, zooms=(0.5, 1), progress=False)
    assert len(trained_on) == 2 and (out / "fold-2" / "tuning.csv").stat().st_mtime_ns == stamp
    table = pd.read_csv(out / "crossval.csv")
    assert len(table) == 12 and sorted(table["zoom"].unique()) == [0.5, 1.0]
    means = table.groupby("zoom")["score"].mean()
    assert lowest == pytest.approx(means.min()) and means[1.0] == pytest.approx(value)
    small = table[table["zoom"] == 0.5].set_index("ImageId")
    assert small["true_diameter"].mean() < table[table["zoom"] == 1].set_index("ImageId")["true_diameter"].mean()
    groups = sweep[sweep["level"] == "group"]
    assert sorted(groups["zoom"]) == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0]
    assert (groups.groupby("name")["fold"].nunique() == 1).all()
    with pytest.raises(ValueError, match="zoom"):
        crossval(three_experiments, out, TINY, folds=2, epochs=1, zooms=(0,), progress=False)
    # Scoring these folds untuned is refused: they are not the networks untuned figures describe.
    with pytest.raises(BadDataError, match="validation images of its own") as caught:
        crossval(three_experiments, out, TINY, folds=2, epochs=1, tune=False, progress=False)
    assert "fold-1" in str(caught.value)
    # Dealt into three folds, fold 1 would hold out exp1 alone, and its run trained on exp3.
    with pytest.raises(BadDataError, match="other held-out images than this fold's") as caught:
        crossval(three_experiments, out, TINY, folds=3, epochs=1, progress=False)
    assert "fold-1" in str(caught.value)


def test_folds_are_tuned_and_scored_as_make_submit_does(three_experiments, tmp_path, monkeypatch):
    import dsb.workflows.crossval as module

    scored, tunings = [], []
    predict, tune = module.predict_validation, module.tune_run

    def predict_spy(model, config, data_dir, **kwargs):
        tta = kwargs.get("tta")
        scored.append((model.engine, config.predict.tta if tta is None else tta, config.predict.scale_factor))
        return predict(model, config, data_dir, **kwargs)

    def tune_spy(run, data_dir, **kwargs):
        tunings.append((kwargs["tta"], kwargs["scale_factors"]))
        return tune(run, data_dir, **kwargs)

    monkeypatch.setattr(module, "predict_validation", predict_spy)
    monkeypatch.setattr(module, "tune_run", tune_spy)
    out = tmp_path / "cv"
    # A factor dsb tune refuses stops the cross-validation before anything trains.
    with pytest.raises(BadDataError, match="scale_factors"):
        crossval(three_experiments, out, TINY, folds=2, epochs=1, tta=True, scale_factors=(1, 9), progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="need `tune`"):
        crossval(three_experiments, out, TINY, folds=2, epochs=1, tune=False, tta=True, progress=False)
    crossval(three_experiments, out, TINY, folds=2, epochs=1, tta=True, scale_factors=(1.25, 1), progress=False)
    # Each fold exported to ONNX as make submit exports its run, and run by a CPU engine there.
    assert (out / "fold-1" / "model.onnx").is_file() and (out / "fold-2" / "model.onnx").is_file()
    assert {engine for engine, _, _ in scored} <= {"openvino", "onnx"}
    # Fold 2, the one with validation images of its own, tuned with both factors on averaged views,
    # and scored as it was tuned; fold 1 (none to tune on) on averaged views at the recipe's scale.
    assert tunings == [(True, (1.0, 1.25))]
    table = pd.read_csv(out / "fold-2" / "tuning.csv")
    assert set(table["tta"]) == {True} and sorted(table["scale_factor"].unique()) == [1.0, 1.25]
    fold2 = load_config(out / "fold-2" / "config.json")
    assert fold2.predict.tta and fold2.predict.scale_factor in (1.0, 1.25)
    assert scored[0][1:] == (True, TINY.predict.scale_factor)
    assert scored[1][1:] == (True, fold2.predict.scale_factor)
    # Scored again the same way: not tuned again. Asked otherwise: tuned again, as asked.
    crossval(three_experiments, out, TINY, folds=2, epochs=1, tta=True, scale_factors=(1, 1.25), progress=False)
    assert len(tunings) == 1
    crossval(three_experiments, out, TINY, folds=2, epochs=1, progress=False)
    assert tunings[1] == (TINY.predict.tta, (TINY.predict.scale_factor,))
    again = load_config(out / "fold-2" / "config.json")
    assert again.predict.tta == TINY.predict.tta and again.predict.scale_factor == TINY.predict.scale_factor
    assert scored[-1][1:] == (TINY.predict.tta, TINY.predict.scale_factor)
    # A tuning table that does not say how it was searched is tuned again, not trusted.
    (out / "fold-2" / "tuning.csv").write_text("score\n0.5\n")
    crossval(three_experiments, out, TINY, folds=2, epochs=1, progress=False)
    assert len(tunings) == 3 and "tta" in pd.read_csv(out / "fold-2" / "tuning.csv").columns


def test_untuned_folds_dealt_otherwise_are_refused(three_experiments, tmp_path):
    out = tmp_path / "cv"
    crossval(three_experiments, out, TINY, folds=2, epochs=1, tune=False, engine="keras", progress=False)
    # Untuned runs all train on every image; their validation images say what they held out.
    with pytest.raises(BadDataError, match="other held-out images than this fold's") as caught:
        crossval(three_experiments, out, TINY, folds=3, epochs=1, tune=False, progress=False)
    assert "fold-1" in str(caught.value) and not (out / "fold-3").exists()


def test_an_interrupted_fold_says_to_run_crossval_again(two_experiments, tmp_path, monkeypatch):
    import dsb.workflows.crossval as module

    def interrupted(prepared, config, *, out_dir, **kwargs):
        raise TrainingInterrupted(out_dir, 3)

    monkeypatch.setattr(module, "train_prepared", interrupted)
    with pytest.raises(TrainingInterrupted) as caught:
        crossval(two_experiments, tmp_path / "cv", TINY, folds=2, epochs=1, progress=False)
    # `dsb train --resume` would resume a tuned fold on all the data, its held-out groups too.
    assert "Resume with: the same dsb crossval command" in str(caught.value)
    assert "dsb train --resume" not in str(caught.value) and caught.value.epoch == 3


def test_crossval_command_prints_groups_and_the_score_last(two_experiments, tmp_path):
    config = tmp_path / "tiny.json"
    from dsb.core.config import save_config

    save_config(TINY, config)
    result = CliRunner().invoke(cli, ["crossval", "--data", str(two_experiments), "--out", str(tmp_path / "cv"),
                                      "--folds", "2", "--epochs", "1", "--config", str(config), "--no-tune",
                                      "--engine", "keras"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("group user:exp1 (fold ") for line in lines)
    assert not any("untuned" in line for line in lines)
    assert 0.0 <= float(lines[-1]) <= 1.0
    # The same folds at two magnifications, scored again without training: per group both zooms,
    # per zoom the gap to 1x, and the lowest score last.
    swept = CliRunner().invoke(cli, ["crossval", "--data", str(two_experiments), "--out", str(tmp_path / "cv"),
                                     "--folds", "2", "--config", str(config), "--no-tune", "--zoom", "0.5,1",
                                     "--engine", "keras"])
    assert swept.exit_code == 0, swept.output
    out = swept.stdout.strip().splitlines()
    group = next(line for line in out if line.startswith("group user:exp1 (fold "))
    assert "zoom 0.5 " in group and "zoom 1 " in group and "(2 images)" in group
    half = next(line for line in out if line.startswith("zoom 0.5: "))
    assert "against 1x" in half and float(out[-1]) == pytest.approx(min(
        float(line.split(":")[1].split(",")[0]) for line in out if line.startswith("zoom ")), abs=1e-4)
    untuned_tta = CliRunner().invoke(cli, ["crossval", "--data", str(two_experiments), "--out", str(tmp_path / "cv"),
                                           "--folds", "2", "--config", str(config), "--no-tune", "--tta"])
    assert untuned_tta.exit_code == 2 and "drop --no-tune" in untuned_tta.stderr
    bad_factor = CliRunner().invoke(cli, ["crossval", "--data", str(two_experiments), "--out", str(tmp_path / "cv"),
                                          "--folds", "2", "--config", str(config), "--scale-factors", "1,x"])
    assert bad_factor.exit_code == 2 and "--scale-factors" in bad_factor.stderr
    bad_zoom = CliRunner().invoke(cli, ["crossval", "--data", str(two_experiments), "--out", str(tmp_path / "cv"),
                                        "--folds", "2", "--config", str(config), "--no-tune", "--zoom", "0"])
    assert bad_zoom.exit_code == 2 and "between 0.05 and 20" in bad_zoom.stderr
    # Tuning folds that validated on their held-out groups: one line naming the fold, exit 3.
    mixed = CliRunner().invoke(cli, ["crossval", "--data", str(two_experiments), "--out", str(tmp_path / "cv"),
                                     "--folds", "2", "--epochs", "1", "--config", str(config)])
    assert mixed.exit_code == 3 and len(mixed.stderr.splitlines()) == 1
    assert "fold-1" in mixed.stderr and "held-out groups as validation" in mixed.stderr
    assert not (tmp_path / "cv" / "fold-1" / "tuning.csv").exists()
    # Tuned by default; a fold trained on a single group has none to hold back, and says so.
    tuned = CliRunner().invoke(cli, ["crossval", "--data", str(two_experiments), "--out", str(tmp_path / "cv3"),
                                     "--folds", "2", "--epochs", "1", "--config", str(config)])
    assert tuned.exit_code == 0, tuned.output
    assert any(line.startswith("group user:exp1 (fold ") and line.split(")")[0].endswith(", untuned")
               for line in tuned.stdout.splitlines())
    # More folds than groups: one line naming the data folder, exit 3, nothing trained.
    bad = CliRunner().invoke(cli, ["crossval", "--data", str(two_experiments), "--out", str(tmp_path / "cv2"),
                                   "--folds", "3", "--epochs", "1", "--config", str(config)])
    assert bad.exit_code == 3 and "too few for 3 folds" in bad.stderr and len(bad.stderr.splitlines()) == 1
    assert str(two_experiments) in bad.stderr and not (tmp_path / "cv2").exists()
