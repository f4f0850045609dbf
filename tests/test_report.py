"""dsb report: overlay colours, per-threshold precision, curves, and the HTML page (rendered in Chromium)."""

from __future__ import annotations

import base64
import functools
import io
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import (
    CONFIG,
    make_discs,
    make_threshold_run,
    true_and_predicted_discs,
    write_disc_stage,
)
from PIL import Image

from dsb.core.config import Config, PostprocessConfig, save_config
from dsb.core.errors import BadDataError
from dsb.kaggle.metric import THRESHOLDS, image_score
from dsb.kaggle.rle import labels_to_rles
from dsb.kaggle.submission import score_submission, write_submission
from dsb.workflows.drawing import OVERLAY_COLOURS, compare_overlay
from dsb.workflows.report import (
    SECTIONS,
    build_report,
    read_history,
    read_tuning,
    threshold_precisions,
    training_figure,
    tuning_figure,
)

# ---------------------------------------------------------------- pure pieces


def test_threshold_precisions_agree_with_the_metric():
    true, pred = true_and_predicted_discs()
    precisions = threshold_precisions(true, pred)
    assert precisions.shape == THRESHOLDS.shape
    assert precisions.mean() == pytest.approx(image_score(true, pred).score)
    assert precisions[0] == pytest.approx(2 / 4)  # 2 TP, 1 FP, 1 FN
    assert (np.diff(precisions) <= 0).all()
    assert threshold_precisions(true, true).tolist() == [1.0] * len(THRESHOLDS)
    assert threshold_precisions(true, None).tolist() == [0.0] * len(THRESHOLDS)


def history_frame(epochs=6) -> pd.DataFrame:
    epoch = np.arange(epochs)
    return pd.DataFrame({
        "epoch": epoch,
        "loss": 1.0 / (epoch + 1),
        "val_loss": 1.2 / (epoch + 1) + 0.05,
        "iou": 1 - 0.5 / (epoch + 1),
        "val_iou": 1 - 0.6 / (epoch + 1),
        "learning_rate": 1e-3 * 0.5**epoch,
    })


def tuning_frame() -> pd.DataFrame:
    rows = []
    for marker in (0.4, 0.5, 0.6):
        for mask in (0.3, 0.5):
            for min_size in (8, 16):
                score = 0.5 + 0.1 * (marker == 0.5) + 0.05 * (mask == 0.5) - 0.01 * (min_size == 16)
                rows.append({"marker_threshold": marker, "mask_threshold": mask, "border_threshold": 0.4,
                             "min_size": min_size, "score": score})
    return pd.DataFrame(rows)


@functools.cache
def search_table() -> pd.DataFrame:
    """What dsb tune writes to tuning.csv: a coordinate search on near-perfect probabilities."""
    from skimage.segmentation import find_boundaries

    from dsb.workflows.tune import search_postprocess

    truth = {f"i{k}": sample_labels(k) for k in range(4)}
    probabilities = {
        i: np.stack([(t > 0) * 0.9 + 0.05, find_boundaries(t, mode="inner") * 0.9 + 0.02], axis=-1).astype(np.float32)
        for i, t in truth.items()
    }
    grid = {"marker_threshold": (0.3, 0.5, 0.7, 0.96), "mask_threshold": (0.3, 0.5, 0.97), "min_size": (0, 12, 200),
            "flood": ("probability", "distance")}
    types = {i: ("fluorescence", "brightfield")[k % 2] for k, i in enumerate(truth)}
    _, table = search_postprocess(probabilities, truth, PostprocessConfig(), image_types=types, grid=grid, rounds=1)
    return table


def test_training_figure_draws_a_panel_per_quantity():
    fig = training_figure(history_frame())
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["loss", "iou", "learning_rate"]
    loss_axes = fig.axes[0]
    assert [line.get_label() for line in loss_axes.get_lines()] == ["training", "validation"]
    assert fig.axes[2].get_yscale() == "log"


def test_tuning_figure_heatmap_holds_the_best_score_per_pair():
    fig = tuning_figure(tuning_frame())
    heat = fig.axes[0]
    assert (heat.get_ylabel(), heat.get_xlabel()) == ("marker_threshold", "mask_threshold")
    grid = heat.images[0].get_array()
    assert grid.shape == (3, 2)
    assert grid[1, 1] == pytest.approx(0.65)  # marker 0.5, mask 0.5, the better min_size
    assert grid.max() == pytest.approx(0.65)
    # A curve per varied parameter (border_threshold is constant: none for it).
    curves = [ax for ax in fig.axes[1:] if ax.get_visible() and ax.get_lines()]
    assert [ax.get_xlabel() for ax in curves] == ["marker_threshold", "mask_threshold", "min_size"]
    np.testing.assert_allclose(curves[0].get_lines()[0].get_ydata(), [0.55, 0.65, 0.55])
    only_one = tuning_frame().query("marker_threshold == 0.5 and mask_threshold == 0.5 and min_size == 8")
    assert tuning_figure(only_one) is None


def test_tuning_figure_of_a_coordinate_search():
    table = search_table()
    fig = tuning_figure(table)
    assert all(not ax.images for ax in fig.axes)  # a sparse cross of the grid: curves, no heatmap
    curves = {ax.get_xlabel(): ax for ax in fig.axes if ax.get_visible() and ax.get_lines()}
    assert list(curves) == ["marker_threshold", "mask_threshold", "min_size", "flood"]
    labels = [line.get_label() for line in curves["marker_threshold"].get_lines()]
    assert labels == ["all images", "brightfield", "fluorescence", "kept"]
    assert [t.get_text() for t in curves["flood"].get_xticklabels()] == ["distance", "probability"]
    kept = table[table["best"]].iloc[0]
    assert curves["marker_threshold"].get_lines()[-1].get_xdata()[0] == kept["marker_threshold"]


def test_tuning_figure_draws_the_scale_factors_tried():
    # dsb tune --scale-factors: one search per factor, one table; the factor gets a curve of its own.
    one = search_table()
    other = one.assign(score=one["score"] - 0.1, best=False)
    table = pd.concat([one.assign(scale_factor=1.0), other.assign(scale_factor=1.5)], ignore_index=True)
    curves = {ax.get_xlabel(): ax for ax in tuning_figure(table).axes if ax.get_visible() and ax.get_lines()}
    assert list(curves)[-1] == "scale_factor"
    best = curves["scale_factor"].get_lines()[0]
    np.testing.assert_allclose(best.get_ydata(), [one["score"].max(), one["score"].max() - 0.1])
    assert "scale_factor" not in {ax.get_xlabel() for ax in tuning_figure(one.assign(scale_factor=1.0)).axes}


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("epoch,val_loss\n1,0.5\n", "no 'loss' column"),
    ("epoch,loss\n", "header but no rows"),
    ("epoch,loss\n1,abc\n", "'loss' holds no numbers"),
])
def test_read_history_names_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "history.csv"
    path.write_text(text)
    with pytest.raises(BadDataError, match=message) as info:
        read_history(path)
    assert str(info.value).startswith(str(path))


def test_read_tuning_needs_a_score(tmp_path):
    path = tmp_path / "tuning.csv"
    path.write_text("marker_threshold,value\n0.5,1\n")
    with pytest.raises(BadDataError, match="no 'score' column"):
        read_tuning(path)


# ---------------------------------------------------------------- a whole report on synthetic data


N_IMAGES = 10


def sample_labels(k: int) -> np.ndarray:
    rng = np.random.default_rng(k)
    centres = [(int(r), int(c)) for r, c in rng.integers(10, 54, size=(4, 2))]
    return make_discs((64, 64), centres, 6)


def predicted_labels(k: int) -> np.ndarray:
    """Worse with k: the discs drift by k // 3 pixels, and every third image loses one and gains one."""
    true = sample_labels(k)
    shift = k // 3
    pred = np.roll(true, (shift, shift), axis=(0, 1))
    if k % 3 == 2:
        pred[pred == pred.max()] = 0
        pred[2:6, 2:6] = pred.max() + 1
    return pred


def write_stage(folder, ids):
    """A stage1_train-layout folder: half fluorescence, half brightfield."""
    for k, image_id in enumerate(ids):
        labels = sample_labels(k)
        nuclei = labels > 0
        grey = np.where(nuclei, 200, 20) if k % 2 == 0 else np.where(nuclei, 70, 230)
        (folder / image_id / "images").mkdir(parents=True)
        (folder / image_id / "masks").mkdir()
        Image.fromarray(np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)).save(
            folder / image_id / "images" / f"{image_id}.png")
        for n in range(1, labels.max() + 1):
            Image.fromarray(((labels == n) * 255).astype(np.uint8)).save(folder / image_id / "masks" / f"m{n}.png")


def write_run(run):
    run.mkdir(parents=True)
    history_frame().to_csv(run / "history.csv", index=False)
    search_table().to_csv(run / "tuning.csv", index=False, float_format="%.6g")
    save_config(Config(), run / "config.json")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    ids = [f"{k:02d}cafe{k:02d}" for k in range(N_IMAGES)]
    write_stage(root / "stage", ids)
    # A run folder whose name needs escaping in HTML.
    run = root / 'run <b>&"x"'
    write_run(run)
    rows = []
    for k, image_id in enumerate(ids):
        if k == N_IMAGES - 1:
            continue  # the submission forgets one image: it scores 0
        rles = labels_to_rles(predicted_labels(k))
        rows += [(image_id, rle) for rle in rles] or [(image_id, "")]
    submission = root / "submission.csv"
    write_submission(pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"]), submission)
    out = build_report(run, submission=submission, truth=root / "stage", out=root / "out" / "report.html")
    return {"root": root, "ids": ids, "run": run, "submission": submission, "out": out,
            "html": out.read_text(encoding="utf-8")}


def section(html: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', html, re.S)
    assert match, f"no section {anchor}"
    return match.group(1)


def embedded_pngs(html: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
            for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def test_report_has_every_section_and_is_self_contained(synthetic):
    html = synthetic["html"]
    for anchor, heading in SECTIONS:
        assert f'<section id="{anchor}"><h2>{heading}</h2>' in html
        if anchor != "scores":  # which says that one image has no prediction
            assert 'class="missing"' not in section(html, anchor), anchor
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # no external resource, no network
    assert "<script" not in html and "<link" not in html
    assert "<b>" not in html and "run &lt;b&gt;&amp;&quot;x&quot;" in html  # the run name, escaped
    assert not [p for p in synthetic["out"].parent.iterdir() if p.name != "report.html"]  # no temporary left


def test_report_scores_agree_with_dsb_score(synthetic):
    score, table = score_submission(synthetic["submission"], synthetic["root"] / "stage")
    scores = section(synthetic["html"], "scores")
    assert f"{score:.4f}" in scores
    assert f"1 image of the truth has no row in the submission and score 0: {synthetic['ids'][-1]}" in scores
    assert "fluorescence" in scores and "brightfield" in scores
    for t in THRESHOLDS:
        assert f"<td class=t>{t:.2f}</td>" in scores
    per_image = section(synthetic["html"], "per-image")
    rows = re.findall(r"<tr><td class=t>([^<]+)</td>", per_image)
    worst_first = table.sort_values(["score", "ImageId"])["ImageId"].tolist()
    assert rows == worst_first


def test_report_draws_the_worst_and_best_images(synthetic):
    overlays = section(synthetic["html"], "overlays")
    assert overlays.count("<figure>") == 8
    for name in OVERLAY_COLOURS:
        assert name in overlays  # the legend
    images = embedded_pngs(overlays)
    assert len(images) == 8
    # The first is the worst: the image the submission forgot, every nucleus missed, pixel for pixel.
    worst_id = synthetic["ids"][-1]
    assert overlays.index(worst_id) < overlays.index("<h3>Best")
    stage = synthetic["root"] / "stage" / worst_id
    raw = np.asarray(Image.open(stage / "images" / f"{worst_id}.png"))
    true = sample_labels(N_IMAGES - 1)
    np.testing.assert_array_equal(images[0], compare_overlay(raw, true, np.zeros_like(true)))
    assert (images[0] != images[0][0, 0]).any(axis=2).mean() > 0.05  # not blank


def test_report_training_and_tuning_figures_decode(synthetic):
    for anchor in ("training", "tuning"):
        images = embedded_pngs(section(synthetic["html"], anchor))
        assert len(images) == 1 and images[0].std() > 0
    tuning = section(synthetic["html"], "tuning")
    kept = search_table()[search_table()["best"]].iloc[0]
    assert f"kept (score {kept['score']:.4f}): marker_threshold={kept['marker_threshold']}" in tuning


def test_report_with_a_solution_csv_and_an_images_folder(synthetic, tmp_path):
    rows = []
    for k, image_id in enumerate(synthetic["ids"]):
        rows += [(image_id, rle, 64, 64, "Public") for rle in labels_to_rles(sample_labels(k))]
    rows.append(("ignored", "1 1", 8, 8, "Ignored"))
    solution = tmp_path / "solution.csv"
    pd.DataFrame(rows, columns=["ImageId", "EncodedPixels", "Height", "Width", "Usage"]).to_csv(solution, index=False)
    html = build_report(synthetic["run"], submission=synthetic["submission"], truth=solution,
                        images_dir=synthetic["root"] / "stage", out=tmp_path / "r.html").read_text()
    score, _ = score_submission(synthetic["submission"], solution)
    assert f"{score:.4f}" in section(html, "scores")
    assert "brightfield" in section(html, "scores")
    assert "not found" not in section(html, "overlays")
    # Without images the overlays are drawn on black, and the page says so.
    html = build_report(synthetic["run"], submission=synthetic["submission"], truth=solution,
                        out=tmp_path / "r2.html").read_text()
    assert "were not found" in section(html, "overlays")
    assert "unknown" in section(html, "scores")


def test_report_without_inputs_says_what_is_missing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    html = build_report(run, out=tmp_path / "r.html").read_text()
    for anchor in ("training", "scores", "per-image", "overlays", "tuning"):
        assert 'class="missing"' in section(html, anchor), anchor
    assert "history.csv does not exist" in section(html, "training")
    assert "tuning.csv does not exist" in section(html, "tuning")
    assert "--submission and --truth" in section(html, "scores")


def test_report_bad_inputs(tmp_path, synthetic):
    with pytest.raises(BadDataError, match="run folder not found"):
        build_report(tmp_path / "nope", out=tmp_path / "r.html")
    run = tmp_path / "run"
    write_run(run)
    (run / "history.csv").write_text("epoch,val_loss\n1,2\n")
    with pytest.raises(BadDataError, match="history.csv: has no 'loss' column"):
        build_report(run, out=tmp_path / "r.html")
    (run / "history.csv").unlink()
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId,EncodedPixels\nnot-an-image,1 1\n")
    with pytest.raises(BadDataError, match="bad.csv.*not-an-image"):
        build_report(run, submission=bad, truth=synthetic["root"] / "stage", out=tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


# ---------------------------------------------------------------- rendered by a real browser


def test_report_renders_in_headless_chromium(synthetic, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed")
    screenshot = tmp_path / "report.png"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--enable-logging=stderr", "--v=0", "--hide-scrollbars"]
    url = synthetic["out"].resolve().as_uri()

    shot = subprocess.run(flags + [f"--user-data-dir={tmp_path / 'profile1'}", f"--screenshot={screenshot}",
                                   "--window-size=1280,2000", url],
                          capture_output=True, text=True, timeout=120)
    dom = subprocess.run(flags + [f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)

    for result in (shot, dom):
        assert result.returncode == 0, result.stderr[-2000:]
        # Console messages (errors, uncaught exceptions) are logged as CONSOLE lines.
        assert not [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    for anchor, heading in SECTIONS:
        assert re.search(rf'<section id="{anchor}"><h2>{re.escape(heading)}</h2>', dom.stdout), heading
    pixels = np.asarray(Image.open(screenshot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 10  # not blank
    assert (pixels < 128).any(axis=2).mean() > 0.01  # text and figures drawn


def test_report_reads_a_solution_with_overlapping_masks_as_dsb_score_does(tmp_path):
    # Regression: report refused overlapping truth masks that dsb score settles (earlier mask wins).
    from dsb.workflows.report import _load_truth

    solution = tmp_path / "solution.csv"
    solution.write_text("ImageId,EncodedPixels,Height,Width\na,1 3,4,4\na,3 2,4,4\n")
    submission = tmp_path / "sub.csv"
    submission.write_text("ImageId,EncodedPixels\na,1 3\n")
    labels, shapes, _ = _load_truth(solution)
    assert shapes == {"a": (4, 4)}
    assert sorted(np.unique(labels["a"])) == [0, 1, 2]
    assert score_submission(submission, solution)[0] == 0.5


def test_report_without_a_submission_scores_the_runs_validation_groups(tmp_path):
    # Regression: without --submission the score sections were empty notes.

    from dsb.workflows.evaluate import evaluate

    data = tmp_path / "data"
    write_disc_stage(data / "stage1_train", masks=True)
    run = make_threshold_run(tmp_path / "run", CONFIG.replace(validation_ids=("a_one", "b_two")))
    html = build_report(run, data_dir=data, out=tmp_path / "r.html").read_text(encoding="utf-8")
    scores = section(html, "scores")
    assert "Per imaging-experiment group" in scores and "2 validation images" in scores
    value, _ = evaluate(run, data, progress=False)
    assert f"{value:.4f}" in scores
    assert "a_one" in section(html, "per-image") and "<figure>" in section(html, "overlays")
    assert "(fluorescence, fluorescence): score" in section(html, "overlays")  # group, type


def test_report_of_a_run_fine_tuned_on_annotated_images_of_ones_own(tmp_path):
    # Regression: the report looked for stage1_train/ under --data; a folder of one's own
    # annotated images (as `dsb train --init` and `dsb evaluate` take it) was refused.
    import tifffile
    from conftest import disc_image, truth_labels

    from dsb.io.annotations import find_samples

    mine = tmp_path / "my_images"
    mine.mkdir()
    for image_id in ("a_one", "b_two"):
        labels = truth_labels(image_id)
        Image.fromarray(disc_image(labels)).save(mine / f"{image_id}.png")
        tifffile.imwrite(mine / f"{image_id}_masks.tif", labels.astype(np.uint16))
    ids = tuple(sample.id for sample in find_samples(mine))
    run = make_threshold_run(tmp_path / "run", CONFIG.replace(validation_ids=ids))
    html = build_report(run, data_dir=mine, out=tmp_path / "r.html").read_text(encoding="utf-8")
    assert "2 validation images" in section(html, "scores")
    overlays = section(html, "overlays")
    assert "<figure>" in overlays and "were not found" not in overlays  # drawn on the images themselves
