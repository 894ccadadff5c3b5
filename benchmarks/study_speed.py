"""The seed study's 11 runs: cnnlab's fastest path against the plain PyTorch port, in one run.

The runs are the seed study's first repeat (sizes 5K/10K/20K/40K; L1 0, 0.001, 1, 10, 100 at
5K; max-pool at 5K; the deep net on all 50K; 20 epochs, batch 128), taken from
studies/seed.toml. cnnlab trains them as `cnnlab study` does (`cnnlab.execution.execute`: on the CPU
lone runs in one worker process per core, longest first; on a GPU grouped runs replayed from CUDA
graphs, the groups side by side on CUDA streams, then once more one group after another to
measure what the streams gain); the plain port (benchmarks/
plain_port.py: DataLoader, default initialisation, symmetric padding) trains each in turn on the
same device. Both sides are timed from their first step to their last metric, evaluation of the
training subset and the test set included. Prints a per-run table, totals, the ratio, and the
FLOP/s cnnlab achieved against the machine's peak.

    python benchmarks/study_speed.py --data PATH [--device auto] [--epochs 20] [--workers N]
                                     [--precision float32|bfloat16] [--skip-plain]

Run it on an otherwise idle machine: PyTorch's OpenMP threads spin while they wait, so another
busy process can make a step ten times slower and spoil both columns.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()  # before the heavy imports: they count too

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from cnnlab.config import PRECISIONS
from cnnlab.data.datasets import load_cifar10
from cnnlab.errors import CnnlabError
from cnnlab.execution import execute, planning
from cnnlab.execution.planning import run_flops
from cnnlab.study import plan, runner
from cnnlab.training import loop
from cnnlab.training.device import resolve_device
from plain_port import evaluate_plain, fit_plain, to_tensors


def cpu_peak_flops() -> tuple[float, float | None]:
    """(measured fp32 matrix-product FLOP/s, nominal peak from the clock if known)."""
    size = 2048
    a, b = torch.rand(size, size), torch.rand(size, size)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    measured = 2 * size**3 / best
    nominal = None
    try:
        megahertz = max(
            float(line.split(":")[1])
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("cpu MHz")
        )
        flags = Path("/proc/cpuinfo").read_text()
        # fp32 FLOP per cycle per core: two FMA pipes x (16 lanes AVX-512 | 8 AVX2) x 2.
        per_cycle = 64 if "avx512f" in flags else 32
        nominal = planning.cpu_count() * megahertz * 1e6 * per_cycle
    except (OSError, ValueError):
        pass
    return measured, nominal


def plain_run(config: loop.RunConfig, data, device: torch.device) -> tuple[float, float]:
    """(seconds, test accuracy) of the plain port on `config`'s images, evaluation included."""
    train_part, validation_part = loop.subset_indices(config, data)
    ordered = np.concatenate([train_part, validation_part])
    started = time.perf_counter()
    plain = fit_plain(
        data.train_images[ordered],
        data.train_labels[ordered],
        arch=config.arch,
        epochs=config.epochs,
        l1=config.l1 if config.l1 is not None else 1e-4,
        seed=config.seed,
        device=device,
    )
    evaluate_plain(
        plain.model, to_tensors(data.train_images[ordered], data.train_labels[ordered]), device
    )
    _, test_accuracy = evaluate_plain(
        plain.model, to_tensors(data.test_images, data.test_labels), device
    )
    return time.perf_counter() - started, test_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="CIFAR-10 source (default: $CNNLAB_DATA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="cnnlab's CPU processes (default: one per core) or CUDA streams (default: all groups)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="cnnlab's precision (the plain port stays float32)",
    )
    parser.add_argument("--skip-plain", action="store_true", help="time cnnlab only")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = load_cifar10(args.data)
    seed_study = runner.load_study(ROOT / "studies" / "seed.toml")
    configs = [run.config for run in plan.plan_runs(seed_study, repeats=1)]
    configs = [
        dataclasses.replace(config, epochs=args.epochs, precision=args.precision)
        for config in configs
    ]

    started = time.perf_counter()
    outcomes = execute.train_all(configs, data, device=str(device), workers=args.workers)
    ours_total = time.perf_counter() - started
    failed = [f"run {i}: {o}" for i, o in enumerate(outcomes) if isinstance(o, str)]
    if failed:
        sys.exit("cnnlab failed: " + "; ".join(failed))
    ours = dict(enumerate(outcomes))
    since_process = time.perf_counter() - PROCESS_START
    ours_seconds = {
        index: result.metrics["fit_seconds"] + result.metrics["eval_seconds"]
        for index, result in ours.items()
    }
    one_by_one = None
    if device.type == "cuda" and args.workers is None:
        # Measure the alternative too: the same groups one after another on one stream.
        started = time.perf_counter()
        execute.train_all(configs, data, device=str(device), workers=1)
        one_by_one = time.perf_counter() - started

    plain: dict[int, tuple[float, float]] = {}
    if not args.skip_plain:
        # Untimed: the process's first steps pay one-time costs (thread pool, oneDNN's kernels)
        # that cnnlab's workers pay inside its total.
        plain_run(dataclasses.replace(configs[0], train_size=1000, epochs=1), data, device)
        for index, config in enumerate(configs):
            plain[index] = plain_run(config, data, device)
    plain_total = sum(seconds for seconds, _ in plain.values())

    print(
        f"seed study, 11 runs x {args.epochs} epochs on {device}"
        f" ({torch.cuda.get_device_name(device) if device.type == 'cuda' else os.cpu_count()}"
        f"{'' if device.type == 'cuda' else ' CPUs'}), torch {torch.__version__},"
        f" {torch.get_num_threads()} threads"
        + ("" if args.precision == "float32" else f", cnnlab in {args.precision}")
    )
    if device.type == "cpu":
        process_count = planning.process_count(len(configs), device.type, args.workers)
        threads = max(1, planning.cpu_count() // process_count)
        print(
            f"cnnlab: {process_count} process(es) x {threads} thread(s);"
            f" plain port: 1 process x {torch.get_num_threads()} threads"
        )
    else:
        groups = planning.schedule(configs, device.type)
        print(
            f"cnnlab: {len(groups)} groups of runs (sizes {[len(group) for group in groups]}),"
            f" {planning.stream_count(len(groups), args.workers)} CUDA stream(s) at a time"
        )
    print(f"{'run':<34}{'cnnlab s':>10}{'test acc':>10}{'plain s':>10}{'test acc':>10}")
    for index, config in enumerate(configs):
        label = f"{config.arch} n={config.train_size} l1={config.l1}"
        result = ours[index]
        row = f"{label:<34}{ours_seconds[index]:>10.1f}{result.metrics['test_accuracy']:>10.3f}"
        if index in plain:
            row += f"{plain[index][0]:>10.1f}{plain[index][1]:>10.3f}"
        print(row)
    print(
        f"cnnlab total (wall, all runs): {ours_total:.1f} s;"
        f" from process start to the last metric: {since_process:.1f} s"
    )
    if one_by_one is not None:
        print(
            f"cnnlab with the groups one after another (--workers 1): {one_by_one:.1f} s;"
            f" side by side / one after another = {ours_total / one_by_one:.3f}"
        )
    if plain:
        print(
            f"plain port total: {plain_total:.1f} s;"
            f" cnnlab / plain = {ours_total / plain_total:.3f}"
            f" ({plain_total / ours_total:.1f}x faster)"
        )
    flops = sum(run_flops(config, len(data.test_labels)) for config in configs)
    print(
        f"network FLOPs, all runs: {flops / 1e12:.1f} TFLOP;"
        f" cnnlab achieved {flops / ours_total / 1e9:.1f} GFLOP/s"
    )
    if device.type == "cpu":
        measured, nominal = cpu_peak_flops()
        line = (
            f"CPU fp32 matmul (2048^2) reaches {measured / 1e9:.0f} GFLOP/s:"
            f" cnnlab achieved {flops / ours_total / measured:.1%} of it"
        )
        if nominal:
            line += (
                f"; nominal peak {nominal / 1e9:.0f} GFLOP/s ({flops / ours_total / nominal:.1%})"
            )
        print(line)


if __name__ == "__main__":
    try:
        main()
    except CnnlabError as error:  # bad --data, --workers: one line, as the cnnlab command does
        print(f"study_speed: error: {error}", file=sys.stderr)
        sys.exit(2)
