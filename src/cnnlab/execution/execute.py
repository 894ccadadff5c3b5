"""The one place that trains a list of runs: one entry point, one stream of events, every path.

`execute(runs, data, device=..., workers=...)` picks the path for the device and yields the
same `events.Event`s on every one of them: STARTED, EPOCH (one per epoch), then RESULT with the
RunResult or ERROR with the reason. A run that fails is reported, never raised; the
others go on. Closing the events early (Ctrl-C, an error in the consumer) stops the training.

The paths (see docs/architecture.md):
- CPU, several runs and workers: lone runs side by side in worker processes (`processes`).
- CPU otherwise: one run after another in a thread of this process (`threads`, one thread).
- CUDA: compatible runs trained together as groups (`planning.schedule`), the groups side by
  side in threads with a CUDA stream each (`threads`; `workers` 1: one after another).
- Ray: runs (or groups) as Ray tasks (`ray_tasks`).
The backends are siblings: none imports another; they share `planning` (counts, order, groups)
and `transport` (what crosses a process). `cnnlab study`, the benchmarks, the Python API and
the tests all consume this stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from cnnlab.config import BACKENDS, RunConfig, check_workers
from cnnlab.data.datasets import Dataset
from cnnlab.errors import CnnlabError
from cnnlab.execution import planning, processes, ray_tasks, threads
from cnnlab.execution.events import ENDED, Event
from cnnlab.training.device import resolve_device
from cnnlab.training.loop import Job, as_jobs
from cnnlab.training.metrics import RunResult


@dataclass
class Training:
    """The events of training some runs, and a line that says how they train."""

    events: Iterator[Event]
    how: str

    def __iter__(self) -> Iterator[Event]:
        return self.events

    def close(self) -> None:
        """Stop the training (the runs in hand are neither done nor failed)."""
        self.events.close()  # type: ignore[attr-defined]


def execute(
    runs: Sequence[RunConfig | Job],
    data: Dataset,
    *,
    device: str = "auto",
    workers: int | None = None,
    backend: str = "local",
    address: str | None = None,
) -> Training:
    """Train every run (a config, or a `loop.Job` or anything with a config and a prune, as a
    study's planned run) by the fastest path for `device`, as a stream of events.

    A run's `prune`, told its history after each epoch in whichever process trains it, may stop
    it there (`loop.fit_members`); it must pickle.

    `workers`: how many runs (CPU processes) or groups (CUDA streams) train at once; None picks
    (one process per core, up to 8 streams); 1 trains one after another in this process.
    `backend` "ray" trains the runs as Ray tasks (`ray_tasks`; `address`: a cluster's, else a
    local instance; `workers` does not apply).
    """
    check_workers(workers)
    jobs = as_jobs(runs)
    configs = [job.config for job in jobs]
    if backend not in BACKENDS:
        raise CnnlabError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "ray":
        events = ray_tasks.train_on_ray(jobs, data, device=device, address=address)
        return Training(events, ray_tasks.describe(address))
    target = resolve_device(device)
    process_count = planning.process_count(len(configs), target.type, workers)
    thread_count = planning.threads_per_run(workers)
    if process_count > 1:
        events = processes.train_parallel(jobs, data, processes=process_count, threads=thread_count)
        return Training(
            events,
            f"training on the CPU in {process_count} worker processes side by side,"
            f" {thread_count} thread(s) each",
        )
    groups, count = plan_in_process(configs, target, workers)
    events = threads.train_concurrently(jobs, groups, data, device=target, streams=count)
    if target.type == "cpu":
        how = (
            f"training on the CPU in this process, one run after another, {thread_count} thread(s)"
        )
        if count > 1:
            how = f"training {len(groups)} group(s) of runs on the CPU, {count} at a time"
        return Training(with_threads(events, thread_count), how)
    return Training(
        events,
        f"training {len(groups)} group(s) of runs on {target}, {count} at a time"
        " (one CUDA stream each)",
    )


def plan_in_process(
    configs: Sequence[RunConfig], target: torch.device, workers: int | None
) -> tuple[list[list[int]], int]:
    """The groups trained in this process (`planning.schedule`) and how many at once.

    On the CPU one at a time: two threads of one process would share its cores, where worker
    processes do better. On CUDA up to `planning.MAX_STREAMS` at once (`workers`: exactly).
    """
    groups = planning.schedule(configs, target.type)
    if target.type == "cpu" or any(config.deterministic for config in configs):
        return groups, 1  # the deterministic mode's math is process-wide (`threads`)
    return groups, planning.stream_count(len(groups), workers)


def train_all(
    configs: Sequence[RunConfig],
    data: Dataset,
    *,
    device: str = "auto",
    workers: int | None = None,
) -> list[RunResult | str]:
    """Every config's RunResult (or the reason it failed, a string), in the order of `configs`."""
    outcomes: list[RunResult | str] = ["not run"] * len(configs)
    execution = execute(configs, data, device=device, workers=workers)
    try:
        for event in execution:
            if event.kind in ENDED:
                outcomes[event.index] = event.payload
    finally:
        execution.close()
    return outcomes


def with_threads(events: Iterator[Event], threads: int) -> Iterator[Event]:
    """`events`, with torch using `threads` CPU threads while they are drawn."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield from events
    finally:
        events.close()  # type: ignore[attr-defined]
        torch.set_num_threads(previous)
