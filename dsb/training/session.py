"""Train the U-Net into a self-describing, resumable run folder: the two entry points.

See :mod:`dsb.training` for the run folder's layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import keras

from dsb.core.config import Config, save_config
from dsb.core.errors import BadDataError
from dsb.core.progress import say
from dsb.io.channel_names import channel_words, stored_channel
from dsb.network.unet import build_unet, compile_model
from dsb.training import checkpoints
from dsb.training.cache import load_prepared
from dsb.training.checkpoints import BestModelFile, check_new_run, resume_config
from dsb.training.divergence import Diverged, Divergence, TrainingDiverged
from dsb.training.environment import (
    STRATEGIES,
    TRAINING_PRECISIONS,
    Environment,
    devices,
    has_gpu,
    tensorboard,
)
from dsb.training.finetune import MIN_VALIDATION_IMAGES, user_image_count
from dsb.training.fit import RunKeeper, fit, format_logs
from dsb.training.plan import Plan, data_checksum, make_loaders, make_plan, split_data
from dsb.training.probe import probe_precision
from dsb.training.state import RunState, check_resumable, finish_reason


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the run folder holds a checkpoint to resume from.

    A :class:`KeyboardInterrupt`, so it is never swallowed by ``except
    Exception``; ``str()`` is the one-line message that says how to resume.
    """

    def __init__(self, run_dir, epoch: int, *, resume_with: str | None = None):
        self.run_dir = Path(run_dir)
        self.epoch = epoch
        resume_with = resume_with or f"dsb train --resume --out {self.run_dir}"
        super().__init__(
            f"training interrupted; the checkpoint after epoch {epoch} is saved in {self.run_dir}. "
            f"Resume with: {resume_with}"
        )


def train(
    config: Config | None,
    *,
    data_dir,
    out_dir,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    time_budget: float | None = None,
    resume: bool = False,
    strategy: str = "default",
    precision: str = "float32",
    seed: int | None = None,
    progress: bool = True,
    init=None,
    learning_rate: float | None = None,
    channel: int | str | None = None,
) -> Path:
    """Train a U-Net on the prepared training images of ``data_dir``.

    Parameters
    ----------
    config : Config or None
        Model, preprocessing and training settings. Ignored when resuming:
        the run's own ``config.json`` is used. When it names
        ``validation_ids`` (a config.json of an earlier run), those images are
        held out; otherwise a split stratified by image type is drawn with the seed.
    data_dir : path
        The data folder (with ``stage1_train``, annotated images of one's own
        or both, see :mod:`dsb.io.annotations`); loaded through
        :func:`dsb.training.cache.load_prepared`, which builds the cache if needed.
    out_dir : path
        The run folder; must be missing or empty unless ``resume``.
    epochs, steps_per_epoch, seed : int, optional
        Override ``config.train``; ``steps_per_epoch`` 0 or None with a config
        value of 0 means one pass over the training images per epoch.
        On resume, ``epochs`` may extend the run; the others are the run's.
    time_budget : float, optional
        Minutes of training (summed over resumed sessions) after which
        training stops at the end of a batch, keeping the best model.
    resume : bool
        Continue ``out_dir`` from its last checkpoint.
    strategy : {"default", "mirrored", "multiworker"}
        ``"mirrored"``: tf.distribute.MirroredStrategy over all local GPUs (or
        logical CPUs), TensorFlow backend. ``"multiworker"``: Keras
        distribution ``DataParallel`` over all devices of all processes, JAX
        backend. The batch size in the config is per replica.
    precision : {"float32", "mixed", "bfloat16"}
        ``"mixed"``: ``mixed_float16`` policy with loss scaling (for GPUs);
        ``"bfloat16"``: ``mixed_bfloat16`` (CPUs and accelerators with bfloat16 units).
    progress : bool
        One line per epoch on stderr.
    init : path, optional
        Fine-tune: start from the weights of this run folder (see
        :mod:`dsb.training.finetune`). The config is
        :func:`dsb.training.finetune.finetune_config` of its ``config.json``, taking
        only the ``train`` section of ``config`` when given: a tenth of the
        learning rate, a few epochs, and validation on a random share of the
        user's images. Ignored when resuming (the run keeps its own).
    learning_rate : float, optional
        Overrides the learning rate (of the fine-tune, with ``init``).
    channel : int or str, optional
        Learn from this channel of one's own multi-channel images, counted from 0, or named in each
        OME-TIFF's metadata (their DNA stain;
        ``preprocess.channel``, kept in the run's config so that ``dsb tune``, ``dsb evaluate`` and
        ``dsb export --int8`` read the same), picked as :func:`dsb.io.annotations.read_sample` picks
        it; the competition's images whole. Ignored when resuming (the run keeps its own).

    Returns
    -------
    Path
        The run folder.

    Raises
    ------
    TrainingInterrupted
        On Ctrl-C, after making sure a resumable checkpoint exists.
    TrainingDiverged
        A :class:`BadDataError`: a loss or weight became NaN or infinite. Training stops at
        once; the manifest says ``"diverged"`` and where, ``model.keras`` is the best model of
        the epochs before (none when there is none), and the run cannot be resumed.
    BadDataError
        Bad config, non-empty ``out_dir`` without ``resume``, nothing to resume (or a diverged
        run), data that changed since the run started, or an ``init`` that is no run folder.
    """

    out_dir = Path(out_dir)
    if resume:
        config = resume_config(out_dir)
    elif init is not None:
        from dsb.network.model_folder import load_run_config
        from dsb.training.finetune import finetune_config

        config = finetune_config(load_run_config(init), config, learning_rate=learning_rate, epochs=epochs)
    elif config is None:
        raise ValueError("`config` is required unless resuming")
    elif learning_rate is not None:
        rate = float(learning_rate)
        tc = dataclasses.replace(config.train, learning_rate=rate,
                                 min_learning_rate=min(config.train.min_learning_rate, rate))
        config = config.replace(train=tc)
    if channel is not None and not resume:
        config = config.replace(preprocess=dataclasses.replace(config.preprocess, channel=stored_channel(channel)))
        config.check()
    if strategy != "multiworker" and not resume:
        check_new_run(out_dir)  # before the data load, to fail fast
    prepared = load_prepared(data_dir, config.preprocess, progress=progress)
    return train_prepared(
        prepared,
        config,
        out_dir=out_dir,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        time_budget=time_budget,
        resume=resume,
        strategy=strategy,
        precision=precision,
        seed=seed,
        progress=progress,
        init=None if resume else init,
    )


def train_prepared(
    prepared,
    config: Config | None,
    *,
    out_dir,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    time_budget: float | None = None,
    resume: bool = False,
    strategy: str = "default",
    precision: str = "float32",
    seed: int | None = None,
    progress: bool = True,
    workers: int | None = None,
    deterministic: bool | None = None,
    callbacks: list | None = None,
    init=None,
) -> Path:
    """:func:`train` on data already in memory.

    Parameters
    ----------
    prepared
        Anything with ``ids``, ``images`` (uint8 (H, W)), ``labels`` (int32
        (H, W)) and ``types`` (list of str), like :class:`dsb.training.cache.Prepared`;
        ``checksum`` (str) is used when present.
    workers : int, optional
        Loader threads (batches stay in order, so results do not change); by
        default one on a CPU and more beside a GPU (:meth:`Environment.loader_threads`).
    deterministic : bool, optional
        Deterministic TensorFlow ops; default: when no GPU is visible.
    callbacks : list of keras.callbacks.Callback, optional
        Extra callbacks, run after the run's own (tests use them to interrupt).
    init : path, optional
        A run folder whose weights the model starts from; its U-Net must be
        ``config``'s (:func:`dsb.training.finetune.check_architecture`). ``config`` is
        used as given (:func:`dsb.training.finetune.finetune_config` makes a fine-tune
        one); validation is :func:`dsb.training.finetune.finetune_split` unless
        ``config.validation_ids`` names the images. The folder is recorded as
        ``init`` in the manifest and kept on resume.

    Other parameters are those of :func:`train`.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` is {strategy!r}, expected one of {STRATEGIES}")
    if precision not in (*TRAINING_PRECISIONS, "auto"):
        raise ValueError(f"`precision` is {precision!r}, expected one of {(*TRAINING_PRECISIONS, 'auto')}")
    out_dir = Path(out_dir)
    wall_start = time.time()
    start = _start(prepared, config, out_dir, resume=resume, strategy=strategy, precision=precision, seed=seed,
                   steps_per_epoch=steps_per_epoch, time_budget=time_budget, init=init)
    probe = None
    if start.precision == "auto":
        probe = probe_precision(start.config, has_gpu=has_gpu(devices(keras.backend.backend())))
        start = dataclasses.replace(start, precision=probe.chosen)
        if progress:
            say("precision auto: " + ", ".join(f"{k} {v:.3f} s a step" for k, v in probe.seconds.items())
                + f"; training in {probe.chosen}")
    split = split_data(prepared, start.config, start.seed, finetune=start.init is not None)
    with Environment(strategy, start.precision, deterministic) as env:
        plan = make_plan(prepared, start.config, split, seed=start.seed, epochs=epochs,
                         steps_per_epoch=steps_per_epoch, replicas=env.replicas, resumed=start.resumed, path=out_dir)
        state = start.resumed or _new_state(plan, start)
        state.time_budget = start.time_budget
        model = _model(plan, state, start, env)
        if env.is_chief:
            if start.resumed is None:
                check_new_run(out_dir)  # again: only the chief of several processes can tell
            save_config(plan.config, out_dir / "config.json")  # on resume: keeps tuned post-processing
            if start.resumed is None:
                checkpoints.save_checkpoint(out_dir, model, state)
        threads = env.loader_threads() if workers is None else workers
        train_data, val_data = make_loaders(plan, prepared, start_step=state.epoch * plan.steps_per_epoch,
                                            shard=env.shard, workers=threads)
        keeper = RunKeeper(out_dir, plan, state, monitor="val_loss" if val_data is not None else "loss",
                            writer=env.is_chief, progress=progress, env=env,
                            best_file=BestModelFile(out_dir, plan.config.model))
        run_info = _run_info(plan, state, val_data)
        run_info["loader_threads"] = threads
        if probe is not None:
            run_info["precision_probe"] = probe.as_dict()
        session = _Session(out_dir, plan, state, env, keeper, run_info, wall_start)
        session.manifest("running")
        if progress:
            _announce(plan, state, env, out_dir)
        session.run(model, train_data, val_data, callbacks, progress=progress)
    return out_dir


@dataclass
class _Start:
    """What a new or resumed run starts from, before the data are split."""

    config: Config
    seed: int
    precision: str
    time_budget: float | None
    checksum: str
    init: str | Path | None
    init_model: object = None
    resumed: RunState | None = None
    checkpoint: Path | None = None


def _start(prepared, config, out_dir: Path, *, resume, strategy, precision, seed, steps_per_epoch,
           time_budget, init) -> _Start:
    """The config and settings of the run; for a resume, its own, once the checks pass."""
    if not resume:
        if config is None:
            raise ValueError("`config` is required unless resuming")
        config = config.check()
        if strategy != "multiworker":  # there, process 0 may already have started the folder
            check_new_run(out_dir)
        init_model = None if init is None else checkpoints.load_init(init, config)
        return _Start(config=config, seed=config.train.seed if seed is None else int(seed), precision=precision,
                      time_budget=time_budget, checksum=data_checksum(prepared), init=init, init_model=init_model)
    config = resume_config(out_dir)
    folder, state = checkpoints.latest_state(out_dir)
    checkpoints.remove_stale_temporaries(out_dir)
    checksum = data_checksum(prepared)
    check_resumable(state, steps_per_epoch=steps_per_epoch, checksum=checksum, path=out_dir)
    # The seed and epochs are config.json's; the precision and steps are the state's.
    return _Start(config=config, seed=config.train.seed, precision=state.precision,
                  time_budget=time_budget if time_budget is not None else state.time_budget, checksum=checksum,
                  init=state.init, resumed=state, checkpoint=folder)


def _new_state(plan: Plan, start: _Start) -> RunState:
    return RunState(
        steps_per_epoch=plan.steps_per_epoch,
        global_batch=plan.global_batch,
        precision=start.precision,
        time_budget=start.time_budget,
        data_checksum=start.checksum,
        # The code the run started with; a manifest written later must not say otherwise.
        git_commit=checkpoints.git_commit(),
        init=None if start.init is None else str(Path(start.init).resolve()),
        learning_rate=plan.config.train.learning_rate,
    )


def _model(plan: Plan, state: RunState, start: _Start, env: Environment):
    """A new compiled model (from the init weights when given) or the checkpoint's."""
    keras.utils.set_random_seed(plan.seed)
    with env.scope():
        if start.checkpoint is None:
            model = build_unet(plan.config.model)
            # With a time budget the rate is set per epoch from the share of it spent
            # (dsb.training.schedule, RunKeeper); otherwise a cosine over the steps of the epochs.
            steps = None if state.time_budget is not None else plan.epochs * plan.steps_per_epoch
            compile_model(model, plan.config, total_steps=steps)
            if start.init_model is not None:
                checkpoints.set_init_weights(model, start.init_model, start.init)
        else:
            model = checkpoints.load_checkpoint_model(start.checkpoint, state)
            if plan.config.train.lr_schedule == "plateau":
                model.optimizer.learning_rate.assign(state.learning_rate)
    return model


def _run_info(plan: Plan, state: RunState, val_data) -> dict:
    """The manifest's account of the images the run trains and validates on."""
    return {
        "train_images": len(plan.split.train_idx),
        "validation_images": len(plan.split.val_idx),
        "validation_crops": val_data.n_crops if val_data is not None else 0,
        "validation_groups": list(plan.split.val_groups),
        # The groups of the images it trained on: what int8 calibration may look at (dsb.network.quantize).
        "train_groups": sorted({plan.split.groups[i] for i in plan.split.train_idx}) if plan.split.groups else None,
        "init": state.init,
        "learning_rate_schedule": _schedule_text(plan, state),
    }


def _schedule_text(plan: Plan, state: RunState) -> str:
    """What the learning rate follows, for the manifest and the first lines of a run."""
    tc = plan.config.train
    if tc.lr_schedule != "cosine":
        return f"{tc.lr_schedule} from {tc.learning_rate:g}"
    over = (f"the {state.time_budget:g}-minute time budget, at most {plan.epochs} epochs"
            if state.time_budget is not None else f"{plan.epochs} epochs")
    return f"cosine from {tc.learning_rate:g} to {tc.min_learning_rate:g} over {over}"


def _announce(plan: Plan, state: RunState, env: Environment, out_dir: Path) -> None:
    split = plan.split
    epochs = f"epochs {state.epoch + 1}..{plan.epochs}" if state.epoch < plan.epochs else f"all {plan.epochs} epochs done"
    say(
        f"training on {len(split.train_idx)} images ({len(split.val_idx)} for validation), "
        f"{plan.steps_per_epoch} steps of {plan.global_batch} crops per epoch, "
        f"{epochs}, {env.describe()}; run folder {out_dir}"
    )
    say(f"learning rate: {_schedule_text(plan, state)}")
    if split.val_groups:
        say(f"validation holds out the groups {', '.join(split.val_groups)}")
    if plan.config.preprocess.channel is not None:
        say(f"learning from {channel_words(plan.config.preprocess.channel)} of your images (the competition's whole)")
    if state.init is not None:
        groups = None if split.groups is None else list(split.groups)
        say(f"fine-tuning from {state.init}, learning rate {plan.config.train.learning_rate:.2e}"
            + ("" if split.val_idx else f"; no validation: {user_image_count(list(split.ids), groups)} image(s) "
               f"of your own, fewer than {MIN_VALIDATION_IMAGES} to hold some out, so training uses them all"))


@dataclass
class _Session:
    """One session of a run: the fit, and the manifest and checkpoint it leaves however it ends."""

    out_dir: Path
    plan: Plan
    state: RunState
    env: Environment
    keeper: RunKeeper
    run_info: dict
    wall_start: float

    def manifest(self, status: str) -> None:
        if self.env.is_chief:
            checkpoints.write_manifest(self.out_dir, self.plan.config, self.state, self.env, self.run_info,
                                       status=status, wall_start=self.wall_start)

    def run(self, model, train_data, val_data, callbacks, *, progress: bool) -> None:
        """Fit unless the run is over; raise :class:`TrainingInterrupted` on Ctrl-C, :class:`TrainingDiverged`
        where a loss or weight is no longer finite."""
        state = self.state
        state.stop_reason = finish_reason(state, epochs=self.plan.epochs)  # a resume may give more to do
        try:
            if state.stop_reason is not None:
                if progress:
                    say(f"nothing to do: the run stopped ({state.stop_reason}) after epoch {state.epoch}")
            else:
                fit(model, self.keeper, train_data, val_data, self._callbacks(callbacks))
        except KeyboardInterrupt:
            self._interrupted()
        except Diverged as stop:
            self._diverged(stop.divergence)
        if self.env.is_chief:
            if not (self.out_dir / "model.keras").exists():
                self.keeper.best_file.save(model)
            state.wall_s = self.keeper.wall_s()
        self.manifest("complete")
        if progress:
            best = state.best
            figures = "" if best is None else f"; best epoch {best.epoch}: {format_logs(best.logs)}"
            say(f"done ({state.stop_reason}) after epoch {state.epoch}{figures}")

    def _callbacks(self, extra) -> list:
        found = []
        if self.env.is_chief:
            board = tensorboard(self.out_dir / "logs")
            if board is not None:
                found.append(board)
        return [*found, self.keeper, *(extra or [])]

    def _interrupted(self):
        if self.env.is_chief:
            self.state.wall_s = self.keeper.wall_s()
        self.manifest("interrupted")
        epoch = self.state.epoch
        with contextlib.suppress(BadDataError):
            epoch = checkpoints.latest_checkpoint(self.out_dir)[1]["epoch"]  # the one on disk, should ^C hit its writing
        raise TrainingInterrupted(self.out_dir, epoch) from None

    def _diverged(self, divergence: Divergence):
        """Record the run as diverged, keep no model that gave a non-finite figure, and raise."""
        state, best_path = self.state, self.keeper.best_file.path
        # Without validation the best model is the weights an epoch ended with, which no loss has looked
        # at before the next epoch's first step: a loss there that is not finite condemns them.
        condemned = self.keeper.monitor == "loss" and divergence.what == "loss" and divergence.step == 1
        if self.env.is_chief:
            state.wall_s = self.keeper.wall_s()
            if condemned and state.best is not None and state.best.epoch == state.epoch:
                best_path.unlink(missing_ok=True)
        self.run_info["diverged"] = divergence.as_dict()
        self.manifest("diverged")
        kept = state.best.epoch if state.best is not None and best_path.exists() else None
        raise TrainingDiverged(self.out_dir, divergence, learning_rate=self.plan.config.train.learning_rate,
                               kept=kept) from None
