"""A study's results -> tables, plots and observations -> report.md and a self-contained HTML.

The report reads only the study folder: the store (runs, metrics, histories, and the study file's
text as it ran) and the run folders' figures and NumPy files (test predictions, misclassified
test images, first-layer kernels; runs saved before cnnlab wrote them are reported without
those figures). The seed report's numbers come from the study file's
`[[experiments.NAME.reference]]` rows, so no number of SEED.md is written here.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import os
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cnnlab import atomic, conv, imaging, plots
from cnnlab.config import RunConfig
from cnnlab.document import FILES_FOLDER, Document, Image
from cnnlab.errors import CnnlabError
from cnnlab.machine import machine_description
from cnnlab.metrics import versions as installed_versions
from cnnlab.stats import WelchResult, welch_t_test
from cnnlab.store import FINISHED, RunRecord, Store
from cnnlab.studyfile import Experiment, Study, load_study
from cnnlab.tables import show_value

METRIC_LABELS = {
    "train_accuracy": "train acc",
    "test_accuracy": "test acc",
    "fit_seconds": "fit s",
    "parameters": "params",
}
FIELD_LABELS = {"train_size": "n", "l1": "L1 weight", "arch": "architecture"}
COLLAPSE_MARGIN = 0.02  # test accuracy this close to the baseline counts as a collapsed model
OVERFIT_RISE = 0.02  # a final validation loss this much above its minimum counts as over-fitting
SIGNIFICANCE = 0.05  # a difference with a two-sided Welch p-value below this counts as real
CONFUSED_PAIRS = 3  # most-confused class pairs listed per experiment's best run
HAND_KERNELS = ("laplacian8", "laplacian4-boost")  # the seed report's two kernels (part 1)
SAMPLE_REDUCTION = 2  # the drawn samples are averaged down by this factor before filtering


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

    def show(self, metric: str) -> str:
        if not self.values:
            return "–"
        if metric == "parameters" and len(set(self.values)) == 1:
            return f"{int(self.values[0]):,}"
        digits = 1 if metric == "fit_seconds" else 3
        if self.n == 1:  # one run has no spread to show
            return f"{self.mean:.{digits}f} (1)"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} ({self.n})"


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


def _point_label(point: dict[str, Any]) -> str:
    return ", ".join(f"{FIELD_LABELS.get(k, k)}={show_value(v)}" for k, v in point.items()) or "-"


def _label(experiment: Experiment, point: _Point) -> str:
    """A grid point's fields, or for an experiment without a grid, its fixed fields."""
    return _point_label(point.values or experiment.fixed) or experiment.name


@dataclass
class _Point:
    values: dict[str, Any]  # grid field -> value
    records: list[RunRecord]
    reference: dict[str, Any]


def _points(experiment: Experiment, records: list[RunRecord]) -> list[_Point]:
    """The experiment's grid points in declaration order, each with its runs and report row."""
    mine = [r for r in records if experiment.name in r.experiments]
    names = list(experiment.grid)
    points = []
    for values in itertools.product(*experiment.grid.values()):
        point = dict(zip(names, values, strict=True))
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


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


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

    def markdown(self) -> str:
        return self.document.markdown()

    def html(self) -> str:
        """The whole self-contained page (report.html)."""
        return self.document.html()

    def _repr_html_(self) -> str:
        return self.document.html_fragment()

    def write(self) -> dict[str, Path]:
        """Write report.md (+ report_files/*.png) and report.html beside the results."""
        # The figures' folder is replaced whole: a full disk never leaves half of it.
        with atomic.atomic_folder(self.study_dir / FILES_FOLDER) as files:
            for image in self.document.images():
                (files / image.name).write_bytes(image.png)
        paths = {"md": self.study_dir / "report.md", "html": self.study_dir / "report.html"}
        atomic.write_text(paths["md"], self.document.markdown())
        atomic.write_text(paths["html"], self.document.html())
        return paths


def build(study_dir: str | os.PathLike[str]) -> Report:
    """The report of the study in `study_dir`, read from that folder alone (nothing written)."""
    study_dir = Path(study_dir)
    with Store.open(study_dir, create=False) as store:
        meta = store.meta()
        records = store.runs(planned_only=True)
    if "study_text" not in meta:
        raise CnnlabError(f"{study_dir}: the store holds no study yet; run `cnnlab study` first")
    study = load_study(
        study_dir / f"{meta['study_name']}.toml", meta["study_text"], check_architectures=False
    )
    return Report(study_dir, compose(study, records, meta, study_dir))


def write_report(study_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write report.md (+ report_files/*.png) and self-contained report.html; returns paths."""
    return build(study_dir).write()


def compose(
    study: Study, records: list[RunRecord], meta: dict[str, str], study_dir: Path
) -> Document:
    """The whole report as a document: summary, experiments, best run, observations, machine."""
    document = Document(f"cnnlab study “{study.name}”")
    counts = {status: sum(r.status == status for r in records) for status in _STATUS_ORDER}
    seeds = sorted({r.seed for r in records})
    if study.description:
        document.paragraph(study.description)
    document.paragraph(
        f"{len(records)} runs ({len(seeds)} seed(s) per grid point): "
        + ", ".join(f"{count} {status}" for status, count in counts.items() if count)
        + ". Our numbers are **mean ± std (number of runs)** over seeds; the report's are single"
        " runs on its author's machine, so differences of a few points are within its noise."
    )
    observations: list[str] = []
    class_names = json.loads(meta.get("class_names", "[]"))
    for experiment in study.experiments:
        _experiment_section(document, study, experiment, records, study_dir, observations)
    _per_class_section(document, study, records, class_names)
    finished = [r for r in records if r.status in FINISHED and "test_accuracy" in r.metrics]
    if finished:
        best = _best_run_section(document, finished, class_names, observations, study_dir)
        _kernel_section(document, best, study_dir)
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
    study: Study,
    experiment: Experiment,
    records: list[RunRecord],
    study_dir: Path,
    observations: list[str],
) -> None:
    points = _points(experiment, records)
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
        rows.append(row)
    document.table(headers, rows)
    _significance(document, study, experiment, points, observations)
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
            Image(f"{slug}-curves.png", _png(figure), "Validation accuracy per epoch, mean ± std")
        )
    if experiment.kind in ("size", "l1") and len(experiment.grid) == 1:
        _versus_figure(document, experiment, points, slug)
    if experiment.kind == "pooling":
        _pooling_figure(document, experiment, points, slug)
    _observe(experiment, points, observations)
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
                    f" {representative.seed}, {_point_label(placed)})",
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
        return [(s.mean, s.std) for s in (_stat(p.records, metric) for p in shown)]

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
    document.image(Image(f"{slug}-versus.png", _png(figure), caption))


def _pooling_figure(
    document: Document, experiment: Experiment, points: list[_Point], slug: str
) -> None:
    labels = [_point_label(p.values).split("=", 1)[-1] for p in points]
    panels = []
    for metric, title in (
        ("parameters", "parameters"),
        ("fit_seconds", "fit time (s)"),
        ("train_accuracy", "train accuracy"),
        ("test_accuracy", "test accuracy"),
    ):
        stats = [_stat(p.records, metric) for p in points]
        values = [(s.mean if s.n else 0.0, s.std) for s in stats]
        panels.append((title, values, [p.reference.get(metric) for p in points]))
    figure = plots.comparison_bars_figure(labels, panels, experiment.title)
    caption = "Parameters, fit time and accuracy (report's fit times are from its machine)"
    document.image(Image(f"{slug}-comparison.png", _png(figure), caption))


def _observe(experiment: Experiment, points: list[_Point], observations: list[str]) -> None:
    """Plain sentences read off the numbers (where it over-fits, where L1 collapses it)."""
    measured = [p for p in points if _stat(p.records, "test_accuracy").n]
    if not measured:
        return
    title = f"**{experiment.title}**"

    def mean(point: _Point, metric: str) -> float:
        return _stat(point.records, metric).mean

    baseline = _baseline(measured)
    alive = [p for p in measured if mean(p, "test_accuracy") > baseline + COLLAPSE_MARGIN]
    overfit = []
    for point in alive:
        stops = [epoch for epoch in map(_overfit_epoch, point.records) if epoch is not None]
        if stops and len(stops) * 2 > len(point.records):  # most of the point's runs
            overfit.append((point, statistics.fmean(stops), len(point.records[0].history)))
    if overfit:
        parts = [
            f"epoch {epoch:.0f} of {total} ({_label(experiment, p)})"
            for p, epoch, total in overfit[:6]
        ]
        if len(overfit) == len(alive) > 1 and len({(round(e), t) for _, e, t in overfit}) == 1:
            parts = [f"epoch {overfit[0][1]:.0f} of {overfit[0][2]} at every grid point"]
        observations.append(
            f"{title}: validation loss is lowest at "
            + "; ".join(parts)
            + " and rises afterwards: the net over-fits from there on."
        )
    elif alive:
        observations.append(
            f"{title}: validation loss is still at or near its lowest in the last epochs: no"
            f" clear over-fitting within {len(alive[0].records[0].history)} epochs."
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
            f" {mean(last, 'test_accuracy'):.3f} between {_point_label(first.values)} and"
            f" {_point_label(last.values)}; the train−test gap {trend}."
        )
    if experiment.kind == "l1":
        collapsed = [p for p in measured if mean(p, "test_accuracy") <= baseline + COLLAPSE_MARGIN]
        best = max(measured, key=lambda p: mean(p, "test_accuracy"))
        sentence = (
            f"{title}: the best test accuracy is {mean(best, 'test_accuracy'):.3f} at"
            f" {_point_label(best.values)}."
        )
        if collapsed:
            sentence += (
                f" From {_point_label(collapsed[0].values)} on, L1 collapses the model to the"
                f" most-frequent-class baseline (test accuracy ≈ {baseline:.2f}): the penalty"
                " drives the dense kernel to zero."
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
            f"{title}: {_point_label(pooled.values)} has {ratio_parameters:.2f}× the parameters"
            f" of {_point_label(strided.values)}, takes {ratio_time:.1f}× as long to fit, and"
            f" changes test accuracy by {gain:+.3f}; its train−test gap is {gap(pooled):.3f}"
            f" against {gap(strided):.3f}."
        )
    agree = [
        (mean(p, "test_accuracy"), p.reference["test_accuracy"])
        for p in measured
        if "test_accuracy" in p.reference
    ]
    if agree:
        close = sum(abs(ours - theirs) <= 0.03 for ours, theirs in agree)
        observations.append(
            f"{title}: our mean test accuracy is within 0.03 of the report's at {close} of"
            f" {len(agree)} points."
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


def _baseline_point(study: Study, experiment: Experiment, points: list[_Point]) -> tuple[int, str]:
    """The point the others are held against, and why it was chosen.

    The point whose grid values are the study's defaults (the seed model's configuration), else
    the experiment's first point.
    """
    defaults = {field.name: field.default for field in dataclasses.fields(RunConfig)}
    defaults |= study.defaults | experiment.fixed
    for index, point in enumerate(points):
        if point.values and all(defaults.get(k) == v for k, v in point.values.items()):
            return index, "the point that matches the study's defaults"
    return 0, "the experiment's first point: no point matches the study's defaults"


def _comparisons(points: list[_Point], baseline: int) -> list[_Comparison]:
    """Neighbouring points, then each point against the baseline; a pair appears once."""
    pairs: dict[tuple[int, int], list[str]] = {}
    for index in range(1, len(points)):
        pairs.setdefault((index - 1, index), []).append("neighbours")
    for index in range(len(points)):
        if index != baseline:
            pairs.setdefault(tuple(sorted((baseline, index))), []).append("baseline")
    comparisons = []
    for (first, second), roles in pairs.items():
        a = _stat(points[first].records, "test_accuracy").values
        b = _stat(points[second].records, "test_accuracy").values
        result = welch_t_test(a, b) if len(a) > 1 and len(b) > 1 else None
        comparisons.append(_Comparison(points[first], points[second], roles, result))
    return comparisons


def _verdict(result: WelchResult | None) -> str:
    """A short verdict (the text above the table states the test and the threshold)."""
    if result is None:
        return "one run: no test"
    if math.isnan(result.p):
        return "identical: no test"
    if math.isinf(result.t):
        return "**real** (no spread)"
    return "**real**" if result.p < SIGNIFICANCE else "not distinguishable"


def _show_p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.2g}"


def _significance(
    document: Document,
    study: Study,
    experiment: Experiment,
    points: list[_Point],
    observations: list[str],
) -> None:
    """Welch's t-test on test accuracy between neighbouring points and against the baseline."""
    measured = [p for p in points if _stat(p.records, "test_accuracy").n]
    if len(points) < 2 or len(measured) < 2:
        return
    counts = [_stat(p.records, "test_accuracy").n for p in points]
    if max(counts) < 2:
        document.paragraph(
            "Each point has a single run, so there is no run-to-run spread to measure and no"
            " statement is possible about which differences are real; run the study with"
            " `--repeats 3` or more."
        )
        return
    baseline, why = _baseline_point(study, experiment, points)
    comparisons = _comparisons(points, baseline)
    document.paragraph(
        "Is a difference larger than the run-to-run noise? Welch's t-test (two-sided, unequal"
        " variances) on the test accuracy of the repeats, between neighbouring points and"
        f" against the baseline **{_label(experiment, points[baseline])}** ({why}). A difference"
        f" counts as **real** when p < {SIGNIFICANCE:g}; at that threshold about one comparison"
        " in 20 between truly equal points still comes out real, and with few repeats a small"
        " real difference can go unseen. Each point's mean ± std is in the table above; a"
        " difference is the later point's mean minus the earlier one's."
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
    for comparison in comparisons:
        result = comparison.result
        rows.append(
            [
                f"{name(comparison.first)} → {name(comparison.second)}",
                ", ".join(comparison.roles),
                "–" if result is None else f"{result.mean_difference:+.3f}",
                "–" if result is None or math.isnan(result.t) else f"{result.t:.2f}",
                "–" if result is None or math.isnan(result.df) else f"{result.df:.1f}",
                "–" if result is None else _show_p(result.p),
                _verdict(result),
            ]
        )
    document.table([heading, "against", "difference", "t", "df", "p", "verdict"], rows)
    tested = [c for c in comparisons if c.result is not None and not math.isnan(c.result.p)]
    real = [c for c in tested if c.result.p < SIGNIFICANCE]
    if tested:
        which = "; ".join(
            f"{_label(experiment, c.first)} → {_label(experiment, c.second)}"
            f" ({c.result.mean_difference:+.3f})"
            for c in real
        )
        observations.append(
            f"**{experiment.title}**: {len(real)} of {len(tested)} tested differences in test"
            " accuracy are larger than the run-to-run noise (Welch's t-test,"
            f" p < {SIGNIFICANCE:g})" + (f": {which}." if which else ".")
        )


# --- classes ----------------------------------------------------------------------------------


def per_class_accuracy(matrix: list[list[int]]) -> list[float]:
    """Each true class's share of correct predictions (rows: true class, columns: predicted)."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1)
    return [float(c / t) if t else math.nan for c, t in zip(np.diag(counts), totals, strict=True)]


def confused_pairs(matrix: list[list[int]], count: int) -> list[tuple[int, int, int, int]]:
    """The `count` class pairs most often mixed up: (class a, class b, a→b, b→a), most first."""
    counts = np.asarray(matrix, dtype=np.int64)
    pairs = [
        (int(counts[a, b] + counts[b, a]), a, b)
        for a, b in itertools.combinations(range(len(counts)), 2)
    ]
    pairs = sorted((p for p in pairs if p[0] > 0), key=lambda p: (-p[0], p[1], p[2]))[:count]
    return [(a, b, int(counts[a, b]), int(counts[b, a])) for _, a, b in pairs]


def _test_matrix(record: RunRecord) -> list[list[int]] | None:
    matrix = (record.metrics.get("confusion_matrix") or {}).get("test")
    return matrix if matrix and len(matrix) == len(matrix[0]) else None


def _per_class_section(
    document: Document, study: Study, records: list[RunRecord], class_names: list[str]
) -> None:
    """Per-class test accuracy and the most-confused pairs of each experiment's best run."""
    best_runs = []
    for experiment in study.experiments:
        mine = [
            r
            for r in records
            if experiment.name in r.experiments
            and r.status in FINISHED
            and isinstance(r.metrics.get("test_accuracy"), int | float)
            and _test_matrix(r) is not None
        ]
        if mine:
            best_runs.append((experiment, max(mine, key=lambda r: r.metrics["test_accuracy"])))
    if not best_runs:
        return
    document.heading("Per-class accuracy of each experiment's best run")
    size = len(_test_matrix(best_runs[0][1]))
    names = class_names if len(class_names) == size else [str(i) for i in range(size)]
    document.paragraph(
        "For each experiment, its run with the best test accuracy: the share of each class's test"
        " images it labels correctly, and the class pairs it mixes up most (confusions counted"
        " both ways)."
    )
    headers = ["class"]
    columns = []
    for experiment, record in best_runs:
        headers.append(f"{experiment.title} (`{record.id[:8]}`)")
        accuracies = per_class_accuracy(_test_matrix(record))
        columns.append(accuracies if len(accuracies) == size else [math.nan] * size)
    rows = [
        [name, *("–" if math.isnan(c[i]) else f"{c[i]:.3f}" for c in columns)]
        for i, name in enumerate(names)
    ]
    document.table(headers, rows)
    items = []
    for experiment, record in best_runs:
        matrix = _test_matrix(record)
        if len(matrix) != size:
            continue
        pairs = [
            f"{names[a]} ↔ {names[b]} {ab + ba} ({names[a]}→{names[b]} {ab},"
            f" {names[b]}→{names[a]} {ba})"
            for a, b, ab, ba in confused_pairs(matrix, CONFUSED_PAIRS)
        ]
        where = _point_label(record.experiments[experiment.name])
        items.append(
            f"**{experiment.title}**, run `{record.id}` ({where}, seed {record.seed}, test accuracy"
            f" {record.metrics['test_accuracy']:.3f}): " + ("; ".join(pairs) or "no confusions")
        )
    document.bullets(items)


# --- the best run -----------------------------------------------------------------------------


def _run_file(study_dir: Path, record: RunRecord, name: str) -> Path | None:
    """A file the run's folder listed under artifact `name` (or with that file name)."""
    for key, relative in record.artifacts.items():
        path = study_dir / relative
        if (key == Path(name).stem or Path(relative).name == name) and path.is_file():
            return path
    return None


def _load_misclassified(path: Path) -> dict[str, np.ndarray] | None:
    """misclassified_test.npz as arrays, or None when it is not what `save_run` writes."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in ("images", "index", "true", "predicted")}
    except (OSError, ValueError, KeyError, EOFError):
        return None
    images, count = arrays["images"], len(arrays["index"])
    shapes_fit = images.ndim == 4 and images.shape[0] == count and images.shape[3] in (1, 3)
    if not shapes_fit or images.dtype != np.uint8:
        return None
    if any(arrays[key].shape != (count,) for key in ("index", "true", "predicted")):
        return None
    return arrays


def _load_kernels(path: Path) -> np.ndarray | None:
    """kernels_first.npy (filters x in x kh x kw), or None when it is not that."""
    try:
        kernels = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if kernels.ndim != 4 or kernels.dtype.kind != "f" or not np.isfinite(kernels).all():
        return None
    return kernels.astype(np.float64)


def _best_run_section(
    document: Document,
    finished: list[RunRecord],
    class_names: list[str],
    notes: list[str],
    study_dir: Path,
) -> RunRecord:
    best = max(finished, key=lambda r: r.metrics["test_accuracy"])
    metrics = best.metrics
    document.heading("Best run and the baseline")
    where = "; ".join(f"{name}: {_point_label(f)}" for name, f in best.experiments.items())
    document.paragraph(
        f"The best test accuracy, {metrics['test_accuracy']:.3f}, is run `{best.id}` ({where},"
        f" seed {best.seed}; train accuracy {metrics.get('train_accuracy', math.nan):.3f})."
    )
    baseline = metrics.get("baseline_accuracy")
    if isinstance(baseline, int | float):
        predicted = metrics.get("baseline_class", "?")
        if isinstance(predicted, int) and 0 <= predicted < len(class_names):
            predicted = class_names[predicted]
        document.paragraph(
            f"Most-frequent-class baseline (always predict the training set's most frequent class,"
            f" `{predicted}`): test accuracy **{baseline:.3f}** (report: 0.10)."
        )
        notes.append(
            f"The best run beats the most-frequent-class baseline by"
            f" {metrics['test_accuracy'] - baseline:+.3f} test accuracy."
        )
    matrix = (metrics.get("confusion_matrix") or {}).get("test")
    if matrix:
        names = class_names or [str(i) for i in range(len(matrix))]
        figure = plots.confusion_matrix_figure(matrix, names, f"Test set, run {best.id}")
        document.image(
            Image("best-confusion-test.png", _png(figure), "Confusion matrix of the best run")
        )
    _misclassified(document, best, class_names, study_dir)
    return best


def _misclassified(
    document: Document, best: RunRecord, class_names: list[str], study_dir: Path
) -> None:
    path = _run_file(study_dir, best, "misclassified_test.npz")
    if path is None:
        document.paragraph(
            f"Run `{best.id}` kept no misclassified test images (its folder was written before"
            " cnnlab saved them, or without the test images), so there is no grid of its"
            " mistakes here."
        )
        return
    arrays = _load_misclassified(path)
    if arrays is None:
        document.paragraph(f"`{path.name}` of run `{best.id}` is unreadable: no grid of mistakes.")
        return
    if not len(arrays["index"]):
        document.paragraph(f"Run `{best.id}` misclassified no test image.")
        return

    def name(label: int) -> str:
        return class_names[label] if 0 <= label < len(class_names) else str(label)

    figure = plots.misclassified_figure(
        list(arrays["images"]),
        [name(int(label)) for label in arrays["true"]],
        [name(int(label)) for label in arrays["predicted"]],
        f"Misclassified test images, run {best.id}",
    )
    document.image(
        Image(
            "best-misclassified.png",
            _png(figure),
            f"{len(arrays['index'])} misclassified test images of the best run, taken from each"
            " true class in turn: true class above, predicted class below",
        )
    )


# --- part 1 meets part 2 ------------------------------------------------------------------------


def layer_responses(image: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """What a first conv layer computes before its bias and activation, with `cnnlab.conv`.

    `image` is H x W x C (the net sees pixels / 255), `kernels` filters x C x kh x kw; per filter,
    the 'same' cross-correlation of each input channel with its slice, summed over the channels.
    """
    return np.stack(
        [
            sum(
                conv.correlate2d(image[:, :, channel], kernel[channel], mode="same")
                for channel in range(image.shape[2])
            )
            for kernel in kernels
        ]
    )


def sample_images() -> dict[str, np.ndarray]:
    """`cnnlab convolve --sample`'s two drawn images, averaged down by SAMPLE_REDUCTION.

    Reduced so that a figure panel shows the filtered image pixel for pixel: drawn at full size
    a 3x3 kernel's one-pixel response lines would be thinned away by the figure's resampling.
    """
    reduced = {}
    for name, draw in imaging.SAMPLES.items():
        image = draw().astype(np.float64)
        height, width = (size // SAMPLE_REDUCTION for size in image.shape[:2])
        image = image[: height * SAMPLE_REDUCTION, : width * SAMPLE_REDUCTION]
        blocks = image.reshape(height, SAMPLE_REDUCTION, width, SAMPLE_REDUCTION, -1)
        reduced[name] = blocks.mean(axis=(1, 3))
    return reduced


def _kernel_section(document: Document, best: RunRecord, study_dir: Path) -> None:
    document.heading("Hand-made and learned kernels: the seed's part 1 meets part 2")
    path = _run_file(study_dir, best, "kernels_first.npy")
    kernels = None if path is None else _load_kernels(path)
    if kernels is None:
        reason = "kept no" if path is None else "has an unreadable"
        document.paragraph(
            f"The best run `{best.id}` {reason} copy of its first conv layer's kernels"
            " (`kernels_first.npy`, written by cnnlab since it saves them), so its learned"
            " kernels cannot be drawn here."
        )
        return
    if kernels.shape[1] != 3:
        document.paragraph(
            f"The best run's first conv layer takes {kernels.shape[1]} channels, not RGB:"
            " its kernels are not drawn."
        )
        return
    filters, _, kernel_height, kernel_width = kernels.shape
    document.paragraph(
        f"The first conv layer of the best run `{best.id}` holds {filters} kernels of"
        f" {kernel_height}×{kernel_width}×3 weights. Each is drawn as a picture (its weights"
        " stretched to 0..1 per kernel, red, green and blue as the input channels they weigh),"
        " then channel by channel on one shared scale (red: positive, blue: negative)."
    )
    figure = plots.kernels_figure(kernels, f"First-layer kernels, run {best.id}")
    document.image(Image("best-kernels.png", _png(figure), "The best run's first-layer kernels"))
    hand = [conv.parse_kernel(name) for name in HAND_KERNELS]
    height, width = (size // SAMPLE_REDUCTION for size in imaging.SAMPLE_SIZE)
    document.paragraph(
        "Below, the seed report's two hand-made kernels and these learned ones on the two images"
        f" `cnnlab convolve --sample` draws, averaged down {SAMPLE_REDUCTION}×{SAMPLE_REDUCTION}"
        f" to {width}×{height} pixels, so that each panel shows its response pixel for pixel"
        " (still four to five times CIFAR-10's 32×32, so the shapes stay recognisable). The"
        " hand-made kernels filter the red channel, as the seed did; each learned kernel filters"
        " all three channels of the image scaled to 0..1, as the network sees it, with"
        " `cnnlab.conv.correlate2d` ('same', summed over the channels): the layer's output"
        " before its bias and ReLU. Every response is signed: white is 0, red positive, blue"
        " negative, each panel scaled to its own 99.5th percentile of |value|. The small square"
        " in each learned panel is its kernel, Σ the sum of its weights: a kernel whose weights"
        " sum to about 0, like `laplacian8`, answers edges only; one far from 0 answers"
        " brightness and colour as well."
    )
    pictures = [plots.kernel_picture(kernel) for kernel in kernels]
    for name, image in sample_images().items():
        red = imaging.select_channel(image, "red")
        hand_panels = [
            (kernel_name, kernel, conv.correlate2d(red, kernel, mode="same"))
            for kernel_name, kernel in hand
        ]
        responses = layer_responses(image / 255.0, kernels)
        learned = [
            (f"kernel {index + 1} (Σ {kernel.sum():+.2f})", picture, response)
            for index, (kernel, picture, response) in enumerate(
                zip(kernels, pictures, responses, strict=True)
            )
        ]
        figure = plots.responses_figure(
            np.clip(np.rint(image), 0, 255).astype(np.uint8),
            hand_panels,
            learned,
            f"{name}: hand-made and learned kernels",
        )
        document.image(
            Image(
                f"kernels-{name}.png",
                _png(figure),
                f"`{name}`: the seed's two kernels (top) and the best run's first-layer kernels",
            )
        )


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
