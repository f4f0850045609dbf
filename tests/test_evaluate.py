"""`dsb evaluate`: the run's validation score equals predicting and scoring those images."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import CONFIG, make_threshold_run, write_disc_stage

from dsb.cli import cli
from dsb.core.config import PostprocessConfig, load_config
from dsb.workflows.evaluate import evaluate


@pytest.fixture
def run_and_data(tmp_path):
    data = tmp_path / "data"
    write_disc_stage(data / "stage1_train", masks=True)
    # min_size 170 drops the 149-pixel disc of a_one, kept at its own scale (max_scale 1: the estimate
    # would enlarge it to the network's diameter, where it is larger): a score below 1 that the check
    # can see. b_two's discs of 201 pixels stay.
    config = CONFIG.replace(postprocess=PostprocessConfig(min_size=170), validation_ids=("a_one", "b_two"),
                            predict=dataclasses.replace(CONFIG.predict, cross_check=False, max_scale=1.0))
    return make_threshold_run(tmp_path / "run", config), data


def test_evaluate_matches_predict_then_score(run_and_data, tmp_path):
    run_dir, data = run_and_data
    value, table = evaluate(run_dir, data, progress=False)
    assert list(table["ImageId"]) == ["a_one", "b_two"]
    assert value == pytest.approx(0.5)  # a_one loses its only nucleus, b_two is perfect
    assert set(table["type"]) == {"fluorescence"}

    # The same images through the commands a user would chain.
    held_out = tmp_path / "held_out"
    for image_id in ("a_one", "b_two"):
        shutil.copytree(data / "stage1_train" / image_id, held_out / image_id)
    runner = CliRunner()
    sub = tmp_path / "sub.csv"
    result = runner.invoke(cli, ["predict", str(run_dir), "--images", str(held_out), "--out", str(sub)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["score", str(sub), "--truth", str(held_out)])
    assert result.exit_code == 0, result.output
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(value)


def test_scale_factor_option_predicts_at_that_factor_in_evaluate_predict_and_segment(run_and_data, tmp_path):
    """At half the chosen scale b_two's discs of 201 pixels cover about 50 at the working scale, under
    min_size 170, and are dropped; at the run's own factor (1) they are kept. Each command that
    predicts takes --scale-factor and predicts at it."""
    run_dir, data = run_and_data
    held_out = tmp_path / "held_out"
    shutil.copytree(data / "stage1_train" / "b_two", held_out / "b_two")
    runner = CliRunner()

    def evaluated(*factor):
        result = runner.invoke(cli, ["evaluate", str(run_dir), "--data", str(data), *factor])
        assert result.exit_code == 0, result.output
        return float(result.stdout.strip().splitlines()[-1])

    def predicted(*factor):
        sub = tmp_path / f"sub{len(factor)}.csv"
        result = runner.invoke(cli, ["predict", str(run_dir), "--images", str(held_out), "--out", str(sub), *factor])
        assert result.exit_code == 0, result.output
        assert result.stdout.strip().splitlines()[-1].startswith(f"{sub}: ")
        return int(result.stdout.strip().splitlines()[-1].split(": ")[1].split()[0])  # "{csv}: N nuclei in ..."

    def segmented(*factor):
        out = tmp_path / f"seg{len(factor)}"
        image = held_out / "b_two" / "images" / "b_two.png"
        result = runner.invoke(cli, ["segment", str(image), "--model", str(run_dir), "--out", str(out), *factor])
        assert result.exit_code == 0, result.output
        return pd.read_csv(out / "summary.csv")["nuclei"].tolist()

    assert evaluated() == pytest.approx(0.5) and evaluated("--scale-factor", "0.5") == 0.0
    assert predicted() == 2 and predicted("--scale-factor", "0.5") == 0
    assert segmented() == [2] and segmented("--scale-factor", "0.5") == [0]
    # The run folder is not changed: its own factor is still 1.
    assert load_config(run_dir / "config.json").predict.scale_factor == 1.0


def test_predict_names_its_default_csv_after_a_scale_factor_given(run_and_data, tmp_path, monkeypatch):
    run_dir, data = run_and_data
    monkeypatch.chdir(tmp_path)
    for factor, name in [([], "run.csv"), (["--scale-factor", "0.75"], "run-x0.75.csv")]:
        result = CliRunner().invoke(cli, ["predict", str(run_dir), "--images", str(data / "stage1_train"), *factor])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"{Path('submissions') / name}: ")
    assert sorted(p.name for p in (tmp_path / "submissions").iterdir()) == ["run-x0.75.csv", "run.csv"]


@pytest.mark.parametrize("value, message", [("3", "'3' is outside [0.5, 2]"), ("x", "'x' is not a number"),
                                            ("nan", "'nan' is outside [0.5, 2]")])
@pytest.mark.parametrize("command", ["evaluate", "predict", "segment"])
def test_a_bad_scale_factor_is_one_usage_line_before_anything_runs(run_and_data, tmp_path, command, value, message):
    run_dir, data = run_and_data
    args = {"evaluate": [str(run_dir), "--data", str(data)],
            "predict": [str(run_dir), "--images", str(data / "stage1_train"), "--out", str(tmp_path / "s.csv")],
            "segment": [str(data / "stage1_train" / "b_two" / "images"), "--model", str(run_dir),
                        "--out", str(tmp_path / "out")]}[command]
    result = CliRunner().invoke(cli, [command, *args, "--scale-factor", value])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--scale-factor" in lines[0] and message in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]  # nothing written


def test_evaluate_command_prints_types_then_the_score(run_and_data, tmp_path):
    run_dir, data = run_and_data
    out = tmp_path / "per_image.csv"
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--data", str(data), "--tta", "--per-image", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == "fluorescence: 0.500000 (2 images)"
    assert lines[-1] == "0.500000"
    assert out.read_text().startswith("ImageId,score,")


def test_validate_takes_the_flat_folder_predict_took(run_and_data, tmp_path):
    # Regression: predict read flat folders but validate needed stage layout.
    run_dir, data = run_and_data
    flat = tmp_path / "flat"
    flat.mkdir()
    for image_id in ("a_one", "b_two", "c_none"):
        shutil.copy(data / "stage1_train" / image_id / "images" / f"{image_id}.png", flat / f"{image_id}.png")
    sub = tmp_path / "sub.csv"
    runner = CliRunner()
    assert runner.invoke(cli, ["predict", str(run_dir), "--images", str(flat), "--out", str(sub)]).exit_code == 0
    result = runner.invoke(cli, ["validate", str(sub), "--images", str(flat)])
    assert result.exit_code == 0, result.output
    (flat / "a_one.png").unlink()
    result = runner.invoke(cli, ["validate", str(sub), "--images", str(flat)])
    assert result.exit_code == 3
    assert "a_one" in result.stderr


def test_evaluate_reports_groups_and_the_densest_images(run_and_data):
    run_dir, data = run_and_data
    value, table = evaluate(run_dir, data, progress=False)
    # three images, all fluorescence: too few for two groups, so one group named by the type
    assert list(table["group"]) == ["fluorescence", "fluorescence"]
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--data", str(data)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[-3:] == [
        "group fluorescence (fluorescence): 0.500000 (2 images)",
        "fluorescence: 0.500000 (2 images)",
        "0.500000",
    ]
    # What computed the scores first: the same run can compute in another format on another CPU.
    assert lines[0] in ("network: keras, float32", "network: openvino, float32", "network: openvino, bfloat16",
                        "network: onnx, float32")
    assert lines[1] == "densest validation images of each group, true nuclei found at IoU 0.5:"
    n_true = dict(zip(table["ImageId"], table["n_true"]))
    found = dict(zip(table["ImageId"], table["tp_50"]))
    densest_first = sorted(n_true, key=lambda i: (-n_true[i], i))
    for line, image_id in zip(lines[2:4], densest_first):
        assert line.startswith(f"  {image_id} (fluorescence): found {found[image_id]}/{n_true[image_id]}, ")


def test_score_summary_rows_by_group_then_type_then_all():
    import pandas as pd

    from dsb.workflows.evaluate import densest, score_summary

    table = pd.DataFrame({
        "ImageId": ["a", "b", "c", "d"],
        "score": [0.2, 0.4, 0.6, 1.0],
        "type": ["fluorescence", "fluorescence", "fluorescence", "stained"],
        "group": ["f-1", "f-2", "f-2", "s"],
        "n_true": [3, 9, 1, 9],
        "tp_50": [1, 5, 1, 9],
        "n_pred": [2, 6, 1, 9],
    })
    summary = score_summary(table)
    assert list(zip(summary["level"], summary["name"], summary["images"])) == [
        ("group", "f-1", 1), ("group", "f-2", 2), ("group", "s", 1),
        ("type", "fluorescence", 3), ("type", "stained", 1), ("all", "all", 4),
    ]
    assert summary["score"].tolist() == pytest.approx([0.2, 0.5, 1.0, 0.4, 1.0, 0.55])
    top = densest(table, 2)
    assert top["ImageId"].tolist() == ["b", "d"] and top["found"].tolist() == [5, 9]
    assert "unsure" not in summary  # no diameters in the table


def test_the_yardstick_counts_unsure_estimates_and_silent_misreads():
    import pandas as pd

    from dsb.workflows.evaluate import misread, score_summary, summary_lines, sweep_lines

    table = pd.DataFrame({
        "ImageId": ["a", "b", "c", "d", "e"],
        "score": [0.5, 0.0, 0.1, 0.9, 0.0],
        "type": ["brightfield"] * 3 + ["fluorescence"] * 2,
        "group": ["b"] * 3 + ["f"] * 2,
        "n_true": [9, 9, 9, 9, 0], "tp_50": [5, 0, 1, 9, 0], "n_pred": [5, 2, 3, 9, 1],
        # a: right; b: 143 pixels for 10-pixel nuclei, called sure (silent); c: as wrong but flagged;
        # d: 1.9 times the median, within the ratio; e: no true nuclei, nothing to compare with.
        "diameter": [11.0, 143.0, 140.0, 38.0, 20.0],
        "true_diameter": [10.0, 10.0, 10.0, 20.0, float("nan")],
        "sure": [True, True, False, True, True],
    })
    assert misread(table).tolist() == [False, True, False, False, False]
    summary = score_summary(table).set_index(["level", "name"])
    assert summary.loc[("group", "b"), ["unsure", "misread"]].tolist() == [1, 1]
    assert summary.loc[("all", "all"), ["unsure", "misread"]].tolist() == [1, 1]
    assert "diameter: estimate unsure on 1, sure but over 2x off on 1 of 5 images" in "\n".join(summary_lines(table))
    sweep = score_summary(table).assign(zoom=1.0)
    assert sweep_lines(sweep)[0].endswith("; estimate unsure on 1, sure but over 2x off on 1")


def test_the_yardstick_says_why_true_nuclei_were_missed(run_and_data):
    import pandas as pd

    from dsb.workflows.evaluate import MISS_COLUMNS, score_summary, summary_lines, sweep_lines

    run_dir, data = run_and_data
    _, table = evaluate(run_dir, data, progress=False)
    causes = table[list(MISS_COLUMNS[:-1])]
    # Each true nucleus missed at IoU 0.5 has exactly one cause.
    assert (causes.sum(axis=1) == table["n_true"] - table["tp_50"]).all()
    assert (table["miss_small"] <= causes.sum(axis=1)).all()

    made = pd.DataFrame({
        "ImageId": ["a", "b"], "score": [0.2, 0.9], "type": ["fluorescence"] * 2, "group": ["f"] * 2,
        "n_true": [30, 10], "tp_50": [14, 10], "n_pred": [20, 10],
        "miss_absent": [4, 0], "miss_merged": [11, 0], "miss_split": [0, 0], "miss_outline": [1, 0],
        "miss_small": [13, 0],
    })
    summary = score_summary(made)
    assert summary.loc[summary["level"] == "all", list(MISS_COLUMNS)].values.tolist() == [[4, 11, 0, 1, 13]]
    lines = summary_lines(made)
    assert lines[1].endswith("found 14/30, predicted 20, score 0.2000; missed 4 absent, 11 merged, 1 outline (13 small)")
    assert lines[2].endswith("found 10/10, predicted 10, score 0.9000")  # nothing missed, nothing said
    assert "true nuclei missed 4 absent, 11 merged, 1 outline (13 small); small: under 0.25 of their image's " \
           "median area" in lines
    assert sweep_lines(summary.assign(zoom=1.0))[0] == (
        "zoom 1: 0.5500, fluorescence 0.5500; found 24/40 at IoU 0.5; missed 4 absent, 11 merged, 1 outline (13 small)")


def test_zoom_pair_keeps_every_nucleus_at_its_new_size():
    import numpy as np

    from dsb.inference.scale import median_diameter
    from dsb.io.synthetic import nuclei_field
    from dsb.workflows.evaluate import zoom_pair

    image, labels = nuclei_field((96, 128), 16, seed=4)
    for zoom in (0.5, 2.0, 3.0):
        big, big_labels = zoom_pair(image, labels, zoom)
        assert big.shape == big_labels.shape == (round(96 * zoom), round(128 * zoom)) and big.dtype == np.uint8
        assert big_labels.max() == labels.max()
        assert median_diameter(big_labels) == pytest.approx(zoom * median_diameter(labels), rel=0.1)
    rgb, _ = zoom_pair(np.dstack([image] * 3), labels, 2)
    assert rgb.shape == (192, 256, 3)
    with pytest.raises(ValueError, match="greater than 0"):
        zoom_pair(image, labels, 0)


def test_magnification_sweep_scores_each_zoom_and_the_command_prints_it(run_and_data, tmp_path):
    """The threshold stand-in network finds discs at any size once the scale is given by the
    estimate, so the sweep has a row per zoom and level; the command says how far each is from 1x."""
    from dsb.workflows.evaluate import magnification_sweep

    run_dir, data = run_and_data
    sweep = magnification_sweep(run_dir, data, (1, 2), progress=False)
    overall = sweep[sweep["level"] == "all"].set_index("zoom")
    assert list(overall.index) == [1.0, 2.0]
    assert overall.loc[1.0, "score"] == pytest.approx(evaluate(run_dir, data, progress=False)[0])
    assert (overall["true"] == overall.loc[1.0, "true"]).all()  # the same nuclei at every zoom
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--data", str(data), "--zoom", "1,2",
                                      "--per-image", str(tmp_path / "sweep.csv")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("network: ")
    assert lines[1].startswith("zoom 1: ") and lines[2].startswith("zoom 2: ") and "against 1x" in lines[2]
    assert float(lines[-1]) == pytest.approx(overall["score"].min(), abs=1e-6)
    assert len(__import__("pandas").read_csv(tmp_path / "sweep.csv")) == len(sweep)
    bad = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--data", str(data), "--zoom", "1,x"])
    assert bad.exit_code == 2 and "comma-separated" in bad.stderr
    far = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--data", str(data), "--zoom", "1,40"])
    assert far.exit_code == 2 and "'1,40': every zoom must be between 0.05 and 20" in far.stderr
