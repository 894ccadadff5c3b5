"""The seed study's 11 runs through `--backend ray` against the local default, on one machine.

The runs are study_speed.py's: the seed study's first repeat from studies/seed.toml (20 epochs,
batch 128). Both sides train them through `cnnlab.execution.execute`, as `cnnlab study` does:
locally by
the default path (on the CPU one worker process per core, the longest run first), then as Ray
tasks on a Ray instance started for it (one CPU per core, one CPU per run) or on the cluster at
`--address`. Each side is timed from the call to its last event, so Ray's total includes
starting the instance, putting the data in its object store and shutting it down; the line
"Ray started its first run after" says how much of it is start-up. Prints a per-run table (each
run's own fit and evaluation seconds), both totals and the ratio (target: within 1.10).

    python benchmarks/ray_speed.py --data PATH [--device auto] [--epochs 20] [--address ADDR]
                                   [--object-store] [--ray-first]

`--object-store`: the Ray tasks take the data from Ray's object store (what a node without the
data file does) instead of loading the file on their node. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from cnnlab.data.datasets import load_cifar10
from cnnlab.errors import CnnlabError
from cnnlab.execution import execute
from cnnlab.study import plan, runner
from cnnlab.training import loop
from cnnlab.training.metrics import RunResult


def seed_configs(epochs: int) -> list[loop.RunConfig]:
    """The seed study's first repeat, as study_speed.py takes it."""
    seed_study = runner.load_study(ROOT / "studies" / "seed.toml")
    configs = [run.config for run in plan.plan_runs(seed_study, repeats=1)]
    return [dataclasses.replace(config, epochs=epochs) for config in configs]


def timed(configs, data, **options) -> tuple[float, float, dict[int, RunResult], str]:
    """(total seconds, seconds to the first `started`, results by index, how) of one side."""
    started = time.perf_counter()
    first_start = None
    results: dict[int, RunResult] = {}
    execution = execute.execute(configs, data, **options)
    try:
        for event in execution:
            if event.kind == "started" and first_start is None:
                first_start = time.perf_counter() - started
            elif event.kind == "error":
                sys.exit(f"run {event.index} failed: {event.payload}")
            elif event.kind == "result":
                results[event.index] = event.payload
    finally:
        execution.close()
    return time.perf_counter() - started, first_start or 0.0, results, execution.how


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="CIFAR-10 source (default: $CNNLAB_DATA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--address", default=None, help="a Ray cluster (default: a local one)")
    parser.add_argument(
        "--object-store", action="store_true", help="Ray tasks take the data from the store"
    )
    parser.add_argument("--ray-first", action="store_true", help="time Ray before local")
    args = parser.parse_args()
    data = load_cifar10(args.data)
    configs = seed_configs(args.epochs)
    ray_data = dataclasses.replace(data, source_sha256="") if args.object_store else data
    sides = {
        "local": lambda: timed(configs, data, device=args.device),
        "ray": lambda: timed(
            configs, ray_data, device=args.device, backend="ray", address=args.address
        ),
    }
    order = ["ray", "local"] if args.ray_first else ["local", "ray"]
    measured = {side: sides[side]() for side in order}

    local_total, _, local, local_how = measured["local"]
    ray_total, ray_first_start, on_ray, ray_how = measured["ray"]
    print(
        f"seed study, 11 runs x {args.epochs} epochs, {os.cpu_count()} CPUs,"
        f" torch {torch.__version__}; data {data.source}"
        + (" (Ray tasks: from the object store)" if args.object_store else "")
    )
    print(f"local: {local_how}")
    print(f"ray:   {ray_how}")
    print(f"{'run':<34}{'local s':>10}{'test acc':>10}{'ray s':>10}{'test acc':>10}")
    for index, config in enumerate(configs):
        label = f"{config.arch} n={config.train_size} l1={config.l1}"
        row = f"{label:<34}"
        for results in (local, on_ray):
            metrics = results[index].metrics
            seconds = metrics["fit_seconds"] + metrics["eval_seconds"]
            row += f"{seconds:>10.1f}{metrics['test_accuracy']:>10.3f}"
        print(row)
    print(f"local total (wall, all runs): {local_total:.1f} s")
    print(
        f"ray total (wall, all runs, start-up and shut-down included): {ray_total:.1f} s;"
        f" Ray started its first run after {ray_first_start:.1f} s"
    )
    print(f"ray / local = {ray_total / local_total:.3f} (target: at most 1.10)")


if __name__ == "__main__":
    try:
        main()
    except CnnlabError as error:  # bad --data, no Ray, an unreachable cluster: one line
        print(f"ray_speed: error: {error}", file=sys.stderr)
        sys.exit(2)
