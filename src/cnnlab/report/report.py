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
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab import atomic, plots
from cnnlab.errors import CnnlabError
from cnnlab.machine import machine_description
from cnnlab.report import learned
from cnnlab.report.cost import (
    DETECTABLE,
    TARGET_SHARE,
    Options,
    compute_figure,
    default_target,
    seeds_plan,
    seeds_section,
    show_giga,
    show_time_to,
    training_flops,
)
from cnnlab.report.datasize import curve_section
from cnnlab.report.design import Analysis, analyse, gatekeep
from cnnlab.report.document import FILES_FOLDER, Document, Image
from cnnlab.report.findings import Claims, findings_section, gather, observations
from cnnlab.report.mechanisms import mechanism_sections
from cnnlab.report.points import Point, point_name, show_reference, stat_of
from cnnlab.report.search import search_sections
from cnnlab.report.significance import COMPARISON_FIELDS, comparison_rows, significance_section
from cnnlab.report.tables import FIELD_LABELS, point_label, show_value
from cnnlab.store import FINISHED, RunRecord, Status, Store
from cnnlab.study.studyfile import VARIANT, Experiment, Study, load_study
from cnnlab.training.metrics import versions as installed_versions

METRIC_LABELS = {
    "train_accuracy": "train acc",
    "test_accuracy": "test acc",
    "fit_seconds": "fit s",
    "parameters": "params",
}
# report_files/: replaced whole, where cnnlab wrote it (its figures, before it kept a marker).
FIGURES = atomic.FolderKind("a report's figures folder", legacy=("*.png",))
INTERVAL_NOTE = (
    "the t interval (mean ± t·s/√n), not a bootstrap: with 2–5 seeds a percentile bootstrap has"
    " only 3 to 126 distinct resamples of the mean and covers the true mean less often than it"
    " claims; the t interval is exact for normal run-to-run noise"
)


# --- figures ----------------------------------------------------------------------------------


MAX_FIGURE_BYTES = 16 << 20  # a run folder's PNG is tens of kilobytes


def _artifact(study_dir: Path, record: RunRecord, suffix: str) -> bytes | None:
    """A run folder's file the store lists, ending in `suffix` (None: absent, or not a file)."""
    for relative in record.artifacts.values():
        path = study_dir / relative
        if relative.endswith(suffix) and path.exists():
            try:
                return atomic.read_regular(path, MAX_FIGURE_BYTES, "a run's figure")
            except CnnlabError:
                return None
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
    claims: Claims = dataclasses.field(default_factory=lambda: Claims([]))

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
        """Write report.md (+ report_files/*.png), report.html, comparisons.csv / .json and
        claims.json."""
        # The figures' folder is replaced whole: a full disk never leaves half of it.
        with atomic.atomic_folder(self.study_dir / FILES_FOLDER, "report", FIGURES) as files:
            for image in self.document.images():
                (files / image.name).write_bytes(image.png)
        paths = {
            "md": self.study_dir / "report.md",
            "html": self.study_dir / "report.html",
            "csv": self.study_dir / "comparisons.csv",
            "json": self.study_dir / "comparisons.json",
            "claims": self.study_dir / "claims.json",
        }
        atomic.write_text(paths["claims"], self.claims.json())
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
    options = Options(difference, target_accuracy)
    report = Report(study_dir, Document(f"cnnlab study “{study.name}”"))
    with plots.quiet():  # any number the store holds makes a figure, not a warning
        compose(study, records, meta, study_dir, report, options)
    return report


def write_report(
    study_dir: str | os.PathLike[str], *, explain: bool = True, **options: Any
) -> dict[str, Path]:
    """Write report.md (+ report_files/*.png), report.html and comparisons.csv; returns paths.

    `explain` (on by default) first runs the explain step (`explain_best_runs`), so the report
    shows each experiment's best run from inside; `options` go to `build`.
    """
    check_target(study_dir)
    if explain:
        explain_best_runs(study_dir)
    return build(study_dir, **options).write()


def check_target(study_dir: str | os.PathLike[str]) -> None:
    """The report's figures folder can be written: absent, or one cnnlab wrote (one line if
    not), so a study is refused before it trains rather than after."""
    atomic.check_folder_replaceable(Path(study_dir) / FILES_FOLDER, "report", FIGURES)


def explain_best_runs(study_dir: str | os.PathLike[str]) -> None:
    """The explain step: `cnnlab explain` on each experiment's best run (RUN_DIR/explain), for
    the report's "Inside the best runs". Without the explain extra (Captum) nothing is drawn
    and that section says how to install it."""
    if not learned.can_explain():
        return
    from cnnlab.insight.explain import explain_best_runs as explain_runs

    explain_runs(study_dir)


def compose(
    study: Study,
    records: list[RunRecord],
    meta: dict[str, str],
    study_dir: Path,
    report: Report,
    options: Options,
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
    class_names = _class_names(meta.get("class_names", "[]"))
    analyses = [analyse(study, experiment, records) for experiment in study.experiments]
    primaries = gatekeep(analyses)
    report.claims = gather(study, analyses, primaries, records, study_dir)
    seeds = seeds_plan(analyses, options)
    report.advice = seeds.advice
    findings_section(document, report.claims, report.advice)
    observed: list[str] = []
    for analysis in analyses:
        _experiment_section(document, analysis, report.claims, study_dir, options)
        observed += observations(analysis, report.claims)
    search_sections(document, study, records, study_dir)
    report.comparisons = [row for a in analyses for row in comparison_rows(a, primaries)]
    seeds_section(document, seeds, records)
    mechanism_sections(document, study, records, study_dir, report.claims)
    learned.per_class_section(document, study, records, class_names)
    learned.inside_section(document, study, records, study_dir)
    finished = [r for r in records if r.status in FINISHED and "test_accuracy" in r.metrics]
    if finished:
        best = learned.best_run_section(document, finished, class_names, observed, study_dir)
        learned.kernel_section(document, best, study_dir)
    document.heading("Observations")
    document.bullets(observed or ["No finished runs yet."])
    problems = [r for r in records if r.status in (Status.DIVERGED, Status.FAILED)]
    if problems:
        document.heading("Diverged and failed runs")
        document.table(
            ["run", "status", "experiments", "reason"],
            [[f"`{r.id}`", r.status, ", ".join(r.experiments), r.reason or "–"] for r in problems],
        )
    _environment_section(document, records, meta)
    return document


build_report = build  # the name the package root gives it


_STATUS_ORDER = (
    Status.DONE,
    Status.DIVERGED,
    Status.PRUNED,
    Status.FAILED,
    Status.RUNNING,
    Status.PENDING,
)


def _experiment_section(
    document: Document,
    analysis: Analysis,
    claims: Claims,
    study_dir: Path,
    options: Options,
) -> None:
    experiment, points = analysis.experiment, analysis.points
    target = options.target_accuracy or default_target(points)
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
        row = [show_value(v) for v in point.values.values()] or [point_name(experiment, point)]
        for metric in METRIC_LABELS:
            if metric in referenced:
                row.append(show_reference(point.reference.get(metric), metric))
            row.append(stat_of(point.records, metric).show(metric))
        flops = training_flops(point.records)
        row.append("–" if flops is None else show_giga(flops))
        row.append(show_time_to(point.records, target))
        rows.append(row)
    headers += ["train GFLOPs", f"s to val acc ≥ {target:.2f}"]
    document.table(headers, rows)
    document.paragraph(
        f"Train GFLOPs: the network's training FLOPs over the epochs it ran (backward ≈ 2"
        f" forwards). Seconds to val acc ≥ {target:.2f}: the fit time up to the end of the first"
        " epoch whose validation accuracy reached it (the DAWNBench measure), over the runs that"
        " reached it (reached / runs): their geometric mean and its 95% t interval on the log"
        " scale, since a time cannot fall below 0"
        + (
            "."
            if options.target_accuracy
            else f"; the target is {TARGET_SHARE:g}× the best point's mean validation accuracy."
        )
    )
    significance_section(document, analysis, claims.of(analysis.experiment.name))
    if "fit_seconds" in referenced:
        document.paragraph(
            "Fit times: the report's on its author's machine, ours on the device named under"
            " *Environment*; compare their ratios, not their values."
        )
    slug = re.sub(r"[^a-z0-9]+", "-", experiment.name.lower())
    curves = [
        (point_name(experiment, p), [[h["val_accuracy"] for h in r.history] for r in p.records])
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
    compute_figure(document, experiment, points, slug)
    curve_section(
        document, analysis, claims.curves.get(experiment.name), claims.of(experiment.name), slug
    )
    unsettled = [c.otherwise for c in claims.of(experiment.name) if c.test and not c.established]
    if unsettled:
        document.paragraph("**Tested and not established:**")
        document.bullets(unsettled)
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
    document: Document, experiment: Experiment, points: list[Point], slug: str
) -> None:
    (name,) = experiment.grid
    shown = [p for p in points if stat_of(p.records, "test_accuracy").n]
    if not shown:
        return
    x = [float(p.values[name]) for p in shown]

    def pairs(metric: str) -> list[tuple[float, float]]:
        return [(s.mean, s.half) for s in (stat_of(p.records, metric) for p in shown)]

    times = [stat_of(p.records, "fit_seconds").time_interval() for p in shown]

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
            seconds=times,
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
    document: Document, experiment: Experiment, points: list[Point], slug: str
) -> None:
    labels = [point_label(p.values).split("=", 1)[-1] for p in points]
    panels = []
    for metric, title in (
        ("parameters", "parameters"),
        ("fit_seconds", "fit time (s)"),
        ("train_accuracy", "train accuracy"),
        ("test_accuracy", "test accuracy"),
    ):
        measured = [stat_of(p.records, metric) for p in points]
        values = [(s.mean if s.n else 0.0, s.half) for s in measured]
        panels.append((title, values, [p.reference.get(metric) for p in points]))
    figure = plots.comparison_bars_figure(labels, panels, experiment.title)
    caption = "Parameters, fit time and accuracy (report's fit times are from its machine)"
    document.image(Image(f"{slug}-comparison.png", plots.png_bytes(figure), caption))


def _variants_figure(
    document: Document, experiment: Experiment, points: list[Point], slug: str
) -> None:
    """Test accuracy and fit time per point, the baseline (first) variant marked."""
    shown = [p for p in points if stat_of(p.records, "test_accuracy").n]
    if len(shown) < 2:
        return
    labels = [point_name(experiment, p).removeprefix(f"{VARIANT}=") for p in shown]
    accuracy = [stat_of(p.records, "test_accuracy") for p in shown]
    seconds = [stat_of(p.records, "fit_seconds") for p in shown]
    figure = plots.variants_figure(
        labels,
        [(stat.mean, stat.half) for stat in accuracy],
        [stat.time_interval() for stat in seconds],
        experiment.title,
    )
    caption = (
        "Test accuracy and fit time of each variant, mean and 95% interval over its repeats; the"
        " dashed line is the first variant's mean accuracy"
    )
    document.image(Image(f"{slug}-variants.png", plots.png_bytes(figure), caption))


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
