"""The learning curve: a power law fitted with intervals and checked by prediction, held to
planted curves and to SciPy's own least squares."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize

import cnnlab
from cnnlab.errors import CnnlabError
from cnnlab.report.curves import PowerLaw, fit_power_law, learning_curve

SIZES = [2500, 5000, 10000, 20000, 40000]
TRUTH = PowerLaw(alpha=0.25, eta=6.0, gamma=-0.35)  # error 0.65 at 2,500, 0.42 at 40,000


def _planted(seed: int, runs: int = 3, spread: float = 0.01) -> dict[float, list[float]]:
    rng = np.random.default_rng(seed)
    return {float(n): list(1 - TRUTH.error(n) + rng.normal(0, spread, runs)) for n in SIZES}


def test_a_noiseless_curve_is_recovered():
    found = fit_power_law(SIZES, [float(TRUTH.error(n)) for n in SIZES])
    assert found.alpha == pytest.approx(TRUTH.alpha, abs=1e-5)
    assert found.gamma == pytest.approx(TRUTH.gamma, abs=1e-5)
    assert found.error(80000) == pytest.approx(TRUTH.error(80000), abs=1e-6)


def test_the_fit_is_scipys_least_squares_optimum():
    errors = [1 - np.mean(v) for v in _planted(1).values()]
    found = fit_power_law(SIZES, errors)

    def residuals(parameters):
        alpha, eta, gamma = parameters
        return alpha + eta * np.power(SIZES, gamma) - errors

    start = (found.alpha, found.eta, found.gamma)
    reference = optimize.least_squares(residuals, start, bounds=([0, 0, -3], [1, np.inf, -0.01]))
    assert np.sum(residuals(start) ** 2) <= np.sum(reference.fun**2) + 1e-12
    assert reference.x[2] == pytest.approx(found.gamma, abs=1e-4)


def test_fewer_than_three_sizes_or_no_spread_fit_nothing():
    assert learning_curve({5000.0: [0.5, 0.51], 10000.0: [0.55, 0.56]}) is None
    assert learning_curve({float(n): [0.5 + i / 10] * 3 for i, n in enumerate(SIZES)}) is None


def test_a_target_beyond_the_asymptote_is_unreachable_not_a_number():
    curve = learning_curve(_planted(2), targets=(0.60, 0.95), bootstrap=100)
    reachable, beyond = curve.targets
    assert reachable.reachable and math.isfinite(reachable.needed.value)
    assert reachable.needed.low < reachable.needed.value < reachable.needed.high
    assert not beyond.reachable and math.isinf(beyond.needed.value)  # the asymptote is 0.75


def test_the_python_api_reads_a_studys_records():
    class Record:
        status, history = "done", []

        def __init__(self, size, accuracy, l1=1e-4, experiment="sizes"):
            self.config = {"train_size": size, "l1": l1, "seed": 0}
            self.metrics, self.experiments = {"test_accuracy": accuracy}, {experiment: {}}

    samples = _planted(3)
    records = [Record(int(n), v) for n, values in samples.items() for v in values]
    from_records = cnnlab.learning_curve(records, bootstrap=50)
    assert from_records.law == learning_curve(samples, bootstrap=50).law
    # a study's other experiments are left out by name, and never mixed in silently
    records.append(Record(5000, 0.1, l1=10.0, experiment="l1"))
    with pytest.raises(CnnlabError, match="the runs differ in l1, not only in train_size"):
        cnnlab.learning_curve(records)
    assert cnnlab.learning_curve(records, experiment="sizes", bootstrap=50).law == (
        from_records.law
    )


def test_the_intervals_cover_a_planted_curve_at_about_their_rate():
    covered = {"e_N": 0, "beta_N": 0, "check": 0}
    trials = 40
    largest = SIZES[-1]
    for seed in range(trials):
        curve = learning_curve(_planted(100 + seed), bootstrap=200)
        covered["e_N"] += (
            curve.error_at_largest.low <= TRUTH.error(largest) <= curve.error_at_largest.high
        )
        covered["beta_N"] += curve.reliance.low <= TRUTH.reliance(largest) <= curve.reliance.high
        covered["check"] += curve.check.inside
    for name, count in covered.items():
        assert count / trials >= 0.85, (name, count)
