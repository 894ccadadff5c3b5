"""Fit time of one 5K/20-epoch seed run: cnnlab against the plain PyTorch port, in one process.

The two contenders alternate (cnnlab, plain, cnnlab, plain, ...) on the same images and the best
time of each is kept, so load from other processes on a shared machine skews neither side.
Both time the training loop only, per-epoch validation included (what Keras's fit covers).

    python benchmarks/train_speed.py --data PATH [--rounds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cnnlab.config import RunConfig
from cnnlab.data.datasets import load_cifar10
from cnnlab.training import loop
from plain_port import fit_plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="CIFAR-10 source (default: $CNNLAB_DATA)")
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each contender")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_cifar10(args.data)
    config = RunConfig(arch="seed", train_size=args.train_size, epochs=args.epochs)
    train_part, validation_part = loop.subset_indices(config, data)
    # The plain port holds out the last 10% of what it is given: give it the same images.
    ordered = [*train_part, *validation_part]
    images, labels = data.train_images[ordered], data.train_labels[ordered]

    times: dict[str, list[float]] = {"cnnlab": [], "plain": []}
    accuracy: dict[str, float] = {}
    print(
        f"seed ConvNet, {args.train_size:,} images ({len(train_part):,} train +"
        f" {len(validation_part):,} validation), {args.epochs} epochs, batch 128, CPU,"
        f" {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    for round_ in range(1, args.rounds + 1):
        result = loop.fit(config, data, device="cpu")
        times["cnnlab"].append(result.metrics["fit_seconds"])
        accuracy["cnnlab"] = result.history[-1]["val_accuracy"]
        print(f"  round {round_}: cnnlab {times['cnnlab'][-1]:6.1f} s", end="", flush=True)
        plain = fit_plain(images, labels, epochs=args.epochs, seed=round_)
        times["plain"].append(plain.fit_seconds)
        accuracy["plain"] = plain.history[-1]["val_accuracy"]
        print(f"   plain port {times['plain'][-1]:6.1f} s", flush=True)
    best = {name: min(values) for name, values in times.items()}
    print(f"best fit time  cnnlab {best['cnnlab']:.1f} s   plain port {best['plain']:.1f} s")
    print(
        f"ratio cnnlab / plain port = {best['cnnlab'] / best['plain']:.2f}"
        f"  (target <= 0.80; last val accuracy cnnlab {accuracy['cnnlab']:.3f},"
        f" plain {accuracy['plain']:.3f})"
    )
    print(f"finished {time.strftime('%Y-%m-%d %H:%M:%S')}")


if __name__ == "__main__":
    main()
