"""Where training's independent fits run: this process, a local process pool, or a Dask cluster.

One small interface, three adapters. A fit is a module-level function of one picklable task that
returns a picklable result with its artifacts as bytes (:mod:`model_store.fits`), never paths: a
worker of a remote cluster shares no filesystem with the driver, so the driver, which alone holds
the store's staging directory, writes every file. The same fit function runs under every adapter,
so with fixed seeds all three write the same store, with one known exception:

Known gap: a Keras net (AutoEncoder / MemAE) fitted on a Dask worker is not always the one the
driver or a pool worker fits from the same rows and seed: one MemAE of the dispatch tests' plant
came out at threshold 2.101 in-process and in every pool run, and at 2.101, 2.030, 2.065 or
2.117 on a local:2 cluster from run to run (41 % apart at most on bench/scale.py's plant).
Forests and the makers' units are equal. Not the cause, each tried alone: TensorFlow or BLAS
thread counts, 64-byte-aligned inputs, op determinism (the worker then always gave 2.030),
oneDNN off, the FP environment reset, TensorFlow imported in the worker's main thread, the
memory limit, Dask's profiler.

    with open_dispatcher(cluster="local:2", workers=0, memory_limit="2GB") as dispatcher:
        for index, result in dispatcher.map(fit_group, tasks):
            ...
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from model_store.errors import MoldwatchError

T = TypeVar("T")
R = TypeVar("R")

INSTALL_CLUSTER = "pip install 'moldwatch[cluster]'"
LOCAL_PREFIX = "local:"
# Seconds to reach a scheduler before giving up: long enough for a scheduler pod that is still
# starting, short enough that a wrong address is one prompt line, not a hang.
CONNECT_TIMEOUT_S = 20
# A fit is retried this often when its worker dies (a killed or out-of-memory process): Dask's own
# default, stated here because the store's completeness relies on it. A fit that raises is not
# retried: the same data raises again.
ALLOWED_FAILURES = 3
# Tasks submitted per worker ahead of their turn: one running, one ready to start as soon as the
# running one ends (a fit's result travels back meanwhile); more would only hold rows in memory.
IN_FLIGHT_PER_WORKER = 2
# Seconds to wait for each terminated pool worker to exit (SIGTERM ends a fit at once; a worker
# stuck in C code past this is left to the OS when the driver exits).
ABORT_JOIN_S = 10


class ClusterError(MoldwatchError):
    """The Dask cluster cannot be used: not installed, not reachable, or a bad --cluster value."""


class Dispatcher(Protocol):
    """Runs one function over independent tasks; results come back as they complete."""

    description: str  # for logs and the training manifest's reader: where the fits ran

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[int, R]]:
        """(index of the task in ``tasks``, its result), in completion order."""
        ...


class InProcess:
    description = "in-process"

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[int, R]]:
        for index, task in enumerate(tasks):
            yield index, fn(task)


@contextmanager
def _children_ignore_interrupts() -> Iterator[None]:
    """Processes started inside ignore SIGINT (an ignored signal stays ignored across exec, and
    Python then installs no KeyboardInterrupt handler): a Ctrl-C reaches the whole foreground
    process group, and a pool worker interrupted mid-import or mid-fit printed a traceback of
    its own while the driver, which alone decides, stops them all (:meth:`ProcessPool.close`).
    The driver's own handler is back as soon as the processes are started: a Ctrl-C in the
    moment they are being started (a fraction of a second, once a run) is ignored with them, and
    a second one is needed."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class ProcessPool:
    """A pool of ``workers`` spawned processes (one per core), started by the first map with more
    than one task and kept for the next ones: the makers' units follow the group fits, and a
    second pool would pay the workers' start and imports again (18 s of a 163 s run, measured).
    Shut down by :meth:`close`, or when the dispatcher is dropped. The workers ignore SIGINT: an
    interrupt is the driver's, and :meth:`close` with ``abort`` ends the running fits."""

    def __init__(self, workers: int):
        self.workers = workers
        self.description = f"process pool of {workers}"
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[int, R]]:
        if self.workers <= 1 or len(tasks) <= 1:
            yield from InProcess().map(fn, tasks)
            return
        if self._pool is None:
            from model_store.group_training import init_worker

            # spawn, not fork: TensorFlow's thread pools do not survive a fork.
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=init_worker)
            weakref.finalize(self, self._pool.shutdown, cancel_futures=True)
        with _children_ignore_interrupts():  # a submit starts the worker processes it needs
            futures = {self._pool.submit(fn, task): index for index, task in enumerate(tasks)}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()

    def close(self, abort: bool = False) -> None:
        """Shut the pool down; ``abort`` (an interrupt or a failure in the driver) ends the
        running fits instead of waiting for them: their results are not wanted, and waiting took
        39 s after a `kill -INT` of a 150k-shot train (measured)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if not abort:
            pool.shutdown(cancel_futures=True)
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())  # the executor offers no terminate before 3.14
        manager = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=ABORT_JOIN_S)
        if manager is not None:
            # it notices the ended workers and closes its wake-up pipe; left running, the
            # interpreter's exit hook could write to that pipe as it closed (an OSError traceback)
            manager.join(timeout=ABORT_JOIN_S)


def _on_worker(fn: Callable[[T], R], task: T) -> R:
    """Runs on a Dask worker: one thread for TensorFlow and BLAS there too (parallelism comes from
    the workers; a fit spreading over every core of a shared node slows its neighbours)."""
    from model_store.group_training import init_worker

    init_worker()
    return fn(task)


class DaskCluster:
    """Fits as Dask tasks, one per task, on a connected ``distributed.Client``.

    Each task carries its own data in the graph rather than as scattered data: a task whose worker
    dies can then be run again elsewhere (scattered data would die with the worker). At most
    ``IN_FLIGHT_PER_WORKER`` tasks per worker are submitted at a time, the next as one finishes:
    the scheduler holds the data of every submitted task until it is done (with ``local:N`` the
    scheduler is this process), so a plant's whole history is never on the cluster at once.
    """

    def __init__(self, client: Any, description: str):
        self.client = client
        self.description = description

    def _window(self) -> int:
        workers = len(self.client.scheduler_info().get("workers", {})) or 1
        return max(IN_FLIGHT_PER_WORKER * workers, 2)

    def map(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Iterator[tuple[int, R]]:
        import warnings

        from distributed import as_completed as completed

        run = uuid.uuid4().hex[:8]  # keys readable on the dashboard, unique across runs on one cluster
        name = getattr(fn, "__name__", "fit")

        def submit(index: int) -> Any:
            with warnings.catch_warnings():
                # A group's rows are the task's input; sending them is the point, not an accident.
                warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")
                return self.client.submit(_on_worker, fn, tasks[index], pure=False, key=f"{name}-{run}-{index}")

        waiting = iter(range(len(tasks)))
        futures = {submit(index): index for _, index in zip(range(self._window()), waiting)}  # zip stops before taking one more
        pending = completed(list(futures))
        try:
            for future in pending:
                result = future.result()  # raises the task's error, or KilledWorker after ALLOWED_FAILURES deaths
                index = futures.pop(future)
                following = next(waiting, None)
                if following is not None:
                    new = submit(following)
                    futures[new] = following
                    pending.add(new)
                future.release()  # written by the caller: not kept on the cluster
                yield index, result
        finally:
            self.client.cancel(list(futures))


def parse_cluster(value: str) -> tuple[str, int | str]:
    """``local:N`` -> ("local", N); anything else is a scheduler address -> ("address", value)."""
    if value.startswith(LOCAL_PREFIX):
        count = value[len(LOCAL_PREFIX):]
        if not count.isdigit() or int(count) < 1:
            raise ClusterError(f"--cluster {value}: expected local:N with N >= 1 worker processes, or a scheduler address "
                               f"such as tcp://scheduler:8786")
        return "local", int(count)
    if "://" not in value and ":" not in value:
        raise ClusterError(f"--cluster {value}: expected a scheduler address such as tcp://scheduler:8786, or local:N")
    return "address", value


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ClusterError(f"--cluster needs Dask's distributed scheduler, which is not installed: {INSTALL_CLUSTER}") from None
    return distributed


def check_cluster(value: str) -> None:
    """Fail on a bad ``--cluster`` value or a missing Dask before any input is read."""
    parse_cluster(value)
    _distributed()


@contextmanager
def open_dispatcher(cluster: str | None, workers: int = 1, memory_limit: str = "4GB",
                    connect_timeout: float = CONNECT_TIMEOUT_S) -> Iterator[Dispatcher]:
    """The dispatcher for ``--cluster`` (None: this process, or a pool of ``workers`` processes, 0 =
    one per core).

    ``memory_limit`` bounds each worker of a ``local:N`` cluster (Dask pauses a worker near it and
    restarts one past it; its fits are then retried elsewhere); a remote cluster's workers keep the
    limits they were started with.
    """
    if cluster is None:
        workers = workers or os.cpu_count() or 1
        if workers <= 1:
            yield InProcess()
            return
        pool = ProcessPool(workers)
        try:
            yield pool
        except BaseException:
            pool.close(abort=True)
            raise
        finally:
            pool.close()
        return
    kind, target = parse_cluster(cluster)
    distributed = _distributed()
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        if kind == "local":
            with distributed.LocalCluster(n_workers=int(target), threads_per_worker=1, processes=True, memory_limit=memory_limit,
                                          dashboard_address=None, scheduler_port=0) as local, \
                    distributed.Client(local) as client:
                yield DaskCluster(client, f"local Dask cluster of {target} worker processes ({memory_limit} each)")
            return
        try:
            client = distributed.Client(str(target), timeout=connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"--cluster {target}: no Dask scheduler answered there within {connect_timeout:g} s "
                               f"({type(exc).__name__}); is it running, and is the address right?") from None
        with client:
            yield DaskCluster(client, f"Dask cluster at {target}")
