"""Runs trained as Ray tasks: a study beyond one machine, scheduled by Ray Core.

Every run (on the CPU) or group of runs (on GPUs: `planning.schedule`'s groups) becomes one Ray
task that declares what it needs: `cpus_per_run` CPUs, and on GPUs a fraction of one GPU, so that
several small groups share a device as the local CUDA path trains up to `planning.MAX_STREAMS`
groups side by side. A task trains as the local paths do (`group_net.train_together`: `loop.fit`
for a lone run on the CPU, with `cpus_per_run` threads) and returns its RunResults with the
weights as NumPy arrays; the driver yields the same `events.Event`s as every local path, so the
study's store and run folders stay at the driver and the nodes need no shared file system.

Events: a task sends `started` and each epoch's row to one small actor (`Mailbox`), which the
driver empties while it waits for the tasks. The task does not wait for those sends (only for
the last one, before it returns): Ray lends a task's CPUs to other tasks while it waits, so a
task waiting once per epoch would let every pending run start on the node at once.

Faults: a task whose worker process or node dies is retried by Ray up to `max_retries` times;
the retry trains from the start, and the driver passes on neither its second `started` nor the
epochs already reported. An exception in training is not retried: the run fails with the
reason, as on every path. Closing the events cancels the tasks still out (their runs are
neither done nor failed).

Data: the driver puts the arrays once into Ray's object store. Where `data` came from a file
that exists at the driver, a task loads that file where its node has it with the same checksum
and fetches the arrays only where it does not; other data (no file) goes to every task as an
argument, which Ray fetches to the node before the task starts (once per node).

Ray is imported only when Ray trains: local training needs no Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.config import RunConfig, run_id
from cnnlab.data.datasets import Dataset, load_dataset
from cnnlab.errors import CnnlabError
from cnnlab.execution.events import Event, EventKind, failure_reason
from cnnlab.execution.planning import MAX_STREAMS, cpu_count, longest_first, schedule
from cnnlab.execution.transport import weights_as_arrays, weights_as_tensors
from cnnlab.training import group_net
from cnnlab.training.loop import Job, as_jobs

MISSING_RAY = "--backend ray needs Ray: pip install 'cnnlab[ray]'"
DEFAULT_MAX_RETRIES = 2  # retries of a task whose worker process or node died
# A group's share of one GPU: as many groups share a device as the local path trains at once.
GPUS_PER_GROUP = 1 / MAX_STREAMS
DEVICES = ("auto", "cpu", "cuda")  # Ray picks the GPU; "auto": CUDA where the cluster has GPUs
# How long the driver waits for a task to finish before it passes on the tasks' messages (s).
_POLL_SECONDS = 0.2


def train_on_ray(
    jobs: Sequence[Job | RunConfig],
    data: Dataset,
    *,
    device: str = "auto",
    address: str | None = None,
    cpus_per_run: int = 1,
    gpus_per_group: float = GPUS_PER_GROUP,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> Iterator[Event]:
    """Train every job as Ray tasks, yielding the events every local path yields.

    A job's `prune` (if any) travels with its task and is asked in the Ray worker.

    `address`: an existing cluster's (`ray.init(address=...)`), else $RAY_ADDRESS, else a Ray
    instance started on this machine with one CPU per core (shut down at the end). A Ray already
    initialised in this process is used as it is. Checks its arguments (and that Ray is
    installed) now; connects when the first event is asked for.
    """
    _import_ray()
    if device not in DEVICES:
        raise CnnlabError(f"device {device!r}: with --backend ray use one of {', '.join(DEVICES)}")
    if isinstance(cpus_per_run, bool) or not isinstance(cpus_per_run, int) or cpus_per_run < 1:
        raise CnnlabError(f"cpus_per_run {cpus_per_run!r}: must be an integer of at least 1")
    if not 0 < gpus_per_group <= 1:
        raise CnnlabError(f"gpus_per_group {gpus_per_group!r}: must be in (0, 1]")
    if max_retries < 0:
        raise CnnlabError(f"max_retries {max_retries!r}: must not be negative")
    return _events(
        as_jobs(jobs),
        data,
        device=device,
        address=address or os.environ.get("RAY_ADDRESS") or None,
        cpus_per_run=cpus_per_run,
        gpus_per_group=gpus_per_group,
        max_retries=max_retries,
    )


def describe(address: str | None) -> str:
    """How `train_on_ray` trains, in a line (before it has connected)."""
    address = address or os.environ.get("RAY_ADDRESS")
    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
    return f"training on {where}, one Ray task per run (per group of runs on GPUs)"


def task_name(configs: Sequence[RunConfig]) -> str:
    """A task's name in Ray's listings and its worker's process title: its first run's id."""
    others = f" +{len(configs) - 1}" if len(configs) > 1 else ""
    return f"cnnlab {run_id(configs[0])}{others}"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise CnnlabError(MISSING_RAY) from None
    return ray


def _events(
    jobs: list[Job],
    data: Dataset,
    *,
    device: str,
    address: str | None,
    cpus_per_run: int,
    gpus_per_group: float,
    max_retries: int,
) -> Iterator[Event]:
    ray = _import_ray()
    connected_here = not ray.is_initialized()
    environment = dict(os.environ)  # what a local instance's start changes, restored after
    reaper = _connect(ray, address) if connected_here else None
    outstanding: dict[Any, list[int]] = {}  # task -> the config indices it trains
    mailbox = None
    try:
        target = _cluster_device(ray, device, cpus_per_run)
        configs = [job.config for job in jobs]
        groups = schedule(configs, torch.device(target).type)
        mailbox = ray.remote(num_cpus=0)(Mailbox).remote()
        stored = ray.put(_plain(data))  # once per call
        # Nested in a list, Ray leaves the arrays where they are until a task asks for them.
        shared = SharedData(
            data.name, data.source, data.source_sha256, data.train_images.shape, [stored]
        )
        given = None if _has_file(data) else stored
        options: dict[str, Any] = {
            "num_cpus": cpus_per_run,
            "max_retries": max_retries,
            "retry_exceptions": False,
        }
        if target == "cuda":
            options["num_gpus"] = gpus_per_group
        task = ray.remote(train_task)
        # A group takes about as long as one of its members: the longest first.
        for position in longest_first([configs[group[0]] for group in groups]):
            group = groups[position]
            members = [jobs[index] for index in group]
            named = task.options(name=task_name([job.config for job in members]), **options)
            reference = named.remote(members, group, shared, mailbox, target, cpus_per_run, given)
            outstanding[reference] = group
        relay = _Relay()
        while outstanding:
            ready, _ = ray.wait(list(outstanding), num_returns=1, timeout=_POLL_SECONDS)
            # A task's messages have all arrived before it returns: its rows come before its end.
            for kind, index, payload in ray.get(mailbox.take.remote()):
                yield from relay.message(kind, index, payload)
            for reference in ready:
                group = outstanding.pop(reference)
                for index, kind, payload in _outcomes(ray, reference, group, max_retries):
                    yield from relay.finish(kind, index, payload)
    finally:
        for reference in outstanding:
            with contextlib.suppress(Exception):  # already finished or gone: nothing to stop
                ray.cancel(reference, force=True)
        if mailbox is not None:
            with contextlib.suppress(Exception):
                ray.kill(mailbox)
        if connected_here:
            ray.shutdown()
            _release(reaper)
            _restore(environment)


def _connect(ray: Any, address: str | None) -> subprocess.Popen | None:
    """Join the cluster at `address`, else start a quiet Ray instance with one CPU per core.

    A Ray started here comes with its reaper (`cnnlab.execution.reaper`): its processes end
    with this one, however it ends. Returns the reaper, for `_release`.
    """
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        reaper = subprocess.Popen(
            [sys.executable, "-m", "cnnlab.execution.reaper", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a Ctrl-C at the terminal reaches the driver, not it
        )
        try:
            reaper.stdout.readline()  # "ready": it knows which processes were here before
            # "local": a new instance, even where a cluster was started on this machine.
            ray.init("local", num_cpus=cpu_count(), include_dashboard=False, **quiet)
            with contextlib.suppress(AttributeError):  # where Ray keeps it is not public
                session = ray._private.worker._global_node.get_session_dir_path()
                reaper.stdin.write(f"session {session}\n")
                reaper.stdin.flush()
        except BaseException:
            with contextlib.suppress(Exception):
                ray.shutdown()  # what Ray started before it failed
            _release(reaper)
            raise
        return reaper
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as error:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, ray.exceptions.AuthenticationError):
            cause = cause.__cause__
        if cause is not None:  # Ray turns token authentication on only where it is told to
            raise CnnlabError(
                f"Ray at {address}: the cluster wants its token: set RAY_AUTH_MODE=token and"
                " RAY_AUTH_TOKEN (or put the token in ~/.ray/auth_token)"
            ) from None
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise CnnlabError(f"Ray at {address}: cannot connect: {first_line}") from None
    return None


def _restore(environment: dict[str, str]) -> None:
    """This process's environment as it was before Ray started here.

    Starting a local instance sets RAY_AUTH_MODE=token (and PYTHONBREAKPOINT, usage stats) in
    os.environ for good: a later join of a cluster started without a token then fails.
    """
    for name in set(os.environ) - set(environment):
        del os.environ[name]
    for name, value in environment.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _release(reaper: subprocess.Popen | None) -> None:
    """Ray was shut down in order: its reaper ends without killing anything."""
    if reaper is not None:
        with contextlib.suppress(OSError):
            reaper.stdin.write("end\n")
            reaper.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            reaper.wait(timeout=10)


def _cluster_device(ray: Any, device: str, cpus_per_run: int) -> str:
    """'cuda' or 'cpu' for `device` on this cluster; a task no node could run is an error now."""
    gpus = ray.cluster_resources().get("GPU", 0)
    target = "cuda" if device == "cuda" or (device == "auto" and gpus > 0) else "cpu"
    if target == "cuda" and gpus == 0:
        raise CnnlabError("device cuda: the Ray cluster has no GPU")
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    largest = max((resources.get("CPU", 0) for resources in nodes), default=0)
    if cpus_per_run > largest:
        raise CnnlabError(
            f"cpus_per_run {cpus_per_run}: no node of the Ray cluster has that many CPUs"
            f" (the largest has {largest:g})"
        )
    return target


class Mailbox:
    """The tasks' messages, (STARTED | EPOCH, run index, row), in the order they came."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, int, Any]] = []

    def put(self, messages: list[tuple[str, int, Any]]) -> None:
        self.messages.extend(messages)

    def take(self) -> list[tuple[str, int, Any]]:
        """Every message so far, once."""
        messages, self.messages = self.messages, []
        return messages


def _has_file(data: Dataset) -> bool:
    return bool(data.source_sha256) and Path(data.source).exists()


class _Relay:
    """Each run's events once: a retried task starts again and replays its first epochs."""

    def __init__(self) -> None:
        self.started: set[int] = set()
        self.last_epoch: dict[int, int] = {}
        self.finished: set[int] = set()

    def message(self, kind: str, index: int, payload: Any) -> Iterator[Event]:
        if index in self.finished:
            return
        if kind == EventKind.STARTED and index not in self.started:
            self.started.add(index)
            yield Event(EventKind.STARTED, index)
        elif kind == EventKind.EPOCH and payload["epoch"] > self.last_epoch.get(index, 0):
            self.last_epoch[index] = payload["epoch"]
            yield Event(EventKind.EPOCH, index, payload)

    def finish(self, kind: str, index: int, payload: Any) -> Iterator[Event]:
        self.finished.add(index)
        yield Event(kind, index, payload)


def _outcomes(
    ray: Any, reference: Any, group: list[int], max_retries: int
) -> list[tuple[int, str, Any]]:
    """(index, RESULT, RunResult) or (index, ERROR, reason) for each run of a finished task."""
    try:
        outcomes = ray.get(reference)
    except ray.exceptions.RayError as error:
        reason = _ray_failure(ray, error, max_retries)
        return [(index, EventKind.ERROR, reason) for index in group]
    return [
        (index, kind, weights_as_tensors(payload) if kind == EventKind.RESULT else payload)
        for index, (kind, payload) in zip(group, outcomes, strict=True)
    ]


def _ray_failure(ray: Any, error: Exception, max_retries: int) -> str:
    """A failed task's reason in one line (Ray's own messages run to many)."""
    exceptions = ray.exceptions
    tries = "1 try" if max_retries == 0 else f"{max_retries + 1} tries"
    if isinstance(error, exceptions.TaskCancelledError):
        return "its Ray task was cancelled"
    if isinstance(error, exceptions.OutOfMemoryError):
        return f"Ray killed its worker: the node ran out of memory ({tries})"
    if isinstance(error, exceptions.WorkerCrashedError):
        return f"its Ray worker process died ({tries})"
    if isinstance(error, exceptions.NodeDiedError | exceptions.LocalRayletDiedError):
        return f"its Ray node died ({tries})"
    if isinstance(error, exceptions.RayTaskError) and error.cause is not None:
        return failure_reason(error.cause)
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}".strip()


# --- inside a task ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SharedData:
    """Where a task finds the data: the source path on its node, else the object store."""

    name: str  # the dataset's name (`data.load_dataset`)
    source: str
    sha256: str
    train_shape: tuple[int, ...]  # a resized load shows here, where the checksum is the file's
    stored: list[Any]  # [the ObjectRef of the arrays]; nested, so Ray does not fetch it for us


def train_task(
    jobs: list[Job | RunConfig],
    indices: list[int],
    shared: SharedData,
    mailbox: Any,
    device: str,
    threads: int,
    given: Dataset | None = None,
) -> list[tuple[str, Any]]:
    """Train one scheduled group in a Ray worker: (RESULT, RunResult) or (ERROR, reason) each.

    `given`: the data, where the driver passed it whole (it has no file to load).
    """
    ray = _import_ray()
    torch.set_num_threads(threads)
    mailbox.put.remote([(EventKind.STARTED, index, None) for index in indices])

    def progress(row: dict[str, Any]) -> None:
        mailbox.put.remote([(EventKind.EPOCH, indices[row.get("member", 0)], row)])

    try:
        data = given if given is not None else local_copy(shared.name, shared.source, shared.sha256)
        if data is None or data.train_images.shape != shared.train_shape:
            data = ray.get(shared.stored[0])
        results = group_net.train_together(as_jobs(jobs), data, device=device, progress=progress)
        outcomes = [(EventKind.RESULT, weights_as_arrays(result)) for result in results]
    except Exception as error:  # the driver records the runs as failed and goes on
        reason = failure_reason(error)
        outcomes = [(EventKind.ERROR, reason) for _ in jobs]
    # A mailbox runs one caller's calls in order: once this one is done, so are the others.
    ray.get(mailbox.put.remote([]))
    return outcomes


@functools.lru_cache(maxsize=2)
def local_copy(name: str, source: str, sha256: str) -> Dataset | None:
    """Dataset `name` from `source` on this machine if it is there with checksum `sha256`.

    Kept per worker process: a worker that trains several runs loads (memory-maps) it once.
    """
    if not source or not sha256 or not Path(source).exists():
        return None
    try:
        data = load_dataset(name, source)
    except CnnlabError:
        return None
    return data if data.source_sha256 == sha256 else None


# --- moving data and results through Ray --------------------------------------------------------


def _plain(data: Dataset) -> Dataset:
    """`data` with plain arrays (not memory maps), which Ray's object store holds by value."""
    arrays = {
        field.name: np.asarray(getattr(data, field.name))
        for field in dataclasses.fields(data)
        if isinstance(getattr(data, field.name), np.ndarray)
    }
    return dataclasses.replace(data, **arrays)
