"""What a study's run folders measured inside its nets, per grid point: measurements.json read
back (weights, activations, gradients), for the report's mechanism tables and its claims.

A run saved before cnnlab measured is counted, not guessed at: its readings are absent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab import atomic
from cnnlab.config import RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.nn import facts
from cnnlab.nn.shapes import dataset_input, resolve_layers
from cnnlab.report.tables import point_label
from cnnlab.store import FINISHED, RunRecord
from cnnlab.study.studyfile import Experiment

_WINDOWED = ("Conv2D", "MaxPooling2D", "AveragePooling2D")  # layers that widen the field
ARTIFACT = "measurements"  # the run folder's file, as `runfolder.save_run` lists it
MAX_BYTES = 16 << 20  # a measurements.json is kilobytes


@dataclass
class MeasuredPoint:
    """A grid point of an experiment: its label, its finished runs and their measurements."""

    label: str
    values: dict[str, Any]
    records: list[RunRecord]
    readings: list[dict[str, Any]]  # one per run that kept readable measurements


def measured_points(
    experiment: Experiment, records: list[RunRecord], study_dir: Path
) -> list[MeasuredPoint]:
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
        points.append(MeasuredPoint(label, values, runs, readings))
    return points


def load_measurements(study_dir: Path, record: RunRecord) -> dict[str, Any] | None:
    """A run's measurements.json as listed in its store record, or None (absent or unreadable)."""
    relative = record.artifacts.get(ARTIFACT)
    if not relative:
        return None
    path = Path(study_dir) / relative
    try:
        value = json.loads(atomic.read_regular(path, MAX_BYTES, "a run's measurements"))
    except (ValueError, RecursionError):  # CnnlabError too: not a regular file, too large
        return None
    parts = ("weights", "activations", "gradients")
    if not isinstance(value, dict) or not all(isinstance(value.get(p), dict | list) for p in parts):
        return None
    return value


def spread_of(values: list[float | None]) -> tuple[float, float, int]:
    """(mean, std, count) of the finite values; the std of one value is 0."""
    finite = [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    spread = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return statistics.fmean(finite), spread, len(finite)


def metric_of(point: MeasuredPoint, name: str) -> tuple[float, float, int]:
    return spread_of([r.metrics.get(name) for r in point.records])


def dense_kernel(readings: dict[str, Any]) -> dict[str, Any] | None:
    """The readings of the net's last dense kernel (the seed's one, with the L1 penalty)."""
    dense = [
        v for v in readings["weights"].values() if isinstance(v, dict) and v.get("kind") == "dense"
    ]
    return dense[-1] if dense else None


def dead_share(readings: dict[str, Any], layer: str) -> float | None:
    entry = (
        readings["activations"].get(layer) if isinstance(readings["activations"], dict) else None
    )
    return entry.get("dead_fraction") if isinstance(entry, dict) else None


def final_gradient(readings: dict[str, Any], layer: str | None = None) -> float | None:
    """The last epoch's global gradient norm, or a layer's."""
    rows = [row for row in readings["gradients"] if isinstance(row, dict)]
    if not rows:
        return None
    if layer is None:
        return rows[-1].get("global")
    layers = rows[-1].get("layers")
    return layers.get(layer) if isinstance(layers, dict) else None


def worst_dead_share(readings: dict[str, Any]) -> float | None:
    """The largest share of dead units (zero on every probe image) in any layer of one run."""
    activations = readings["activations"]
    if not isinstance(activations, dict):
        return None
    shares = [dead_share(readings, name) for name in activations]
    shares = [s for s in shares if isinstance(s, int | float) and math.isfinite(s)]
    return max(shares) if shares else None


def net_facts(record: RunRecord) -> list[facts.LayerFacts] | None:
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


def spatial_field(layers: list[facts.LayerFacts]) -> tuple[str, str]:
    """(the last layer with a spatial output, its receptive field) of a net."""
    spatial = [f for f in layers if f.receptive_field is not None and f.kind in _WINDOWED]
    if not spatial:
        return "–", "–"
    last = spatial[-1]
    return last.name, facts.format_field(last.receptive_field)
