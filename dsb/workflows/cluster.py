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
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from dsb.core.config import check_scale_factor
from dsb.core.errors import BadDataError, DsbError, EnvironmentProblem
from dsb.core.progress import track
from dsb.network.engines import load_network

__all__ = [
    "CONNECT_TIMEOUT_S",
    "parse_address",
    "ModelSpec",
    "remember_network",
    "worker_network",
    "cluster_client",
    "TaskError",
    "run_tasks",
]


# How long joining a running scheduler may take before the command gives up.
CONNECT_TIMEOUT_S = 10



@dataclass(frozen=True)
class ModelSpec:
    """Where a worker finds the model: a run or model folder, the engine and the precision, and the
    scale factor that replaces the folder's ``predict.scale_factor`` (None: the folder's)."""

    path: str
    engine: str = "auto"
    precision: str = "auto"
    scale_factor: float | None = None

    def __post_init__(self):
        # Checked where the spec is made, not by every worker's every task.
        if self.scale_factor is not None:
            object.__setattr__(self, "scale_factor", check_scale_factor(self.scale_factor))



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
            network, config = load_network(spec.path, spec.engine, spec.precision, scale_factor=spec.scale_factor)
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
        raise EnvironmentProblem("a Dask cluster needs the 'distributed' extra: pip install -e '.[distributed]' "
                                 "in the dsb checkout") \
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
    # silence_logs keeps stderr to our one line: a task's error comes back to the client as an exception, and a
    # worker still at work when an error shuts the cluster down would log its lost heartbeat at ERROR.
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                      silence_logs=logging.CRITICAL) as cluster, \
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



def parse_address(address: str) -> tuple[str | None, str, int]:
    """The protocol (None when not given), host and port of a Dask scheduler address.

    Raises
    ------
    ValueError
        ``address`` is not ``[PROTOCOL://]HOST:PORT``.

    Examples
    --------
    >>> parse_address("tcp://10.0.0.5:8786"), parse_address("[::1]:8786")
    (('tcp', '10.0.0.5', 8786), (None, '::1', 8786))
    """
    import re

    match = re.fullmatch(r"(?:(\w+)://)?\[?([^\[\]\s/]+?)\]?:(\d+)/?", str(address).strip())
    if match is None:
        raise ValueError(f"{address!r} is not a Dask scheduler address (expected tcp://HOST:PORT)")
    protocol, host, port = match.groups()
    return protocol, host, int(port)


def _check_reachable(address: str) -> None:
    """Fail at once, in one line, on a scheduler address that is malformed or refuses connections
    (a TCP connect, before distributed's client retries for :data:`CONNECT_TIMEOUT_S` seconds)."""
    import socket

    try:
        protocol, host, port = parse_address(address)
    except ValueError:
        raise BadDataError("is not a Dask scheduler address (expected tcp://HOST:PORT)", path=address) from None
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
    """A :class:`dsb.core.errors.DsbError` a task met, sent back as a record (exceptions lose their
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
