"""Does cnnlab reproduce the seed report? The seed net at 5K, seeds 0, 1, 2, on the CPU.

Prints train/test accuracy per seed and mean ± std beside the report's 0.63 / 0.50
(expected: test mean within 0.04 of 0.50). `--plain` also trains the plain PyTorch port
(benchmarks/plain_port.py) on the same images, which the issue expects about 3 points lower.

    python benchmarks/seed_fidelity.py --data PATH [--seeds 0 1 2] [--plain] [--threads N]
        [--precision float32|bfloat16] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cnnlab.config import OPTIMIZERS, PRECISIONS, RunConfig
from cnnlab.data.datasets import load_cifar10
from cnnlab.training import loop
from plain_port import evaluate_plain, fit_plain, to_tensors

# The course report's (train, test) accuracy at 5K images, by L1 weight (SEED.md, b-iv).
REPORT = {0.0: (0.64, 0.51), 0.0001: (0.63, 0.50), 0.001: (0.59, 0.48), 1.0: (0.22, 0.22)}


def spread(values: list[float], digits: int = 3) -> str:
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {deviation:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="CIFAR-10 source (default: $CNNLAB_DATA)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--plain", action="store_true", help="also train the plain port")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--l1", type=float, default=0.0001, choices=sorted(REPORT))
    parser.add_argument(
        "--optimizers",
        nargs="+",
        choices=OPTIMIZERS,
        default=["adam"],
        help="cnnlab's optimizer update(s) to train with (adam: Keras's, the default)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_cifar10(args.data)
    print(
        f"seed ConvNet, 5,000 images, {args.epochs} epochs, L1 {args.l1:g}, {args.precision},"
        f" device {args.device}, data {data.source}"
    )
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in args.seeds:
        for optimizer in args.optimizers:
            config = RunConfig(
                arch="seed",
                train_size=5000,
                l1=args.l1,
                epochs=args.epochs,
                seed=seed,
                optimizer=optimizer,
                precision=args.precision,
            )
            result = loop.fit(config, data, device=args.device)
            metrics = result.metrics
            scores = rows.setdefault(optimizer, {"train": [], "test": [], "seconds": []})
            scores["train"].append(metrics["train_accuracy"])
            scores["test"].append(metrics["test_accuracy"])
            scores["seconds"].append(metrics["fit_seconds"])
            print(
                f"  {optimizer:<10} seed {seed}: train {metrics['train_accuracy']:.3f}  test"
                f" {metrics['test_accuracy']:.3f}  fit {metrics['fit_seconds']:.1f} s",
                flush=True,
            )
        if args.plain:
            train_part, validation_part = loop.subset_indices(config, data)
            ordered = [*train_part, *validation_part]
            plain = fit_plain(
                data.train_images[ordered],
                data.train_labels[ordered],
                epochs=args.epochs,
                seed=seed,
            )
            train_set = to_tensors(data.train_images[ordered], data.train_labels[ordered])
            test_set = to_tensors(data.test_images, data.test_labels)
            scores = rows.setdefault("plain port", {"train": [], "test": [], "seconds": []})
            scores["train"].append(evaluate_plain(plain.model, train_set)[1])
            scores["test"].append(evaluate_plain(plain.model, test_set)[1])
            scores["seconds"].append(plain.fit_seconds)
            print(
                f"  plain  seed {seed}: train {scores['train'][-1]:.3f}  test"
                f" {scores['test'][-1]:.3f}  fit {plain.fit_seconds:.1f} s",
                flush=True,
            )
    print(f"{'':12}{'train acc':>16}{'test acc':>16}{'fit s':>16}")
    report_train, report_test = REPORT[args.l1]
    print(f"{'report':12}{report_train:>16.2f}{report_test:>16.2f}{'':>16}")
    for name, scores in rows.items():
        print(
            f"{name:12}{spread(scores['train']):>16}{spread(scores['test']):>16}"
            f"{spread(scores['seconds'], 1):>16}"
        )
    for optimizer in args.optimizers:
        gap = statistics.mean(rows[optimizer]["test"]) - report_test
        verdict = "within" if abs(gap) <= 0.04 else "OUTSIDE"
        print(f"{optimizer} test mean - report = {gap:+.3f} ({verdict} ±0.04)")


if __name__ == "__main__":
    main()
