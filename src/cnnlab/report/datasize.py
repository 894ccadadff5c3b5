"""How much data, how many epochs: a size experiment's learning curve (`curves.py`) as claims and
as a section with its figure, and whether a point that learned still improves in its last epochs.

Every sentence here is a claim (`claims.py`): the curve's summaries, the data a target needs and
the held-out check are measured claims (a fit, no verdict); "still improving" is tested (the
runs' slopes of validation accuracy over the last third of the epochs, one-sided, Holm over the
distinct points), and only where it holds is the curve over epochs fitted to predict 2x the epochs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cnnlab import plots
from cnnlab.report import stats
from cnnlab.report.claims import (
    ALPHA,
    Claim,
    SlopeTests,
    measured_claim,
    show_p,
    strength,
    title,
)
from cnnlab.report.curves import LearningCurve, learning_curve
from cnnlab.report.design import QUANTITY, Analysis
from cnnlab.report.document import Document, Image
from cnnlab.report.points import point_name, stat_of
from cnnlab.store import FINISHED, RunRecord

SIZE = "train_size"
TARGET_STEPS = (0.02, 0.05)  # default targets: the best point's mean accuracy plus these
EPOCH_BOOTSTRAP = 200  # refits of a curve over epochs: its check's interval is all it shows


def size_curve(analysis: Analysis) -> LearningCurve | None:
    """The learning curve of an experiment whose one grid field is the training-set size."""
    if tuple(analysis.experiment.grid) != (SIZE,):
        return None
    samples = {float(p.values[SIZE]): stat_of(p.records, QUANTITY).values for p in analysis.points}
    return learning_curve(samples, targets(analysis))


def targets(analysis: Analysis) -> tuple[float, ...]:
    """The study file's targets, else the best point's mean accuracy plus TARGET_STEPS."""
    if analysis.experiment.targets:
        return analysis.experiment.targets
    means = [stat_of(p.records, QUANTITY).mean for p in analysis.measured]
    best = max((m for m in means if not math.isnan(m)), default=math.nan)
    if math.isnan(best):
        return ()
    return tuple(round(best + step, 3) for step in TARGET_STEPS if best + step < 1)


def curve_claims(analysis: Analysis, curve: LearningCurve | None) -> list[Claim]:
    """The curve's summaries, its targets and its held-out check, as measured claims."""
    experiment = analysis.experiment
    if tuple(experiment.grid) != (SIZE,):
        return []
    if curve is None:
        sentence = (
            f"{title(experiment)}: no learning curve: it needs three sizes or more with repeated"
            " runs (a run-to-run spread to draw its intervals from)."
        )
        return [measured_claim(experiment, "curve", sentence, "test error", "metrics", "curve")]
    largest = f"{curve.largest:,.0f}"
    summary = (
        f"{title(experiment)}: the learning curve e(n) = α + η·n^γ (fitted to"
        f" {len(curve.sizes)} sizes, γ = {curve.law.gamma:.2f}) puts test accuracy at"
        f" {1 - curve.error_at_largest.value:.3f} [{1 - curve.error_at_largest.high:.3f},"
        f" {1 - curve.error_at_largest.low:.3f}] at n={largest} (e_N), gaining"
        f" {curve.reliance.value:.3f} [{curve.reliance.low:.3f}, {curve.reliance.high:.3f}] per"
        f" doubling there (β_N), towards {curve.asymptote.value:.3f} [{curve.asymptote.low:.3f},"
        f" {curve.asymptote.high:.3f}] (95% parametric bootstrap; a fit, not a test)."
    )
    fit = measured_claim(
        experiment, "curve", summary, "test error at the largest size (e_N)", "metrics", "curve"
    )
    fit.effect, fit.interval = _numbers(curve.error_at_largest)
    fit.interval_kind = "95% parametric bootstrap"
    fit.samples = [
        {"point": f"n={size:g}", "n": runs, "mean": mean}
        for size, runs, mean in zip(curve.sizes, curve.runs, curve.means, strict=True)
    ]
    fit.test = None
    claims = [fit]
    for target in curve.targets:
        claim = measured_claim(
            experiment, f"curve/target/{target.accuracy:g}", _target_sentence(experiment, target),
            f"training images for test accuracy {target.accuracy:g}", "metrics", "curve",
        )  # fmt: skip
        claim.effect, claim.interval = _numbers(target.needed)
        claims.append(claim)
    check = measured_claim(
        experiment, "curve/check", _check_sentence(experiment, curve),
        "held-out mean test accuracy at the largest size", "metrics", "curve",
    )  # fmt: skip
    if curve.check is not None:
        check.effect, check.interval = _numbers(curve.check.predicted)
        check.samples = [{"point": f"n={curve.check.size:g}", "mean": curve.check.measured}]
    return [*claims, check]


def _numbers(interval) -> tuple[float, tuple[float, float]]:
    """An interval's value and bounds for claims.json (inf where a target is out of reach)."""
    return interval.value, (interval.low, interval.high)


def _target_sentence(experiment, target) -> str:
    needed = target.needed
    if not target.reachable:
        return (
            f"{title(experiment)}: test accuracy {target.accuracy:.3f} is beyond the fitted"
            " asymptote: unreachable by more data alone on this curve."
        )
    high = "unbounded" if math.isinf(needed.high) else f"{needed.high:,.0f}"
    return (
        f"{title(experiment)}: test accuracy {target.accuracy:.3f} needs about"
        f" n={needed.value:,.0f} [{needed.low:,.0f}, {high}] training images (95% parametric"
        " bootstrap" + ("; the upper end is beyond the fitted asymptote" if high == "unbounded"
                        else "") + ")."
    )  # fmt: skip


def _check_sentence(experiment, curve: LearningCurve) -> str:
    check = curve.check
    if check is None:
        return (
            f"{title(experiment)}: the curve is not checked by prediction: that needs four sizes"
            " (three to fit, the largest held out)."
        )
    verdict = "inside" if check.inside else "outside: the curve's predictions are not to be trusted"
    return (
        f"{title(experiment)}: refitted without n={check.size:,.0f}, the curve predicted its mean"
        f" test accuracy {check.predicted.value:.3f} [{check.predicted.low:.3f},"
        f" {check.predicted.high:.3f}]; measured {check.measured:.3f}, {verdict}."
    )


def curve_section(document: Document, analysis: Analysis, curve: LearningCurve | None,
                  claims: list[Claim], slug: str) -> None:  # fmt: skip
    """The size experiment's learning curve: its claims and its figure."""
    mine = [c for c in claims if c.kind == "curve"]
    if not mine:
        return
    document.heading("How much data: the learning curve", 3)
    document.bullets([c.sentence for c in mine])
    if curve is not None:
        caption = (
            "Test accuracy against the training-set size (log scale): the points (mean and 95%"
            " interval), the fitted curve and its 95% band, the held-out prediction for the"
            " largest size (open diamond) and the targets (dotted)"
        )
        figure = _curve_figure(analysis, curve)
        document.image(Image(f"{slug}-learning-curve.png", plots.png_bytes(figure), caption))


def _curve_figure(analysis: Analysis, curve: LearningCurve) -> Figure:
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    axes = figure.add_subplot()
    halves = [stat_of(p.records, QUANTITY).half for p in analysis.points]
    axes.errorbar(curve.sizes, curve.means, yerr=halves[: len(curve.sizes)], fmt="o", capsize=3,
                  label="measured (mean, 95% interval)")  # fmt: skip
    grid = [n for n, _, _ in curve.band]
    axes.plot(grid, [1 - float(curve.law.error(n)) for n in grid], label="fitted curve")
    axes.fill_between(grid, [low for _, low, _ in curve.band], [high for _, _, high in curve.band],
                      alpha=0.2, label="95% band")  # fmt: skip
    if curve.check is not None:
        predicted = curve.check.predicted
        axes.errorbar([curve.check.size], [predicted.value],
                      yerr=[[predicted.value - predicted.low], [predicted.high - predicted.value]],
                      fmt="D", mfc="none", capsize=3, label="held-out prediction")  # fmt: skip
    for target in curve.targets:
        axes.axhline(target.accuracy, linestyle=":", linewidth=1, color="grey")
    axes.set_xscale("log")
    axes.set_xlabel("training images (log scale)")
    axes.set_ylabel("test accuracy")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


# --- epochs ------------------------------------------------------------------------------------


def epoch_claims(analysis: Analysis, tests: SlopeTests, seen: set) -> list[Claim]:
    """Per point that learned: do its last epochs still improve validation accuracy beyond
    their noise (`tests` of val_accuracy)? Where they do, the curve over epochs predicts 2x the
    epochs."""
    experiment, claims = analysis.experiment, []
    for point in analysis.measured:
        key = tests.of(point)
        if key not in tests.tests:
            continue
        slopes, (p, holm) = tests.slopes[key], tests.tests[key]
        name = point_name(experiment, point)
        low, high = stats.mean_interval(slopes)
        slope = f"{np.mean(slopes):+.4f} per epoch [{low:+.4f}, {high:+.4f}] ({len(slopes)} runs)"
        count = len(tests.tests)
        evidence = f"one-sided t-test, Holm p = {show_p(holm)} over {count} distinct points"
        claim = Claim(
            f"{experiment.name}/still-improving/{analysis.points.index(point)}",
            "still-improving", experiment.name, experiment.title,
            f"{title(experiment)}: {name} still improves in its last epochs: validation accuracy"
            f" {slope}; {evidence}." + _more_epochs(point.records),
            f"{title(experiment)}: {name}: validation accuracy is not shown to improve over its"
            f" last epochs ({slope}; {evidence}).",
            "slope of validation accuracy over the last third of the epochs",
            "history (val_accuracy)", [{"point": name, "n": len(slopes), "mean": np.mean(slopes)}],
            "one-sided one-sample t-test of the runs' slopes", float(np.mean(slopes)), (low, high),
            "95% t", p, holm, f"Holm over {count} distinct points",
            established=holm < ALPHA, strength=strength(holm) if holm < ALPHA else 0.0,
            moot=key in seen,
        )  # fmt: skip
        seen.add(key)
        claims.append(claim)
    return claims


def _more_epochs(records: list[RunRecord]) -> str:
    """The curve over epochs, fitted to the runs' validation accuracy, at 2x the epochs."""
    histories = [r.history for r in records if r.status in FINISHED and r.history]
    length = min((len(h) for h in histories), default=0)
    samples: dict[float, list[Any]] = {
        float(epoch + 1): [h[epoch]["val_accuracy"] for h in histories] for epoch in range(length)
    }
    curve = learning_curve(samples, bootstrap=EPOCH_BOOTSTRAP)
    if curve is None:
        return ""
    doubled = 1 - float(curve.law.error(2 * length))
    check = curve.check
    checked = (
        ""
        if check is None
        else f"; refitted without epoch {length}, it predicted {check.predicted.value:.3f}"
        f" [{check.predicted.low:.3f}, {check.predicted.high:.3f}] for it, measured"
        f" {check.measured:.3f}, {'inside' if check.inside else 'outside'}"
    )
    return (
        f" The curve over epochs puts validation accuracy at {doubled:.3f} after {2 * length}"
        f" epochs (a fit, not a test){checked}."
    )
