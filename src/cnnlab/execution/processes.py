"""Lone CPU runs trained side by side in worker processes, each with a share of the cores.

A net this small does not keep several cores busy within one step: on 2 cores, two
single-threaded processes training different runs get through about 1.35 times the work of one
process using both threads (measured). So on the CPU a study's runs go to a pool of processes,
longest first (by their network FLOPs), and each worker trains its run with `loop.fit` exactly
as the parent would, only with fewer threads.

Workers are spawned (never forked from a process whose thread pools are running) without
re-running the parent's `__main__`, so a user's script needs no `if __name__ == "__main__":`
guard. They get the data once, as their first message (memory-mapped arrays by file name, so
the pages are shared), ignore Ctrl-C (the parent stops them) and, on Linux, die with the
parent, so a killed study leaves no orphan training behind.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from cnnlab.config import RunConfig
from cnnlab.data.datasets import Dataset
from cnnlab.execution.events import ENDED, Event, EventKind, failure_reason
from cnnlab.execution.planning import cpu_count, longest_first
from cnnlab.execution.transport import portable, rebuild, weights_as_arrays, weights_as_tensors
from cnnlab.training import loop
from cnnlab.training.loop import Job, as_jobs

# How long a worker may take to leave after being told to, before it is killed (seconds).
_EXIT_GRACE_SECONDS = 5.0


def train_parallel(
    jobs: Sequence[Job | RunConfig],
    data: Dataset,
    *,
    processes: int,
    threads: int | None = None,
) -> Iterator[Event]:
    """Train every job with `loop.fit` on the CPU in `processes` workers, as events.

    Each worker uses `threads` CPU threads (default: its share of the cores); a job's `prune`
    (if any) travels with its config.

    Each run yields STARTED, an EPOCH event per epoch, then RESULT (with its RunResult) or ERROR
    (with the reason: the run's exception, or its worker's death). Closing the iterator early
    (an exception in the consumer, Ctrl-C) kills the workers.
    """
    jobs = as_jobs(jobs)
    threads = threads or max(1, cpu_count() // processes)
    waiting = collections.deque(longest_first([job.config for job in jobs]))
    pool = _Pool(portable(data), threads)
    try:
        pool.start_workers(min(processes, len(waiting)))
        for worker in pool.workers:
            worker.assign(waiting.popleft(), jobs)
        while any(worker.index is not None for worker in pool.workers):
            busy = [worker for worker in pool.workers if worker.index is not None]
            handles = [worker.connection for worker in busy]
            ready = multiprocessing.connection.wait(
                handles + [worker.process.sentinel for worker in busy]
            )
            for worker in busy:
                if worker.connection not in ready and worker.process.sentinel not in ready:
                    continue
                yield from worker.drain()
                if not worker.process.is_alive():
                    if worker.index is not None:
                        lost, worker.index = worker.index, None
                        yield Event(EventKind.ERROR, lost, worker.death())
                    worker = pool.replace(worker) if waiting else None
                if worker is not None and worker.index is None and waiting:
                    worker.assign(waiting.popleft(), jobs)
        pool.close()
    finally:
        pool.kill()


class _Worker:
    """One worker process, the parent's end of its pipe, and the config index it trains."""

    def __init__(self, process: Any, connection: multiprocessing.connection.Connection):
        self.process = process
        self.connection = connection
        self.index: int | None = None

    def assign(self, index: int, jobs: Sequence[Job]) -> None:
        self.index = index
        with contextlib.suppress(OSError):  # a dead worker: the caller sees it through is_alive()
            self.connection.send((index, jobs[index]))

    def drain(self) -> Iterator[Event]:
        """The events waiting in the pipe; a finished run frees the worker."""
        try:
            while self.connection.poll():
                kind, index, payload = self.connection.recv()
                if kind == EventKind.RESULT:
                    payload = weights_as_tensors(payload)
                if kind in ENDED:
                    self.index = None
                yield Event(kind, index, payload)
        except (EOFError, OSError):
            return  # the worker is gone; the caller sees it through is_alive()

    def death(self) -> str:
        self.process.join(timeout=_EXIT_GRACE_SECONDS)
        code = self.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return f"its worker process died ({how})"


class _Pool:
    def __init__(self, portable_data: Any, threads: int):
        self.context = multiprocessing.get_context("spawn")
        self.portable_data = portable_data
        self.threads = threads
        self.workers: list[_Worker] = []

    def start_workers(self, count: int) -> None:
        """Start `count` workers (they import torch side by side), then hand each the data.

        The data goes through the worker's pipe, not the Process's arguments: spawn writes those
        while the parent still holds the child's end, so a child dying before it had read them
        all would leave the parent blocked for ever. A send to a dead worker fails instead.
        """
        started = []
        for _ in range(count):
            parent_end, child_end = self.context.Pipe()
            process = self.context.Process(
                target=_worker_main,
                args=(child_end, self.threads, os.getpid()),
                name=f"cnnlab-worker-{len(self.workers) + len(started)}",
                daemon=True,
            )
            # The signal mask is inherited through exec: a starting worker holds Ctrl-C too,
            # until it has chosen to ignore it; this process gets its Ctrl-C right after.
            with _ctrl_c_held(), _main_module_hidden():
                process.start()
            child_end.close()
            started.append(_Worker(process, parent_end))
        for worker in started:
            with contextlib.suppress(OSError):  # it died starting: seen through is_alive()
                worker.connection.send(self.portable_data)
        self.workers.extend(started)

    def replace(self, worker: _Worker) -> _Worker:
        """A new worker in place of a dead one."""
        worker.connection.close()
        self.workers.remove(worker)
        self.start_workers(1)
        return self.workers[-1]

    def close(self) -> None:
        """Tell every worker to leave, and wait for it."""
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.connection.send(None)
        for worker in self.workers:
            worker.process.join(timeout=_EXIT_GRACE_SECONDS)

    def kill(self) -> None:
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join()
            worker.connection.close()


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """A bare `__main__` meanwhile, so spawned children do not re-run the user's script.

    Spawn runs the parent's main module again in every child (as `__mp_main__`), which makes an
    unguarded script start its study again there and fail. Workers need nothing from it: their
    target and everything they receive live in cnnlab.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """SIGINT blocked in this thread meanwhile: held, not lost (children inherit the mask).

    Ignoring it instead (the disposition is inherited too) lost a Ctrl-C pressed while the
    workers started: the study trained on. A blocked one is delivered when the block ends.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# --- inside a worker --------------------------------------------------------------------------


def _worker_main(
    connection: multiprocessing.connection.Connection, threads: int, parent_pid: int
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent acts
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held while starting
    _die_with_parent(parent_pid)
    torch.set_num_threads(threads)
    try:
        data = rebuild(connection.recv())
    except (EOFError, OSError):
        return
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        index, job = task
        connection.send((EventKind.STARTED, index, None))

        def progress(row: dict[str, Any], index: int = index) -> None:
            connection.send((EventKind.EPOCH, index, row))

        try:
            result = loop.fit(job.config, data, device="cpu", progress=progress, prune=job.prune)
        except Exception as error:  # the parent records the run as failed and goes on
            connection.send((EventKind.ERROR, index, failure_reason(error)))
        else:
            connection.send((EventKind.RESULT, index, weights_as_arrays(result)))


def _die_with_parent(parent_pid: int) -> None:
    """On Linux, have the kernel kill this process when the parent dies (even by kill -9)."""
    if not sys.platform.startswith("linux"):
        return  # elsewhere the worker leaves when its pipe closes, after the run in hand
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the request took effect
