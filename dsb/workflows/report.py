"""A self-contained HTML report of a run: curves, scores, the worst and best images, tuning.

:func:`build_report` writes one HTML file with every figure embedded as a
base64 PNG (plots drawn by matplotlib's Agg renderer without pyplot's global
state, overlays encoded pixel for pixel), no script, no external style sheet
and no network access, so the file can be mailed or archived as is.
Each section says what it is missing instead of failing when a run has no
``history.csv`` or ``tuning.csv`` or no submission and truth were given.

The figure pieces are pure functions on arrays and DataFrames
(:func:`threshold_precisions`, :func:`training_figure`,
:func:`tuning_figure`) so they can be tested alone; the overlays are drawn by
:func:`dsb.workflows.drawing.compare_overlay`.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from dsb.core.atomic import atomic_path
from dsb.core.config import PostprocessConfig, load_config
from dsb.core.errors import BadDataError
from dsb.inference.preprocess import image_type
from dsb.io.images import image_path, read_image
from dsb.kaggle.metric import THRESHOLDS, image_score, score_labels
from dsb.kaggle.submission import load_truth, read_submission, submission_to_labels
from dsb.network.engines import load_network
from dsb.workflows.drawing import OVERLAY_COLOURS, compare_overlay

__all__ = [
    "SECTIONS",
    "threshold_precisions",
    "read_history",
    "read_tuning",
    "training_figure",
    "tuning_figure",
    "build_report",
]

# (anchor, heading) of every section, in page order.
SECTIONS = (
    ("run", "Run"),
    ("training", "Training curves"),
    ("scores", "Scores"),
    ("per-image", "Per-image scores"),
    ("overlays", "Worst and best images"),
    ("tuning", "Post-processing tuning"),
)
_N_SHOWN = 4  # worst and best images drawn
_LR_COLUMNS = ("lr", "learning_rate")


# ---------------------------------------------------------------- pure pieces


def threshold_precisions(true_labels: np.ndarray, pred_labels: np.ndarray | None) -> np.ndarray:
    """The competition's precision TP / (TP + FP + FN) at each IoU threshold.

    Parameters
    ----------
    true_labels : (H, W) ndarray of int
    pred_labels : (H, W) ndarray of int, or None
        None is an image the submission has no row for: 0 at every threshold,
        as :func:`dsb.kaggle.metric.score_labels` counts it.

    Returns
    -------
    (len(THRESHOLDS),) ndarray of float
        One value per threshold of :data:`dsb.kaggle.metric.THRESHOLDS`; their mean is
        the image's score.
    """

    if pred_labels is None:
        return np.zeros(len(THRESHOLDS))
    return np.asarray(image_score(true_labels, pred_labels).precision, dtype=np.float64)


def read_history(path) -> pd.DataFrame:
    """Read a run's ``history.csv``: one row per epoch, numeric columns.

    Raises
    ------
    BadDataError
        When the file is not a CSV with a numeric ``loss`` column.
    """
    frame = _read_csv(path)
    if "loss" not in frame:
        raise BadDataError(f"has no 'loss' column (columns: {', '.join(map(str, frame.columns))})", path=path)
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    if numeric["loss"].isna().all():
        raise BadDataError("column 'loss' holds no numbers", path=path)
    if "epoch" not in numeric:
        numeric.insert(0, "epoch", np.arange(1, len(numeric) + 1))
    return numeric.dropna(axis=1, how="all")


def read_tuning(path) -> pd.DataFrame:
    """Read a run's ``tuning.csv``: one row per post-processing setting tried, with a ``score``.

    Rows without a numeric score are left out.

    Raises
    ------
    BadDataError
        When the file has no numeric ``score`` column.
    """
    frame = _read_csv(path)
    if "score" not in frame:
        raise BadDataError(f"has no 'score' column (columns: {', '.join(map(str, frame.columns))})", path=path)
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    if frame["score"].isna().all():
        raise BadDataError("column 'score' holds no numbers", path=path)
    # A setting that could not be scored has no place on a curve of scores.
    return frame.dropna(subset=["score"]).reset_index(drop=True)


def _read_csv(path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise BadDataError("is empty", path=path) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise BadDataError(f"is not a readable CSV ({str(exc).splitlines()[0]})", path=path) from None
    if frame.empty:
        raise BadDataError("has a header but no rows", path=path)
    return frame


def training_figure(history: pd.DataFrame):
    """Loss and metric curves, training and validation, one panel per quantity.

    Parameters
    ----------
    history : DataFrame
        As from :func:`read_history`: ``epoch`` and numeric columns; ``val_x``
        is drawn in the panel of ``x``; learning rates on a log scale.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    columns = [c for c in history.columns if c != "epoch"]
    names = list(dict.fromkeys(c[4:] if c.startswith("val_") else c for c in columns))
    names.sort(key=lambda n: (n != "loss", n in _LR_COLUMNS))  # loss first, learning rate last
    n_cols = min(3, len(names))
    n_rows = -(-len(names) // n_cols)
    fig = Figure(figsize=(4.2 * n_cols, 3.0 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        for column, style in ((name, "-"), (f"val_{name}", "--")):
            if column in history:
                label = "validation" if column.startswith("val_") else "training"
                ax.plot(history["epoch"], history[column], style, marker="." if len(history) < 30 else None,
                        label=label)
        if name in _LR_COLUMNS and (history[name] > 0).all():
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return fig


def _tuning_parameters(tuning: pd.DataFrame) -> list[str]:
    """Post-processing parameters that take more than one value in the search (and the scale
    factor, when ``dsb tune --scale-factors`` tried several)."""
    import dataclasses

    known = [f.name for f in dataclasses.fields(PostprocessConfig)] + ["scale_factor"]
    varied = [name for name in known if name in tuning and tuning[name].nunique() > 1]
    # The two thresholds that matter most lead, for the heatmap.
    lead = [n for n in ("marker_threshold", "mask_threshold") if n in varied]
    return lead + [n for n in varied if n not in lead]


def _best_row(tuning: pd.DataFrame) -> pd.Series:
    """The setting the search kept: its ``best`` row, else the top score."""
    if "best" in tuning:
        chosen = tuning["best"].astype(str).str.lower() == "true"
        if chosen.any():
            return tuning[chosen].iloc[0]
    return tuning.loc[tuning["score"].idxmax()]


def _heat_grid(tuning: pd.DataFrame, rows: str, cols: str) -> pd.DataFrame | None:
    """Best score per (rows, cols) pair, or None when the search did not fill most of that grid.

    ``dsb tune`` searches one parameter at a time, which fills only a cross of
    the grid; a heatmap of that would be mostly holes, and the curves say it
    better.
    """
    if not all(pd.api.types.is_numeric_dtype(tuning[c]) for c in (rows, cols)):
        return None
    grid = tuning.pivot_table(index=rows, columns=cols, values="score", aggfunc="max")
    if min(grid.shape) < 2 or grid.notna().to_numpy().mean() < 0.75:
        return None
    return grid


def tuning_figure(tuning: pd.DataFrame):
    """The post-processing search: a curve per parameter, and a heatmap where the grid is dense.

    Each curve shows, at each value of one parameter, the best score over
    all settings tried with that value (solid), the score per image type of
    that same setting (dashed, from ``score_{type}`` columns), and the value
    finally kept (dotted line). When the first two varied parameters
    (``marker_threshold`` and ``mask_threshold`` when both vary) were searched
    on a mostly full grid, a heatmap of the best score per pair comes first.

    Parameters
    ----------
    tuning : DataFrame
        As from :func:`read_tuning`: ``score``, one column per
        :class:`~dsb.core.config.PostprocessConfig` field searched, and optionally
        ``score_{type}`` and ``best`` (as :func:`dsb.workflows.tune.search_postprocess`
        writes them).

    Returns
    -------
    matplotlib.figure.Figure or None
        None when no parameter takes more than one value.
    """
    from matplotlib.figure import Figure

    params = _tuning_parameters(tuning)
    if not params:
        return None
    best = _best_row(tuning)
    by_type = [c for c in tuning.columns if c.startswith("score_") and pd.api.types.is_numeric_dtype(tuning[c])]
    grid = _heat_grid(tuning, params[0], params[1]) if len(params) >= 2 else None
    n_panels = len(params) + (grid is not None)
    n_cols = min(3, n_panels)
    n_rows = -(-n_panels // n_cols)
    fig = Figure(figsize=(4.4 * n_cols, 3.4 * n_rows), layout="constrained")
    axes = list(fig.subplots(n_rows, n_cols, squeeze=False).ravel())
    if grid is not None:
        ax = axes.pop(0)
        image = ax.imshow(grid.to_numpy(), origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns], rotation=45)
        ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index])
        ax.set_xlabel(grid.columns.name)
        ax.set_ylabel(grid.index.name)
        ax.set_title("best score")
        top = np.unravel_index(np.nanargmax(grid.to_numpy()), grid.shape)
        ax.plot(top[1], top[0], marker="*", color="white", markersize=14, markeredgecolor="black")
        fig.colorbar(image, ax=ax, shrink=0.9)
    for i, (ax, name) in enumerate(zip(axes, params)):
        rows = tuning.loc[tuning.groupby(name)["score"].idxmax()]
        numeric = pd.api.types.is_numeric_dtype(tuning[name])
        if numeric:
            x = rows[name].to_numpy(dtype=float)
            kept = float(best[name])
        else:
            # Categories (flood): evenly spaced, named on the axis.
            x = np.arange(len(rows))
            ax.set_xticks(x, [str(v) for v in rows[name]])
            kept = float(np.flatnonzero(rows[name].astype(str).to_numpy() == str(best[name]))[0])
        ax.plot(x, rows["score"], "o-", linewidth=2, color="black", label="all images")
        for column in by_type:
            ax.plot(x, rows[column], ".--", linewidth=1, label=column[len("score_"):])
        ax.axvline(kept, color="grey", linestyle=":", label="kept")
        ax.set_xlabel(name)
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize="small")
    for ax in axes[len(params):]:
        ax.set_visible(False)
    return fig


def _threshold_figure(per_threshold: pd.DataFrame):
    """Mean precision against IoU threshold, one line per image type and all images."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    for column in per_threshold.columns:
        ax.plot(per_threshold.index, per_threshold[column], marker="o",
                linewidth=2.5 if column == "all" else 1.2, label=column)
    ax.set_xlabel("IoU threshold")
    ax.set_ylabel("precision TP / (TP + FP + FN)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


# ---------------------------------------------------------------- evaluation


def _load_truth(truth: Path):
    """(labels, shapes, image types) by id, read as ``dsb score`` reads them."""
    from dsb.training.cache import image_types

    labels, shapes = load_truth(truth)
    types = image_types(truth, labels) if truth.is_dir() else {}
    return labels, shapes, types


def _load_predictions(submission: Path, shapes: dict) -> dict:

    return submission_to_labels(read_submission(submission), shapes, path=submission)


def _read_image(images_dir: Path | None, image_id: str):
    """The raw image of ``image_id`` in a stage folder, or None where there is none."""

    if images_dir is None:
        return None
    path = Path(image_path(images_dir, image_id))
    return read_image(path) if path.is_file() else None


def _compact(labels: np.ndarray) -> np.ndarray:
    return labels.astype(np.uint16) if labels.size and labels.max() <= np.iinfo(np.uint16).max else labels


def _evaluate(submission: Path, truth: Path, images_dir: Path | None) -> dict:

    truth_labels, shapes, types = _load_truth(truth)
    if not truth_labels:
        raise BadDataError("the truth holds no images to score", path=truth)
    pred_labels = _load_predictions(submission, shapes)
    # A whole stage folder of labels, twice, is large: 16 bits are enough for the metric.
    truth_labels = {i: _compact(labels) for i, labels in truth_labels.items()}
    pred_labels = {i: _compact(labels) for i, labels in pred_labels.items()}
    if images_dir is None and truth.is_dir():
        images_dir = truth
    elif images_dir is not None:
        for image_id in truth_labels:
            image = _read_image(images_dir, image_id)
            if image is not None:
                types[image_id] = image_type(image)
    score, table = score_labels(truth_labels, pred_labels, image_types=types)
    table["type"] = table["type"].fillna("unknown")
    precisions = pd.DataFrame(
        [threshold_precisions(truth_labels[i], pred_labels.get(i)) for i in table["ImageId"]],
        columns=[f"{t:.2f}" for t in THRESHOLDS],
    )
    return {
        "score": score,
        "table": table,
        "precisions": precisions,
        "truth": truth_labels,
        "pred": pred_labels,
        "images_dir": images_dir,
        "unanswered": [i for i in truth_labels if i not in pred_labels],
    }


def _evaluate_run(run_dir: Path, data_dir: Path) -> dict:
    """The run's own validation images, predicted and scored as ``dsb evaluate`` does, as :func:`_evaluate`'s result."""
    from dsb.workflows.evaluate import predict_validation, score_validation

    model, config = load_network(run_dir)
    validation = predict_validation(model, config, data_dir, progress=False)
    score, table = score_validation(validation)
    table["type"] = table["type"].fillna("unknown")
    precisions = pd.DataFrame(
        [threshold_precisions(validation.truth[i], validation.pred.get(i)) for i in table["ImageId"]],
        columns=[f"{t:.2f}" for t in THRESHOLDS],
    )
    return {
        "score": score,
        "table": table,
        "precisions": precisions,
        "truth": validation.truth,
        "pred": validation.pred,
        # The validation images as read (a stage folder's, or annotated images of one's own).
        "images": validation.images,
        "images_dir": None,
        "unanswered": [],
    }


# ---------------------------------------------------------------- HTML


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .2em .6em; text-align: right; }
th { background: #f2f2f2; } .t, .kv td, .kv th { text-align: left; }
.scroll { max-height: 30em; overflow-y: auto; display: inline-block; }
.missing { color: #8a5a00; background: #fff6e0; border-left: 4px solid #e0a800; padding: .5em 1em; }
.big { font-size: 2em; font-weight: bold; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 1em; }
img { max-width: 100%; height: auto; }
figure { margin: 0; } figure img { width: 100%; border: 1px solid #999; }
figcaption { overflow-wrap: anywhere; font-size: .9em; }
img.pixelated { image-rendering: pixelated; }
.swatch { display: inline-block; width: 1em; height: 1em; margin: 0 .4em 0 1.2em; vertical-align: middle;
          border: 1px solid #555; }
.legend .swatch:first-child { margin-left: 0; }
code { background: #f4f4f4; padding: 0 .2em; }
"""


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _png_data(fig) -> str:
    """A figure as a base64 data URI; figures never touch pyplot's global state."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _png_array(rgb: np.ndarray) -> str:
    """An RGB uint8 array as a base64 PNG data URI, pixel for pixel."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(fig, alt: str) -> str:
    return f'<img src="{_png_data(fig)}" alt="{_esc(alt)}">'


def _missing(text: str) -> str:
    return f'<p class="missing">{_esc(text)}</p>'


def _table(frame: pd.DataFrame, *, floats: str = "{:.3f}") -> str:
    """An HTML table, every cell escaped; text columns left-aligned, numbers right-aligned."""
    text = [not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])
            for c in frame.columns]
    head = "".join(f'<th{" class=t" if t else ""}>{_esc(c)}</th>' for c, t in zip(frame.columns, text))
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for value, t in zip(row, text):
            if isinstance(value, (float, np.floating)):
                value = "" if np.isnan(value) else floats.format(value)
            cells.append(f'<td{" class=t" if t else ""}>{_esc(value)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _run_section(run_dir: Path, submission, truth, images_dir) -> str:
    parts = ['<table class="kv"><tbody>']
    for name, value in (("run folder", run_dir), ("submission", submission), ("truth", truth),
                        ("images", images_dir)):
        parts.append(f"<tr><th>{_esc(name)}</th><td>{_esc('-' if value is None else value)}</td></tr>")
    parts.append("</tbody></table>")
    config_path = run_dir / "config.json"
    if config_path.is_file():
        config = load_config(config_path)
        post = config.postprocess
        parts.append("<p>Post-processing in <code>config.json</code>: "
                     + _esc(", ".join(f"{k}={v}" for k, v in vars(post).items())) + "</p>")
        model = config.model
        parts.append("<p>U-Net: " + _esc(f"levels {list(model.level_filters())}, "
                                          f"{config.train.epochs} epochs planned, "
                                          f"{len(config.validation_ids)} validation images") + "</p>")
    else:
        parts.append(_missing(f"No config.json in {run_dir}."))
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        try:
            text = json.dumps(json.loads(manifest.read_text(encoding="utf-8")), indent=2)
        except (OSError, ValueError) as exc:
            text = f"unreadable: {exc}"
        parts.append(f"<details><summary>manifest.json</summary><pre>{_esc(text)}</pre></details>")
    return "".join(parts)


def _training_section(run_dir: Path) -> str:
    path = run_dir / "history.csv"
    if not path.is_file():
        return _missing(f"No training history: {path} does not exist.")
    history = read_history(path)
    parts = [_img(training_figure(history), "training curves")]
    summary = {"epochs": len(history), "final loss": history["loss"].iloc[-1]}
    if "val_loss" in history and history["val_loss"].notna().any():
        best = history["val_loss"].idxmin()
        summary["best val_loss"] = history["val_loss"][best]
        summary["at epoch"] = history["epoch"][best]
    parts.append(_table(pd.DataFrame([summary]), floats="{:.4g}"))
    return "".join(parts)


def _scores_section(result) -> str:
    table, precisions = result["table"], result["precisions"]
    parts = [f'<p>Score (mean over {len(table)} images of the mean precision over IoU thresholds '
             f'0.50 to 0.95): <span class="big">{result["score"]:.4f}</span></p>']
    if result["unanswered"]:
        shown = ", ".join(result["unanswered"][:5]) + (", ..." if len(result["unanswered"]) > 5 else "")
        n = len(result["unanswered"])
        parts.append(_missing(f"{n} {'image' if n == 1 else 'images'} of the truth "
                              f"{'has' if n == 1 else 'have'} no row in the submission and score 0: {shown}"))
    by_type = table.groupby("type")["score"].agg(["count", "mean", "min", "max"]).reset_index()
    by_type.columns = ["image type", "images", "score", "worst", "best"]
    by_type.loc[len(by_type)] = ["all", len(table), table["score"].mean(), table["score"].min(),
                                 table["score"].max()]
    if "group" in table:
        from dsb.workflows.evaluate import score_summary

        by_group = score_summary(table)
        by_group = by_group[by_group["level"] == "group"][["name", "type", "images", "score", "worst", "best"]]
        by_group.columns = ["group", "image type", "images", "score", "worst", "best"]
        parts.append("<h3>Per imaging-experiment group</h3>" + _table(by_group))
    parts.append("<h3>Per image type</h3>" + _table(by_type))
    per_threshold = precisions.groupby(table["type"].to_numpy()).mean().T
    per_threshold["all"] = precisions.mean()
    per_threshold.index = per_threshold.index.astype(float)
    parts.append("<h3>Per IoU threshold</h3>")
    parts.append(_img(_threshold_figure(per_threshold), "precision per IoU threshold"))
    shown = per_threshold.reset_index().rename(columns={"index": "IoU threshold"})
    shown["IoU threshold"] = shown["IoU threshold"].map("{:.2f}".format)
    parts.append(_table(shown))
    return "".join(parts)


def _per_image_section(result) -> str:
    table = result["table"].sort_values(["score", "ImageId"])
    columns = [c for c in ("ImageId", "type", "group", "score", "n_true", "n_pred", "tp_50", "fp_50", "fn_50",
                           "tp_75", "fp_75", "fn_75") if c in table]
    return ("<p>Worst first. TP, FP, FN at IoU thresholds 0.50 and 0.75.</p>"
            f'<div class="scroll">{_table(table[columns])}</div>')


def _shown_ids(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    ordered = table.sort_values(["score", "ImageId"])["ImageId"].tolist()
    worst = ordered[:_N_SHOWN]
    best = [i for i in reversed(ordered) if i not in worst][:_N_SHOWN]
    return worst, best


def _legend() -> str:
    swatches = "".join(
        f'<span class="swatch" style="background:rgb{colour}"></span>{_esc(name)}'
        for name, colour in OVERLAY_COLOURS.items()
    )
    return f'<p class="legend">{swatches}</p>'


def _overlays_section(result) -> str:
    table = result["table"].set_index("ImageId")
    worst, best = _shown_ids(result["table"])
    parts = [_legend(), "<p>True nuclei are outlined just outside their edge, predicted ones on their edge; "
             "a prediction is matched when its IoU with a true nucleus is above 0.5.</p>"]
    held = result.get("images", {})
    images = {i: held[i] if i in held else _read_image(result["images_dir"], i) for i in worst + best}
    missing_images = [i for i, image in images.items() if image is None]
    if missing_images:
        parts.append(_missing(f"{len(missing_images)} of these images were not found "
                              "(give --images with the stage folder); outlines are drawn on black."))
    wrong_size = [i for i, image in images.items()
                  if image is not None and image.shape[:2] != result["truth"][i].shape]
    if wrong_size:
        parts.append(_missing(f"{', '.join(wrong_size)}: the image's size differs from the truth's; "
                              "outlines are drawn on black."))
        images.update(dict.fromkeys(wrong_size))
    for heading, ids in (("Worst", worst), ("Best", best)):
        if not ids:
            continue
        figures = []
        for image_id in ids:
            row = table.loc[image_id]
            true = result["truth"][image_id]
            pred = result["pred"].get(image_id, np.zeros_like(true))
            # Wider outlines on large images, which the page shows scaled down to about 600 pixels.
            rgb = compare_overlay(images[image_id], true, pred, width=max(1, round(max(true.shape) / 600)))
            kind = f"{row['group']}, {row['type']}" if "group" in row else row["type"]
            caption = (f"{image_id} ({kind}): score {row['score']:.3f}; "
                       f"at IoU 0.5 TP {row['tp_50']}, FP {row['fp_50']}, FN {row['fn_50']}")
            # Small images are enlarged with square pixels, not blurred.
            style = ' class="pixelated"' if max(true.shape) < 600 else ""
            figures.append(f'<figure><img{style} src="{_png_array(rgb)}" alt="overlay of {_esc(image_id)}">'
                           f"<figcaption>{_esc(caption)}</figcaption></figure>")
        parts.append(f"<h3>{_esc(heading)} {len(ids)}</h3><div class=\"grid\">{''.join(figures)}</div>")
    return "".join(parts)


def _tuning_section(run_dir: Path) -> str:
    path = run_dir / "tuning.csv"
    if not path.is_file():
        return _missing(f"No post-processing search: {path} does not exist (run dsb tune).")
    tuning = read_tuning(path)
    fig = tuning_figure(tuning)
    parts = []
    if fig is None:
        parts.append(_missing(f"{path} varies no post-processing parameter; nothing to plot."))
    else:
        parts.append(_img(fig, "post-processing tuning"))
    best = _best_row(tuning)
    params = _tuning_parameters(tuning) or [c for c in tuning.columns if c in vars(PostprocessConfig())]
    parts.append(f"<p>{len(tuning)} settings scored; kept (score {best['score']:.4f}): "
                 + _esc(", ".join(f"{name}={best[name]}" for name in params)) + "</p>")
    top = tuning.sort_values("score", ascending=False, kind="stable").head(10)
    parts.append(f"<h3>Best {len(top)} of {len(tuning)} settings</h3>" + _table(top, floats="{:.4g}"))
    return "".join(parts)


def _can_evaluate(run_dir: Path, data_dir: Path) -> bool:
    """Whether the run has a model and validation images, and ``data_dir`` exists."""
    if not (data_dir.is_dir() and (run_dir / "model.keras").is_file() and (run_dir / "config.json").is_file()):
        return False
    return bool(load_config(run_dir / "config.json").validation_ids)


def build_report(run_dir, *, submission=None, truth=None, images_dir=None, data_dir=None, out) -> Path:
    """Write a self-contained HTML report of a run.

    Sections: the run (folders, config); training curves from
    ``history.csv``; the score overall, per image type and per IoU threshold;
    per-image scores with TP/FP/FN; overlays of the worst and best images; the
    post-processing search from ``tuning.csv``. A section whose input is
    missing says so.

    Without a submission, the scores, per-image and overlay sections are
    those of the run's own validation images, predicted as ``dsb evaluate``
    does (``data_dir`` needed), with a table per imaging-experiment group.

    Parameters
    ----------
    run_dir : str or os.PathLike
        The run folder.
    submission : str or os.PathLike, optional
        A submission CSV to score, with ``truth``.
    truth : str or os.PathLike, optional
        A solution CSV (ImageId, EncodedPixels, Height, Width) or a folder in
        stage1_train layout.
    images_dir : str or os.PathLike, optional
        A stage folder with the images, for overlays and image types; defaults
        to ``truth`` when that is a folder.
    data_dir : str or os.PathLike, optional
        The training data (a stage1_train folder or one holding it): without
        ``submission``, the run's validation images are predicted from it.
    out : str or os.PathLike
        The HTML file to write (atomically).

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    BadDataError
        When the run folder is missing, one of the files is malformed, or the
        submission does not fit the truth.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadDataError("run folder not found", path=run_dir)
    submission = None if submission is None else Path(submission)
    truth = None if truth is None else Path(truth)
    images_dir = None if images_dir is None else Path(images_dir)

    bodies = {
        "run": _run_section(run_dir, submission, truth, images_dir),
        "training": _training_section(run_dir),
        "tuning": _tuning_section(run_dir),
    }
    if submission is not None and truth is not None:
        result = _evaluate(submission, truth, images_dir)
        bodies["scores"] = _scores_section(result)
        bodies["per-image"] = _per_image_section(result)
        bodies["overlays"] = _overlays_section(result)
    elif submission is None and truth is None and data_dir is not None and _can_evaluate(run_dir, Path(data_dir)):
        result = _evaluate_run(run_dir, Path(data_dir))
        note = (f"<p>The run's {len(result['table'])} validation images, predicted from {_esc(data_dir)} "
                "as <code>dsb evaluate</code> does.</p>")
        bodies["scores"] = note + _scores_section(result)
        bodies["per-image"] = _per_image_section(result)
        bodies["overlays"] = _overlays_section(result)
    else:
        given = "a submission" if submission is not None else "a truth" if truth is not None else "neither"
        note = _missing(f"Needs both a submission and the truth (--submission and --truth); {given} was given. "
                        "Without either, the run's model.keras, its validation images and the training "
                        "data (--data) give the run's own validation scores.")
        bodies.update({"scores": note, "per-image": note, "overlays": note})

    nav = " ".join(f'<a href="#{anchor}">{_esc(title)}</a>' for anchor, title in SECTIONS)
    sections = "\n".join(
        f'<section id="{anchor}"><h2>{_esc(title)}</h2>{bodies[anchor]}</section>' for anchor, title in SECTIONS
    )
    title = f"dsb report: {run_dir.resolve().name}"
    page = (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body><h1>{_esc(title)}</h1><nav>{nav}</nav>\n{sections}\n</body></html>\n"
    )
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
