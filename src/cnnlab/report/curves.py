"""How much data: a size experiment's learning curve, fitted with intervals and checked by
prediction (Hoiem et al. 2021, "Learning Curves for Analysis of Deep Networks").

The test error against the training-set size n follows e(n) = α + η·n^γ (α ≥ 0 the asymptote,
η ≥ 0, γ < 0), fitted by least squares to the points' mean errors (`scipy.optimize.curve_fit`,
bounded, each mean weighted by its standard error). The raw parameters are unstable, so the
curve is summarised as Hoiem's e_N (the fitted error at the largest n) and β_N (the error a
doubling of the data removes there, −de/dlog2 n at N). Intervals come from a parametric bootstrap:
the fitted curve plus normal noise of the run-to-run variance pooled over the sizes, refitted
`BOOTSTRAP` times (with 3 seeds a bootstrap over seeds has only 10 distinct resamples, too few to
trust). The data needed for a target accuracy is read off each refit; a target below the fitted
asymptote is unreachable, not extrapolated into a number. Every fit is checked by prediction:
refitted without the largest size, it predicts that size's mean accuracy with an interval, and
the measured mean falls inside or not.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from cnnlab.errors import CnnlabError
from cnnlab.report import stats
from cnnlab.store import FINISHED, RunRecord

BOOTSTRAP = 400  # refits per interval
CONFIDENCE = 0.95
SEED = 0  # the bootstrap's generator: a report is the same on every build
GAMMA_BOUNDS = (-3.0, -0.01)  # the exponent's range: a curve that falls, neither flat nor a cliff


@dataclass(frozen=True)
class PowerLaw:
    """e(n) = alpha + eta · n^gamma: test error against the training-set size."""

    alpha: float
    eta: float
    gamma: float

    def error(self, n: float | np.ndarray) -> float | np.ndarray:
        return self.alpha + self.eta * np.power(n, self.gamma)

    def reliance(self, n: float) -> float:
        """β at n: the error one doubling of the data removes there (−de/dlog2 n)."""
        return -math.log(2) * self.eta * self.gamma * n**self.gamma

    def needed(self, target_error: float) -> float:
        """The n at which the curve reaches `target_error`; inf where it never does."""
        if target_error <= self.alpha or self.eta <= 0:
            return math.inf
        return ((target_error - self.alpha) / self.eta) ** (1 / self.gamma)


def fit_power_law(
    sizes: Sequence[float], errors: Sequence[float], weights: Sequence[float] | None = None
) -> PowerLaw | None:
    """The least-squares power law through (size, error), each error with standard error
    `weights` (None: equal); None where three sizes are missing or the fit does not converge."""
    n = np.asarray(sizes, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    if len(np.unique(n)) < 3 or not np.all(np.isfinite(e)):
        return None
    scale = float(n.max())  # fit in n / N: the parameters stay of order one
    sigma = None if weights is None else np.maximum(np.asarray(weights, dtype=np.float64), 1e-6)
    start_gamma = -0.5
    spread = max(e.max() - e.min(), 1e-3)
    start = (max(e.min() - spread, 0.0), spread * 2, start_gamma)
    lower, upper = (0.0, 0.0, GAMMA_BOUNDS[0]), (1.0, np.inf, GAMMA_BOUNDS[1])
    bounded = zip(start, lower, upper, strict=True)
    start = tuple(min(max(s, lo + 1e-9), hi - 1e-9) for s, lo, hi in bounded)

    def curve(x, alpha, eta, gamma):
        return alpha + eta * np.power(x, gamma)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found, _ = optimize.curve_fit(
                curve, n / scale, e, p0=start, sigma=sigma, bounds=(lower, upper), maxfev=20000
            )
    except (RuntimeError, ValueError, optimize.OptimizeWarning):
        return None
    alpha, eta, gamma = (float(v) for v in found)
    return PowerLaw(alpha, eta * scale**-gamma, gamma)


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Target:
    """The training-set size a target test accuracy needs."""

    accuracy: float
    needed: Interval  # inf where the curve never reaches it
    reachable: bool  # the fitted curve reaches it (its asymptote is below the target error)


@dataclass(frozen=True)
class Check:
    """The curve refitted without its largest size, predicting that size's mean accuracy."""

    size: float
    predicted: Interval  # accuracy
    measured: float

    @property
    def inside(self) -> bool:
        return self.predicted.low <= self.measured <= self.predicted.high


@dataclass
class LearningCurve:
    """A size experiment's learning curve: its fit, Hoiem's summaries, targets and its check."""

    sizes: list[float]
    means: list[float]  # mean test accuracy per size
    runs: list[int]  # runs per size
    law: PowerLaw
    error_at_largest: Interval  # e_N
    reliance: Interval  # β_N, in error per doubling
    asymptote: Interval  # 1 - α as accuracy
    band: list[tuple[float, float, float]]  # (n, low, high) accuracy of the fitted curve
    targets: list[Target] = field(default_factory=list)
    check: Check | None = None

    @property
    def largest(self) -> float:
        return max(self.sizes)


def _interval(value: float, draws: Sequence[float]) -> Interval:
    finite = [d for d in draws if not math.isnan(d)]
    if not finite:
        return Interval(value, math.nan, math.nan)
    tail = (1 - CONFIDENCE) / 2 * 100
    # sample quantiles, no interpolation: a refit that never reaches a target is inf, not nan
    low, high = np.percentile(finite, [tail, 100 - tail], method="inverted_cdf")
    return Interval(value, float(low), float(high))


def _simulated(law: PowerLaw, sizes, spread: float, runs, rng, count: int) -> list[PowerLaw]:
    """`count` refits of the curve to its own means plus run-to-run noise of the measured size."""
    refits = []
    for _ in range(count):
        noise = rng.normal(0.0, spread / np.sqrt(runs))
        refit = fit_power_law(sizes, law.error(np.asarray(sizes)) + noise, spread / np.sqrt(runs))
        if refit is not None:
            refits.append(refit)
    return refits


def learning_curve(
    runs: dict[float, Sequence[float]] | Sequence[RunRecord],
    targets: Sequence[float] = (),
    *,
    experiment: str | None = None,
    bootstrap: int = BOOTSTRAP,
) -> LearningCurve | None:
    """The learning curve of test accuracy against the training-set size: `runs` maps each size
    to its runs' accuracies, or is a study's records (`cnnlab.load_results`), their finished runs
    grouped by `train_size` (those of `experiment`, where the study has others). `targets`: test
    accuracies whose data needs it reads off. None with fewer than three sizes, or no run-to-run
    spread to draw intervals from."""
    samples = runs if isinstance(runs, dict) else _by_size(runs, experiment)
    samples = {s: [v for v in values if 0 <= v <= 1] for s, values in samples.items() if s > 0}
    sizes = sorted(s for s, values in samples.items() if len(values))
    if len(sizes) < 3:
        return None
    values = [list(samples[s]) for s in sizes]
    counts = np.asarray([len(v) for v in values], dtype=np.float64)
    errors = [1 - statistics.fmean(v) for v in values]
    spread = stats.pooled_spread(values)
    if not spread:  # no repeated runs, or none that vary: no noise to draw intervals from
        return None
    law = fit_power_law(sizes, errors, spread / np.sqrt(counts))
    if law is None:
        return None
    rng = np.random.default_rng(SEED)
    refits = _simulated(law, sizes, spread, counts, rng, bootstrap)
    largest = max(sizes)
    grid = np.geomspace(min(sizes), largest * 4, 40)
    curve = LearningCurve(
        sizes,
        [1 - e for e in errors],
        [len(v) for v in values],
        law,
        _interval(float(law.error(largest)), [float(r.error(largest)) for r in refits]),
        _interval(law.reliance(largest), [r.reliance(largest) for r in refits]),
        _interval(1 - law.alpha, [1 - r.alpha for r in refits]),
        [
            (float(n), *_accuracy_band(refits, n))
            for n in grid  # the band's accuracy, from the refits
        ],
    )
    for accuracy in targets:
        needed = law.needed(1 - accuracy)
        draws = [r.needed(1 - accuracy) for r in refits]
        curve.targets.append(Target(accuracy, _interval(needed, draws), math.isfinite(needed)))
    curve.check = _check(sizes, values, spread, bootstrap)
    return curve


def _by_size(records: Sequence[RunRecord], experiment: str | None) -> dict[float, list[float]]:
    """Finished runs' test accuracies grouped by their training-set size: the runs of
    `experiment`, or all of them where they differ in nothing else but the seed."""
    if experiment is not None:
        records = [r for r in records if experiment in r.experiments]
    varied = {
        key
        for record in records
        for key, value in record.config.items()
        if key not in ("train_size", "seed") and value != records[0].config.get(key)
    }
    if varied:
        raise CnnlabError(
            f"learning_curve: the runs differ in {', '.join(sorted(varied))}, not only in"
            " train_size and seed; pass experiment=NAME (a size experiment of the study)"
        )
    samples: dict[float, list[float]] = {}
    for record in records:
        value, size = record.metrics.get("test_accuracy"), record.config.get("train_size")
        usable = isinstance(value, int | float) and math.isfinite(value)
        if record.status in FINISHED and usable and type(size) is int:
            samples.setdefault(float(size), []).append(float(value))
    return samples


def _accuracy_band(refits: list[PowerLaw], n: float) -> tuple[float, float]:
    band = _interval(0.0, [1 - float(r.error(n)) for r in refits])
    return band.low, band.high


def _check(
    sizes: list[float], values: list[list[float]], spread: float, bootstrap: int
) -> Check | None:
    """Refit without the largest size and predict its mean accuracy (with the noise of a mean
    of its runs); None with fewer than four sizes."""
    if len(sizes) < 4:
        return None
    kept, held = sizes[:-1], values[-1]
    runs = np.asarray([len(v) for v in values[:-1]], dtype=np.float64)
    errors = [1 - statistics.fmean(v) for v in values[:-1]]
    law = fit_power_law(kept, errors, spread / np.sqrt(runs))
    if law is None:
        return None
    rng = np.random.default_rng(SEED + 1)
    refits = _simulated(law, kept, spread, runs, rng, bootstrap)
    size = sizes[-1]
    draws = [
        1 - float(r.error(size)) + rng.normal(0.0, spread / math.sqrt(len(held))) for r in refits
    ]
    predicted = _interval(1 - float(law.error(size)), draws)
    return Check(size, predicted, statistics.fmean(held))
