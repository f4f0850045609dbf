"""The `dsb` command line: thin click commands over the library.

Each command parses its options and calls library functions. Keras (and so
TensorFlow) is imported only inside the commands that train or predict, so
``dsb --help``, ``dsb fetch`` and ``dsb score`` start in well under a second.
Errors a user can act on (:class:`dsb.core.errors.DsbError`) become one line on
stderr and a documented exit status; see :mod:`dsb.core.errors`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import click

from dsb import __version__
from dsb.core.errors import EXIT_BUG, EXIT_INTERRUPTED, DsbError

_DIR = click.Path(file_okay=False, path_type=Path)
_EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_EXISTING = click.Path(exists=True, path_type=Path)
_FILE = click.Path(dir_okay=False, path_type=Path)


class _Diameter(click.ParamType):
    """A nucleus diameter in pixels (see :func:`dsb.inference.scale.check_diameter`)."""

    name = "PX"

    def convert(self, value, param, ctx):
        from dsb.inference.scale import check_diameter

        try:
            return check_diameter(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Channel(click.ParamType):
    """A channel: its number, counted from 0, or its name in the files' metadata (OME-TIFF, OME-Zarr)."""

    name = "N|NAME"

    def convert(self, value, param, ctx):
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            number = int(text)
            if number < 0:
                self.fail(f"{value!r} is no channel: they are counted from 0.", param, ctx)
            return number
        if not text:
            self.fail("give a channel's number or name.", param, ctx)
        return text


class _Positive(click.FloatRange):
    """A positive, finite number (a length, minutes, a rate), up to ``maximum``: click's range lets NaN and
    infinity by."""

    name = "number"

    def __init__(self, maximum: float | None = None):
        super().__init__(min=0, min_open=True, max=maximum)

    def convert(self, value, param, ctx):
        import math

        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


class _SchedulerAddress(click.ParamType):
    """A Dask scheduler's address, [PROTOCOL://]HOST:PORT (:func:`dsb.workflows.cluster.parse_address`)."""

    name = "ADDRESS"

    def convert(self, value, param, ctx):
        from dsb.workflows.cluster import parse_address

        try:
            parse_address(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return value


class _Numbers(click.ParamType):
    """Numbers, comma-separated; :meth:`check` says what a list may hold."""

    def check(self, numbers: tuple[float, ...]) -> tuple[float, ...]:
        raise NotImplementedError

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            numbers = tuple(float(part) for part in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        try:
            return self.check(numbers)
        except ValueError as exc:
            self.fail(f"{value!r}: {exc}", param, ctx)


class _Zooms(_Numbers):
    """Magnifications, comma-separated: ``0.5,1,2,3``."""

    name = "Z[,Z...]"

    def check(self, zooms):
        if not all(0.05 <= z <= 20 for z in zooms):
            raise ValueError("every zoom must be between 0.05 and 20")
        return tuple(dict.fromkeys(zooms))


class _ScaleFactor(click.ParamType):
    """One factor on the scale each image is predicted at (``predict.scale_factor``)."""

    name = "F"

    def convert(self, value, param, ctx):
        from dsb.core.config import SCALE_FACTOR_RANGE, check_scale_factor
        from dsb.core.errors import BadDataError

        try:
            return check_scale_factor(float(value))
        except ValueError:
            self.fail(f"{value!r} is not a number", param, ctx)
        except BadDataError:
            self.fail(f"{value!r} is outside [{SCALE_FACTOR_RANGE[0]:g}, {SCALE_FACTOR_RANGE[1]:g}]", param, ctx)


class _ScaleFactors(_Numbers):
    """Factors on the scale each image is predicted at, comma-separated: ``1,1.25``."""

    name = "F[,F...]"

    def check(self, factors):
        from dsb.core.config import check_scale_factors
        from dsb.core.errors import BadDataError

        try:
            return check_scale_factors(factors)
        except BadDataError as exc:
            raise ValueError(f"a factor {exc.message}") from None


_DIAMETER_HELP = "Median nucleus diameter in pixels, 2 to 1000; estimated per image when not given."
_TTA = click.option(
    "--tta/--no-tta", default=None,
    help="Average over flips and 90-degree rotations (eight network passes an image). Default: the run's "
         "predict.tta, which dsb tune --tta sets; off for the shipped model.")
# Each nucleus grown into its cell (dsb.workflows.cells), for dsb segment and dsb measure; MAX_EXPANSION's 1000 px.
_CELL_EXPANSION = click.option(
    "--cell-expansion", type=_Positive(maximum=1000), default=None, metavar="PX",
    help="Grow each nucleus by up to PX pixels into its cell (neighbours share the space between them): "
         "NAME_cells.tif (NAME_cells.zarr for a Zarr input), and each nucleus's cell_area, cytoplasm_area and "
         "mean intensities in its cell and cytoplasm, in every channel with --channel (a nuclear/cytoplasmic "
         "ratio); outlined in the overlay, QuPath cells in the GeoJSON.")
_CELL_EXPANSION_UM = click.option(
    "--cell-expansion-um", type=_Positive(), default=None, metavar="UM",
    help="--cell-expansion in micrometres, made pixels by each image's pixel size (its metadata, or --pixel-size).")


def _cells(option):
    """The two cell-expansion options, on a command."""
    return _CELL_EXPANSION(_CELL_EXPANSION_UM(option))


_SCALE_FACTOR = click.option(
    "--scale-factor", type=_ScaleFactor(), default=None,
    help="Predict F times larger than each image's estimated (or given) scale, F in 0.5..2: above 1 the network "
         "sees nuclei a little larger than it was trained on, at up to F squared in its time. Default: the run's "
         "predict.scale_factor, which dsb tune --scale-factors chooses; 1 for the shipped model.")
# Literal copies of dsb.network.engines.ENGINE_CHOICES and dsb.network.model_folder.PRECISION_CHOICES, so that `dsb --help` does
# not import numpy; tests/test_cli.py holds them to the originals.
_ENGINE = click.option(
    "--engine", type=click.Choice(["auto", "keras", "onnx", "openvino"]), default="auto", show_default=True,
    help="Inference engine; auto takes Keras on a GPU, else OpenVINO, then ONNX Runtime, when the model folder has "
         "model.onnx, and Keras when it has none.")
_PRECISION = click.option(
    "--precision", type=click.Choice(["auto", "float32", "bfloat16", "int8"]), default="auto", show_default=True,
    help="The network's number format for inference (not training's --precision). auto, on OpenVINO: bfloat16 "
         "where the CPU has bfloat16 units (AVX-512 BF16 or AMX), else int8 on an x86 CPU (AVX2 or later, read on "
         "Linux) where the folder has model.int8.onnx, else float32. bfloat16 computes model.onnx in "
         "bfloat16 on OpenVINO, faster on such CPUs. int8 runs model.int8.onnx (dsb export --int8) on OpenVINO "
         "or ONNX Runtime; OpenVINO computes the network in it two to three times as fast as in float32. Both approximate float32's "
         "probabilities; docs/engines.md has the measured speeds and scores.")


# What click (8.2 on) raises for a group called without arguments; older versions print the help.
_NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", None)


class DsbGroup(click.Group):
    """Turns library errors into one line on stderr and a fixed exit status."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            with _terminate_as_interrupt():
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            if _NO_ARGS is not None and isinstance(exc, _NO_ARGS) and exc.ctx is not None:
                click.echo(exc.ctx.get_help())  # plain `dsb`: a first look, not a mistake
                sys.exit(0)
            # click prints usage, a hint and the error over four lines; one says it.
            command = exc.ctx.command_path if exc.ctx is not None else (prog_name or "dsb")
            click.echo(f"{command}: usage error: {_one_line(exc.format_message())} "
                       f"(see '{command} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"dsb: error: {_one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("dsb: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug"))
        try:
            with warnings.catch_warnings():
                if not debug:
                    warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except DsbError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"dsb: error: {_one_line(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            message = str(exc) or "interrupted"
            click.echo(f"dsb: {message}", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:  # a bug: one line unless --debug
            if debug:
                raise
            what = f"{type(exc).__name__}: {_one_line(str(exc))}"
            click.echo(f"dsb: internal error: {what} (run with --debug for a traceback)", err=True)
            ctx.exit(EXIT_BUG)


_FORK_HOOK = False


def _interrupt(signum, frame):
    raise KeyboardInterrupt("terminated (SIGTERM)")


def _default_sigterm() -> None:
    """In a forked child: SIGTERM's default action back, in place of the parent's :func:`_interrupt` (a Python
    handler runs only between bytecodes, so a worker inside a long C call would outlive its terminate)."""
    import signal

    if signal.getsignal(signal.SIGTERM) is _interrupt:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (``kill``, a batch system's time limit) stops a command as Ctrl-C does: files being written
    are removed, a training run saves its state to resume from, and one line says so (exit 130), instead of
    dying where it stands with hidden temporary files left behind. Only where SIGTERM still has its default
    action, in the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    global _FORK_HOOK
    if not _FORK_HOOK:  # a forked worker (a process pool's) ends at SIGTERM at once and silently, as before
        os.register_at_fork(after_in_child=_default_sigterm)
        _FORK_HOOK = True
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line(text: str) -> str:
    """``text`` with its line breaks (and the spaces around them) turned into single spaces."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def _count(n: int, noun: str) -> str:
    """``"1 image"``, ``"3 images"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, without the source line Python would quote."""
    click.echo(f"dsb: warning: {_one_line(str(message))}", err=True)


@click.group(cls=DsbGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show a traceback for errors.")
@click.version_option(__version__, prog_name="dsb")
def cli(debug: bool) -> None:
    """Nucleus instance segmentation for the 2018 Data Science Bowl.

    Exit status: 0 success, 1 internal error, 2 usage error, 3 bad data,
    4 environment (credentials, unwritable path, full disk, a missing engine or extra), 130 interrupted
    (Ctrl-C or SIGTERM).
    """


# ---------------------------------------------------------------- data

@cli.command(short_help="Fetch and verify the competition data.")
@click.option("--source", type=_EXISTING, default=None,
              help="A local copy of the competition files: the outer zip, a folder of the inner zips, or an "
                   "unzipped copy.")
@click.option("--dest", type=_DIR, default=Path("data"), show_default=True, help="Where the data goes.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def fetch(source: Path | None, dest: Path, quiet: bool) -> None:
    """Fetch and verify the competition data (Kaggle API, or --source)."""
    from dsb.kaggle.fetch import fetch as fetch_data

    summary = fetch_data(dest, source=source, progress=not quiet)
    click.echo(str(summary))


@cli.command(short_help="Decode the training images and masks once, into a cache.")
@click.option("--data", type=_EXISTING_DIR, default=Path("data"), show_default=True,
              help="The folder `dsb fetch` filled (with stage1_train/).")
@click.option("--config", "config_path", type=_EXISTING_FILE, default=None, help="Config JSON (preprocess section).")
def prepare(data: Path, config_path: Path | None) -> None:
    """Decode stage1_train (and annotated images of your own) once into a cache that training loads in seconds."""
    from dsb.training.cache import load_prepared

    config = _load_config(config_path)
    prepared = load_prepared(data, config.preprocess, progress=True)
    if not prepared.built:  # a fresh build has printed its summary already
        click.echo(prepared.summary())
    click.echo(f"cache: {prepared.path}")


# ---------------------------------------------------------------- training

@cli.command(short_help="Train the U-Net, or fine-tune one on your annotations.")
@click.option("--config", "config_path", type=_EXISTING_FILE, default=None,
              help="Config JSON; defaults to the shipped CPU config.")
@click.option("--data", type=_EXISTING_DIR, default=Path("data"), show_default=True,
              help="stage1_train/, annotated images of your own (images/ + masks/, or NAME_masks.tif "
                   "or QuPath's NAME_masks.geojson beside NAME.png), or both.")
@click.option("--out", type=_DIR, default=None, help="Run folder (default runs/<date-time>).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="At most this many epochs (default: the config's train.epochs; with --time-budget the "
                   "schedule follows the budget and this caps it).")
@click.option("--steps-per-epoch", type=click.IntRange(min=1), default=None,
              help="Batches per epoch (default: the config's, or one pass over the training images).")
@click.option("--time-budget", type=_Positive(), default=None, metavar="MINUTES",
              help="Stop cleanly once this many minutes are spent, keeping the best model.")
@click.option("--seed", type=int, default=None,
              help="Seed of the validation split, the initial weights and the augmentation (default: the config's).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--strategy", type=click.Choice(["default", "mirrored", "multiworker"]), default="default",
              show_default=True,
              help="default: one device; mirrored: every GPU of this machine; multiworker: several machines "
                   "(docs/kaggle.md).")
@click.option("--precision", type=click.Choice(["float32", "mixed", "bfloat16", "auto"]), default="float32",
              show_default=True,
              help="mixed: float16 compute, for GPUs; bfloat16: for CPUs with bfloat16 units; auto: time a few "
                   "steps of float32 and of the other (bfloat16 on a CPU, mixed on a GPU) and train in the faster.")
@click.option("--init", type=str, is_flag=False, flag_value="", default=None, metavar="[MODEL_DIR]",
              help="Fine-tune from this run folder's weights (the shipped model when no folder is given): "
                   "its model and preprocessing, a tenth of the learning rate, 10 short epochs.")
@click.option("--learning-rate", type=_Positive(), default=None,
              help="Override the (fine-tune) learning rate.")
@click.option("--channel", type=_Channel(), default=None, metavar="N|NAME",
              help="Learn from channel N of your multi-channel images, counted from 0 (their DNA stain), or the "
                   "channel of this NAME in each OME-TIFF, picked as dsb segment --channel picks it (channel 0 of "
                   "a grey image is the image); the competition's images whole. Kept in the run's config, so that "
                   "dsb tune, evaluate and export --int8 read the same; give dsb segment the same --channel.")
def train(config_path, data, out, epochs, steps_per_epoch, time_budget, seed, resume, strategy, precision,
          init, learning_rate, channel) -> None:
    """Train the U-Net, or fine-tune one (--init); the run folder is all that `dsb predict` needs."""
    _load_keras()
    from dsb.training import train as train_run

    if resume and out is None:
        raise click.UsageError("--resume needs --out, the run folder to continue")
    if resume and (config_path is not None or seed is not None):
        # A resumed run keeps its own config.json and seed, or it would not match an uninterrupted one.
        raise click.UsageError("--resume continues the run's own config and seed; drop --config and --seed")
    if resume and (init is not None or learning_rate is not None or channel is not None):
        raise click.UsageError("--resume continues the run's own --init, learning rate and channel; drop them")
    if out is None:
        import time

        out = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    from dsb.network.model_folder import resolve_model_dir

    init_dir = None if init is None else resolve_model_dir(Path(init) if init else None)
    # A fine-tune takes the init model's config; --config then gives only the train section.
    config = None if init_dir is not None and config_path is None else _load_config(config_path)
    if init_dir is not None and config is not None:  # a U-Net the file gives and the fine-tune would not build
        from dsb.network.model_folder import load_run_config
        from dsb.training.finetune import check_config_file

        check_config_file(load_run_config(init_dir).model, config_path)
    run_dir = train_run(
        config, data_dir=data, out_dir=out, epochs=epochs, steps_per_epoch=steps_per_epoch,
        time_budget=time_budget, resume=resume, strategy=strategy, precision=precision, seed=seed,
        init=init_dir, learning_rate=learning_rate, channel=channel,
    )
    click.echo(f"run folder: {run_dir}")


@cli.command(short_help="Tune a run's post-processing on its validation images.")
@click.argument("run_dir", type=_EXISTING_DIR)
@click.option("--data", type=_EXISTING_DIR, default=Path("data"), show_default=True,
              help="The training data holding the run's validation images (stage1_train/, or your annotated images).")
@click.option("--tta/--no-tta", default=None,
              help="Tune on probabilities averaged over flips and 90-degree rotations, and make that the run's "
                   "way to predict (predict.tta). Default: as the run predicts now.")
@click.option("--scale-factors", type=_ScaleFactors(), default=None,
              help="Predict the images at each of these times the scale their nuclei call for (0.5 to 2), "
                   "tune the post-processing for each, and keep the best (predict.scale_factor). Each costs a "
                   "prediction of every image, at its square in pixels. Default: the run's own factor.")
@_ENGINE
@_PRECISION
def tune(run_dir: Path, data: Path, tta: bool | None, scale_factors: tuple[float, ...] | None, engine: str,
         precision: str) -> None:
    """Search post-processing parameters on the run's validation images."""
    engine = _prepare_engine(run_dir, engine, precision)
    from dsb.workflows.tune import tune as tune_run

    best, table = tune_run(run_dir, data, progress=True, engine=engine, tta=tta, scale_factors=scale_factors,
                           precision=precision)
    row = table[table["best"]].iloc[0]
    click.echo(f"best post-processing{' for test-time augmentation' if row['tta'] else ''}, "
               f"stored in {run_dir / 'config.json'}:")
    click.echo(f"  scale_factor = {row['scale_factor']:g}")
    for key, value in vars(best).items():
        click.echo(f"  {key} = {value}")
    if table["scale_factor"].nunique() > 1:
        for factor, scores in table.groupby("scale_factor")["score"]:
            click.echo(f"  best at scale factor {factor:g}: {scores.max():.6f}")
    click.echo(f"{row['score']:.6f}")


@cli.command(short_help="Score a run on its held-out images, per group and type.")
@click.argument("run_dir", type=_EXISTING_DIR)
@click.option("--data", type=_EXISTING_DIR, default=Path("data"), show_default=True,
              help="The training data holding the run's validation images (stage1_train/, or your annotated images).")
@_TTA
@click.option("--diameter", type=_Diameter(), default=None, help=_DIAMETER_HELP)
@click.option("--per-image", type=_FILE, default=None,
              help="Write per-image scores to this CSV (with --zoom: the sweep's table).")
@click.option("--zoom", "zooms", type=_Zooms(), default=None,
              help="Magnification sweep: score the held-out images resampled by each zoom, e.g. 0.5,1,2,3.")
@_SCALE_FACTOR
@_ENGINE
@_PRECISION
def evaluate(run_dir: Path, data: Path, tta: bool, diameter: float | None, per_image: Path | None,
             zooms: tuple | None, scale_factor: float | None, engine: str, precision: str) -> None:
    """Score a run on its validation images, per group and per type; the last line is the score.

    With --zoom, the same images at each magnification, each zoom's score beside the 1x one;
    the last line is then the lowest score of the sweep."""
    if zooms is not None and diameter is not None:
        raise click.UsageError("--zoom measures the scale estimate; it does not take --diameter")
    engine = _prepare_engine(run_dir, engine, precision)
    from dsb.workflows.evaluate import evaluate as evaluate_run
    from dsb.workflows.evaluate import magnification_sweep, summary_lines, sweep_lines

    if zooms is not None:
        sweep = magnification_sweep(run_dir, data, zooms, tta=tta, progress=True, engine=engine,
                                    precision=precision, scale_factor=scale_factor)
        click.echo(f"network: {_computed_in(engine, precision, run_dir)}")
        for line in sweep_lines(sweep):
            click.echo(line)
        _report_scores(sweep[sweep["level"] == "all"]["score"].min(), sweep, per_image, by_type=False)
        return
    value, table = evaluate_run(run_dir, data, tta=tta, diameter=diameter, progress=True, engine=engine,
                                precision=precision, scale_factor=scale_factor)
    click.echo(f"network: {_computed_in(engine, precision, run_dir)}")
    for line in summary_lines(table):
        click.echo(line)
    _report_scores(value, table, per_image, by_type=False)


@cli.command(short_help="Cross-validate a recipe, each imaging group held out once.")
@click.option("--data", type=_EXISTING_DIR, default=Path("data"), show_default=True,
              help="The training data whose imaging-experiment groups are held out in turn (stage1_train/).")
@click.option("--out", type=_DIR, default=Path("runs/crossval"), show_default=True,
              help="Where the fold runs (fold-1, ...) and crossval.csv go; an interrupted run goes on from there.")
@click.option("--folds", type=click.IntRange(min=2), default=4, show_default=True,
              help="Folds the groups are dealt into, whole groups each (at most the number of groups).")
@click.option("--time-budget", type=_Positive(), default=None, metavar="MINUTES",
              help="Minutes of training per fold.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="At most this many epochs per fold.")
@click.option("--config", "config_path", type=_EXISTING_FILE, default=None,
              help="The recipe to judge (default: the shipped CPU config).")
@click.option("--seed", type=int, default=None, help="Training seed of every fold (default: the config's).")
@click.option("--precision", type=click.Choice(["float32", "mixed", "bfloat16", "auto"]), default="float32",
              show_default=True, help="Training precision of every fold, as for `dsb train`.")
@click.option("--tune/--no-tune", default=True, show_default=True,
              help="Judge each fold as `make submit` makes a model: validation images of its own, "
                   "post-processing tuned on them (as the config predicts; no scale-factor search), "
                   "the held-out groups unseen until scored. "
                   "--no-tune validates on the held-out groups and scores the recipe's own post-processing.")
@click.option("--tta/--no-tta", default=None,
              help="Tune each fold on probabilities averaged over flips and 90-degree rotations and score it so, "
                   "as make submit does (TTA=yes). Default: as the recipe predicts.")
@click.option("--scale-factors", type=_ScaleFactors(), default=None,
              help="Tune each fold at each of these factors on its prediction scale and keep the best, as make "
                   "submit does (SCALE_FACTORS, 1,1.25). Default: the recipe's own factor.")
@click.option("--zoom", "zooms", type=_Zooms(), default=None,
              help="Magnification sweep: score each fold's held-out images resampled by each zoom, e.g. "
                   "0.5,1,2,3 (folds already trained in --out are scored again, not retrained).")
@_ENGINE
def crossval(data: Path, out: Path, folds: int, time_budget: float | None, epochs: int | None,
             config_path: Path | None, seed: int | None, precision: str, tune: bool, tta: bool | None,
             scale_factors: tuple[float, ...] | None, zooms: tuple | None, engine: str) -> None:
    """Leave-groups-out cross-validation: train one run per fold of held-out imaging experiments and
    score every group on the run that never saw it; the last line is the score over all images.

    With --zoom, every group at each magnification, each zoom's score beside the 1x one; the last
    line is then the lowest score of the sweep.

    To judge the recipe as `make submit` makes a model: --precision auto --tta --scale-factors 1,1.25."""
    if not tune and (tta is not None or scale_factors is not None):
        raise click.UsageError("--tta and --scale-factors choose how each fold is tuned; drop --no-tune")
    _load_keras()
    from dsb.workflows.crossval import crossval as crossval_runs
    from dsb.workflows.evaluate import missed_words

    config = _load_config(config_path)
    value, summary = crossval_runs(data, out, config, folds=folds, time_budget=time_budget, epochs=epochs,
                                   seed=seed, precision=precision, engine=engine, tune=tune, tta=tta,
                                   scale_factors=scale_factors, zooms=zooms or (1.0,), progress=True)
    if zooms is None:
        for row in summary.itertuples(index=False):
            why = missed_words(row)
            click.echo(f"{row.level} {row.name}{_fold_words(row, tune)}: {row.score:.6f} ({row.images} images, "
                       f"found {row.found}/{row.true} nuclei at IoU 0.5)" + (f"; {why}" if why else ""))
    else:
        from dsb.workflows.evaluate import sweep_lines

        for name, rows in summary[summary["level"] == "group"].groupby("name", sort=False):
            rows = list(rows.itertuples(index=False))
            scores = ", ".join(f"zoom {row.zoom:g} {row.score:.6f} (found {row.found}/{row.true})" for row in rows)
            click.echo(f"group {name}{_fold_words(rows[0], tune)}: {scores} ({rows[0].images} images)")
        for line in sweep_lines(summary):
            click.echo(line)
    click.echo(f"{value:.6f}")


def _fold_words(row, tune: bool) -> str:
    """`` (fold K)`` after a group's name (``, untuned`` where a tuned cross-validation could not
    tune that fold); nothing after a type or the overall row."""
    if row.level != "group":
        return ""
    return f" (fold {row.fold}{'' if row.tuned or not tune else ', untuned'})"


@cli.command(short_help="Export a run: inference copy, ONNX, int8, BioImage Model Zoo.")
@click.argument("run_dir", type=_EXISTING_DIR)
@click.option("--out", type=_DIR, default=None, help="Folder to write (replaced once the copy is whole).")
@click.option("--onnx", "in_place", is_flag=True,
              help="Write model.onnx into RUN_DIR itself, for the fast CPU engines.")
@click.option("--bioimageio", type=_DIR, default=None, help="Write a BioImage Model Zoo package into this folder.")
@click.option("--int8", is_flag=True,
              help="Write model.int8.onnx (into --out, else RUN_DIR, with model.onnx if that is missing or stale), "
                   "calibrated on the run's training images in --data, for --precision int8.")
@click.option("--data", type=_EXISTING_DIR, default=None, help="The training data, for --int8 (e.g. data).")
@click.option("--note", type=_EXISTING_FILE, default=None, help="Markdown file saved as TRAINING.md.")
def export(run_dir: Path, out: Path | None, in_place: bool, bioimageio: Path | None, int8: bool, data: Path | None,
           note: Path | None) -> None:
    """Export a run: a copy for inference only (--out: model.keras without optimizer state, model.onnx,
    config, manifest), its network as ONNX in place (--onnx) or in int8 (--int8), a BioImage Model Zoo
    package (--bioimageio)."""
    if out is None and bioimageio is None and not in_place and not int8:
        raise click.UsageError("give --out DIR, --onnx, --int8, --bioimageio DIR, or several")
    if int8 and data is None:
        raise click.UsageError("--int8 needs --data: the training images to calibrate on")
    if data is not None and not int8:
        raise click.UsageError("--data is for --int8 only")
    _load_keras()
    from dsb.core.errors import BadDataError
    from dsb.network.model_folder import INT8_FILE
    from dsb.network.quantize import require_quantizer
    from dsb.workflows.export import export_onnx_in_place, export_run, quantize_in_place

    if int8:
        require_quantizer()  # before --out is replaced or the training cache is built

    try:
        text = None if note is None else note.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadDataError(f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})",
                           path=note) from None
    if bioimageio is not None:
        from dsb.workflows.bioimageio import check_package_folder, export_bioimageio

        check_package_folder(out if out is not None else run_dir, bioimageio)  # before anything is written
    written = []
    if in_place:
        written.append(export_onnx_in_place(run_dir))
    if out is not None:  # with its int8 file, made before the copy replaces an earlier one
        written.append(export_run(run_dir, out, note=text, int8_data=data if int8 else None, progress=True))
        if int8:
            written.append(out / INT8_FILE)
    elif int8:
        written.append(quantize_in_place(run_dir, data, progress=True))
    if bioimageio is not None:
        written.append(export_bioimageio(out if out is not None else run_dir, bioimageio))
    for path in written:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        click.echo(f"{path}: {sum(p.stat().st_size for p in files) / 2**20:.1f} MiB")


# ---------------------------------------------------------------- prediction

@cli.command(short_help="Segment a folder of images into a Kaggle submission CSV.")
@click.argument("run_dir", type=_EXISTING_DIR, required=False)
@click.option("--images", type=_EXISTING_DIR, default=Path("data/stage1_test"), show_default=True,
              help="A stage folder ({id}/images/{id}.png) or a flat folder of images.")
@click.option("--out", type=_FILE, default=None,
              help="CSV to write (default submissions/<run>.csv; <run>-tta.csv with --tta, <run>-xF.csv with "
                   "--scale-factor F).")
@click.option("--labels", type=_DIR, default=None, help="Also write one 16-bit label image per input here.")
@_TTA
@click.option("--diameter", type=_Diameter(), default=None, help=_DIAMETER_HELP)
@click.option("--skip-bad", is_flag=True, help="Report unreadable images and go on with the rest.")
@_SCALE_FACTOR
@_ENGINE
@_PRECISION
def predict(run_dir, images, out, labels, tta, diameter, skip_bad, scale_factor, engine, precision) -> None:
    """Segment every image of a folder into a Kaggle submission CSV.

    RUN_DIR defaults to the model shipped with the package.
    """
    from dsb.network.model_folder import resolve_model_dir
    from dsb.workflows.predict_folder import predict_folder

    run_dir = resolve_model_dir(run_dir)
    engine = _prepare_engine(run_dir, engine, precision)
    if out is None:
        factor = "" if scale_factor is None else f"-x{scale_factor:g}"
        out = Path("submissions") / f"{run_dir.name}{'-tta' if tta else ''}{factor}.csv"
    result = predict_folder(run_dir, images, out_csv=out, labels_dir=labels, tta=tta, diameter=diameter,
                            skip_bad=skip_bad, progress=True, engine=engine, precision=precision,
                            scale_factor=scale_factor)
    skipped = _report_skipped(result.attrs["skipped"])
    empty = len(result.attrs["empty_rows"])
    n_images = result["ImageId"].nunique() - empty
    n_nuclei = int((result["EncodedPixels"] != "").sum())
    click.echo(f"{out}: {n_nuclei} nuclei in {_count(n_images, 'image')}, validated"
               + (f"; {skipped} skipped" if skipped else "")
               + (f" ({_count(empty, 'image')} given an empty row, as if without nuclei)" if empty else "")
               + f" ({_computed_in(engine, precision, run_dir)})")


@cli.command(short_help="Segment microscope images: labels, measurements, overlays.")
@click.argument("paths", nargs=-1, required=True, type=_EXISTING)
@click.option("--model", "model_dir", type=_EXISTING_DIR, default=None,
              help="Run folder; defaults to the model shipped with the package.")
@click.option("--out", type=_DIR, required=True, help="Folder for label TIFFs and measurement CSVs.")
@_TTA
@click.option("--overlay", is_flag=True,
              help="Also write an overlay PNG per image (an RGB TIFF stack for a stack; not for images segmented "
                   "block-wise).")
@click.option("--rois", is_flag=True,
              help="Also write NAME_rois.zip per image: each nucleus's outline as a Fiji ROI, for the ROI Manager "
                   "(not for images segmented block-wise).")
@click.option("--geojson", is_flag=True,
              help="Also write NAME_nuclei.geojson per image: each nucleus's outline and measurements as a "
                   "detection that QuPath imports (drag the file onto the image), or any GeoJSON reader.")
@click.option("--diameter", type=_Diameter(), default=None, help=_DIAMETER_HELP)
@click.option("--diameter-um", type=_Positive(), default=None, metavar="UM",
              help="Median nucleus diameter in micrometres instead of pixels: each image is segmented at the "
                   "pixels its own pixel size makes of it (ImageJ or OME metadata, or --pixel-size), whatever "
                   "the objective.")
@click.option("--pixel-size", type=_Positive(), default=None, metavar="UM",
              help="Micrometres a pixel, for every image, instead of its metadata. With a pixel size (given or "
                   "read) the measurements get area_um2, perimeter_um, equivalent_diameter_um, major_axis_um and "
                   "minor_axis_um, and the label TIFFs carry it.")
@click.option("--skip-bad", is_flag=True, help="Report unreadable images and go on with the rest.")
@click.option("--block-size", type=click.IntRange(min=16), default=None, metavar="PX",
              help="Segment Zarr stores, and TIFF or PNG images with a side above PX, block by block, PX pixels "
                   "a side, best a multiple of 16 (default: 2048 pixels at the network's scale; TIFF and PNG "
                   "files above 8192 pixels go block-wise anyway).")
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Run on a local Dask cluster of N worker processes, one thread each (the 'distributed' "
                   "extra: pip install -e '.[distributed]' in the dsb checkout).")
@click.option("--scheduler", type=_SchedulerAddress(), default=None, metavar="ADDRESS",
              help="Run on the Dask cluster whose scheduler is at ADDRESS, e.g. tcp://host:8786.")
@click.option("--channel", type=_Channel(), default=None, metavar="N|NAME",
              help="Segment only channel N of each image, counted from 0 (in RGB: 0 red, 1 green, 2 blue), or the "
                   "channel of this NAME in each OME-TIFF or OME-Zarr file (e.g. DAPI, wherever each file keeps "
                   "it): the DNA stain of multi-channel fluorescence, which may have any number of channels; each "
                   "nucleus is then measured in every channel (mean_intensity_c0, _c1, ...). "
                   "Default: the image's luminance, with a warning where its channels show different stains.")
@click.option("--stitch", is_flag=True,
              help="Join each z-stack's nuclei through its planes into 3-D nuclei: one label each in every plane, "
                   "counted once, and NAME_nuclei3d.csv with each one's planes, centroid, volume and intensity.")
@click.option("--stitch-overlap", type=click.FloatRange(0, 1, min_open=True), default=None, metavar="SHARE",
              help="With --stitch: the least share of the smaller of two nuclei of neighbouring planes that the "
                   "other covers, for them to be one nucleus (default 0.5).")
@click.option("--z-step", type=_Positive(), default=None, metavar="UM",
              help="With --stitch: micrometres between planes, instead of the file's metadata; with a pixel size "
                   "it gives each nucleus's volume_um3.")
@_cells
@_SCALE_FACTOR
@_ENGINE
@_PRECISION
def segment(paths, model_dir, out, tta, overlay, rois, geojson, diameter, diameter_um, pixel_size, skip_bad, block_size,
            workers, scheduler, channel, stitch, stitch_overlap, z_step, cell_expansion, cell_expansion_um,
            scale_factor, engine, precision) -> None:
    """Segment any PNG, TIFF, JPEG, BMP or Zarr microscope images and measure each nucleus.

    Images larger than memory (Zarr, OME-Zarr, big TIFF or PNG) are segmented
    block by block; an OME-Zarr plate field by field, with PLATE_wells.csv of
    each well's counts; TIFF time series and z-stacks frame by frame (--stitch joins a
    z-stack's planes into 3-D nuclei); --channel picks
    the DNA stain of multi-channel images; --diameter-um gives the nuclei's size in
    micrometres, which each file's own pixel size makes pixels; --workers or
    --scheduler spreads the work over a Dask cluster.
    """
    from dsb.network.model_folder import load_run_config, resolve_model_dir

    if workers is not None and scheduler is not None:
        raise click.UsageError("give --workers or --scheduler, not both")
    if diameter is not None and diameter_um is not None:
        raise click.UsageError("give --diameter (pixels) or --diameter-um (micrometres), not both")
    _one_expansion(cell_expansion, cell_expansion_um)
    if not stitch and (stitch_overlap is not None or z_step is not None):
        raise click.UsageError(f"{'--stitch-overlap' if stitch_overlap is not None else '--z-step'} is for --stitch, "
                               "which was not given")
    model_dir = resolve_model_dir(model_dir)
    engine = _prepare_engine(model_dir, engine, precision)
    from dsb.workflows.segment_inputs import segment_inputs
    from dsb.workflows.volumes import NO_PLANES, Stitch

    stitching = None if not stitch else Stitch(z_step=z_step, **({} if stitch_overlap is None else
                                                                 {"min_overlap": stitch_overlap}))

    learnt = load_run_config(model_dir).preprocess.channel
    if channel is None and learnt is not None:
        from dsb.io.channel_names import channel_words

        click.echo(f"dsb: note: {model_dir} learnt from {channel_words(learnt)} of its training images; give "
                   f"--channel {learnt} to segment the same channel of yours", err=True)

    with _skips_said():
        summary = segment_inputs(list(paths), model_dir=model_dir, out_dir=out, tta=tta, overlay=overlay, rois=rois,
                                 geojson=geojson, diameter=diameter, skip_bad=skip_bad, progress=True, engine=engine,
                                 precision=precision, block_size=block_size, workers=workers, scheduler=scheduler,
                                 scale_factor=scale_factor, channel=channel, diameter_um=diameter_um,
                                 pixel_size=pixel_size, stitch=stitching, cell_expansion=cell_expansion,
                                 cell_expansion_um=cell_expansion_um)
    skipped = _report_skipped(summary.attrs["skipped"])
    _report_warnings(summary)
    segmented = summary[summary["status"] == "ok"]
    # Said once for the run where no image segmented was a z-stack (a time series says so in its warning).
    if (stitch and len(segmented) and not segmented["measurements_3d"].fillna("").astype(str).ne("").any()
            and not segmented["warning"].fillna("").astype(str).str.contains(NO_PLANES, regex=False).any()):
        click.echo("dsb: warning: --stitch: no input is a z-stack (a TIFF of Z planes, or of pages without axis "
                   "names), so nothing was stitched", err=True)
    unsure = summary[summary["diameter_sure"].astype(str) == "False"]
    # An image where nothing was found has no size to confirm: said as what it is.
    empty = unsure[unsure["nuclei"].astype(str).isin(["0", "0.0"])]
    unsure = unsure.drop(empty.index)
    for row in empty.itertuples(index=False):
        click.echo(f"dsb: warning: {row.file}: no nuclei found; if it holds some, give --diameter (or "
                   "--channel for the DNA stain of a multi-channel image)", err=True)
    for row in unsure.itertuples(index=False):
        d = row.diameter
        read = f"{float(d):.1f} px" if isinstance(d, (int, float)) and d == d and d else "none"  # NaN != NaN
        click.echo(f"dsb: warning: {row.file}: the nucleus diameter estimate ({read}) is unsure "
                   "(not confirmed at another scale, or the network doubts what it sees there); check the result "
                   "or give --diameter", err=True)
    done = int((summary["status"] == "ok").sum())
    # A running cluster's workers each resolve auto on their own CPUs.
    computed = (f"{engine}, {precision} on each worker" if scheduler is not None
                else _computed_in(engine, precision, model_dir))
    click.echo(f"{_count(done, 'image')} segmented into {out}" + (f", {skipped} skipped" if skipped else "")
               + (f", {len(unsure)} with an unsure diameter estimate" if len(unsure) else "")
               + (f", {len(empty)} with no nuclei found" if len(empty) else "") + f" ({computed})")
    _report_wells(summary)


def _one_expansion(pixels, micrometres) -> None:
    if pixels is not None and micrometres is not None:
        raise click.UsageError("give --cell-expansion (pixels) or --cell-expansion-um (micrometres), not both")


@cli.command(short_help="Measure each nucleus of label images made elsewhere or corrected.")
@click.argument("paths", nargs=-1, required=True, type=_EXISTING)
@click.option("--out", type=_DIR, required=True, help="Folder for the measurement CSVs and summary.csv.")
@click.option("--labels", "labels_dir", type=_EXISTING_DIR, default=None,
              help="Folder of the label images (e.g. dsb segment's --out, or masks/); default: beside each image.")
@click.option("--channel", type=_Channel(), default=None, metavar="N|NAME",
              help="The DNA stain's channel, by number or (OME files) name: its intensities, and each nucleus "
                   "measured in every channel too. Default: the image's luminance.")
@click.option("--pixel-size", type=_Positive(), default=None, metavar="UM",
              help="Micrometres a pixel, for every image, instead of its metadata (adds the micrometre columns).")
@click.option("--overlay", is_flag=True, help="Also write an overlay PNG per image (an RGB TIFF stack for a stack).")
@click.option("--rois", is_flag=True, help="Also write NAME_rois.zip per image: the nuclei as Fiji ROIs.")
@click.option("--geojson", is_flag=True,
              help="Also write NAME_nuclei.geojson per image: the nuclei and their measurements as QuPath detections.")
@click.option("--volumes", is_flag=True,
              help="A z-stack's labels are 3-D nuclei, one value through the planes (as dsb segment --stitch and "
                   "napari's 3-D nuclei write them): also write NAME_nuclei3d.csv, one row per 3-D nucleus.")
@click.option("--z-step", type=_Positive(), default=None, metavar="UM",
              help="With --volumes: micrometres between planes, instead of the file's metadata.")
@_cells
@click.option("--skip-bad", is_flag=True, help="Report bad images or label images and go on with the rest.")
def measure(paths, out, labels_dir, channel, pixel_size, overlay, rois, geojson, volumes, z_step, cell_expansion,
            cell_expansion_um, skip_bad) -> None:
    """Measure each nucleus of existing label images in their images: the tables of dsb segment.

    Each image is paired with its label image: NAME_masks, NAME_labels or
    NAME_cp_masks (TIFF or PNG, or QuPath's objects as GeoJSON) beside it, or
    in --labels (where NAME.tif or NAME.geojson itself counts too), as napari, Fiji, Cellpose,
    StarDist, QuPath and dsb segment write them. Each nucleus keeps its value
    in the label image as its label. A TIFF stack is measured frame by frame
    with its label stack, as dsb segment writes a stack's tables. An OME-Zarr
    plate's fields pair with PLATE_ROW_COLUMN_FIELD label images, and its wells
    get PLATE_wells.csv, as dsb segment writes them.
    """
    from dsb.workflows.measure_files import measure_files

    if z_step is not None and not volumes:
        raise click.UsageError("--z-step is for --volumes, which was not given")
    _one_expansion(cell_expansion, cell_expansion_um)
    with _skips_said():
        summary = measure_files(list(paths), out_dir=out, labels_dir=labels_dir, channel=channel,
                                pixel_size=pixel_size, overlay=overlay, rois=rois, geojson=geojson,
                                skip_bad=skip_bad, progress=True, volumes=volumes, z_step=z_step,
                                cell_expansion=cell_expansion, cell_expansion_um=cell_expansion_um)
    skipped = _report_skipped(summary.attrs["skipped"])
    _report_warnings(summary)
    done = summary[summary["status"] == "ok"]
    click.echo(f"{int(done['nuclei'].sum())} nuclei of {_count(len(done), 'image')} measured into {out}"
               + (f", {skipped} skipped" if skipped else ""))
    _report_wells(summary)


def _report_wells(summary) -> None:
    """Name the well table written for each OME-Zarr plate (:func:`dsb.workflows.plates.with_well_tables`)."""
    for table in summary.attrs.get("wells", {}).values():
        click.echo(f"{table}: each well's nuclei, per field and their medians")


# ---------------------------------------------------------------- scoring and submission

@cli.command(short_help="Score a submission with the competition metric.")
@click.argument("submission", type=_EXISTING_FILE)
@click.option("--truth", type=_EXISTING, required=True,
              help="A solution CSV (ImageId,EncodedPixels,Height,Width) or a folder in stage1_train layout.")
@click.option("--images", type=_EXISTING_DIR, default=None,
              help="Images of a solution CSV, for per-type scores (a truth folder holds its own).")
@click.option("--per-image", type=_FILE, default=None, help="Write per-image scores to this CSV.")
@click.option("--allow-extra", is_flag=True, help="Ignore submission rows for images the truth lacks.")
def score(submission: Path, truth: Path, images: Path | None, per_image: Path | None, allow_extra: bool) -> None:
    """Score a submission with the competition metric; the last line is the score."""
    from dsb.kaggle.submission import score_submission
    from dsb.training.cache import image_types

    images = truth if images is None and truth.is_dir() else images
    types = image_types(images) if images is not None else None
    value, table = score_submission(submission, truth, image_types=types, allow_extra=allow_extra)
    unanswered = table.attrs.get("unanswered", [])
    if unanswered:  # Kaggle would refuse the file; the score counts them as 0
        verb = "has" if len(unanswered) == 1 else "have"
        click.echo(f"dsb: warning: {submission}: {len(unanswered)} of {_count(len(table), 'image')} of the truth "
                   f"{verb} no row and score 0 (e.g. {unanswered[0]})", err=True)
    _report_scores(value, table, per_image)


@cli.command(short_help="Check a submission CSV against the images it is for.")
@click.argument("submission", type=_EXISTING_FILE)
@click.option("--images", type=_EXISTING_DIR, default=Path("data/stage1_test"), show_default=True,
              help="The images the submission is for.")
def validate(submission: Path, images: Path) -> None:
    """Check a submission CSV against the images it is for; list every problem."""
    from dsb.kaggle.submission import validate_against_images

    _raise_problems(submission, validate_against_images(submission, images), "not a valid submission")
    click.echo(f"{submission}: valid")


@cli.command(short_help="Validate a CSV, then submit it to Kaggle.")
@click.argument("csv", type=_EXISTING_FILE)
@click.option("-m", "--message", required=True, help="The submission's description on Kaggle.")
@click.option("--images", type=_EXISTING_DIR, default=Path("data/stage1_test"), show_default=True,
              help="The images the submission is for (it is validated first).")
@click.option("--skip-without-credentials", is_flag=True,
              help="Without Kaggle credentials, say so and exit 0 instead of failing.")
def submit(csv: Path, message: str, images: Path, skip_without_credentials: bool) -> None:
    """Validate a CSV, then submit it to data-science-bowl-2018 on Kaggle."""
    from dsb.core.errors import EnvironmentProblem
    from dsb.kaggle import kaggle_api
    from dsb.kaggle.submission import validate_against_images

    _raise_problems(csv, validate_against_images(csv, images), "not submitted")
    try:
        client = kaggle_api.authenticate()
    except EnvironmentProblem as exc:
        if not skip_without_credentials:
            raise
        click.echo(f"{exc}; {csv} is written and validated but was not submitted")
        return
    reply = kaggle_api.submit(csv, message, client=client)
    click.echo(f"{csv}: submitted to data-science-bowl-2018" + (f" ({reply})" if reply else ""))


@cli.command(short_help="Write an HTML report of a run or a submission.")
@click.argument("run_dir", type=_EXISTING_DIR)
@click.option("--submission", type=_EXISTING_FILE, default=None, help="Predictions to inspect.")
@click.option("--truth", type=_EXISTING, default=None, help="Solution CSV or stage1_train-layout folder.")
@click.option("--images", type=_EXISTING_DIR, default=None,
              help="Folder of the images for overlays (default: the --truth folder).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=Path("data"), show_default=True,
              help="Training data: without --submission, the run's validation images are predicted from it.")
@click.option("--out", type=_FILE, default=Path("report.html"), show_default=True)
def report(run_dir, submission, truth, images, data, out) -> None:
    """Write a self-contained HTML report of a run (curves, scores per group and type, overlays)."""
    from dsb.workflows.report import build_report

    if (submission is None) != (truth is None):
        raise click.UsageError("--submission and --truth go together")
    data_dir = None
    if submission is None and data.is_dir() and (Path(run_dir) / "model.keras").is_file():
        _load_keras()
        data_dir = data
    path = build_report(run_dir, submission=submission, truth=truth, images_dir=images, data_dir=data_dir, out=out)
    click.echo(f"report: {path}")


# ---------------------------------------------------------------- helpers

def _load_config(path: Path | None):
    from dsb.core.config import load_config, shipped_config

    return shipped_config("cpu") if path is None else load_config(path)


def _report_scores(value: float, table, per_image: Path | None, *, by_type: bool = True) -> None:
    """Per-type lines (unless ``by_type`` is False), then the score alone on the last line."""
    if per_image is not None:
        from dsb.core.atomic import atomic_path

        with atomic_path(per_image) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6f")
    if by_type and "type" in table and table["type"].notna().any():
        for kind, group in table.groupby("type"):
            click.echo(f"{kind}: {group['score'].mean():.6f} ({len(group)} images)")
    click.echo(f"{value:.6f}")


@contextlib.contextmanager
def _skips_said():
    """A run whose inputs were all skipped (``--skip-bad``) fails with one line naming the first's reason:
    where there were several, each one's is said first, as a run that segments some says them."""
    try:
        yield
    except DsbError as exc:
        if len(getattr(exc, "skipped", [])) > 1:
            _report_skipped(exc.skipped)
        raise


def _report_warnings(summary) -> None:
    """Say each input's ``warning`` of a run's summary on stderr, one line each."""
    for row in summary[summary["warning"].fillna("").astype(str) != ""].itertuples(index=False):
        click.echo(f"dsb: warning: {row.file}: {row.warning}", err=True)


def _report_skipped(skipped: list) -> int:
    """Say each input a run skipped (:class:`dsb.io.folders.Skip`) on stderr, one line each; return how many."""
    for skip in skipped:
        click.echo(f"skipped: {skip}", err=True)
    return len(skipped)


def _raise_problems(csv: Path, problems: list, verdict: str) -> None:
    """Say every problem of a submission on stderr, one line each, and fail if there is one."""
    if len(problems) == 1:
        raise DsbError(f"{problems[0]}; {verdict}", path=csv)
    for problem in problems:
        click.echo(f"{csv}: {problem}", err=True)
    if problems:
        raise DsbError(f"{len(problems)} problems; {verdict}", path=csv)


def _prepare_engine(model_dir: Path, engine: str, precision: str = "auto") -> str:
    """The engine that will run ``model_dir`` (see :func:`dsb.network.engines.choose_engine`); Keras is loaded
    quietly first when it is that one, or when the folder needs it for anything else."""
    from dsb.network.engines import choose_engine

    chosen = choose_engine(model_dir, engine, precision)
    if chosen == "keras":
        _load_keras()
    return chosen


def _computed_in(engine: str, precision: str, model_dir: Path) -> str:
    """``"ENGINE, PRECISION"`` as the network of ``model_dir`` ran here, auto resolved (bfloat16, int8 or
    float32): the same run on another CPU can compute in another format, so the figures a command
    prints say which."""
    from dsb.network.engines import resolve_precision

    return f"{engine}, {resolve_precision(precision, engine, model_dir)}"


def _load_keras() -> None:
    """Import Keras and its backend now, holding back the backend's start-up chatter.

    TensorFlow writes C++ log lines to file descriptor 2 while it loads, before
    ``TF_CPP_MIN_LOG_LEVEL`` applies; they would bury a command's one-line
    error. With ``--debug`` they are shown.
    """
    if "keras" in sys.modules:
        return
    if click.get_current_context().find_root().params.get("debug"):
        import keras  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as held:
            os.dup2(held.fileno(), 2)
            import keras  # noqa: F401
    except ImportError as exc:
        from dsb.core.errors import EnvironmentProblem

        raise EnvironmentProblem(
            f"cannot import Keras and its backend ({exc}); see the README to install one, or run with --debug"
        ) from None
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main() -> None:
    cli(prog_name="dsb")


if __name__ == "__main__":
    main()
