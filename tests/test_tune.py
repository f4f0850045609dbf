"""Post-processing search on cached probabilities, and `tune` on a tiny run."""

from __future__ import annotations

import dataclasses

import json

import numpy as np
import pandas as pd
import pytest
from conftest import (
    CONFIG,
    SAMPLES,
    make_discs,
    make_threshold_run,
    targets,
    write_disc_stage,
)
from scipy import ndimage

from dsb.core.config import Config, PostprocessConfig
from dsb.workflows.tune import GRID, search_postprocess


def faint_probabilities(truth: np.ndarray, peak: float = 0.45) -> np.ndarray:
    """Blurred ideal targets whose body never reaches 0.5: the default thresholds find nothing."""
    prob = ndimage.gaussian_filter(targets(truth), (0.7, 0.7, 0))
    prob[..., 0] *= peak
    return prob.astype(np.float32)


@pytest.fixture
def cases():
    truth = {
        "a": make_discs((64, 64), centres=((32, 22), (32, 38)), radius=9),
        "b": make_discs((48, 56), centres=((20, 20),), radius=8),
        "c": make_discs((60, 60), centres=((15, 15), (15, 33), (40, 40)), radius=8),
    }
    return {k: faint_probabilities(v) for k, v in truth.items()}, truth


def test_search_beats_a_bad_start(cases):
    probabilities, truth = cases
    start = PostprocessConfig()
    best, table = search_postprocess(
        probabilities, truth, start, image_types={"a": "fluorescence", "b": "fluorescence", "c": "stained"}
    )
    assert table.loc[0, "score"] == 0.0  # the start finds no nuclei
    assert best.mask_threshold < 0.45 and best.marker_threshold < 0.45
    assert table["score"].max() > 0.8
    assert table["best"].sum() == 1
    best_row = table[table["best"]].iloc[0]
    assert best_row["score"] == table["score"].max()
    assert best_row["mask_threshold"] == best.mask_threshold
    assert {"score_fluorescence", "score_stained", "round", "seconds"} <= set(table.columns)
    # Every setting is scored once, and the search stayed small.
    keys = table[["marker_threshold", "border_threshold", "mask_threshold", "flood", "min_marker_size", "min_size",
                  "split_ratio", "min_confidence"]]
    assert not keys.duplicated().any()
    assert len(table) <= 1 + 2 * sum(len(v) for v in GRID.values())


def test_search_drops_nuclei_the_network_is_unsure_of():
    # Two true discs the network is sure of, and a false one where it is not (a speck of dust): the
    # search finds the confidence that drops the false one and keeps the true ones.
    truth = make_discs((48, 96), centres=((24, 14), (24, 48)), radius=9)
    seen = make_discs((48, 96), centres=((24, 14), (24, 48), (24, 82)), radius=9)
    prob = targets(seen)
    prob[..., 0] *= np.where(seen == 3, 0.65, 1.0).astype(np.float32)
    best, table = search_postprocess({"a": prob}, {"a": truth}, PostprocessConfig(),
                                     grid={"min_confidence": GRID["min_confidence"]})
    assert table.loc[0, "score"] < 1.0  # the false disc costs the start
    assert best.min_confidence == 0.7  # the first value over the false disc's 0.65
    assert table[table["best"]].iloc[0]["score"] == 1.0
    assert list(table["min_confidence"]) == [0.0, *GRID["min_confidence"][1:]]


def test_outlines_drawn_too_wide_are_tightened_by_a_high_mask_threshold():
    # A network after a short budget: sure inside each nucleus, fairly sure (0.72) in a ring three
    # pixels wide around it. Only a mask threshold above the ring gives the nuclei their own outlines.
    truth = make_discs((64, 96), centres=((32, 22), (32, 66)), radius=8)
    wide = make_discs((64, 96), centres=((32, 22), (32, 66)), radius=11)
    prob = targets(truth)
    prob[..., 0] = np.where(truth > 0, 1.0, np.where(wide > 0, 0.72, 0.0)).astype(np.float32)
    best, table = search_postprocess({"a": prob}, {"a": truth}, PostprocessConfig(),
                                     grid={"mask_threshold": GRID["mask_threshold"]})
    assert best.mask_threshold == 0.8
    assert table[table["best"]].iloc[0]["score"] == 1.0
    assert table.loc[table["mask_threshold"] <= 0.6, "score"].max() <= 0.5


def test_search_keeps_the_start_when_nothing_is_better(cases):
    probabilities, truth = cases
    perfect = {k: targets(v) for k, v in truth.items()}
    start = PostprocessConfig()
    best, table = search_postprocess(perfect, truth, start, grid={"mask_threshold": (0.3, 0.5)}, rounds=2)
    assert best == start
    assert table.loc[0, "score"] == 1.0
    assert list(table["round"]) == [0, 1]  # round 2 skipped: round 1 changed nothing


def count_watersheds(monkeypatch) -> list:
    """The configs of every watershed the search runs from now on (dsb.workflows.tune's own calls)."""
    import dsb.workflows.tune

    calls = []
    real = dsb.workflows.tune.labels_from_probabilities

    def counting(prob, config):
        calls.append(config)
        return real(prob, config)

    monkeypatch.setattr(dsb.workflows.tune, "labels_from_probabilities", counting)
    return calls


def test_min_size_reuses_the_watershed(cases, monkeypatch):
    probabilities, truth = cases
    calls = count_watersheds(monkeypatch)
    start = PostprocessConfig(mask_threshold=0.3, marker_threshold=0.3)
    _, table = search_postprocess(probabilities, truth, start, grid={"min_size": (0, 10, 1000)}, rounds=1)
    assert len(table) == 4
    assert len(calls) == len(truth)  # one watershed per image for all four settings
    assert table.loc[table["min_size"] == 1000, "score"].iloc[0] == 0.0


def test_search_rejects_unknown_parameters(cases):
    probabilities, truth = cases
    with pytest.raises(ValueError, match="unknown parameters"):
        search_postprocess(probabilities, truth, PostprocessConfig(), grid={"threshold": (0.5,)})
    with pytest.raises(ValueError, match="no probabilities"):
        search_postprocess({}, truth, PostprocessConfig())


# ---------------------------------------------------------------- tune on a run folder


def test_tune_stores_the_best_in_the_run(tmp_path):
    from dsb.core.config import load_config
    from dsb.workflows.tune import tune

    data = tmp_path / "data"
    write_disc_stage(data / "stage1_train", masks=True)
    # Each image at its own scale (max_scale 1: the estimate would enlarge the smaller disc to the
    # network's diameter), where min_size 170 drops a_one's disc of 149 pixels and keeps b_two's of 201.
    start = CONFIG.replace(postprocess=PostprocessConfig(min_size=170), validation_ids=("a_one", "b_two"),
                           predict=dataclasses.replace(CONFIG.predict, cross_check=False, max_scale=1.0))
    run_dir = make_threshold_run(tmp_path / "run", start)
    best, table = tune(run_dir, data, progress=False)

    assert table.loc[0, "score"] < 1.0  # min_size 170 drops the smaller disc (149 pixels)
    assert best.min_size < 149 and table["score"].max() == 1.0
    assert load_config(run_dir / "config.json") == start.replace(postprocess=best)
    saved = pd.read_csv(run_dir / "tuning.csv")
    assert len(saved) == len(table) and saved["score"].max() == 1.0
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "model.keras", "tuning.csv"]
    assert set(SAMPLES) > set(start.validation_ids)


def test_tune_needs_validation_images(tmp_path):
    from dsb.core.errors import BadDataError
    from dsb.workflows.tune import tune

    data = write_disc_stage(tmp_path / "stage", masks=True)
    run_dir = make_threshold_run(tmp_path / "run", CONFIG)
    with pytest.raises(BadDataError, match="validation_ids.*is empty"):
        tune(run_dir, data, progress=False)
    run2 = make_threshold_run(tmp_path / "run2", CONFIG.replace(validation_ids=("a_one", "zz_missing")))
    with pytest.raises(BadDataError, match="zz_missing"):
        tune(run2, data, progress=False)
    assert not (run2 / "tuning.csv").exists()
    assert json.loads((run2 / "config.json").read_text())["validation_ids"] == ["a_one", "zz_missing"]


def test_ideal_targets_of_real_nuclei_come_back(train_dir):
    """The training targets (loader.make_targets) of real images, post-processed, score close to 1."""
    from dsb.inference.watershed import labels_from_probabilities
    from dsb.io.images import image_path, list_ids, read_image, read_labels
    from dsb.kaggle.metric import score_labels
    from dsb.training.loader import make_targets

    ids = list_ids(train_dir)[::83]  # 8 of 664
    truth = {}
    for i in ids:
        truth[i] = read_labels(train_dir / i, read_image(image_path(train_dir, i)).shape[:2])
    config = Config()
    pred = {
        i: labels_from_probabilities(make_targets(t, border_width=config.preprocess.border_width), config.postprocess)
        for i, t in truth.items()
    }
    score, table = score_labels(truth, pred)
    assert score > 0.9, table[["ImageId", "score", "n_true", "n_pred"]].to_string()


def test_split_ratio_reuses_the_watershed_and_scores_what_prediction_would(monkeypatch):
    # The search splits the cached watershed per setting; its score for each setting is the
    # score of labels_from_probabilities with that setting, as dsb predict would segment.
    from dsb.inference.watershed import labels_from_probabilities
    from dsb.kaggle.metric import score_labels

    from test_split import merged_pair

    truth, prob = merged_pair()
    probabilities, truths = {"pair": prob}, {"pair": truth}
    calls = count_watersheds(monkeypatch)
    grid = {"split_ratio": (0.0, 1.5, 3.0), "min_size": (0, 300), "min_confidence": (0.0, 0.9, 1.0)}
    _, table = search_postprocess(probabilities, truths, PostprocessConfig(), grid=grid, rounds=1)
    assert len(calls) == 1  # one watershed for every split_ratio, min_size and min_confidence
    assert table["min_confidence"].nunique() == 3
    for _, row in table.iterrows():
        config = PostprocessConfig(split_ratio=row["split_ratio"], min_size=int(row["min_size"]),
                                   min_confidence=row["min_confidence"])
        expected, _ = score_labels(truths, {"pair": labels_from_probabilities(prob, config)})
        assert row["score"] == pytest.approx(expected)
    scores = table.set_index(["split_ratio", "min_size", "min_confidence"])["score"]
    assert scores[(1.5, 12, 0.0)] > scores[(0.0, 12, 0.0)]  # the split finds the pair's two nuclei


def test_tune_with_tta_tunes_on_averaged_probabilities_and_the_run_then_predicts_so(tmp_path, monkeypatch):
    import dsb.workflows.tune
    from dsb.core.config import load_config
    from dsb.workflows.tune import tune

    data = tmp_path / "data"
    write_disc_stage(data / "stage1_train", masks=True)
    start = CONFIG.replace(postprocess=PostprocessConfig(min_size=170), validation_ids=("a_one", "b_two"),
                           predict=dataclasses.replace(CONFIG.predict, cross_check=False, max_scale=1.0))
    run_dir = make_threshold_run(tmp_path / "run", start)
    asked = []
    real = dsb.workflows.tune.predict_scaled

    def spying(model, config, raw, *, tta=None, diameter=None):
        asked.append(tta)
        return real(model, config, raw, tta=tta, diameter=diameter)

    monkeypatch.setattr(dsb.workflows.tune, "predict_scaled", spying)
    best, table = tune(run_dir, data, progress=False, tta=True)
    assert asked == [True, True]  # both validation images, eight views each
    assert load_config(run_dir / "config.json").predict.tta is True
    assert table["tta"].all() and pd.read_csv(run_dir / "tuning.csv")["tta"].all()
    assert table["score"].max() == 1.0 and best.min_size < 149

    asked.clear()
    tune(run_dir, data, progress=False)  # None: as the run predicts now
    assert asked == [True, True] and load_config(run_dir / "config.json").predict.tta is True
    asked.clear()
    tune(run_dir, data, progress=False, tta=False)
    assert asked == [False, False] and load_config(run_dir / "config.json").predict.tta is False
    assert not pd.read_csv(run_dir / "tuning.csv")["tta"].any()


def test_dsb_tune_says_it_tuned_for_tta(tmp_path):
    from click.testing import CliRunner

    from dsb.cli import cli
    from dsb.core.config import load_config

    data = tmp_path / "data"
    write_disc_stage(data / "stage1_train", masks=True)
    start = CONFIG.replace(validation_ids=("a_one", "b_two"),
                           predict=dataclasses.replace(CONFIG.predict, cross_check=False))
    run_dir = make_threshold_run(tmp_path / "run", start)
    result = CliRunner().invoke(cli, ["tune", str(run_dir), "--data", str(data), "--tta", "--engine", "keras"])
    assert result.exit_code == 0, result.output
    assert "for test-time augmentation" in result.output
    assert load_config(run_dir / "config.json").predict.tta is True
    result = CliRunner().invoke(cli, ["tune", str(run_dir), "--data", str(data), "--no-tta", "--engine", "keras"])
    assert result.exit_code == 0 and "test-time" not in result.output
    assert load_config(run_dir / "config.json").predict.tta is False


def test_the_core_threshold_is_searched_only_for_networks_with_a_core(cases):
    probabilities, truth = cases
    grid = {"core_threshold": (0.0, 0.5), "marker_threshold": (0.5,)}
    _, three = search_postprocess(probabilities, truth, PostprocessConfig(), grid=grid)
    assert "core_threshold" not in three.columns
    four = {k: np.concatenate([p, np.zeros_like(p[..., :1]), p[..., :1]], axis=-1) for k, p in probabilities.items()}
    _, table = search_postprocess(four, truth, PostprocessConfig(), grid=grid)
    assert set(table["core_threshold"]) == {0.0, 0.5}
    assert "core_threshold" in GRID


# ---------------------------------------------------------------- the scale factor


def _factor_run(tmp_path):
    data = tmp_path / "data"
    write_disc_stage(data / "stage1_train", masks=True)
    start = CONFIG.replace(validation_ids=("a_one", "b_two"),
                           predict=dataclasses.replace(CONFIG.predict, cross_check=False, max_scale=2.0))
    return data, make_threshold_run(tmp_path / "run", start)


def test_tune_predicts_at_each_scale_factor_and_keeps_the_best(tmp_path, monkeypatch):
    import dsb.workflows.tune
    from dsb.core.config import load_config
    from dsb.inference.predict import Scaled
    from dsb.workflows.tune import tune

    data, run_dir = _factor_run(tmp_path)
    real = dsb.workflows.tune.predict_scaled
    asked = []

    def blind_at_one(model, config, raw, *, tta=None, diameter=None):
        # At factor 1 the network sees nothing; at 1.5 it finds every disc.
        asked.append(config.predict.scale_factor)
        scaled = real(model, config, raw, tta=tta, diameter=diameter)
        if config.predict.scale_factor == 1.0:
            return Scaled(np.zeros_like(scaled.probabilities), *list(vars(scaled).values())[1:])
        return scaled

    monkeypatch.setattr(dsb.workflows.tune, "predict_scaled", blind_at_one)
    best, table = tune(run_dir, data, progress=False, scale_factors=(1.5, 1.0, 1.5))
    assert asked == [1.0, 1.0, 1.5, 1.5]  # each factor once, the smallest first, every image
    assert load_config(run_dir / "config.json").predict.scale_factor == 1.5
    assert load_config(run_dir / "config.json").postprocess == best
    by_factor = table.groupby("scale_factor")["score"].max()
    assert by_factor[1.0] == 0.0 and by_factor[1.5] == 1.0
    assert table["best"].sum() == 1 and table.loc[table["best"], "scale_factor"].item() == 1.5
    saved = pd.read_csv(run_dir / "tuning.csv")
    assert list(saved.columns[:1]) == ["scale_factor"] and saved["best"].sum() == 1


def test_a_larger_scale_factor_must_score_strictly_better(tmp_path):
    from dsb.core.config import load_config
    from dsb.workflows.tune import tune

    data, run_dir = _factor_run(tmp_path)
    _, table = tune(run_dir, data, progress=False, scale_factors=(1.0, 2.0))
    by_factor = table.groupby("scale_factor")["score"].max()
    assert by_factor[1.0] == by_factor[2.0] == 1.0  # the discs are found at both
    assert load_config(run_dir / "config.json").predict.scale_factor == 1.0  # and 1 costs a quarter of the pixels
    _, table = tune(run_dir, data, progress=False)  # None: the run's own factor only
    assert set(table["scale_factor"]) == {1.0}


@pytest.mark.parametrize(("value", "message"), [
    ("1,3", "'1,3': a factor is 3.0, expected a number in [0.5, 2]"),
    ("1,x", "'1,x' is not a comma-separated list of numbers"),
])
def test_dsb_tune_refuses_a_bad_scale_factor_before_anything_runs(tmp_path, value, message):
    from click.testing import CliRunner

    from dsb.cli import cli

    data, run_dir = _factor_run(tmp_path)
    before = (run_dir / "config.json").read_bytes()
    result = CliRunner().invoke(cli, ["tune", str(run_dir), "--data", str(data), "--scale-factors", value])
    assert result.exit_code == 2 and message in result.output
    assert (run_dir / "config.json").read_bytes() == before and not (run_dir / "tuning.csv").exists()


def test_dsb_tune_says_what_each_scale_factor_scored(tmp_path):
    from click.testing import CliRunner

    from dsb.cli import cli

    data, run_dir = _factor_run(tmp_path)
    result = CliRunner().invoke(cli, ["tune", str(run_dir), "--data", str(data), "--scale-factors", "1,1.5",
                                      "--engine", "keras"])
    assert result.exit_code == 0, result.output
    assert "  scale_factor = 1\n" in result.output
    assert "best at scale factor 1: 1.000000" in result.output
    assert "best at scale factor 1.5: 1.000000" in result.output
