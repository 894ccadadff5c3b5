"""How often the report's claims are wrong, and how often they find a known harm: real runs on
scikit-learn's 8x8 digits (offline anywhere), drawn into many small studies that the report's
own design analysis and claims layer read (`cnnlab.report.calibration`).

- A/A: one configuration (the seed net, all 1,437 training digits) over `--aa-seeds` seeds;
  each study names `--names` groups of `--seeds` runs, as unordered variants and as an ordered
  grid. A study with any established difference is a false claim; the aim is at most 5%.
- Planted harm: `label_noise` 0, 0.2, 0.4 and 0.6 over `--planted-seeds` seeds each; each
  study draws `--seeds` runs per share. Detection: the trend established as a drop, and each
  neighbouring step whose drop is 3 or more run-to-run standard deviations established as a
  drop (the aim is at least 80%).
- One run per point: studies of the planted grid with one run a share; the aim is no claim.

    python benchmarks/calibration.py [--studies 400] [--epochs 20] [--json OUT]

Prints each rate with its exact 95% interval; the figures and the command go in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cnnlab.config import RunConfig
from cnnlab.data.datasets import load_dataset
from cnnlab.execution.execute import train_all
from cnnlab.report import calibration

SHARES = (0.0, 0.2, 0.4, 0.6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=400, help="studies drawn per rate")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--aa-seeds", type=int, default=40, help="seeds of the A/A pool")
    parser.add_argument("--planted-seeds", type=int, default=20, help="seeds per noise share")
    parser.add_argument("--names", type=int, default=6, help="names in an A/A study")
    parser.add_argument("--seeds", type=int, default=3, help="runs per point in a study")
    parser.add_argument("--json", type=Path, help="write the rates here too")
    args = parser.parse_args()
    started = time.perf_counter()
    data = load_dataset("digits", None)

    def runs(seeds: int, label_noise: float) -> list:
        configs = [
            RunConfig(
                dataset="digits",
                arch="seed",
                train_size=len(data.train_labels),
                epochs=args.epochs,
                seed=seed,
                label_noise=label_noise,
            )
            for seed in range(seeds)
        ]
        results = train_all(configs, data, device="cpu")
        failed = [r for r in results if isinstance(r, str)]
        if failed:
            raise SystemExit(f"calibration: a run failed: {failed[0]}")
        return results

    pool = runs(args.aa_seeds, 0.0)
    pools = {share: runs(args.planted_seeds, share) for share in SHARES}
    trained = time.perf_counter() - started
    rng = np.random.default_rng(0)
    a_a = calibration.a_a_rate(pool, args.names, args.seeds, args.studies, rng)
    detection = calibration.planted_rate(pools, args.seeds, args.studies, rng)
    single = calibration.single_run_rate(pools, args.studies, rng)
    means = {
        share: float(np.mean([r.metrics["test_accuracy"] for r in pools[share]]))
        for share in SHARES
    }
    stds = {
        share: float(np.std([r.metrics["test_accuracy"] for r in pools[share]], ddof=1))
        for share in SHARES
    }
    print(
        f"digits, seed net, {args.epochs} epochs; pools: A/A {args.aa_seeds} runs, planted"
        f" {args.planted_seeds} runs per label_noise share; {args.studies} studies per rate;"
        f" {args.seeds} runs per point; trained in {trained:.0f} s"
    )
    print("planted pools, test accuracy mean ± std:")
    for share in SHARES:
        print(f"  label_noise {share:.1f}: {means[share]:.4f} ± {stds[share]:.4f}")
    for design, rate in a_a.items():
        print(f"A/A false-claim rate, {args.names} names as {design}: {rate.show()}")
    print(f"planted harm, trend established as a drop: {detection.trend.show()}")
    print(
        f"planted harm, steps of >= {detection.spreads:g} stds established as drops:"
        f" {detection.steps.show()}"
    )
    print(f"one run per point, studies with any established claim: {single.show()}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        rates = {f"a_a_{k.replace(' ', '_')}": v for k, v in a_a.items()}
        rates |= {"trend": detection.trend, "steps": detection.steps, "single": single}
        payload = {
            "arguments": {k: str(v) for k, v in vars(args).items()},
            "means": means,
            "stds": stds,
            "rates": {
                k: {"hits": v.hits, "studies": v.studies, "interval": v.interval}
                for k, v in rates.items()
            },
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
