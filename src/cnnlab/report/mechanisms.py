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

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from cnnlab import plots
from cnnlab.errors import CnnlabError
from cnnlab.nn import facts
from cnnlab.nn.architectures import get_architecture
from cnnlab.report.causes import hoyer_values
from cnnlab.report.claims import tail_slope
from cnnlab.report.document import Document, Image
from cnnlab.report.findings import Claims
from cnnlab.report.readings import (
    MeasuredPoint,
    dead_share,
    dense_kernel,
    final_gradient,
    load_measurements,
    measured_points,
    metric_of,
    net_facts,
    spatial_field,
    spread_of,
)
from cnnlab.store import RunRecord
from cnnlab.study.studyfile import Study


def mechanism_sections(
    document: Document, study: Study, records: list[RunRecord], study_dir: Path, claims: Claims
) -> None:
    """One section per experiment with finished runs: its mechanism beside its result; every
    verdict is one of `claims` (claims.py), shown with its evidence."""
    experiments = [(e, measured_points(e, records, study_dir)) for e in study.experiments]
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
        learned = any(c.established for c in claims.of(experiment.name, "learned"))
        if not learned:
            document.paragraph(
                "No point of this experiment is shown to learn (its observations say why): no"
                " mechanism is read into these runs."
            )
        section = _SECTIONS.get(experiment.kind or "")
        if section is not None:
            section(document, points, slug, learned)
        _units_and_gradients(document, points)
        document.bullets([c.sentence for c in claims.of(experiment.name, *MECHANISM_KINDS)])


# --- points and numbers -----------------------------------------------------------------------


def _show(stat: tuple[float, float, int], form: str = ".3g") -> str:
    mean, spread, count = stat
    if count == 0:
        return "–"
    return f"{mean:{form}} ± {spread:{form}} ({count})" if count > 1 else f"{mean:{form}} (1)"


def _image(document: Document, figure: Figure, name: str, caption: str) -> None:
    document.image(Image(name, plots.png_bytes(figure), caption))


# --- L1 ---------------------------------------------------------------------------------------


def _l1_section(document: Document, points: list[MeasuredPoint], slug: str, learned: bool) -> None:
    rows, shown = [], []
    for point in points:
        kernels = [k for k in (dense_kernel(r) for r in point.readings) if k is not None]
        norms = spread_of([k.get("l1") for k in kernels])
        small = spread_of([k.get("small_fraction") for k in kernels])
        rows.append(
            [
                point.label,
                _show(metric_of(point, "test_accuracy"), ".3f"),
                _show(norms),
                _show(spread_of([k.get("l2") for k in kernels])),
                _show(spread_of(hoyer_values(point)), ".3f"),
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
        [
            "point",
            "test acc",
            "dense kernel L1 norm",
            "L2 norm",
            "Hoyer sparsity",
            f"share < {threshold:g}·max|w|",
        ],
        rows,
    )
    document.paragraph(
        "Hoyer's sparsity (0: all weights of equal magnitude, 1: a single non-zero weight) is"
        " scale-free, so a kernel that merely shrank is not called sparse; the share below a"
        " fraction of the largest weight is relative too, and reads a collapsed kernel (every"
        " weight near zero) as dense. Verdicts below."
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


def _pooling_section(
    document: Document, points: list[MeasuredPoint], slug: str, learned: bool
) -> None:
    rows, known = [], []
    for point in points:
        net = next((f for f in map(net_facts, point.records) if f is not None), None)
        if net is None:
            continue
        parameters = sum(f.parameters for f in net)
        macs = facts.total_macs(net)
        layer, field = spatial_field(net)
        seconds = metric_of(point, "fit_seconds")
        rows.append(
            [
                point.label,
                f"{parameters:,}",
                f"{macs:,}",
                f"{field} ({layer})",
                _show(seconds, ".1f"),
                _show(metric_of(point, "test_accuracy"), ".3f"),
            ]
        )
        known.append(point)
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


# --- size -------------------------------------------------------------------------------------


def _size_section(
    document: Document, points: list[MeasuredPoint], slug: str, learned: bool
) -> None:
    rows = []
    for point in points:
        gap = spread_of(
            [
                r.metrics["train_accuracy"] - r.metrics["test_accuracy"]
                for r in point.records
                if isinstance(r.metrics.get("train_accuracy"), int | float)
                and isinstance(r.metrics.get("test_accuracy"), int | float)
            ]
        )
        rises = spread_of([tail_slope(r.history, "val_data_loss") for r in point.records])
        rows.append(
            [
                point.label,
                _show(metric_of(point, "train_accuracy"), ".3f"),
                _show(metric_of(point, "test_accuracy"), ".3f"),
                _show(gap, ".3f"),
                _show(rises, ".3f"),
            ]
        )
    document.table(
        [
            "point",
            "train acc",
            "test acc",
            "gap (train − test)",
            "val data loss slope, last third (per epoch)",
        ],
        rows,
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


def _curves_figure(curves: list[tuple[str, list[list[dict[str, Any]]]]]) -> Figure:
    figure = Figure(figsize=(6.4, 3.8), layout="constrained")
    axes = figure.add_subplot()
    for index, (label, runs) in enumerate(curves):
        length = min(len(run) for run in runs)
        epochs = list(range(1, length + 1))
        for key, style in (("accuracy", "-"), ("val_accuracy", "--")):
            means = [spread_of([run[e].get(key) for run in runs])[0] for e in range(length)]
            axes.plot(epochs, means, style, color=f"C{index % 10}", label=f"{label} ({key})")
    axes.set_xlabel("epoch")
    axes.set_ylabel("accuracy")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="x-small")
    return figure


# --- depth ------------------------------------------------------------------------------------


def _depth_section(
    document: Document, points: list[MeasuredPoint], slug: str, learned: bool
) -> None:
    for point in points:
        net = next((f for f in map(net_facts, point.records) if f is not None), None)
        if net is None:
            continue
        # Layer i of a net without residual blocks is its state_dict's layers.i.
        aligned = len(net) == len(_layer_specs(point))
        rows = []
        for index, fact in enumerate(net):
            name = f"layers.{index}"
            dead = (
                spread_of([dead_share(r, name) for r in point.readings]) if aligned else (0, 0, 0)
            )
            gradient = (
                spread_of([final_gradient(r, name) for r in point.readings])
                if aligned
                else (0, 0, 0)
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


def _layer_specs(point: MeasuredPoint) -> list[Any]:
    record = point.records[0]
    layers = record.config.get("layers")
    if isinstance(layers, list):
        return layers
    try:
        return list(get_architecture(record.config.get("arch", "")))
    except CnnlabError:
        return []


def _keras_name(point: MeasuredPoint, key: str) -> str:
    """A measured layer's Keras name (conv2d_1) in a net without residual blocks, else its key."""
    net = next((f for f in map(net_facts, point.records) if f is not None), None)
    index = key.removeprefix("layers.")
    if net is None or not index.isdigit() or len(net) != len(_layer_specs(point)):
        return key
    return net[int(index)].name


# --- any experiment: dead units and gradients -------------------------------------------------


def _units_and_gradients(document: Document, points: list[MeasuredPoint]) -> None:
    """Dead units and final gradient norms per point (the claims say whether they differ)."""
    measured = [p for p in points if p.readings]
    if not measured:
        return
    rows = []
    for point in measured:
        layers = sorted({name for r in point.readings for name in r["activations"]})
        by_layer = {
            name: spread_of([dead_share(r, name) for r in point.readings]) for name in layers
        }
        worst = max(
            by_layer.items(), key=lambda item: item[1][0] if item[1][2] else -1, default=None
        )
        if worst is not None:
            worst = (_keras_name(point, worst[0]), worst[1])
        gradient = spread_of([final_gradient(r) for r in point.readings])
        rows.append(
            [
                point.label,
                "–" if worst is None else f"{_show(worst[1], '.3f')} ({worst[0]})",
                _show(gradient),
            ]
        )
    document.table(["point", "most dead units (layer)", "final gradient norm"], rows)


MECHANISM_KINDS = (
    "layer-facts", "kernel-collapse", "sparsity", "over-fitting", "dead-units", "gradients",
)  # fmt: skip
_SECTIONS: dict[str, Callable[[Document, list[MeasuredPoint], str, bool], None]] = {
    "l1": _l1_section,
    "pooling": _pooling_section,
    "size": _size_section,
    "depth": _depth_section,
}
