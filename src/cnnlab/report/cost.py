"""How many seeds, and at what cost: the seeds-needed section and its advice, each point's training
FLOPs and time to a target validation accuracy, and the accuracy-against-compute figure.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Any

from cnnlab import plots
from cnnlab.config import RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.nn.shapes import dataset_input, forward_flops, resolve_layers
from cnnlab.report import stats
from cnnlab.report.design import Analysis
from cnnlab.report.document import Document, Image
from cnnlab.report.points import Point, point_name, stat_of
from cnnlab.report.stats import ALPHA
from cnnlab.store import FINISHED, RunRecord
from cnnlab.study.studyfile import Experiment

DETECTABLE = 0.01  # the difference in test accuracy the seeds-needed advice plans to detect
TARGET_SHARE = 0.9  # default time-to-accuracy target: this share of the best point's val accuracy


@dataclass(frozen=True)
class Options:
    """The report's settings for its seeds-needed advice and its time-to-target columns."""

    difference: float  # test accuracy the seeds-needed advice plans to detect
    target_accuracy: float | None  # validation accuracy to time; None: TARGET_SHARE of the best


DIFFERENCES = (0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)  # the seeds-needed figure's x axis


@dataclass
class SeedsPlan:
    """Per experiment, the runs per point needed to tell `difference` apart; and the advice."""

    difference: float
    rows: list[list[str]]
    curves: list[tuple[str, list[float], list[int | None]]]
    advice: list[str]


def typical_spread(samples: list[list[float]]) -> float | None:
    """The run-to-run standard deviation of the median point (by its std), over the points
    that vary: robust to one unstable point (a collapse in some seeds) and to collapsed points
    that do not vary at all."""
    spreads = sorted(statistics.stdev(s) for s in samples if len(s) > 1)
    varying = [s for s in spreads if s > 0] or spreads
    return statistics.median(varying) if varying else None


def seeds_plan(analyses: list[Analysis], options: Options) -> SeedsPlan:
    """How many seeds each experiment needs for `options.difference`, with the advice."""
    difference = options.difference
    plan = SeedsPlan(difference, [], [], [])
    for analysis in analyses:
        samples = [stat_of(p.records, "test_accuracy").values for p in analysis.points]
        counts = [len(values) for values in samples if values]
        if not counts:
            continue
        spread = typical_spread(samples)
        title = analysis.experiment.title
        runs = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}–{max(counts)}"
        if spread is None:
            plan.rows.append([title, runs, "–", "–", "unknown: one run per point"])
            plan.advice.append(
                f"{title}: one run per point measures no run-to-run spread; run the study with"
                " `--repeats 3` or more to learn how many seeds it needs"
            )
            continue
        needed = stats.repeats_needed(spread, difference)
        shown = f"over {stats.MOST_REPEATS}" if needed is None else str(needed)
        if needed is not None and min(counts) >= needed:
            verdict = "enough"
        else:
            verdict = f"**too few**: `--repeats {shown}`"
            plan.advice.append(
                f"{title}: {runs} run(s) per point; telling apart {difference:g} test accuracy"
                f" with {stats.POWER:.0%} power (run-to-run std {spread:.4f}) needs"
                f" `--repeats {shown}`"
            )
        plan.rows.append([title, runs, f"{spread:.4f}", shown, verdict])
        if spread > 0:
            needs = [stats.repeats_needed(spread, d) for d in DIFFERENCES]
            plan.curves.append((title, list(DIFFERENCES), needs))
    return plan


def seeds_section(document: Document, plan: SeedsPlan, records: list[RunRecord]) -> None:
    """The runs per point each experiment needs, as a table and a figure."""
    if not plan.rows:
        return
    difference = plan.difference
    document.heading("How many seeds")
    document.paragraph(
        f"For each experiment, the runs per point that Welch's test needs to tell two points"
        f" **{difference:g}** apart in test accuracy with {stats.POWER:.0%} power at"
        f" p < {ALPHA:g}, from the run-to-run standard deviation of its median point (the points"
        " that vary; one unstable point does not set it), its power computed exactly for normal"
        " noise with `scipy.stats`. Simultaneous tests over many pairs ask for somewhat more."
    )
    document.table(
        [
            "experiment",
            "runs per point",
            "run-to-run std",
            f"runs needed for {difference:g}",
            "verdict",
        ],
        plan.rows,
    )
    if plan.curves:
        repeats = max(len({r.seed for r in records}), 1)
        figure = plots.repeats_needed_figure(
            plan.curves, repeats, difference, "Runs per point needed (80% power, p < 0.05)"
        )
        document.image(
            Image(
                "seeds-needed.png",
                plots.png_bytes(figure),
                "Runs per point needed against the difference to detect; dashed: this study's"
                " seeds, dotted: the difference the table uses",
            )
        )


def compute_figure(
    document: Document, experiment: Experiment, points: list[Point], slug: str
) -> None:
    """Test accuracy against fit seconds and training FLOPs, per point."""
    shown = [p for p in points if stat_of(p.records, "test_accuracy").n]
    seconds = [stat_of(p.records, "fit_seconds") for p in shown]
    if len(shown) < 2 or not all(s.n and s.mean > 0 for s in seconds):
        return
    accuracy = [stat_of(p.records, "test_accuracy") for p in shown]
    figure = plots.compute_figure(
        [point_name(experiment, p) for p in shown],
        [(stat.mean, stat.half) for stat in accuracy],
        [stat.mean for stat in seconds],
        [training_flops(p.records) for p in shown],
        f"{experiment.title}: accuracy against time and compute",
    )
    caption = (
        "Test accuracy (mean and 95% interval) against mean fit time and training FLOPs:"
        " up and to the left is better"
    )
    document.image(Image(f"{slug}-compute.png", plots.png_bytes(figure), caption))


def _run_config(config: dict[str, Any]) -> RunConfig | None:
    """The stored config as a RunConfig, or None when this version cannot read it."""
    known = {item.name for item in dataclasses.fields(RunConfig)}
    fields = {key: value for key, value in config.items() if key in known}
    if isinstance(fields.get("layers"), list):
        fields["layers"] = tuple(fields["layers"])
    try:
        return RunConfig(**fields)
    except (TypeError, ValueError, CnnlabError):
        return None


def training_flops(records: list[RunRecord]) -> float | None:
    """Mean training FLOPs of the finished runs: forward and backward over the epochs they ran.

    A spec net's forward pass is counted from its specs; a module net's was measured when it
    trained (`forward_flops`, torch.utils.flop_counter)."""
    totals = []
    for record in records:
        config = _run_config(record.config) if record.status in FINISHED else None
        if config is None:
            continue
        forward = _forward_flops(config, record.metrics.get("forward_flops"))
        if forward is None:
            continue
        trained = int(config.train_size * (1 - config.validation_split))  # Keras floors
        epochs = record.metrics.get("epochs_run") or len(record.history)
        totals.append(3.0 * forward * trained * epochs)  # backward ≈ 2 forwards
    return statistics.fmean(totals) if totals else None


def _forward_flops(config: RunConfig, measured: Any) -> float | None:
    """One image's forward FLOPs: `measured` where the run recorded it, else from the specs."""
    if isinstance(measured, int | float) and not isinstance(measured, bool) and measured > 0:
        return float(measured)
    try:
        shape = dataset_input(config)[0]
        return forward_flops(resolve_layers(config, shape), shape)
    except (TypeError, ValueError, KeyError, CnnlabError):
        return None


def show_giga(flops: float) -> str:
    giga = flops / 1e9
    return f"{giga:,.0f}" if giga >= 100 else f"{giga:.3g}"


def _time_to(record: RunRecord, target: float) -> float | None:
    """Fit seconds to the end of the first epoch whose validation accuracy reached `target`."""
    elapsed = 0.0
    for row in record.history:
        elapsed += float(row.get("seconds") or 0.0)
        if float(row.get("val_accuracy", -1.0)) >= target:
            return elapsed
    return None


def show_time_to(records: list[RunRecord], target: float) -> str:
    finished = [r for r in records if r.status in FINISHED and r.history]
    if not finished:
        return "–"
    reached = [t for t in (_time_to(r, target) for r in finished) if t is not None]
    share = f"{len(reached)}/{len(finished)}"
    if not reached:
        return f"not reached ({share})"
    if len(reached) == 1:
        return f"{reached[0]:.2f} ({share})"
    middle, low, high = stats.positive_interval(reached)  # geometric: a time is never < 0
    return f"{middle:.2f} [{low:.2f}, {high:.2f}] ({share})"


def default_target(points: list[Point]) -> float:
    """TARGET_SHARE of the best point's mean final validation accuracy, rounded down to 0.01."""
    best = max((stat_of(p.records, "val_accuracy").mean for p in points), default=math.nan)
    if math.isnan(best):
        return 0.0
    return math.floor(TARGET_SHARE * best * 100) / 100
