"""The strong recipe's accuracy against training time, beside an untuned plain PyTorch script.

Trains `studies/strong.toml`'s recipe (its [defaults], the recipe as data) at several net widths
and epoch counts with cnnlab's own loop (`cnnlab.fit`, one run at a time on every thread), and
the untuned airbench-style script of `plain_recipe.py` at the widths the issue names, on the same
images. Prints a table (fit seconds, test accuracy, images/s per point), the ratios of the two in
the same run, the fastest cnnlab point over each accuracy target, and writes the frontier as a
figure (accuracy against fit seconds). With --device cuda and the `airbench` package installed,
airbench94 is timed side by side on the same data as well.

    python benchmarks/recipe_speed.py --data PATH [--device auto] [--points ARCH:EPOCHS ...]
        [--seeds N] [--skip-plain] [--figure benchmarks/recipe_frontier.png]

Run it on an otherwise idle machine (PyTorch's threads spin while they wait).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from cnnlab.config import RunConfig
from cnnlab.data.datasets import load_cifar10
from cnnlab.errors import CnnlabError
from cnnlab.study.studyfile import load_study
from cnnlab.training import loop
from cnnlab.training.device import resolve_device
from plain_recipe import fit_plain_recipe

STUDY = ROOT / "studies" / "strong.toml"
# (architecture, epochs): the frontier's points, from seconds to minutes on a 2-core CPU.
DEFAULT_POINTS = (
    "strong-s:4",
    "strong-s:6",
    "strong-s:8",
    "strong-s:10",
    "strong-m:12",
    "strong-l:8",
    "strong-l:12",
)
PLAIN_POINTS = ((32, 64, 128), (64, 128, 256))  # the untuned script's widths, 10 epochs each
TARGETS = ((0.85, 150.0), (0.90, 720.0))  # (test accuracy, seconds of training) on the CPU


def recipe(arch: str, epochs: int, seed: int, device: torch.device) -> RunConfig:
    """The strong study's recipe (its [defaults]) for one net and epoch count.

    The warm-up keeps its share of the run at any epoch count; on the CPU the arithmetic is
    bfloat16 (the study's default too), which AMX/AVX-512 BF16 CPUs run about twice as fast.
    """
    defaults = load_study(STUDY).defaults
    share = defaults.get("lr_warmup_epochs", 0.0) / defaults.get("epochs", RunConfig.epochs)
    fields = {**defaults, "arch": arch, "epochs": epochs, "seed": seed}
    fields["lr_warmup_epochs"] = round(share * epochs, 3)
    return RunConfig(**fields)


def run_point(data, arch: str, epochs: int, seeds: int, device: torch.device) -> dict:
    """Mean fit seconds, test accuracy (and its spread) and images/s over `seeds` runs."""
    seconds, accuracies = [], []
    for seed in range(seeds):
        config = recipe(arch, epochs, seed, device)
        result = loop.fit(config, data, device=str(device))
        if result.status != "done":
            raise SystemExit(f"{arch} x {epochs} epochs diverged: {result.metrics}")
        seconds.append(result.metrics["fit_seconds"])
        accuracies.append(result.metrics["test_accuracy"])
        images = int(config.train_size * (1 - config.validation_split)) * epochs
    mean_seconds = statistics.fmean(seconds)
    return {
        "name": f"{arch} x {epochs}",
        "seconds": mean_seconds,
        "accuracy": statistics.fmean(accuracies),
        "spread": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "images_per_second": images / mean_seconds,
        "runs": len(accuracies),
    }


def airbench_point(data, device: torch.device) -> dict | None:
    """airbench94 on the same images (its CifarLoader reads cifar10/{train,test}.pt), if any."""
    folder = Path("cifar10")
    folder.mkdir(exist_ok=True)
    for split, images, labels in (
        ("train", data.train_images, data.train_labels),
        ("test", data.test_images, data.test_labels),
    ):
        torch.save(
            {
                "images": torch.from_numpy(np.ascontiguousarray(images)),
                "labels": torch.from_numpy(np.asarray(labels, dtype=np.int64)),
                "classes": list(data.class_names),
            },
            folder / f"{split}.pt",
        )
    try:
        import airbench  # its loaders read cifar10/ at import time
    except ImportError:
        return None
    airbench.warmup94(verbose=False)
    accuracies, seconds = [], []
    loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    for run in range(5):
        torch.cuda.synchronize()
        started = time.perf_counter()
        model = airbench.train94(verbose=False, run=run)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        accuracies.append(airbench.evaluate(model, loader, tta_level=2))
    return {
        "name": "airbench94",
        "seconds": statistics.fmean(seconds),
        "accuracy": statistics.fmean(accuracies),
        "spread": statistics.stdev(accuracies),
        "images_per_second": 50_000 * 9.9 / statistics.fmean(seconds),
        "runs": 5,
    }


def frontier_figure(points: list[dict], peers: list[dict], path: Path, device: str) -> None:
    """Test accuracy against fit seconds: one line per net, the peers as crosses."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    figure = Figure(figsize=(7.2, 4.4), layout="constrained")
    axes = figure.add_subplot()
    by_arch: dict[str, list[dict]] = {}
    for point in points:
        by_arch.setdefault(point["name"].split(" x ")[0], []).append(point)
    for index, (arch, mine) in enumerate(by_arch.items()):
        mine.sort(key=lambda point: point["seconds"])
        axes.errorbar(
            [p["seconds"] for p in mine],
            [p["accuracy"] for p in mine],
            yerr=[p["spread"] for p in mine],
            marker="o",
            capsize=3,
            label=f"cnnlab {arch}",
        )
        for point in mine:
            epochs = point["name"].split(" x ")[1]
            offset = (-4, 7) if index % 2 else (5, -11)  # alternate sides: lines may meet
            axes.annotate(
                f"{epochs} ep",
                (point["seconds"], point["accuracy"]),
                xytext=offset,
                textcoords="offset points",
                fontsize=7,
                ha="right" if index % 2 else "left",
            )
    for peer in peers:
        axes.scatter(peer["seconds"], peer["accuracy"], marker="x", s=60, label=peer["name"])
    if device == "cpu":
        for accuracy, seconds in TARGETS:
            axes.scatter([seconds], [accuracy], marker="*", s=120, color="black", zorder=3)
            axes.annotate(
                f"target: {accuracy:.0%} within {seconds / 60:g} min",
                (seconds, accuracy),
                xytext=(0, -16),
                textcoords="offset points",
                ha="center",
                fontsize=8,
            )
    axes.set_xscale("log")
    ticks = [t for t in (30, 60, 120, 300, 600, 1200) if t <= 2 * max(p["seconds"] for p in points)]
    axes.set_xticks(ticks, [f"{t / 60:g} min" if t >= 60 else f"{t} s" for t in ticks])
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel(f"training time ({device}, log scale)")
    axes.set_ylabel("test accuracy (CIFAR-10)")
    axes.set_title("The strong recipe: accuracy against training time")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="lower right")
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="CIFAR-10 source (default: $CNNLAB_DATA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--points", nargs="+", default=DEFAULT_POINTS, metavar="ARCH:EPOCHS")
    parser.add_argument("--seeds", type=int, default=1, help="runs per point (mean and spread)")
    parser.add_argument("--skip-plain", action="store_true", help="time cnnlab only")
    parser.add_argument("--figure", type=Path, default=None, help="write the frontier as a PNG")
    parser.add_argument(
        "--replot", type=Path, default=None, help="redraw --figure from a run's saved .json"
    )
    args = parser.parse_args()
    if args.replot is not None:
        saved = json.loads(args.replot.read_text())
        report(saved["points"], saved["peers"], saved["device"])
        if args.figure is not None:
            frontier_figure(saved["points"], saved["peers"], args.figure, saved["device"])
        return
    device = resolve_device(args.device)
    data = load_cifar10(args.data)
    points = []
    for point in args.points:
        arch, _, epochs = point.partition(":")
        if not epochs.isdigit():
            raise CnnlabError(f"--points {point!r}: expected ARCH:EPOCHS, e.g. strong-s:8")
        points.append(run_point(data, arch, int(epochs), args.seeds, device))
        print(
            f"  {points[-1]['name']}: {points[-1]['seconds']:.1f} s, test"
            f" {points[-1]['accuracy']:.4f}",
            flush=True,
        )
    peers = []
    if not args.skip_plain and device.type == "cpu":
        for widths in PLAIN_POINTS:
            result = fit_plain_recipe(
                data.train_images, data.train_labels, data.test_images, data.test_labels,
                widths=widths,
            )  # fmt: skip
            peers.append(
                {
                    "name": f"plain {'-'.join(map(str, widths))} x 10",
                    "seconds": result.fit_seconds,
                    "accuracy": result.test_accuracy,
                    "spread": 0.0,
                    "images_per_second": result.images_per_second,
                    "runs": 1,
                }
            )
    if device.type == "cuda":
        anchor = airbench_point(data, device)
        if anchor is not None:
            peers.append(anchor)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report(points, peers, where)
    if args.figure is not None:
        frontier_figure(points, peers, args.figure, device.type)
        saved = {"device": where, "date": time.strftime("%Y-%m-%d"), "points": points}
        args.figure.with_suffix(".json").write_text(json.dumps({**saved, "peers": peers}, indent=1))
        print(f"figure: {args.figure} (its numbers: {args.figure.with_suffix('.json')})")


def report(points: list[dict], peers: list[dict], where: str) -> None:
    """The table, the ratios against the peers and, on the CPU, the targets."""
    print(f"strong recipe on {where}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'point':<26}{'fit s':>9}{'test acc':>10}{'± std':>8}{'images/s':>10}{'runs':>6}")
    for row in [*points, *peers]:
        print(
            f"{row['name']:<26}{row['seconds']:>9.1f}{row['accuracy']:>10.4f}"
            f"{row['spread']:>8.4f}{row['images_per_second']:>10.0f}{row['runs']:>6}"
        )
    for peer in peers:
        faster = [p for p in points if p["accuracy"] >= peer["accuracy"]]
        if faster:
            best = min(faster, key=lambda p: p["seconds"])
            print(
                f"{peer['name']} reaches {peer['accuracy']:.4f} in {peer['seconds']:.1f} s;"
                f" cnnlab's fastest point at least as accurate, {best['name']}, takes"
                f" {best['seconds']:.1f} s: time ratio cnnlab / peer = "
                f"{best['seconds'] / peer['seconds']:.2f}"
            )
        else:
            print(f"{peer['name']}: no cnnlab point here reaches its {peer['accuracy']:.4f}")
    if where == "cpu":
        for accuracy, seconds in TARGETS:
            within = [p for p in points if p["seconds"] <= seconds]
            best = max(within, key=lambda p: p["accuracy"], default=None)
            verdict = "met" if best and best["accuracy"] >= accuracy else "not met"
            shown = f"{best['name']} {best['accuracy']:.4f}" if best else "no point"
            print(f"target {accuracy:.0%} within {seconds:.0f} s: {verdict} (best: {shown})")


if __name__ == "__main__":
    try:
        main()
    except CnnlabError as error:
        print(f"recipe_speed: error: {error}", file=sys.stderr)
        sys.exit(2)
