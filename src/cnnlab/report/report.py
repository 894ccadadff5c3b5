"""A study's results -> tables, plots and observations -> report.md and a self-contained HTML.

The report reads only the study folder: the store (runs, metrics, histories, and the study file's
text as it ran) and the run folders' figures and NumPy files (test predictions, misclassified
test images, first-layer kernels; runs saved before cnnlab wrote them are reported without
those figures). The seed report's numbers come from the study file's
`[[experiments.NAME.reference]]` rows, so no number of SEED.md is written here.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab import atomic, plots
from cnnlab.config import RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.machine import machine_description
from cnnlab.nn.specs import dataset_input, forward_flops, resolve_layers
from cnnlab.report import learned, stats
from cnnlab.report.document import FILES_FOLDER, Document, Image
from cnnlab.report.mechanisms import mechanism_sections
from cnnlab.report.search import search_sections
from cnnlab.report.stats import ALPHA, WelchResult, welch_t_test
from cnnlab.report.tables import FIELD_LABELS, point_label, show_value
from cnnlab.store import FINISHED, RunRecord, Store
from cnnlab.study.studyfile import VARIANT, Experiment, Study, load_study
from cnnlab.training.metrics import versions as installed_versions

METRIC_LABELS = {
    "train_accuracy": "train acc",
    "test_accuracy": "test acc",
    "fit_seconds": "fit s",
    "parameters": "params",
}
COLLAPSE_MARGIN = 0.02  # a point must beat the most-frequent-class accuracy by this much to learn
OVERFIT_RISE = 0.02  # a final validation loss this much above its minimum counts as over-fitting
DETECTABLE = 0.01  # the difference in test accuracy the seeds-needed advice plans to detect
TARGET_SHARE = 0.9  # default time-to-accuracy target: this share of the best point's val accuracy
INTERVAL_NOTE = (
    "the t interval (mean ± t·s/√n), not a bootstrap: with 2–5 seeds a percentile bootstrap has"
    " only 3 to 126 distinct resamples of the mean and covers the true mean less often than it"
    " claims; the t interval is exact for normal run-to-run noise"
)


# --- numbers ----------------------------------------------------------------------------------


@dataclass
class _Stat:
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def half(self) -> float:
        """Half the width of the mean's 95% t interval (0 for one run: nothing to show)."""
        if self.n < 2:
            return 0.0
        low, high = stats.mean_interval(self.values)
        return (high - low) / 2

    def show(self, metric: str) -> str:
        if not self.values:
            return "–"
        if metric == "parameters" and len(set(self.values)) == 1:
            return f"{int(self.values[0]):,}"
        digits = {"fit_seconds": 1, "parameters": 0}.get(metric, 3)
        if self.n == 1:  # one run has no spread to show
            return f"{self.mean:.{digits}f} (1)"
        low, high = stats.mean_interval(self.values)
        return f"{self.mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}] ({self.n})"


def _stat(records: list[RunRecord], metric: str) -> _Stat:
    values = []
    for record in records:
        value = record.metrics.get(metric)
        if record.status in FINISHED and isinstance(value, int | float) and math.isfinite(value):
            values.append(float(value))
    return _Stat(values)


def _show_reference(value: Any, metric: str) -> str:
    if value is None:
        return "–"
    if metric == "parameters":
        return f"{int(value):,}"
    return f"{value:.1f}" if metric == "fit_seconds" else f"{value:.2f}"


def _label(experiment: Experiment, point: _Point) -> str:
    """A grid point's fields, or for an experiment without a grid, its fixed fields."""
    return point_label(point.values or experiment.fixed) or experiment.name


@dataclass
class _Point:
    values: dict[str, Any]  # grid field -> value
    records: list[RunRecord]
    reference: dict[str, Any]


def _points(experiment: Experiment, records: list[RunRecord]) -> list[_Point]:
    """The experiment's grid points in declaration order, each with its runs and report row."""
    mine = [r for r in records if experiment.name in r.experiments]
    points = []
    for place, _ in experiment.points():
        point = {name: place[name] for name in experiment.grid}
        runs = [
            r
            for r in mine
            if all(r.experiments[experiment.name].get(k) == v for k, v in point.items())
        ]
        runs.sort(key=lambda r: r.seed)
        reference = next(
            (
                row
                for row in experiment.reference
                if all(row.get(k) == v for k, v in point.items() if k in row)
            ),
            {},
        )
        points.append(_Point(point, runs, reference))
    return points


# --- figures ----------------------------------------------------------------------------------


def _artifact(study_dir: Path, record: RunRecord, suffix: str) -> bytes | None:
    for relative in record.artifacts.values():
        path = study_dir / relative
        if relative.endswith(suffix) and path.is_file():
            return path.read_bytes()
    return None


# --- the report -------------------------------------------------------------------------------


@dataclass
class Report:
    """A study's report: write it to the study folder, or show it inline in a notebook."""

    study_dir: Path
    document: Document
    comparisons: list[dict[str, Any]] = dataclasses.field(
        default_factory=list
    )  # as comparisons.csv
    advice: list[str] = dataclasses.field(default_factory=list)

    def markdown(self) -> str:
        return self.document.markdown()

    def html(self) -> str:
        """The whole self-contained page (report.html)."""
        return self.document.html()

    def _repr_html_(self) -> str:
        return self.document.html_fragment()

    def comparisons_csv(self) -> str:
        """Every comparison of the report, one row each, as comparisons.csv holds them."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, COMPARISON_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in self.comparisons:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})
        return buffer.getvalue()

    def write(self) -> dict[str, Path]:
        """Write report.md (+ report_files/*.png), report.html and comparisons.csv / .json."""
        # The figures' folder is replaced whole: a full disk never leaves half of it.
        with atomic.atomic_folder(self.study_dir / FILES_FOLDER) as files:
            for image in self.document.images():
                (files / image.name).write_bytes(image.png)
        paths = {
            "md": self.study_dir / "report.md",
            "html": self.study_dir / "report.html",
            "csv": self.study_dir / "comparisons.csv",
            "json": self.study_dir / "comparisons.json",
        }
        atomic.write_text(paths["csv"], self.comparisons_csv())
        atomic.write_text(paths["json"], json.dumps(self.comparisons, indent=2) + "\n")
        atomic.write_text(paths["md"], self.document.markdown())
        atomic.write_text(paths["html"], self.document.html())
        return paths


def build(
    study_dir: str | os.PathLike[str],
    *,
    difference: float = DETECTABLE,
    target_accuracy: float | None = None,
) -> Report:
    """The report of the study in `study_dir`, read from that folder alone (nothing written).

    `difference`: the test accuracy difference the seeds-needed advice plans to tell apart;
    `target_accuracy`: the validation accuracy whose time-to-reach the tables show (default:
    TARGET_SHARE of each experiment's best point).
    """
    study_dir = Path(study_dir)
    with Store.open(study_dir, create=False) as store:
        meta = store.meta()
        records = store.runs(planned_only=True)
    if "study_text" not in meta:
        raise CnnlabError(f"{study_dir}: the store holds no study yet; run `cnnlab study` first")
    study = load_study(
        study_dir / f"{meta['study_name']}.toml", meta["study_text"], check_architectures=False
    )
    options = _Options(difference, target_accuracy)
    report = Report(study_dir, Document(f"cnnlab study “{study.name}”"))
    compose(study, records, meta, study_dir, report, options)
    return report


def write_report(study_dir: str | os.PathLike[str], **options: Any) -> dict[str, Path]:
    """Write report.md (+ report_files/*.png), report.html and comparisons.csv; returns paths."""
    return build(study_dir, **options).write()


@dataclass(frozen=True)
class _Options:
    difference: float  # test accuracy the seeds-needed advice plans to detect
    target_accuracy: float | None  # validation accuracy to time; None: TARGET_SHARE of the best


def compose(
    study: Study,
    records: list[RunRecord],
    meta: dict[str, str],
    study_dir: Path,
    report: Report,
    options: _Options,
) -> Document:
    """The whole report as a document: summary, experiments, best run, observations, machine."""
    document = report.document
    counts = {status: sum(r.status == status for r in records) for status in _STATUS_ORDER}
    seeds = sorted({r.seed for r in records})
    if study.description:
        document.paragraph(study.description)
    document.paragraph(
        f"{len(records)} runs ({len(seeds)} seed(s) per grid point): "
        + ", ".join(f"{count} {status}" for status, count in counts.items() if count)
        + ". Our numbers are **mean [95% confidence interval] (number of runs)** over seeds,"
        f" {INTERVAL_NOTE}. The report's are single runs on its author's machine, so differences"
        " of a few points are within its noise."
    )
    observations: list[str] = []
    class_names = _class_names(meta.get("class_names", "[]"))
    analyses = [_analyse(study, experiment, records) for experiment in study.experiments]
    family = _correct(analyses)
    for analysis in analyses:
        _experiment_section(document, analysis, family, study_dir, observations, options)
    search_sections(document, study, records, study_dir)
    report.comparisons = [row for a in analyses for row in _comparison_rows(a, family)]
    _seeds_section(document, analyses, records, options, report.advice)
    mechanism_sections(document, study, records, study_dir)
    learned.per_class_section(document, study, records, class_names)
    learned.inside_section(document, study, records, study_dir)
    finished = [r for r in records if r.status in FINISHED and "test_accuracy" in r.metrics]
    if finished:
        best = learned.best_run_section(document, finished, class_names, observations, study_dir)
        learned.kernel_section(document, best, study_dir)
    document.heading("Observations")
    document.bullets(observations or ["No finished runs yet."])
    problems = [r for r in records if r.status in ("diverged", "failed")]
    if problems:
        document.heading("Diverged and failed runs")
        document.table(
            ["run", "status", "experiments", "reason"],
            [[f"`{r.id}`", r.status, ", ".join(r.experiments), r.reason or "–"] for r in problems],
        )
    _environment_section(document, records, meta)
    return document


build_report = build  # the name the package root gives it


_STATUS_ORDER = ("done", "diverged", "failed", "running", "pending")


def _experiment_section(
    document: Document,
    analysis: _Analysis,
    family: int,
    study_dir: Path,
    observations: list[str],
    options: _Options,
) -> None:
    experiment, points = analysis.experiment, analysis.points
    target = options.target_accuracy or _default_target(points)
    document.heading(experiment.title)
    if experiment.description:
        document.paragraph(experiment.description)
    referenced = [m for m in METRIC_LABELS if any(m in row for row in experiment.reference)]
    headers = [FIELD_LABELS.get(name, name) for name in experiment.grid] or ["runs"]
    for metric, label in METRIC_LABELS.items():
        if metric in referenced:
            headers.append(f"{label} (report)")
        headers.append(f"{label} (cnnlab)")
    rows = []
    for point in points:
        row = [show_value(v) for v in point.values.values()] or [_label(experiment, point)]
        for metric in METRIC_LABELS:
            if metric in referenced:
                row.append(_show_reference(point.reference.get(metric), metric))
            row.append(_stat(point.records, metric).show(metric))
        flops = _training_flops(point.records)
        row.append("–" if flops is None else _show_giga(flops))
        row.append(_show_time_to(point.records, target))
        rows.append(row)
    headers += ["train GFLOPs", f"s to val acc ≥ {target:.2f}"]
    document.table(headers, rows)
    document.paragraph(
        f"Train GFLOPs: the network's training FLOPs over the epochs it ran (backward ≈ 2"
        f" forwards). Seconds to val acc ≥ {target:.2f}: the fit time up to the end of the first"
        " epoch whose validation accuracy reached it (the DAWNBench measure), over the runs that"
        " reached it (reached / runs)"
        + (
            "."
            if options.target_accuracy
            else f"; the target is {TARGET_SHARE:g}× the best point's mean validation accuracy."
        )
    )
    _significance(document, analysis, family, observations)
    if "fit_seconds" in referenced:
        document.paragraph(
            "Fit times: the report's on its author's machine, ours on the device named under"
            " *Environment*; compare their ratios, not their values."
        )
    slug = re.sub(r"[^a-z0-9]+", "-", experiment.name.lower())
    curves = [
        (_label(experiment, p), [[h["val_accuracy"] for h in r.history] for r in p.records])
        for p in points
        if any(r.history for r in p.records)
    ]
    curves = [(label, [run for run in runs if run]) for label, runs in curves]
    if curves:
        figure = plots.validation_curves_figure(curves, f"{experiment.title}: validation accuracy")
        document.image(
            Image(
                f"{slug}-curves.png",
                plots.png_bytes(figure),
                "Validation accuracy per epoch, mean and its 95% confidence band",
            )
        )
    if experiment.kind in ("size", "l1") and len(experiment.grid) == 1:
        _versus_figure(document, experiment, points, slug)
    if experiment.kind == "pooling":
        _pooling_figure(document, experiment, points, slug)
    if VARIANT in experiment.grid:
        _variants_figure(document, experiment, points, slug)
    _compute_figure(document, experiment, points, slug)
    _observe(analysis, observations)
    representative = next((r for p in points for r in p.records if r.status in FINISHED), None)
    if representative is not None:
        png = _artifact(study_dir, representative, "history.png")
        placed = representative.experiments[experiment.name]
        if png is not None:
            document.image(
                Image(
                    f"{slug}-history.png",
                    png,
                    f"History of a representative run (`{representative.id}`, seed"
                    f" {representative.seed}, {point_label(placed)})",
                )
            )


def _versus_figure(
    document: Document, experiment: Experiment, points: list[_Point], slug: str
) -> None:
    (name,) = experiment.grid
    shown = [p for p in points if _stat(p.records, "test_accuracy").n]
    if not shown:
        return
    x = [float(p.values[name]) for p in shown]

    def pairs(metric: str) -> list[tuple[float, float]]:
        return [(s.mean, s.half) for s in (_stat(p.records, metric) for p in shown)]

    reference = {
        metric: [p.reference.get(metric) for p in shown]
        for metric in ("train_accuracy", "test_accuracy")
    }
    if experiment.kind == "size":
        figure = plots.accuracy_versus_figure(
            x,
            pairs("train_accuracy"),
            pairs("test_accuracy"),
            xlabel="training images (log scale)",
            xscale="log",
            title="Accuracy and fit time against training-set size",
            seconds=pairs("fit_seconds"),
            reference=reference,
        )
        caption = "Accuracy (left axis) and fit time (right axis) against the training-set size"
    else:
        figure = plots.accuracy_versus_figure(
            x,
            pairs("train_accuracy"),
            pairs("test_accuracy"),
            xlabel=f"{FIELD_LABELS.get(name, name)} (symlog scale)",
            xscale="symlog",
            title="Accuracy against the L1 weight",
            reference=reference,
        )
        caption = "Accuracy against the L1 weight on the dense kernel; open squares: the report"
    document.image(Image(f"{slug}-versus.png", plots.png_bytes(figure), caption))


def _pooling_figure(
    document: Document, experiment: Experiment, points: list[_Point], slug: str
) -> None:
    labels = [point_label(p.values).split("=", 1)[-1] for p in points]
    panels = []
    for metric, title in (
        ("parameters", "parameters"),
        ("fit_seconds", "fit time (s)"),
        ("train_accuracy", "train accuracy"),
        ("test_accuracy", "test accuracy"),
    ):
        measured = [_stat(p.records, metric) for p in points]
        values = [(s.mean if s.n else 0.0, s.half) for s in measured]
        panels.append((title, values, [p.reference.get(metric) for p in points]))
    figure = plots.comparison_bars_figure(labels, panels, experiment.title)
    caption = "Parameters, fit time and accuracy (report's fit times are from its machine)"
    document.image(Image(f"{slug}-comparison.png", plots.png_bytes(figure), caption))


def _variants_figure(
    document: Document, experiment: Experiment, points: list[_Point], slug: str
) -> None:
    """Test accuracy and fit time per point, the baseline (first) variant marked."""
    shown = [p for p in points if _stat(p.records, "test_accuracy").n]
    if len(shown) < 2:
        return
    labels = [_label(experiment, p).removeprefix(f"{VARIANT}=") for p in shown]
    accuracy = [_stat(p.records, "test_accuracy") for p in shown]
    seconds = [_stat(p.records, "fit_seconds") for p in shown]
    figure = plots.variants_figure(
        labels,
        [(stat.mean, stat.half) for stat in accuracy],
        [(stat.mean, stat.half) for stat in seconds],
        experiment.title,
    )
    caption = (
        "Test accuracy and fit time of each variant, mean and 95% interval over its repeats; the"
        " dashed line is the first variant's mean accuracy"
    )
    document.image(Image(f"{slug}-variants.png", plots.png_bytes(figure), caption))


def _observe(analysis: _Analysis, observations: list[str]) -> None:
    """Plain sentences read off the numbers and the corrected tests; no cause without a measure."""
    experiment, points = analysis.experiment, analysis.points
    measured = [p for p in points if _stat(p.records, "test_accuracy").n]
    if not measured:
        return
    title = f"**{experiment.title}**"

    def mean(point: _Point, metric: str) -> float:
        return _stat(point.records, metric).mean

    chance = analysis.chance_level
    learned_points = [p for p in measured if analysis.above_chance(p)]
    if not learned_points:
        low = min(mean(p, "test_accuracy") for p in measured)
        high = max(mean(p, "test_accuracy") for p in measured)
        spread = f"{low:.3f}" if f"{low:.3f}" == f"{high:.3f}" else f"{low:.3f} to {high:.3f}"
        # Means at chance say nothing was learned; means above it that the test cannot confirm
        # (too few runs) say only that.
        verdict = "nothing learned" if high <= chance + COLLAPSE_MARGIN else "not shown to learn"
        observations.append(
            f"{title}: {verdict}: no point's test accuracy ({spread}) is clearly above the"
            f" most-frequent-class baseline ({chance:.2f}; {analysis.chance_rule()})."
        )
        _agreement(experiment, measured, observations)
        return
    overfit = []
    for point in learned_points:
        stops = [epoch for epoch in map(_overfit_epoch, point.records) if epoch is not None]
        if stops and len(stops) * 2 > len(point.records):  # most of the point's runs
            overfit.append((point, statistics.fmean(stops), len(point.records[0].history)))
    if overfit:
        parts = [
            f"epoch {epoch:.0f} of {total} ({_label(experiment, p)})"
            for p, epoch, total in overfit[:6]
        ]
        if (
            len(overfit) == len(learned_points) > 1
            and len({(round(e), t) for _, e, t in overfit}) == 1
        ):
            parts = [f"epoch {overfit[0][1]:.0f} of {overfit[0][2]} at every grid point"]
        observations.append(
            f"{title}: validation loss is lowest at "
            + "; ".join(parts)
            + " and rises afterwards: the net over-fits from there on."
        )
    else:
        observations.append(
            f"{title}: validation loss is still at or near its lowest in the last epochs: no"
            f" clear over-fitting within {len(learned_points[0].records[0].history)} epochs."
        )
    if experiment.kind == "size" and len(measured) >= 2:
        first, last = measured[0], measured[-1]
        gap_first = mean(first, "train_accuracy") - mean(first, "test_accuracy")
        gap_last = mean(last, "train_accuracy") - mean(last, "test_accuracy")
        if abs(gap_last - gap_first) < 0.005:
            trend = f"stays near {gap_first:.3f}"
        else:
            direction = "shrinks" if gap_last < gap_first else "grows"
            trend = f"{direction} from {gap_first:.3f} to {gap_last:.3f}"
        observations.append(
            f"{title}: test accuracy goes from {mean(first, 'test_accuracy'):.3f} to"
            f" {mean(last, 'test_accuracy'):.3f} between {point_label(first.values)} and"
            f" {point_label(last.values)}; the train−test gap {trend}."
        )
    if experiment.kind == "l1":
        best = max(measured, key=lambda p: mean(p, "test_accuracy"))
        collapsed = [p for p in measured if p not in learned_points]
        sentence = (
            f"{title}: the best test accuracy is {mean(best, 'test_accuracy'):.3f} at"
            f" {point_label(best.values)}."
        )
        if collapsed:
            onwards = collapsed == measured[len(measured) - len(collapsed) :]
            where = (
                f"From {point_label(collapsed[0].values)} on"
                if onwards
                else "At " + ", ".join(point_label(p.values) for p in collapsed)
            )
            sentence += (
                f" {where}, L1 collapses the model to the most-frequent-class baseline: test"
                f" accuracy {_show_range(collapsed)}, not clearly above {chance:.2f}"
                f" ({analysis.chance_rule()}), while {point_label(best.values)} is."
            )
        observations.append(sentence)
    if experiment.kind == "pooling" and len(measured) == 2:
        strided, pooled = measured
        ratio_parameters = mean(pooled, "parameters") / max(mean(strided, "parameters"), 1)
        ratio_time = mean(pooled, "fit_seconds") / max(mean(strided, "fit_seconds"), 1e-9)
        gain = mean(pooled, "test_accuracy") - mean(strided, "test_accuracy")

        def gap(point: _Point) -> float:
            return mean(point, "train_accuracy") - mean(point, "test_accuracy")

        observations.append(
            f"{title}: {point_label(pooled.values)} has {ratio_parameters:.2f}× the parameters"
            f" of {point_label(strided.values)}, takes {ratio_time:.1f}× as long to fit, and"
            f" changes test accuracy by {gain:+.3f}; its train−test gap is {gap(pooled):.3f}"
            f" against {gap(strided):.3f}."
        )
    _agreement(experiment, measured, observations)


def _show_range(points: list[_Point]) -> str:
    means = sorted(_stat(p.records, "test_accuracy").mean for p in points)
    low, high = f"{means[0]:.3f}", f"{means[-1]:.3f}"
    return low if low == high else f"{low} to {high}"


def _agreement(experiment: Experiment, measured: list[_Point], observations: list[str]) -> None:
    """How many points are within 0.03 of the report's test accuracy."""
    agree = [
        (_stat(p.records, "test_accuracy").mean, p.reference["test_accuracy"])
        for p in measured
        if "test_accuracy" in p.reference
    ]
    if agree:
        close = sum(abs(ours - theirs) <= 0.03 for ours, theirs in agree)
        observations.append(
            f"**{experiment.title}**: our mean test accuracy is within 0.03 of the report's at"
            f" {close} of {len(agree)} points."
        )


def _baseline(points: list[_Point]) -> float:
    """The most-frequent-class test accuracy the runs recorded (0.10 on CIFAR-10's test set)."""
    values = [
        r.metrics["baseline_accuracy"]
        for p in points
        for r in p.records
        if isinstance(r.metrics.get("baseline_accuracy"), int | float)
    ]
    return statistics.fmean(values) if values else 0.1


def _overfit_epoch(record: RunRecord) -> int | None:
    """The epoch of lowest validation loss, if the loss clearly rose after it (else None)."""
    losses = [h.get("val_loss", math.nan) for h in record.history]
    if len(losses) < 4 or not all(math.isfinite(loss) for loss in losses):
        return None
    best = min(range(len(losses)), key=losses.__getitem__)
    rose = losses[-1] >= losses[best] * (1 + OVERFIT_RISE)
    return best + 1 if rose and best + 1 <= len(losses) - 2 else None


# --- is a difference real? ----------------------------------------------------------------------


@dataclass
class _Comparison:
    first: _Point
    second: _Point
    roles: list[str]  # "neighbours" and/or "baseline"
    result: WelchResult | None  # None: a point with fewer than two runs
    interval: tuple[float, float] | None = None  # 95% interval of the difference
    effect: float = math.nan  # Hedges' g
    improvement: float = math.nan  # share of seed pairs where the second point beats the first
    adjusted: float = math.nan  # Holm's p over every comparison of the report

    @property
    def tested(self) -> bool:
        return self.result is not None and not math.isnan(self.result.p)

    @property
    def real(self) -> bool:
        return self.tested and self.adjusted < ALPHA


@dataclass
class _Chance:
    """A point against the most-frequent-class accuracy (a one-sample t-test)."""

    result: WelchResult
    adjusted: float = math.nan  # Holm's p, in the report's one family

    @property
    def tested(self) -> bool:
        return not math.isnan(self.result.p)


@dataclass
class _Analysis:
    experiment: Experiment
    points: list[_Point]
    baseline: int  # the point the others are held against
    why: str  # how the baseline point was chosen
    ordered: bool  # neighbours are compared too
    comparisons: list[_Comparison]
    chance: dict[int, _Chance]  # point index -> its test against chance_level
    chance_level: float  # the most-frequent-class test accuracy

    def above_chance(self, point: _Point) -> bool:
        """Clearly above the most-frequent-class accuracy: by COLLAPSE_MARGIN, and by the test."""
        values = _stat(point.records, "test_accuracy")
        if not values.n or values.mean <= self.chance_level + COLLAPSE_MARGIN:
            return False
        test = self.chance.get(self.points.index(point))
        if test is None:  # a single run: the margin is all there is
            return True
        return test.tested and test.adjusted < ALPHA and test.result.mean_difference > 0

    def chance_rule(self) -> str:
        if not self.chance:
            return f"one run per point: by the margin of {COLLAPSE_MARGIN:g} alone, untested"
        return (
            f"clearly above means by at least {COLLAPSE_MARGIN:g} and by a one-sample t-test,"
            f" Holm-corrected p < {ALPHA:g}"
        )


def _analyse(study: Study, experiment: Experiment, records: list[RunRecord]) -> _Analysis:
    """An experiment's points, its comparisons and its points against chance, uncorrected."""
    points = _points(experiment, records)
    baseline, why = _baseline_point(study, experiment, points)
    ordered = VARIANT not in experiment.grid  # variants (an ablation) have no order
    measured = [_stat(p.records, "test_accuracy").n for p in points]
    comparisons = []
    if len(points) >= 2 and sum(n > 0 for n in measured) >= 2 and max(measured) >= 2:
        comparisons = _comparisons(points, baseline, ordered)
    chance_level = _baseline(points)
    chance = {
        index: _Chance(stats.one_sample_t_test(values, chance_level))
        for index, point in enumerate(points)
        if len(values := _stat(point.records, "test_accuracy").values) > 1
    }
    return _Analysis(experiment, points, baseline, why, ordered, comparisons, chance, chance_level)


def _correct(analyses: list[_Analysis]) -> int:
    """Holm's correction over every test of the report; returns how many tests it covered."""
    tests: list[_Comparison | _Chance] = [
        test
        for analysis in analyses
        for test in [*analysis.comparisons, *analysis.chance.values()]
        if test.tested
    ]
    for test, adjusted in zip(tests, stats.holm([t.result.p for t in tests]), strict=True):
        test.adjusted = adjusted
    return len(tests)


def _baseline_point(study: Study, experiment: Experiment, points: list[_Point]) -> tuple[int, str]:
    """The point the others are held against, and why it was chosen.

    The point whose grid values are the study's defaults (the seed model's configuration), else
    the experiment's first point.
    """
    if VARIANT in experiment.grid:
        return 0, "the experiment's first variant"
    defaults = {field.name: field.default for field in dataclasses.fields(RunConfig)}
    defaults |= study.defaults | experiment.fixed
    for index, point in enumerate(points):
        if point.values and all(defaults.get(k) == v for k, v in point.values.items()):
            return index, "the point that matches the study's defaults"
    return 0, "the experiment's first point: no point matches the study's defaults"


def _comparisons(points: list[_Point], baseline: int, ordered: bool) -> list[_Comparison]:
    """Neighbouring points if `ordered`, then each point against the baseline; a pair once."""
    pairs: dict[tuple[int, int], list[str]] = {}
    for index in range(1, len(points) if ordered else 0):
        pairs.setdefault((index - 1, index), []).append("neighbours")
    for index in range(len(points)):
        if index != baseline:
            pairs.setdefault(tuple(sorted((baseline, index))), []).append("baseline")
    comparisons = []
    for (first, second), roles in pairs.items():
        a = _stat(points[first].records, "test_accuracy").values
        b = _stat(points[second].records, "test_accuracy").values
        comparison = _Comparison(points[first], points[second], roles, None)
        if len(a) > 1 and len(b) > 1:
            comparison.result = welch_t_test(a, b)
            comparison.interval = stats.difference_interval(a, b)
            comparison.effect = stats.hedges_g(a, b)
            comparison.improvement = stats.probability_of_improvement(a, b)
        comparisons.append(comparison)
    return comparisons


TEST_COLUMNS = ("t", "df", "p", "Holm p", "verdict")


def _verdict(comparison: _Comparison) -> str:
    """A short verdict on Holm's p (the text above the table states the tests)."""
    result = comparison.result
    if result is None:
        return "one run: no test"
    if math.isnan(result.p):
        return "identical: no test"
    if not comparison.real:
        return "not distinguishable"
    return "**real** (no spread)" if math.isinf(result.t) else "**real**"


def _show_p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.2g}"


def _show_number(value: float | None, form: str) -> str:
    return "–" if value is None or math.isnan(value) else format(value, form)


def _significance(
    document: Document, analysis: _Analysis, family: int, observations: list[str]
) -> None:
    """Welch's t-test on test accuracy between neighbouring points and against the baseline."""
    experiment, points = analysis.experiment, analysis.points
    measured = [p for p in points if _stat(p.records, "test_accuracy").n]
    if len(points) < 2 or len(measured) < 2:
        return
    if not analysis.comparisons:
        document.paragraph(
            "Each point has a single run, so there is no run-to-run spread to measure and no"
            " statement is possible about which differences are real; run the study with"
            " `--repeats 3` or more."
        )
        return
    baseline, ordered = analysis.baseline, analysis.ordered
    document.paragraph(
        "Is a difference larger than the run-to-run noise? Welch's t-test (two-sided, unequal"
        " variances) on the test accuracy of the repeats, "
        + ("between neighbouring points and against" if ordered else "each point against")
        + f" the baseline **{_label(experiment, points[baseline])}** ({analysis.why}). Each"
        " difference is the later point's mean minus the earlier one's, with its 95% Welch"
        " interval, Hedges' g (the difference in pooled standard deviations, small-sample"
        " corrected) and P(improve), the share of seed pairs in which the later point wins."
        f" A difference counts as **real** when its Holm-adjusted p is below {ALPHA:g}: Holm's"
        f" correction runs over all **{family} tests of this report** (every comparison of every"
        " experiment and each point against the most-frequent-class baseline), so the chance"
        f" that any truly equal pair is called real stays below {ALPHA:g}; with few repeats a"
        " small real difference can still go unseen."
    )
    if len(experiment.grid) == 1:  # the field names the column; the rows show its values
        (field,) = experiment.grid
        heading = FIELD_LABELS.get(field, field)

        def name(point: _Point) -> str:
            return show_value(point.values[field])
    else:
        heading = "comparison"

        def name(point: _Point) -> str:
            return _label(experiment, point)

    rows = []
    for comparison in analysis.comparisons:
        result = comparison.result
        difference = "–"
        if result is not None:
            low, high = comparison.interval
            difference = f"{result.mean_difference:+.3f} [{low:+.3f}, {high:+.3f}]"
        rows.append(
            [
                f"{name(comparison.first)} → {name(comparison.second)}",
                ", ".join(comparison.roles),
                difference,
                _show_number(comparison.effect, ".2f"),
                _show_number(comparison.improvement, ".2f"),
                "–" if result is None or math.isnan(result.t) else f"{result.t:.2f}",
                "–" if result is None or math.isnan(result.df) else f"{result.df:.1f}",
                "–" if result is None else _show_p(result.p),
                _show_p(comparison.adjusted),
                _verdict(comparison),
            ]
        )
    document.table(
        [heading, "against", "difference [95% CI]", "Hedges' g", "P(improve)", *TEST_COLUMNS],
        rows,
    )
    tested = [c for c in analysis.comparisons if c.tested]
    real = [c for c in tested if c.real]
    if tested:
        which = "; ".join(
            f"{_label(experiment, c.first)} → {_label(experiment, c.second)}"
            f" ({c.result.mean_difference:+.3f} [{c.interval[0]:+.3f}, {c.interval[1]:+.3f}])"
            for c in real
        )
        observations.append(
            f"**{experiment.title}**: {len(real)} of {len(tested)} tested differences in test"
            " accuracy are larger than the run-to-run noise (Welch's t-test, Holm-corrected over"
            f" the report's {family} tests, p < {ALPHA:g})" + (f": {which}." if which else ".")
        )


COMPARISON_FIELDS = (
    "experiment", "first", "second", "against", "first_runs", "second_runs", "first_mean",
    "second_mean", "difference", "difference_low", "difference_high", "hedges_g",
    "p_improvement", "t", "df", "p", "holm_p", "tests_corrected", "verdict",
)  # fmt: skip


def _comparison_rows(analysis: _Analysis, family: int) -> list[dict[str, Any]]:
    """The analysis's comparisons and tests against chance as comparisons.csv rows."""

    def number(value: float | None) -> float | None:
        return None if value is None or not math.isfinite(value) else value

    def test_fields(result: WelchResult | None, adjusted: float) -> dict[str, Any]:
        return {
            "difference": number(result and result.mean_difference),
            "t": number(result and result.t),
            "df": number(result and result.df),
            "p": number(result and result.p),
            "holm_p": number(adjusted),
            "tests_corrected": family,
        }

    experiment, rows = analysis.experiment, []
    for comparison in analysis.comparisons:
        first = _stat(comparison.first.records, "test_accuracy")
        second = _stat(comparison.second.records, "test_accuracy")
        low, high = comparison.interval or (None, None)
        rows.append(
            {
                "experiment": experiment.name,
                "first": _label(experiment, comparison.first),
                "second": _label(experiment, comparison.second),
                "against": ", ".join(comparison.roles),
                "first_runs": first.n,
                "second_runs": second.n,
                "first_mean": number(first.mean),
                "second_mean": number(second.mean),
                "difference_low": low,
                "difference_high": high,
                "hedges_g": number(comparison.effect),
                "p_improvement": number(comparison.improvement),
                **test_fields(comparison.result, comparison.adjusted),
                "verdict": _verdict(comparison).replace("**", ""),
            }
        )
    for index, test in analysis.chance.items():
        point = analysis.points[index]
        values = _stat(point.records, "test_accuracy")
        rows.append(
            {
                "experiment": experiment.name,
                "first": f"most-frequent-class baseline {analysis.chance_level:g}",
                "second": _label(experiment, point),
                "against": "most-frequent-class baseline",
                "second_runs": values.n,
                "first_mean": analysis.chance_level,
                "second_mean": number(values.mean),
                **test_fields(test.result, test.adjusted),
                "verdict": "clearly above" if analysis.above_chance(point) else "not clearly above",
            }
        )
    return [{field: row.get(field) for field in COMPARISON_FIELDS} for row in rows]


# --- how many seeds, and at what cost -------------------------------------------------------------

DIFFERENCES = (0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)  # the seeds-needed figure's x axis


def _seeds_section(
    document: Document,
    analyses: list[_Analysis],
    records: list[RunRecord],
    options: _Options,
    advice: list[str],
) -> None:
    """Per experiment: the runs per point needed to tell `options.difference` apart."""
    difference = options.difference
    rows, curves = [], []
    for analysis in analyses:
        samples = [_stat(p.records, "test_accuracy").values for p in analysis.points]
        counts = [len(values) for values in samples if values]
        if not counts:
            continue
        spread = stats.pooled_spread(samples)
        title = analysis.experiment.title
        runs = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}–{max(counts)}"
        if spread is None:
            rows.append([title, runs, "–", "–", "unknown: one run per point"])
            advice.append(
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
            advice.append(
                f"{title}: {runs} run(s) per point; telling apart {difference:g} test accuracy"
                f" with {stats.POWER:.0%} power (run-to-run std {spread:.4f}) needs"
                f" `--repeats {shown}`"
            )
        rows.append([title, runs, f"{spread:.4f}", shown, verdict])
        if spread > 0:
            curves.append(
                (title, list(DIFFERENCES), [stats.repeats_needed(spread, d) for d in DIFFERENCES])
            )
    if not rows:
        return
    document.heading("How many seeds")
    document.paragraph(
        f"For each experiment, the runs per point that Welch's test needs to tell apart a"
        f" difference of **{difference:g}** in test accuracy with {stats.POWER:.0%} power at"
        f" p < {ALPHA:g}, from the run-to-run standard deviation pooled over its points (its"
        " power computed exactly for normal noise with `scipy.stats`). Holm's correction over"
        " many tests asks for somewhat more."
    )
    document.table(
        [
            "experiment",
            "runs per point",
            "run-to-run std",
            f"runs needed for {difference:g}",
            "verdict",
        ],
        rows,
    )
    if curves:
        repeats = max(len({r.seed for r in records}), 1)
        figure = plots.repeats_needed_figure(
            curves, repeats, difference, "Runs per point needed (80% power, p < 0.05)"
        )
        document.image(
            Image(
                "seeds-needed.png",
                plots.png_bytes(figure),
                "Runs per point needed against the difference to detect; dashed: this study's"
                " seeds, dotted: the difference the table uses",
            )
        )


def _compute_figure(
    document: Document, experiment: Experiment, points: list[_Point], slug: str
) -> None:
    """Test accuracy against fit seconds and training FLOPs, per point."""
    shown = [p for p in points if _stat(p.records, "test_accuracy").n]
    seconds = [_stat(p.records, "fit_seconds") for p in shown]
    if len(shown) < 2 or not all(s.n and s.mean > 0 for s in seconds):
        return
    accuracy = [_stat(p.records, "test_accuracy") for p in shown]
    figure = plots.compute_figure(
        [_label(experiment, p) for p in shown],
        [(stat.mean, stat.half) for stat in accuracy],
        [stat.mean for stat in seconds],
        [_training_flops(p.records) for p in shown],
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


def _training_flops(records: list[RunRecord]) -> float | None:
    """Mean training FLOPs of the finished runs: forward and backward over the epochs they ran."""
    totals = []
    for record in records:
        config = _run_config(record.config) if record.status in FINISHED else None
        if config is None:
            continue
        try:
            shape = dataset_input(config)[0]
            forward = forward_flops(resolve_layers(config, shape), shape)
        except (TypeError, ValueError, KeyError, CnnlabError):
            continue
        trained = int(config.train_size * (1 - config.validation_split))  # Keras floors
        epochs = record.metrics.get("epochs_run") or len(record.history)
        totals.append(3.0 * forward * trained * epochs)  # backward ≈ 2 forwards
    return statistics.fmean(totals) if totals else None


def _show_giga(flops: float) -> str:
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


def _show_time_to(records: list[RunRecord], target: float) -> str:
    finished = [r for r in records if r.status in FINISHED and r.history]
    if not finished:
        return "–"
    reached = [t for t in (_time_to(r, target) for r in finished) if t is not None]
    share = f"{len(reached)}/{len(finished)}"
    if not reached:
        return f"not reached ({share})"
    if len(reached) == 1:
        return f"{reached[0]:.2f} ({share})"
    low, high = stats.mean_interval(reached)
    return f"{statistics.fmean(reached):.2f} [{low:.2f}, {high:.2f}] ({share})"


def _default_target(points: list[_Point]) -> float:
    """TARGET_SHARE of the best point's mean final validation accuracy, rounded down to 0.01."""
    best = max((_stat(p.records, "val_accuracy").mean for p in points), default=math.nan)
    if math.isnan(best):
        return 0.0
    return math.floor(TARGET_SHARE * best * 100) / 100


def _environment_section(
    document: Document, records: list[RunRecord], meta: dict[str, str]
) -> None:
    document.heading("Environment")
    finished = [r for r in records if r.status in FINISHED]
    devices = sorted({str(r.metrics.get("device")) for r in finished if r.metrics.get("device")})
    versions: dict[str, Any] = {}
    for record in finished:
        if isinstance(record.metrics.get("versions"), dict):
            versions = record.metrics["versions"]
            break
    versions = {**installed_versions(), **versions}  # the runs' own, where they say
    fit_total = sum(r.fit_seconds or 0.0 for r in finished)
    spans = [r.finished_at - r.started_at for r in records if r.finished_at and r.started_at]
    sources = sorted(
        {str(r.metrics.get("data_source")) for r in finished if r.metrics.get("data_source")}
    )
    checksum = meta.get("data_sha256") or next(
        (r.metrics.get("data_sha256") for r in finished if r.metrics.get("data_sha256")), ""
    )
    rows = [
        ["machine", meta.get("machine") or machine_description()],
        ["CPU cores", meta.get("cpu_count") or str(os.cpu_count())],
        ["device", ", ".join(devices) or "–"],
        ["versions", ", ".join(f"{k} {v}" for k, v in versions.items())],
        ["data source", meta.get("data_source") or ", ".join(sources) or "–"],
        ["data SHA-256", f"`{checksum}`" if checksum else "–"],
        ["total fit time", f"{fit_total:.1f} s over {len(finished)} runs"],
        ["total run time", f"{sum(spans):.1f} s (fit, evaluation and saving)"],
        ["last invocation", f"{float(meta.get('last_wall_seconds', 'nan')):.1f} s wall"],
        ["report written", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())],
    ]
    document.table(["", ""], rows)


def _class_names(stored: str) -> list[str]:
    """The class names the store holds: a list of names, or none (numbers are shown instead)."""
    try:
        names = json.loads(stored)
    except (TypeError, ValueError, RecursionError):
        return []
    if isinstance(names, list) and all(isinstance(name, str) for name in names):
        return names
    return []
