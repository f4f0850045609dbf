"""Folders and large images on a Dask cluster: the client, the model once per worker, small tasks.

``dsb segment --workers N`` starts a :class:`distributed.LocalCluster` of N
worker processes with one thread each; ``--scheduler ADDRESS`` joins a
running cluster; with neither, everything runs in this process as before
(:func:`cluster_client` yields None). Tasks carry paths, block coordinates
and a :class:`ModelSpec`, never pixels: each worker reads its own images and
loads the model once (:func:`worker_network`). Every output is written under
a temporary name and renamed when whole, so a worker that dies leaves
nothing half-written; Dask runs its tasks again on another worker.

Dask is imported here only when a cluster is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path, writable_dir
from ..dataset import read_image
from ..drawing import outline_overlay
from ..errors import BadDataError, DsbError, EnvironmentProblem
from ..io.bigimage import image_side, is_zarr
from ..pipeline import Skips, find_images, write_labels, write_png
from ..predict import predict_nuclei
from ..progress import track
from ..run import load_network, resolve_model_dir
from ..segment_files import SUMMARY_COLUMNS, measure_nuclei, segment_paths

__all__ = [
    "ModelSpec",
    "cluster_client",
    "worker_network",
    "remember_network",
    "run_tasks",
    "TaskError",
    "write_image_outputs",
    "summary_row",
    "segment_folder",
    "segment_inputs",
]

# How long joining a running scheduler may take before the command gives up.
CONNECT_TIMEOUT_S = 10
# A TIFF or PNG with a side above this goes block-wise when --block-size is not given.
BIG_SIDE = 8192


@dataclass(frozen=True)
class ModelSpec:
    """Where a worker finds the model: a run or model folder, the engine and the precision."""

    path: str
    engine: str = "auto"
    precision: str = "float32"


_NETWORKS: dict[ModelSpec, tuple] = {}
_NETWORKS_LOCK = threading.Lock()


def remember_network(spec: ModelSpec, network, config) -> None:
    """Make this process's :func:`worker_network` of ``spec`` a model already loaded."""
    with _NETWORKS_LOCK:
        _NETWORKS[spec] = (network, config, threading.Lock())


def worker_network(spec: ModelSpec) -> tuple:
    """``(network, config, lock)`` of ``spec``, loaded once per process (so once per Dask worker).

    The lock serialises calls of the network from threads of one process
    (a threaded Dask scheduler); a one-thread worker never waits on it.
    """
    with _NETWORKS_LOCK:
        if spec not in _NETWORKS:
            network, config = load_network(spec.path, spec.engine, spec.precision)
            _NETWORKS[spec] = (network, config, threading.Lock())
        return _NETWORKS[spec]


@contextlib.contextmanager
def cluster_client(workers: int | None = None, scheduler: str | None = None):
    """A Dask client for ``workers`` local processes, or for the running cluster at ``scheduler``.

    Parameters
    ----------
    workers : int, optional
        Start a :class:`distributed.LocalCluster` of this many worker
        processes, one thread each, on 127.0.0.1, with no dashboard.
    scheduler : str, optional
        The address of a running scheduler, e.g. ``tcp://host:8786``.

    Yields
    ------
    distributed.Client or None
        None when neither is given: the caller runs in this process.

    Raises
    ------
    EnvironmentProblem
        ``distributed`` is not installed, or the scheduler cannot be reached
        within :data:`CONNECT_TIMEOUT_S` seconds.
    """
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        raise ValueError("give `workers` or `scheduler`, not both")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise EnvironmentProblem("a Dask cluster needs the 'distributed' extra: pip install 'dsb[distributed]'") \
            from None
    if scheduler is not None:
        _check_reachable(scheduler)
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EnvironmentProblem(f"cannot reach the Dask scheduler ({reason})", path=scheduler) from None
        with client:
            yield client
        return
    if workers < 1:
        raise ValueError(f"`workers` is {workers}; expected at least 1")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    # No dashboard, so no bokeh: dashboard_address=None alone still binds the scheduler's HTTP routes
    # to port 8787 (a second cluster then warns and moves); a free local port needs no warning.
    # silence_logs keeps stderr to our one line.
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                      silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=False) as client:
        if len(cores) >= workers:
            client.register_plugin(_pin_to_cores(cores, workers), name="dsb-pin-to-cores")
        yield client


def _pin_to_cores(cores: list[int], workers: int):
    """A worker plugin: local worker ``k`` of ``workers`` runs on cores ``cores[k::workers]``, so that
    its inference engine (which takes every core it may run on) does not contend with the other
    workers' engines. A restarted worker gets the plugin again."""
    from distributed import WorkerPlugin

    class PinToCores(WorkerPlugin):
        idempotent = True

        def setup(self, worker) -> None:
            try:
                index = int(worker.name)
            except (TypeError, ValueError):
                return
            share = cores[index % workers :: workers]
            if share:
                os.sched_setaffinity(0, share)

    return PinToCores()


def _check_reachable(address: str) -> None:
    """Fail at once, in one line, on a scheduler address that is malformed or refuses connections
    (a TCP connect, before distributed's client retries for :data:`CONNECT_TIMEOUT_S` seconds)."""
    import re
    import socket

    match = re.fullmatch(r"(?:(\w+)://)?\[?([^\[\]\s/]+?)\]?:(\d+)/?", address.strip())
    if match is None:
        raise EnvironmentProblem("is not a Dask scheduler address (expected tcp://HOST:PORT)", path=address)
    protocol, host, port = match.groups()
    if protocol not in (None, "tcp", "tls"):
        return  # another transport (ucx, inproc): distributed's client checks it
    try:
        with socket.create_connection((host, int(port)), timeout=min(CONNECT_TIMEOUT_S, 5)):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise EnvironmentProblem(f"cannot reach the Dask scheduler ({reason})", path=address) from None


@dataclass(frozen=True)
class TaskError:
    """A :class:`dsb.errors.DsbError` a task met, sent back as a record (exceptions lose their
    ``path`` when pickled)."""

    kind: str
    message: str
    path: str | None
    where: str | None

    @classmethod
    def of(cls, exc: DsbError) -> TaskError:
        return cls(type(exc).__name__, exc.message, exc.path, exc.where)

    def error(self) -> DsbError:
        kind = {"BadDataError": BadDataError, "EnvironmentProblem": EnvironmentProblem}.get(self.kind, DsbError)
        return kind(self.message, path=self.path, where=self.where)


def run_tasks(function: Callable, items: Iterable[tuple], *, client=None, progress: bool = False,
              label: str = "", what: str = "a task") -> Iterator[tuple[tuple, object]]:
    """``(item, function(*item))`` for each item, in the order they finish.

    In this process when ``client`` is None; otherwise one Dask task per item
    (its arguments must be small: paths, coordinates, records), retried once
    when it raises and run again elsewhere when its worker dies. Leaving the
    loop early (an error) cancels the tasks not finished.

    Raises
    ------
    EnvironmentProblem
        A worker ran out of memory, or workers died running the same task
        until Dask gave up on it (``what`` names the task in the message).
    """
    items = list(items)
    if client is None:
        for item in track(items, label=label, enabled=progress):
            try:
                result = function(*item)
            except MemoryError:
                raise EnvironmentProblem(f"out of memory running {what}: use a smaller --block-size, or "
                                         "--workers or --scheduler with more memory") from None
            yield item, result
        return
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    futures = {client.submit(function, *item, pure=False, retries=1): item for item in items}
    try:
        with client.as_current():  # as_completed finds its client there
            done = as_completed(futures)
        for future in track(done, length=len(futures), label=label, enabled=progress):
            try:
                result = future.result()
            except KilledWorker:
                raise EnvironmentProblem(
                    f"Dask workers died running {what} {futures[future]!s:.80} until Dask gave up on it "
                    "(out of memory? give each worker more memory or use a smaller --block-size)") from None
            except MemoryError:
                raise EnvironmentProblem(f"a Dask worker ran out of memory running {what}: give each worker "
                                         "more memory or use a smaller --block-size") from None
            yield futures[future], result
    finally:
        client.cancel(list(futures))


# ---------------------------------------------------------------- a folder on a cluster


def _check_task(path: Path) -> TaskError | None:
    try:
        read_image(path)
    except DsbError as exc:
        return TaskError.of(exc)
    return None


def write_image_outputs(out_dir: Path, name: str, image: Path, raw: np.ndarray, nuclei, *, overlay: bool) -> dict:
    """One image's ``NAME_labels.tif``, ``NAME_nuclei.csv`` and (with ``overlay``) overlay, as ``dsb segment``
    writes them in one process, each atomically; returns its ``summary.csv`` row."""
    from ..preprocess import to_gray

    labels = nuclei.labels
    targets = {"labels": out_dir / f"{name}_labels.tif", "measurements": out_dir / f"{name}_nuclei.csv"}
    table = measure_nuclei(labels, to_gray(raw))
    write_labels(targets["labels"], labels)
    with atomic_path(targets["measurements"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    if overlay:
        targets["overlay"] = write_png(out_dir / f"{name}_overlay.png", outline_overlay(raw, labels))
    return summary_row(image, "ok", nuclei=len(table), diameter=nuclei.diameter,
                       **{k: str(v) for k, v in targets.items()})


def summary_row(path, status: str, *, nuclei: int = 0, diameter: float = math.nan, labels: str = "",
                measurements: str = "", overlay: str = "", error: str = "") -> dict:
    """One row of ``summary.csv`` (:data:`dsb.segment_files.SUMMARY_COLUMNS`)."""
    return {"file": str(path), "status": status, "nuclei": nuclei,
            "diameter": round(diameter, 2) if math.isfinite(diameter) else "", "labels": labels,
            "measurements": measurements, "overlay": overlay, "error": error}


def _segment_task(path: Path, name: str, out_dir: Path, spec: ModelSpec, tta: bool, overlay: bool,
                  diameter: float | None):
    """One image of a folder, on a worker: read, segment with the worker's model, write its files."""
    try:
        raw = read_image(path)
        network, config, lock = worker_network(spec)
        with lock:
            nuclei = predict_nuclei(network, config, raw, tta=tta, diameter=diameter)
        return write_image_outputs(out_dir, name, path, raw, nuclei, overlay=overlay)
    except DsbError as exc:
        return TaskError.of(exc)


def segment_folder(images: dict[str, Path], *, spec: ModelSpec, out_dir: Path, client, skips: Skips,
                   tta: bool = False, overlay: bool = False, diameter: float | None = None,
                   progress: bool = True) -> dict[str, dict]:
    """``dsb segment`` of many images, one Dask task per image: ``{file: summary row}``.

    Every image is read and checked on the workers before any is segmented,
    so a bad one (without ``skip_bad``) stops the run before anything is written.
    """
    bad: set[str] = set()
    for (path,), problem in run_tasks(_check_task, [(p,) for p in images.values()], client=client,
                                      progress=progress, label="checking images", what="checking"):
        if problem is not None:
            skips(problem.error(), path=path)
            bad.add(str(path))
    rows: dict[str, dict] = {}
    items = [(p, name, out_dir, spec, tta, overlay, diameter) for name, p in images.items() if str(p) not in bad]
    for item, row in run_tasks(_segment_task, items, client=client, progress=progress, label="segmenting",
                               what="segmenting"):
        if isinstance(row, TaskError):
            skips(row.error(), path=item[0])
        else:
            rows[str(item[0])] = row
    return rows


def _split_inputs(paths: list[Path], block_size: int | None):
    """What ``dsb segment`` was given, sorted out: the inputs to segment block by block (Zarr stores,
    and TIFF and PNG files, named or in a folder, with a side above ``block_size`` or
    :data:`BIG_SIDE`), the other images by name, and the paths that are no image
    (:func:`dsb.pipeline.find_images`)."""
    zarrs = [path for path in paths if is_zarr(path)]
    others = [path for path in paths if not is_zarr(path)]
    images, problems = find_images(others) if others else ({}, [])
    limit = BIG_SIDE if block_size is None else block_size
    big = [path for path in images.values()
           if path.suffix.lower() in (".tif", ".tiff", ".png") and image_side(path) > limit]
    small = {name: path for name, path in images.items() if path not in big}
    return zarrs + big, small, problems


def segment_inputs(paths, *, model_dir=None, out_dir, tta: bool = False, overlay: bool = False,
                   diameter: float | None = None, skip_bad: bool = False, progress: bool = True,
                   engine: str = "auto", precision: str = "float32", block_size: int | None = None,
                   workers: int | None = None, scheduler: str | None = None, client=None) -> pd.DataFrame:
    """``dsb segment`` with large images block by block and, optionally, on a Dask cluster.

    Zarr and OME-Zarr stores, and TIFF or PNG files with a side above
    ``block_size`` (:data:`BIG_SIDE` when None), are segmented block-wise
    (:func:`dsb.workflows.blocks.segment_image_file`); the other images as
    :func:`dsb.segment_files.segment_paths` does, on the cluster's workers
    when ``workers`` or ``scheduler`` is given. Parameters and the returned
    summary are those of :func:`~dsb.segment_files.segment_paths`, plus
    ``block_size`` (pixels a side), ``workers`` and ``scheduler``
    (:func:`cluster_client`), or a ``client`` already connected (a
    dask-gateway cluster's, whose address needs its credentials).
    """
    from .blocks import segment_image_file

    out_dir = Path(out_dir)
    paths = [Path(p) for p in paths]
    big, small, problems = _split_inputs(paths, block_size)
    spec = ModelSpec(str(resolve_model_dir(model_dir)), engine, precision)
    skips = Skips(skip_bad)
    rows: dict[str, dict] = {}
    given = contextlib.nullcontext(client) if client is not None else cluster_client(workers, scheduler)
    with given as client:
        if client is None and not big:  # as before
            return segment_paths(paths, model_dir=spec.path, out_dir=out_dir, tta=tta, overlay=overlay,
                                 diameter=diameter, skip_bad=skip_bad, progress=progress, engine=engine,
                                 precision=precision)
        for problem in problems:
            skips(problem)
        order = [problem.path for problem in problems] + [str(p) for p in small.values()]
        if small and client is None:
            done = segment_paths(list(small.values()), model_dir=spec.path, out_dir=out_dir, tta=tta,
                                 overlay=overlay, diameter=diameter, skip_bad=skip_bad, progress=progress,
                                 engine=engine, precision=precision)
            rows.update({row["file"]: row for row in done.to_dict("records") if row["status"] == "ok"})
            skips.records += done.attrs["skipped"]
        elif small:
            writable_dir(out_dir)
            rows.update(segment_folder(small, spec=spec, out_dir=out_dir, client=client, skips=skips,
                                       tta=tta, overlay=overlay, diameter=diameter, progress=progress))
        for path in big:
            order.append(str(path))
            try:
                rows[str(path)] = segment_image_file(path, spec=spec, out_dir=out_dir, diameter=diameter,
                                                     block_size=block_size, client=client, tta=tta,
                                                     progress=progress)
            except BadDataError as exc:
                skips(exc, path=path)
    return _write_summary(out_dir, rows, skips, order)


def _write_summary(out_dir: Path, rows: dict[str, dict], skips: Skips, order: list[str]) -> pd.DataFrame:
    for skip in skips.records:
        rows[skip.path] = summary_row(skip.path, "skipped", error=skip.message)
    if not any(row["status"] == "ok" for row in rows.values()):
        raise BadDataError("no image to segment", path=", ".join(order) or None)
    summary = pd.DataFrame([rows[p] for p in dict.fromkeys(order) if p in rows], columns=list(SUMMARY_COLUMNS))
    with atomic_path(out_dir / "summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    summary.attrs["skipped"] = list(skips.records)
    return summary

