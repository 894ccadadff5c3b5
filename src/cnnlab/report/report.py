"""A study's results -> tables, plots and observations -> report.md and a self-contained HTML.

The report reads only the study folder: the store (runs, metrics, histories, and the study file's
text as it ran) and the run folders' figures and NumPy files (test predictions, misclassified
test images, first-layer kernels; runs saved before cnnlab wrote them are reported without
those figures). The seed report's numbers come from the study file's
`[[experiments.NAME.reference]]` rows, so no number of SEED.md is written here.
"""

from __future__ import annotations

import dataclasses
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
from cnnlab.report import learned
from cnnlab.report.document import FILES_FOLDER, Document, Image
from cnnlab.report.stats import WelchResult, welch_t_test
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
COLLAPSE_MARGIN = 0.02  # test accuracy this close to the baseline counts as a collapsed model
OVERFIT_RISE = 0.02  # a final validation loss this much above its minimum counts as over-fitting
SIGNIFICANCE = 0.05  # a difference with a two-sided Welch p-value below this counts as real


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
    learned.per_class_section(document, study, records, class_names)
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
            Image(
                f"{slug}-curves.png",
                plots.png_bytes(figure),
                "Validation accuracy per epoch, mean ± std",
            )
        )
    if experiment.kind in ("size", "l1") and len(experiment.grid) == 1:
        _versus_figure(document, experiment, points, slug)
    if experiment.kind == "pooling":
        _pooling_figure(document, experiment, points, slug)
    if VARIANT in experiment.grid:
        _variants_figure(document, experiment, points, slug)
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
        stats = [_stat(p.records, metric) for p in points]
        values = [(s.mean if s.n else 0.0, s.std) for s in stats]
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
        [(stat.mean, stat.std) for stat in accuracy],
        [(stat.mean, stat.std) for stat in seconds],
        experiment.title,
    )
    caption = (
        "Test accuracy and fit time of each variant, mean ± std over its repeats; the dashed"
        " line is the first variant's mean accuracy"
    )
    document.image(Image(f"{slug}-variants.png", plots.png_bytes(figure), caption))


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
            f" {mean(last, 'test_accuracy'):.3f} between {point_label(first.values)} and"
            f" {point_label(last.values)}; the train−test gap {trend}."
        )
    if experiment.kind == "l1":
        collapsed = [p for p in measured if mean(p, "test_accuracy") <= baseline + COLLAPSE_MARGIN]
        best = max(measured, key=lambda p: mean(p, "test_accuracy"))
        sentence = (
            f"{title}: the best test accuracy is {mean(best, 'test_accuracy'):.3f} at"
            f" {point_label(best.values)}."
        )
        if collapsed:
            sentence += (
                f" From {point_label(collapsed[0].values)} on, L1 collapses the model to the"
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
            f"{title}: {point_label(pooled.values)} has {ratio_parameters:.2f}× the parameters"
            f" of {point_label(strided.values)}, takes {ratio_time:.1f}× as long to fit, and"
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
    # Variants (an ablation) have no order: each is held against the first only.
    ordered = VARIANT not in experiment.grid
    comparisons = _comparisons(points, baseline, ordered)
    document.paragraph(
        "Is a difference larger than the run-to-run noise? Welch's t-test (two-sided, unequal"
        " variances) on the test accuracy of the repeats, "
        + ("between neighbouring points and against" if ordered else "each point against")
        + f" the baseline **{_label(experiment, points[baseline])}** ({why}). A difference"
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
