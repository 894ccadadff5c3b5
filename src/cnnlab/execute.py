"""The one place that trains a list of runs: one entry point, one stream of events, every path.

`execute(configs, data, device=..., workers=...)` picks the path for the device and yields the
same `events.Event`s on every one of them: `started`, `progress` (one per epoch), then `done`
with the RunResult or `failed` with the reason. A run that fails is reported, never raised; the
others go on. Closing the events early (Ctrl-C, an error in the consumer) stops the training.

The paths (see docs/architecture.md):
- CPU, several runs and workers: lone runs side by side in worker processes (`workers`).
- CPU otherwise: one run after another in a thread of this process (`streams`, one thread).
- CUDA: compatible runs trained together as groups (`batched.schedule`), the groups side by
  side in threads with a CUDA stream each (`streams`; `workers` 1: one after another).
`cnnlab study`, the benchmarks, the Python API and the tests all consume this stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from cnnlab import batched, ray_backend, streams, train
from cnnlab import workers as workers_module
from cnnlab.config import RunConfig, check_workers
from cnnlab.data import Cifar10
from cnnlab.errors import CnnlabError
from cnnlab.events import Event
from cnnlab.metrics import RunResult
from cnnlab.streams import GroupTrainer
from cnnlab.studyfile import BACKENDS


@dataclass
class Execution:
    """The events of training some runs, and a line that says how they train."""

    events: Iterator[Event]
    how: str

    def __iter__(self) -> Iterator[Event]:
        return self.events

    def close(self) -> None:
        """Stop the training (the runs in hand are neither done nor failed)."""
        self.events.close()  # type: ignore[attr-defined]


def execute(
    configs: Sequence[RunConfig],
    data: Cifar10,
    *,
    device: str = "auto",
    workers: int | None = None,
    train_group: GroupTrainer | None = None,
    backend: str = "local",
    address: str | None = None,
) -> Execution:
    """Train every config by the fastest path for `device`, as a stream of events.

    `workers`: how many runs (CPU processes) or groups (CUDA streams) train at once; None picks
    (one process per core, up to 8 streams); 1 trains one after another in this process.
    `train_group` replaces `batched.train_together` (tests, custom trainers): the runs then
    train one at a time, in this process. `backend` "ray" trains the runs as Ray tasks
    (`ray_backend`; `address`: a cluster's, else a local instance; `workers` does not apply).
    """
    check_workers(workers)
    if backend not in BACKENDS:
        raise CnnlabError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "ray":
        if train_group is not None:
            raise ValueError("train_group trains in this process: it needs backend='local'")
        events = ray_backend.train_on_ray(configs, data, device=device, address=address)
        return Execution(events, ray_backend.describe(address))
    target = train.resolve_device(device)
    if train_group is not None:
        events = streams.train_concurrently(
            configs, _alone(configs), data, device=target, streams=1, train_group=train_group
        )
        return Execution(events, "training one run after another in this process")
    processes = workers_module.process_count(len(configs), target, workers)
    threads = workers_module.threads_per_run(workers)
    if processes > 1:
        events = workers_module.train_parallel(configs, data, processes=processes, threads=threads)
        return Execution(
            events,
            f"training on the CPU in {processes} worker processes side by side,"
            f" {threads} thread(s) each",
        )
    groups, count = plan_in_process(configs, target, workers)
    events = streams.train_concurrently(configs, groups, data, device=target, streams=count)
    if target.type == "cpu":
        how = f"training on the CPU in this process, one run after another, {threads} thread(s)"
        if count > 1:
            how = f"training {len(groups)} group(s) of runs on the CPU, {count} at a time"
        return Execution(_with_threads(events, threads), how)
    return Execution(
        events,
        f"training {len(groups)} group(s) of runs on {target}, {count} at a time"
        " (one CUDA stream each)",
    )


def plan_in_process(
    configs: Sequence[RunConfig], target: torch.device, workers: int | None
) -> tuple[list[list[int]], int]:
    """The groups trained in this process (`batched.schedule`) and how many at once.

    On the CPU one at a time: two threads of one process would share its cores, where worker
    processes do better. On CUDA up to `streams.MAX_STREAMS` at once (`workers`: exactly).
    """
    groups = batched.schedule(configs, target)
    if target.type == "cpu":
        return groups, 1
    return groups, streams.stream_count(len(groups), workers)


def train_all(
    configs: Sequence[RunConfig],
    data: Cifar10,
    *,
    device: str = "auto",
    workers: int | None = None,
) -> list[RunResult | str]:
    """Every config's RunResult (or the reason it failed, a string), in the order of `configs`."""
    outcomes: list[RunResult | str] = ["not run"] * len(configs)
    execution = execute(configs, data, device=device, workers=workers)
    try:
        for event in execution:
            if event.kind in ("done", "failed"):
                outcomes[event.index] = event.payload
    finally:
        execution.close()
    return outcomes


def _with_threads(events: Iterator[Event], threads: int) -> Iterator[Event]:
    """`events`, with torch using `threads` CPU threads while they are drawn."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield from events
    finally:
        events.close()  # type: ignore[attr-defined]
        torch.set_num_threads(previous)


def _alone(configs: Sequence[RunConfig]) -> list[list[int]]:
    return [[index] for index in range(len(configs))]
