"""The mechanism beside the result: what the trained nets and their architectures show.

Per experiment kind (`Experiment.kind`): L1 - the dense kernel's norms and near-zero share
against the L1 weight; pooling - parameters, multiply-accumulates and receptive field (from the
layer specs, `nn.facts`) beside the measured fit time; size - the generalisation gap with its
spread and the learning curves; depth - receptive field and parameters per layer. For every
experiment, dead units and gradient norms where they differ between its points.

Trained measurements come from each run folder's measurements.json (`training.measure`, listed
in the store's artifacts); a run saved before cnnlab measured is counted, not guessed at. Every
sentence names the measurement or fact it rests on; a study whose runs learned nothing gets that
said and no cause drawn.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from cnnlab import plots
from cnnlab.config import RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.nn import facts
from cnnlab.nn.architectures import get_architecture
from cnnlab.nn.shapes import dataset_input, resolve_layers
from cnnlab.report.document import Document, Image
from cnnlab.report.tables import point_label
from cnnlab.store import FINISHED, RunRecord
from cnnlab.study.studyfile import Experiment, Study

ARTIFACT = "measurements"  # the run folder's file, as `runfolder.save_run` lists it
LEARNED_MARGIN = 0.02  # the best point's test accuracy this far above the baseline: it learned
DEAD_DIFFERENCE = 0.05  # dead-unit shares this far apart (beyond the runs' spread) differ
GRADIENT_RATIO = 2.0  # final gradient norms this many times apart differ
MAX_BYTES = 16 << 20  # a measurements.json is kilobytes
_WINDOWED = ("Conv2D", "MaxPooling2D", "AveragePooling2D")  # layers that widen the field


@dataclass
class _Point:
    """A grid point of an experiment: its label, its finished runs and their measurements."""

    label: str
    values: dict[str, Any]
    records: list[RunRecord]
    readings: list[dict[str, Any]]  # one per run that kept readable measurements


def mechanism_sections(
    document: Document, study: Study, records: list[RunRecord], study_dir: Path
) -> None:
    """One section per experiment with finished runs: its mechanism beside its result."""
    experiments = [(e, _points(e, records, study_dir)) for e in study.experiments]
    experiments = [(e, points) for e, points in experiments if any(p.records for p in points)]
    if not experiments:
        return
    document.heading("Inside the nets: the mechanism beside the result")
    document.paragraph(
        "Read from each run folder's `measurements.json` (weights after training; activations"
        " on the test set's first images; the gradient of the training loss on the training"
        " part's first images at each epoch's end, eval mode) and, for parameters, MACs and"
        " receptive fields, from the layer specs alone. Numbers are mean ± std (runs)."
    )
    # A run shared by experiments (the seed's 5K run) counts once.
    runs = {r.id: r for _, points in experiments for p in points for r in p.records}
    unmeasured = [r for r in runs.values() if load_measurements(study_dir, r) is None]
    if unmeasured:
        document.paragraph(
            f"{len(unmeasured)} of {len(runs)} finished runs kept no readable"
            " `measurements.json` (saved before cnnlab measured its runs): they count in the"
            " accuracies, not in the measurements."
        )
    for experiment, points in experiments:
        document.heading(experiment.title, 3)
        slug = re.sub(r"[^a-z0-9]+", "-", experiment.name.lower()).strip("-")
        learned, summary = _learned(points)
        if not learned:
            document.paragraph(summary + " No mechanism is read into these runs.")
        section = _SECTIONS.get(experiment.kind or "")
        if section is not None:
            section(document, points, slug, learned)
        _units_and_gradients(document, points, learned)


# --- points and numbers -----------------------------------------------------------------------


def _points(experiment: Experiment, records: list[RunRecord], study_dir: Path) -> list[_Point]:
    """The experiment's grid points in order, each with its finished runs and their readings."""
    mine = [r for r in records if experiment.name in r.experiments and r.status in FINISHED]
    points = []
    for place, _ in experiment.points():
        values = {name: place[name] for name in experiment.grid}
        runs = sorted(
            (
                r
                for r in mine
                if all(r.experiments[experiment.name].get(k) == v for k, v in values.items())
            ),
            key=lambda r: r.seed,
        )
        readings = [m for m in (load_measurements(study_dir, r) for r in runs) if m is not None]
        label = point_label(values) if values else experiment.name
        points.append(_Point(label, values, runs, readings))
    return points


def load_measurements(study_dir: Path, record: RunRecord) -> dict[str, Any] | None:
    """A run's measurements.json as listed in its store record, or None (absent or unreadable)."""
    relative = record.artifacts.get(ARTIFACT)
    if not relative:
        return None
    path = Path(study_dir) / relative
    try:
        if path.stat().st_size > MAX_BYTES:
            return None
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    parts = ("weights", "activations", "gradients")
    if not isinstance(value, dict) or not all(isinstance(value.get(p), dict | list) for p in parts):
        return None
    return value


def _stat(values: list[float | None]) -> tuple[float, float, int]:
    """(mean, std, count) of the finite values; the std of one value is 0."""
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return statistics.fmean(finite), spread, len(finite)


def _show(stat: tuple[float, float, int], form: str = ".3g") -> str:
    mean, spread, count = stat
    if count == 0:
        return "–"
    return f"{mean:{form}} ± {spread:{form}} ({count})" if count > 1 else f"{mean:{form}} (1)"


def _metric(point: _Point, name: str) -> tuple[float, float, int]:
    return _stat([r.metrics.get(name) for r in point.records])


def _learned(points: list[_Point]) -> tuple[bool, str]:
    """Whether the best point's mean test accuracy is clearly above the baseline, and why."""
    baselines = [r.metrics.get("baseline_accuracy") for p in points for r in p.records]
    baseline = _stat(baselines)[0]
    baseline = 0.1 if math.isnan(baseline) else baseline
    accuracies = [(_metric(p, "test_accuracy")[0], p.label) for p in points]
    accuracies = [(a, label) for a, label in accuracies if not math.isnan(a)]
    if not accuracies:
        return False, "No finished run recorded a test accuracy."
    best, label = max(accuracies)
    summary = (
        f"The best point ({label}) reached a mean test accuracy of {best:.3f} against the"
        f" most-frequent-class baseline's {baseline:.3f}"
    )
    if best > baseline + LEARNED_MARGIN:
        return True, summary + "."
    return False, summary + ": these runs learned nothing."


def _net_facts(record: RunRecord) -> list[facts.LayerFacts] | None:
    """The per-layer facts of a run's net, for the images it was trained on (None: unreadable)."""
    known = {item.name for item in dataclasses.fields(RunConfig)}
    fields = {k: v for k, v in record.config.items() if k in known}
    if isinstance(fields.get("layers"), list):
        fields["layers"] = tuple(fields["layers"])
    try:
        config = RunConfig(**fields)
        shape, classes = dataset_input(config)
        stored, names = record.metrics.get("input_shape"), record.metrics.get("class_names")
        if isinstance(stored, list) and len(stored) == 3:
            shape = tuple(int(v) for v in stored)
        if isinstance(names, list) and names:
            classes = len(names)
        return facts.layer_facts(resolve_layers(config, shape, classes), shape, classes)
    except (TypeError, ValueError, KeyError, CnnlabError):
        return None


def _dense_kernel(readings: dict[str, Any]) -> dict[str, Any] | None:
    """The readings of the net's last dense kernel (the seed's one, with the L1 penalty)."""
    dense = [
        v for v in readings["weights"].values() if isinstance(v, dict) and v.get("kind") == "dense"
    ]
    return dense[-1] if dense else None


def _image(document: Document, figure: Figure, name: str, caption: str) -> None:
    document.image(Image(name, plots.png_bytes(figure), caption))


# --- L1 ---------------------------------------------------------------------------------------


def _l1_section(document: Document, points: list[_Point], slug: str, learned: bool) -> None:
    rows, shown = [], []
    for point in points:
        kernels = [k for k in (_dense_kernel(r) for r in point.readings) if k is not None]
        norms = _stat([k.get("l1") for k in kernels])
        small = _stat([k.get("small_fraction") for k in kernels])
        rows.append(
            [
                point.label,
                _show(_metric(point, "test_accuracy"), ".3f"),
                _show(norms),
                _show(_stat([k.get("l2") for k in kernels])),
                _show(small, ".3f"),
            ]
        )
        if norms[2]:
            shown.append((point, norms, small))
    if not shown:
        document.paragraph("No run of this experiment kept measurements of its dense kernel.")
        return
    threshold = shown[0][0].readings[0].get("small_weight", 0.01)
    document.table(
        ["point", "test acc", "dense kernel L1 norm", "L2 norm", f"share < {threshold:g}·max|w|"],
        rows,
    )
    _image(
        document,
        _versus_figure(
            [p.label for p, _, _ in shown], [n for _, n, _ in shown], [s for _, _, s in shown]
        ),
        f"{slug}-mechanism-l1.png",
        "The dense kernel after training: its L1 norm (log scale) and the share of its weights"
        f" below {threshold:g} of its largest magnitude, per point (mean ± std over runs)",
    )
    if len(shown) < 2:
        return
    (first, norm_a, small_a), (last, norm_b, small_b) = shown[0][:3], shown[-1][:3]
    document.paragraph(
        f"From {first.label} to {last.label}, the dense kernel's L1 norm went from"
        f" {_show(norm_a)} to {_show(norm_b)} and its share of weights below {threshold:g} of the"
        f" largest from {_show(small_a, '.3f')} to {_show(small_b, '.3f')} (measurements.json)."
    )
    if learned:
        document.paragraph(_sparsity_verdict(first, small_a, shown[1:]))


def _sparsity_verdict(first: _Point, base: tuple[float, float, int], others: list) -> str:
    """The seed report's claim (L1 makes the weights sparse), held to each larger L1 weight."""
    rose, did_not = [], []
    for point, _, small in others:
        spread = max(base[1], small[1])
        shown = f"{point.label}: {small[0]:.3f}"
        (rose if small[0] - base[0] > spread else did_not).append(shown)
    if not did_not:
        verdict = "holds in these runs: the near-zero share rose beyond the runs' spread at every"
        verdict += f" larger weight ({'; '.join(rose)})"
    elif not rose:
        verdict = "is not borne out: the near-zero share rose at no larger weight beyond the runs'"
        verdict += f" spread ({'; '.join(did_not)})"
    else:
        verdict = "holds only in part: the near-zero share rose beyond the runs' spread at"
        verdict += f" {'; '.join(rose)}, not at {'; '.join(did_not)}"
    return (
        f"The seed report's claim that L1 makes the dense kernel sparse {verdict}, against"
        f" {base[0]:.3f} at {first.label} (measurements.json)."
    )


def _versus_figure(labels: list[str], norms, smalls) -> Figure:
    figure = Figure(figsize=(8.0, 3.2), layout="constrained")
    positions = list(range(len(labels)))
    for index, (values, title) in enumerate(
        ((norms, "dense kernel L1 norm"), (smalls, "share of near-zero weights"))
    ):
        axes = figure.add_subplot(1, 2, index + 1)
        axes.errorbar(
            positions, [v[0] for v in values], yerr=[v[1] for v in values], marker="o", capsize=3
        )
        if index == 0 and all(v[0] > 0 for v in values):
            axes.set_yscale("log")
        axes.set_xticks(positions)
        axes.set_xticklabels([label.split("=", 1)[-1] for label in labels], fontsize="small")
        axes.set_title(title, fontsize="medium")
        axes.grid(alpha=0.3)
    return figure


# --- pooling ----------------------------------------------------------------------------------


def _spatial_field(layers: list[facts.LayerFacts]) -> tuple[str, str]:
    """(the last layer with a spatial output, its receptive field) of a net."""
    spatial = [f for f in layers if f.receptive_field is not None and f.kind in _WINDOWED]
    if not spatial:
        return "–", "–"
    last = spatial[-1]
    return last.name, facts.format_field(last.receptive_field)


def _pooling_section(document: Document, points: list[_Point], slug: str, learned: bool) -> None:
    rows, known = [], []
    for point in points:
        net = next((f for f in map(_net_facts, point.records) if f is not None), None)
        if net is None:
            continue
        parameters = sum(f.parameters for f in net)
        macs = facts.total_macs(net)
        layer, field = _spatial_field(net)
        seconds = _metric(point, "fit_seconds")
        rows.append(
            [
                point.label,
                f"{parameters:,}",
                f"{macs:,}",
                f"{field} ({layer})",
                _show(seconds, ".1f"),
                _show(_metric(point, "test_accuracy"), ".3f"),
            ]
        )
        known.append((point, parameters, macs, field, seconds))
    if not known:
        return
    document.table(
        [
            "point",
            "parameters",
            "MACs per image",
            "receptive field (last spatial layer)",
            "fit s",
            "test acc",
        ],
        rows,
    )
    base, *others = known
    for point, parameters, macs, field, seconds in others:
        sentence = (
            f"{point.label} has {parameters - base[1]:+,} parameters against {base[0].label}"
            f" ({parameters:,} and {base[1]:,}), {macs / max(base[2], 1):.2f}× its"
            f" multiply-accumulates per image ({macs:,} and {base[2]:,}) and a last spatial layer"
            f" that sees {field} input pixels against {base[3]} (layer specs)"
        )
        if seconds[2] and base[4][2]:
            sentence += (
                f"; its measured fit time was {seconds[0] / base[4][0]:.2f}× as long"
                f" ({seconds[0]:.1f} s and {base[4][0]:.1f} s, means of {seconds[2]} and"
                f" {base[4][2]} runs)"
            )
        document.paragraph(sentence + ".")


# --- size -------------------------------------------------------------------------------------


def _size_section(document: Document, points: list[_Point], slug: str, learned: bool) -> None:
    rows, gaps = [], []
    for point in points:
        gap = _stat(
            [
                r.metrics["train_accuracy"] - r.metrics["test_accuracy"]
                for r in point.records
                if isinstance(r.metrics.get("train_accuracy"), int | float)
                and isinstance(r.metrics.get("test_accuracy"), int | float)
            ]
        )
        rises = _stat([_val_loss_rise(r) for r in point.records])
        rows.append(
            [
                point.label,
                _show(_metric(point, "train_accuracy"), ".3f"),
                _show(_metric(point, "test_accuracy"), ".3f"),
                _show(gap, ".3f"),
                _show(rises, ".3f"),
            ]
        )
        if gap[2]:
            gaps.append((point, gap))
    document.table(
        ["point", "train acc", "test acc", "gap (train − test)", "val loss rise from its minimum"],
        rows,
    )
    if len(gaps) >= 2:
        (first, gap_a), (last, gap_b) = gaps[0], gaps[-1]
        document.paragraph(
            f"The generalisation gap (train minus test accuracy, from the stored metrics) went from"
            f" {_show(gap_a, '.3f')} at {first.label} to {_show(gap_b, '.3f')} at {last.label}."
        )
    curves = [(p.label, [r.history for r in p.records if r.history]) for p in points]
    curves = [(label, runs) for label, runs in curves if runs]
    if curves:
        _image(
            document,
            _curves_figure(curves),
            f"{slug}-mechanism-curves.png",
            "Learning curves: training (solid) and validation (dashed) accuracy per epoch, the"
            " mean over each point's runs",
        )


def _val_loss_rise(record: RunRecord) -> float | None:
    """How far the last validation loss sits above the run's lowest (over-fitting's sign)."""
    losses = [row.get("val_loss") for row in record.history]
    losses = [v for v in losses if isinstance(v, int | float) and math.isfinite(v)]
    return losses[-1] - min(losses) if losses else None


def _curves_figure(curves: list[tuple[str, list[list[dict[str, Any]]]]]) -> Figure:
    figure = Figure(figsize=(6.4, 3.8), layout="constrained")
    axes = figure.add_subplot()
    for index, (label, runs) in enumerate(curves):
        length = min(len(run) for run in runs)
        epochs = list(range(1, length + 1))
        for key, style in (("accuracy", "-"), ("val_accuracy", "--")):
            means = [_stat([run[e].get(key) for run in runs])[0] for e in range(length)]
            axes.plot(epochs, means, style, color=f"C{index % 10}", label=f"{label} ({key})")
    axes.set_xlabel("epoch")
    axes.set_ylabel("accuracy")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="x-small")
    return figure


# --- depth ------------------------------------------------------------------------------------


def _depth_section(document: Document, points: list[_Point], slug: str, learned: bool) -> None:
    for point in points:
        net = next((f for f in map(_net_facts, point.records) if f is not None), None)
        if net is None:
            continue
        # Layer i of a net without residual blocks is its state_dict's layers.i.
        aligned = len(net) == len(_layer_specs(point))
        rows = []
        for index, fact in enumerate(net):
            name = f"layers.{index}"
            dead = _stat([_dead(r, name) for r in point.readings]) if aligned else (0, 0, 0)
            gradient = (
                _stat([_final_gradient(r, name) for r in point.readings]) if aligned else (0, 0, 0)
            )
            rows.append(
                [
                    fact.name,
                    "x".join(map(str, fact.output_shape)),
                    f"{fact.parameters:,}",
                    f"{fact.macs:,}",
                    facts.format_field(fact.receptive_field),
                    _show(dead, ".3f"),
                    _show(gradient),
                ]
            )
        if len(points) > 1:
            document.paragraph(f"**{point.label}**")
        document.table(
            [
                "layer",
                "output",
                "parameters",
                "MACs",
                "receptive field",
                "dead units",
                "last grad norm",
            ],
            rows,
        )
        total = sum(f.parameters for f in net)
        heaviest = max(net, key=lambda f: f.parameters)
        name, field = _spatial_field(net)
        document.paragraph(
            f"Of its {total:,} parameters, {heaviest.name} holds {heaviest.parameters:,}"
            f" ({heaviest.parameters / max(total, 1):.0%}); its last spatial layer ({name}) sees"
            f" {field} input pixels (layer specs)."
        )


def _layer_specs(point: _Point) -> list[Any]:
    record = point.records[0]
    layers = record.config.get("layers")
    if isinstance(layers, list):
        return layers
    try:
        return list(get_architecture(record.config.get("arch", "")))
    except CnnlabError:
        return []


def _keras_name(point: _Point, key: str) -> str:
    """A measured layer's Keras name (conv2d_1) in a net without residual blocks, else its key."""
    net = next((f for f in map(_net_facts, point.records) if f is not None), None)
    index = key.removeprefix("layers.")
    if net is None or not index.isdigit() or len(net) != len(_layer_specs(point)):
        return key
    return net[int(index)].name


def _dead(readings: dict[str, Any], layer: str) -> float | None:
    entry = (
        readings["activations"].get(layer) if isinstance(readings["activations"], dict) else None
    )
    return entry.get("dead_fraction") if isinstance(entry, dict) else None


def _final_gradient(readings: dict[str, Any], layer: str | None = None) -> float | None:
    """The last epoch's global gradient norm, or a layer's."""
    rows = [row for row in readings["gradients"] if isinstance(row, dict)]
    if not rows:
        return None
    if layer is None:
        return rows[-1].get("global")
    layers = rows[-1].get("layers")
    return layers.get(layer) if isinstance(layers, dict) else None


# --- any experiment: dead units and gradients -------------------------------------------------


def _units_and_gradients(document: Document, points: list[_Point], learned: bool) -> None:
    """Dead units and final gradient norms per point; sentences only where they differ."""
    measured = [p for p in points if p.readings]
    if not measured:
        return
    rows, summary = [], []
    for point in measured:
        layers = sorted({name for r in point.readings for name in r["activations"]})
        by_layer = {name: _stat([_dead(r, name) for r in point.readings]) for name in layers}
        worst = max(
            by_layer.items(), key=lambda item: item[1][0] if item[1][2] else -1, default=None
        )
        if worst is not None:
            worst = (_keras_name(point, worst[0]), worst[1])
        gradient = _stat([_final_gradient(r) for r in point.readings])
        rows.append(
            [
                point.label,
                "–" if worst is None else f"{_show(worst[1], '.3f')} ({worst[0]})",
                _show(gradient),
            ]
        )
        summary.append((point, worst, gradient))
    document.table(["point", "most dead units (layer)", "final gradient norm"], rows)
    if len(summary) < 2 or not learned:
        return
    dead = [(p, w) for p, w, _ in summary if w is not None and w[1][2]]
    if len(dead) >= 2:
        low = min(dead, key=lambda item: item[1][1][0])
        high = max(dead, key=lambda item: item[1][1][0])
        difference = high[1][1][0] - low[1][1][0]
        if difference > max(DEAD_DIFFERENCE, high[1][1][1] + low[1][1][1]):
            document.paragraph(
                f"Dead units differ: at {high[0].label}, {high[1][1][0]:.1%} of {high[1][0]}'s"
                f" units are zero on every probe image, against at most {low[1][1][0]:.1%} in any"
                f" layer at {low[0].label} (measurements.json, activations)."
            )
    norms = [(p, g) for p, _, g in summary if g[2] and g[0] > 0]
    if len(norms) >= 2:
        low = min(norms, key=lambda item: item[1][0])
        high = max(norms, key=lambda item: item[1][0])
        if high[1][0] > GRADIENT_RATIO * low[1][0]:
            document.paragraph(
                f"Gradient norms differ: the training loss's gradient at the last epoch had norm"
                f" {high[1][0]:.3g} at {high[0].label} against {low[1][0]:.3g} at {low[0].label}"
                " (measurements.json, gradients)."
            )


_SECTIONS: dict[str, Callable[[Document, list[_Point], str, bool], None]] = {
    "l1": _l1_section,
    "pooling": _pooling_section,
    "size": _size_section,
    "depth": _depth_section,
}
