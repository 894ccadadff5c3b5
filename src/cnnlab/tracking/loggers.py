"""What the TensorBoard and MLflow loggers share: names, scalars, extras.

Both are study callbacks (`cnnlab.study.callbacks.Callback`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cnnlab.errors import CnnlabError
from cnnlab.store import RunRecord

# history row key -> the name its per-epoch scalar gets (step = epoch)
EPOCH_SCALARS = {
    "loss": "loss",
    "accuracy": "accuracy",
    "val_loss": "val_loss",
    "val_accuracy": "val_accuracy",
    "seconds": "epoch_seconds",
}
# metrics.json keys logged once, at the last epoch's step, as "final/<key>"
FINAL_METRICS = (
    "train_accuracy",
    "train_loss",
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "val_loss",
    "fit_seconds",
)
# run folder artifacts (store names) that MLflow keeps with each run (never the weights)
ARTIFACTS = (
    "config",
    "metrics",
    "measurements",
    "history_png",
    "confusion_train_png",
    "confusion_test_png",
)
MLFLOW_SCHEMES = ("sqlite", "file", "http", "https", "databricks", "postgresql", "mysql", "mssql")


def final_step(record: RunRecord) -> int:
    """The step of a run's final metrics: its last epoch (0 for a run without history)."""
    return int(record.history[-1]["epoch"]) if record.history else 0


def epoch_scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """A history row's scalars by logged name."""
    return {name: float(row[key]) for key, name in EPOCH_SCALARS.items() if is_number(row.get(key))}


def final_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A run's final metrics by logged name ('final/test_accuracy'...)."""
    return {
        f"final/{key}": float(metrics[key]) for key in FINAL_METRICS if is_number(metrics.get(key))
    }


def run_label(record: RunRecord) -> str:
    """'l1 l1=0.0001, sizes train_size=5000 seed=1': what places the run in each experiment.

    Safe in a folder name (no '/', nothing Windows refuses) and at most 137 characters.
    """
    places = ", ".join(
        " ".join([name, *(f"{key}={text(value)}" for key, value in fields.items())])
        for name, fields in record.experiments.items()
    )
    seed = f"seed={record.seed}"
    return re.sub(r"[^\w.,=+\- ]", "_", places)[: 136 - len(seed)].strip() + f" {seed}"


def run_name(record: RunRecord) -> str:
    """How TensorBoard and MLflow name a run: '<run id> <run_label>'."""
    return f"{record.id} {run_label(record)}"


def varied_fields(runs: Sequence[RunRecord]) -> list[str]:
    """The config fields that place runs in experiments, and the seed, that differ across runs."""
    names = dict.fromkeys(
        key for record in runs for fields in record.experiments.values() for key in fields
    )
    names["seed"] = None
    varied = [
        name
        for name in names
        if len({text(record.config.get(name)) for record in runs}) > 1 or len(runs) == 1
    ]
    return varied


class Modules:
    """The names cnnlab uses from an optional package, imported on demand."""

    def __init__(self, **modules: Any):
        self.__dict__.update(modules)


def require(package: str, option: str) -> Modules:
    """Import an optional extra's modules, or say in one line how to install it."""
    try:
        if package == "tensorboard":
            from google.protobuf import struct_pb2
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            return Modules(
                event_pb2=event_pb2,
                struct_pb2=struct_pb2,
                summary_pb2=summary_pb2,
                api_pb2=api_pb2,
                metadata=metadata,
                plugin_data_pb2=plugin_data_pb2,
                EventFileWriter=EventFileWriter,
            )
        import mlflow
        import mlflow.entities

        return Modules(MlflowClient=mlflow.MlflowClient, entities=mlflow.entities)
    except ImportError:
        raise CnnlabError(
            f"{option} needs the {package} package: pip install 'cnnlab[{package}]'"
        ) from None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def text(value: Any) -> str:
    """A config value as text: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value, sort_keys=True)


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
