"""What every backend plans with: run costs, ordering, worker and stream counts, groups.

No torch: the progress display estimates a study's time from `run_flops`, and the backends
(processes, threads, Ray) share these decisions instead of importing each other's helpers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cnnlab.config import TTA_VIEWS, RunConfig, check_workers
from cnnlab.errors import CnnlabError
from cnnlab.nn.architectures import get_architecture, is_module_net
from cnnlab.nn.shapes import dataset_input, forward_flops
from cnnlab.nn.specs import parse_specs
from cnnlab.training.group_plan import plan_groups

# Groups trained at once on one GPU by default; more streams than this gain nothing on a net
# this small.
MAX_STREAMS = 8
# On CUDA a step of this small net is bound by launch overhead, so members ride along nearly
# free; the cap keeps the epoch's pre-drawn dropout masks (G x samples x features) modest.
CUDA_MAX_MEMBERS = 32


def run_flops(
    config: RunConfig, test_images: int = 10_000, input_shape: tuple[int, ...] | None = None
) -> float:
    """Network FLOPs of a whole run: training (backward ~ 2 forwards), validation, evaluation.

    `input_shape` defaults to the config's named dataset's (an estimate for "images").
    """
    input_shape = input_shape or dataset_input(config)[0]
    try:
        layers = config.layers if config.layers is not None else get_architecture(config.arch)
        forward = forward_flops(parse_specs(layers), input_shape)
    except CnnlabError:  # an image folder's net on a guessed shape: no estimate, not an error;
        # a module net has no specs to count: its runs weigh by the images they pass through
        forward = 1 if is_module_net(config) else 0
    trained = int(config.train_size * (1 - config.validation_split))  # Keras floors
    validation = config.train_size - trained
    views = TTA_VIEWS[config.tta]  # forward passes per validation or test image
    passes = (3 * trained + views * validation) * config.epochs
    return float(forward) * (passes + config.train_size + views * test_images)


def longest_first(configs: Sequence[RunConfig]) -> list[int]:
    """Indices of `configs`, the most work first, so that no long run starts last."""
    return sorted(range(len(configs)), key=lambda index: -run_flops(configs[index]))


def cpu_count() -> int:
    """Cores this process may run on (its affinity, not the machine's total)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def process_count(runs: int, device_type: str, requested: int | None = None) -> int:
    """How many worker processes train `runs` lone runs on a `device_type` device (1: in this
    process).

    The CPU gets one per core by default; other devices train in this process, where CUDA
    groups the runs instead (`schedule`).
    """
    check_workers(requested)
    if device_type != "cpu" or runs < 2:
        return 1
    wanted = requested if requested is not None else cpu_count()
    return max(1, min(wanted, runs))


def threads_per_run(requested: int | None = None) -> int:
    """CPU threads each run of a study trains with: the cores' share of one of `requested`.

    It depends on the machine and the requested worker count only, never on how many runs are
    left, so a run resumed alone trains exactly as it would have beside the others (a CPU run's
    result depends on its thread count).
    """
    check_workers(requested)
    return max(1, cpu_count() // (requested or cpu_count()))


def stream_count(groups: int, requested: int | None = None) -> int:
    """How many groups train at once: `requested` (at least 1), else all of them up to 8."""
    check_workers(requested)
    wanted = requested if requested is not None else MAX_STREAMS
    return max(1, min(wanted, groups))


def schedule(configs: Sequence[RunConfig], device_type: str) -> list[list[int]]:
    """How to train `configs` on a `device_type` device: lists of indices trained together.

    On the CPU every run trains alone: measured on 2 cores, a grouped convolution costs more per
    member than a lone channels-last one (about 31-38 ms against 18 ms per member and step for
    the seed net at batch 128), since the CPU is bound by arithmetic, not by launches.
    """
    return plan_groups(configs, 1 if device_type == "cpu" else CUDA_MAX_MEMBERS)
