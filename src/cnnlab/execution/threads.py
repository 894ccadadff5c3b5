"""Groups of runs trained in threads of this process, on CUDA each group on its own stream.

A step of the seed net is bound by latency on a GPU: its kernels fill a fraction of the device,
so one group replaying its CUDA graph leaves most of it idle. The seed study's groups differ in
training-set size or architecture, so they cannot share one grouped network; instead each group
trains in a thread of its own with its own stream, and the device runs their kernels at the
same time. The longest group starts first (by a member's network FLOPs), so the study takes
about as long as its longest group.

Each thread runs `group_net.train_together` unchanged. What makes that safe on one GPU by
construction, not by timing (docs/cuda.md): a thread's CUDA work holds `device.GATE` shared and
lets it go only between epochs (`pause`), a graph capture holds it alone, so no other thread's
call (cuDNN's autotuner, a copy to the host) can run during a capture; each thread's stream
comes from `device.STREAMS`, so no two threads, and no capture, share a stream; runs in the
deterministic mode change process-wide math settings, so a study with any trains one group at
a time. The threads report through the same events as the CPU's worker
processes (`events.Event`), and the consumer records runs while the device trains the others.
Closing the events early (Ctrl-C, an error in the consumer) stops every thread at its next
epoch's end. With one thread this is also the CPU's in-process path: one run after another,
reported as it goes.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from cnnlab.config import RunConfig
from cnnlab.data.datasets import Dataset
from cnnlab.execution.events import Event, EventKind, failure_reason
from cnnlab.execution.planning import longest_first
from cnnlab.training import group_net
from cnnlab.training.device import GATE, STREAMS, fast_cuda_math, resolve_device
from cnnlab.training.loop import Job, as_jobs
from cnnlab.training.metrics import RunResult

# Trains one group: (jobs, data, *, device, progress) -> one RunResult per job.
GroupTrainer = Callable[..., list[RunResult]]
# How long closing the events waits for the threads to reach an epoch's end (seconds).
_STOP_GRACE_SECONDS = 60.0


class _Stopped(Exception):
    """Raised inside a group's thread at an epoch's end once the events are closed."""


def train_concurrently(
    jobs: Sequence[Job | RunConfig],
    groups: Sequence[Sequence[int]],
    data: Dataset,
    *,
    device: str | torch.device,
    streams: int,
    train_group: GroupTrainer | None = None,
) -> Iterator[Event]:
    """Train `groups` (lists of indices into `jobs`), `streams` of them at a time.

    `train_group` trains one group (default `group_net.train_together`). Yields each member's
    STARTED, EPOCH (one per epoch), then RESULT with its RunResult or ERROR with the reason, as
    the worker processes do (`execution.processes`).
    """
    train_group = train_group or group_net.train_together
    jobs = as_jobs(jobs)
    configs = [job.config for job in jobs]
    target = resolve_device(device)
    if target.type == "cuda" and any(config.deterministic for config in configs):
        streams = 1  # the deterministic math is process-wide: no fast group beside it
    events: queue.Queue[Event | None] = queue.Queue()
    # A group takes about as long as one of its members: order the groups by their first.
    waiting = [list(groups[g]) for g in longest_first([configs[g[0]] for g in groups])]
    lock = threading.Lock()  # guards `waiting`
    stop = threading.Event()

    def next_group() -> list[int] | None:
        with lock:
            return waiting.pop(0) if waiting and not stop.is_set() else None

    def serve() -> None:
        try:
            while (group := next_group()) is not None:
                members = [jobs[i] for i in group]
                _train_group(train_group, members, group, data, target, events, stop)
        finally:
            events.put(None)  # this thread is done

    threads = [
        threading.Thread(target=serve, name=f"cnnlab-group-{n}", daemon=True)
        for n in range(max(1, min(streams, len(waiting))))
    ]
    fast_math = fast_cuda_math() if target.type == "cuda" else contextlib.nullcontext()
    with fast_math:
        for thread in threads:
            thread.start()
        try:
            running = len(threads)
            while running:
                event = events.get()
                if event is None:
                    running -= 1
                else:
                    yield event
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=_STOP_GRACE_SECONDS)


def _train_group(
    train_group: GroupTrainer,
    jobs: list[Job],
    group: list[int],
    data: Dataset,
    target: torch.device,
    events: queue.Queue[Event | None],
    stop: threading.Event,
) -> None:
    for index in group:
        events.put(Event(EventKind.STARTED, index))

    def progress(row: dict[str, Any]) -> None:
        events.put(Event(EventKind.EPOCH, group[row.get("member", 0)], row))
        if stop.is_set():
            raise _Stopped
        GATE.pause()  # an epoch's end: a waiting capture in another thread may run now

    try:
        # Every CUDA call of the group is inside the gate's shared hold (docs/cuda.md).
        with GATE.shared(), _own_stream(target):
            results = train_group(jobs, data, device=str(target), progress=progress)
    except _Stopped:
        return
    except Exception as error:  # this group's runs fail; the other groups go on
        reason = failure_reason(error)
        for index in group:
            events.put(Event(EventKind.ERROR, index, reason))
        return
    for index, result in zip(group, results, strict=True):
        events.put(Event(EventKind.RESULT, index, result))


@contextlib.contextmanager
def _own_stream(target: torch.device) -> Iterator[None]:
    """On CUDA the calling thread works on a stream no other thread has (current streams are
    per thread)."""
    if target.type != "cuda":
        yield
        return
    with torch.cuda.device(target), STREAMS.dedicated(target) as stream, torch.cuda.stream(stream):
        yield
