"""What a finished run reports: its scores, scikit-learn's reports, the baseline, provenance.

Every execution path (lone, grouped, in a worker process, on a stream) builds its RunResult
here, so a run records the same keys whichever path trained it. No torch import.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnlab import __version__
from cnnlab.config import RunConfig
from cnnlab.store import Status

# Keras's columns, then the cross-entropy alone ("data_loss", "val_data_loss"): Keras's losses
# include the kernel penalty, so only the data loss can show over-fitting under a strong L1.
HISTORY_KEYS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "seconds",
    "data_loss",
    "val_data_loss",
)


def epoch_text(row: Mapping[str, Any]) -> str:
    """One epoch of a run, as `cnnlab train` and a study print it:
    'epoch 3/20  loss 1.2345  accuracy 0.5670  val_loss 1.3456  val_accuracy 0.5012  1.2 s',
    then '  ETA 14 s' where the row says how long the run has to go."""
    line = (
        f"epoch {row['epoch']}/{row.get('epochs', '?')}  loss {row['loss']:.4f}"
        f"  accuracy {row['accuracy']:.4f}  val_loss {row['val_loss']:.4f}"
        f"  val_accuracy {row['val_accuracy']:.4f}  {row['seconds']:.1f} s"
    )
    eta = row.get("eta")
    return f"{line}  ETA {eta:.0f} s" if isinstance(eta, int | float) else line


@dataclass
class RunResult:
    """What a run gives back: per-epoch history, final metrics and the trained weights."""

    config: RunConfig
    status: Status  # DONE, DIVERGED or PRUNED (stopped early by a search's pruner)
    history: list[dict[str, float]]  # per epoch: the HISTORY_KEYS
    metrics: dict[str, Any] = field(default_factory=dict)
    state_dict: dict[str, Any] = field(default_factory=dict)  # name -> tensor (or array)
    test_predictions: np.ndarray | None = None  # int16 predicted class per test image
    measurements: dict[str, Any] = field(default_factory=dict)  # measure.py's; {} when off


@dataclass
class Evaluation:
    """Scores of a model on a set of images, in eval mode."""

    loss: float  # mean cross-entropy plus the kernel penalty, as Keras reports it
    accuracy: float
    predictions: np.ndarray  # predicted class per image
    data_loss: float  # the mean cross-entropy alone, without the kernel penalty


@dataclass(frozen=True)
class Provenance:
    """Where and how a run was trained: the data, the device, the timings, the group."""

    data_source: str
    data_sha256: str
    device: str
    cpu_threads: int  # the timings depend on it
    fit_seconds: float
    eval_seconds: float
    group_size: int  # runs trained together as one network, this one included
    input_shape: tuple[int, ...] = ()  # one image: height, width, channels


def history_row(
    epoch: int, scores: tuple[float, float, float], validation: Evaluation, seconds: float
) -> dict[str, float]:
    """One epoch of a run's history, in the order of HISTORY_KEYS.

    `scores`: the epoch's (loss, accuracy, data loss), running means over its batches."""
    loss, accuracy, data_loss = scores
    row = {
        "epoch": epoch,
        "loss": loss,
        "accuracy": accuracy,
        "val_loss": validation.loss,
        "val_accuracy": validation.accuracy,
        "seconds": seconds,
        "data_loss": data_loss,
        "val_data_loss": validation.data_loss,
    }
    assert tuple(row) == HISTORY_KEYS
    return row


def make_result(
    config: RunConfig,
    history: list[dict[str, float]],
    diverged_epoch: int | None,
    labels: tuple[np.ndarray, np.ndarray],
    scores: tuple[Evaluation, Evaluation],
    class_names: tuple[str, ...],
    parameters: int,
    provenance: Provenance,
    state_dict: dict[str, Any],
    pruned_epoch: int | None = None,
) -> RunResult:
    """A finished run's RunResult: `labels` and `scores` are (whole subset, test set).

    A pruned run's metrics hold "pruned_epoch"; a run that was not has no such key."""
    subset_labels, test_labels = labels
    train_scores, test_scores = scores
    last = history[-1] if history else {}
    metrics = {
        **score_metrics(subset_labels, train_scores, test_labels, test_scores, class_names),
        "val_accuracy": last.get("val_accuracy", math.nan),
        "val_loss": last.get("val_loss", math.nan),
        **baseline(subset_labels, test_labels),
        "parameters": parameters,
        "fit_seconds": provenance.fit_seconds,
        "eval_seconds": provenance.eval_seconds,
        "epochs_run": len(history),
        "diverged_epoch": diverged_epoch,
        "device": provenance.device,
        "cpu_threads": provenance.cpu_threads,
        "group_size": provenance.group_size,
        "versions": versions(),
        "data_source": provenance.data_source,
        "data_sha256": provenance.data_sha256,
        "input_shape": list(provenance.input_shape),
        "class_names": list(class_names),
    }
    status = Status.DONE if diverged_epoch is None else Status.DIVERGED
    if pruned_epoch is not None:
        metrics["pruned_epoch"] = pruned_epoch
        status = Status.PRUNED
    predictions = np.asarray(test_scores.predictions).astype(np.int16)
    return RunResult(config, status, history, metrics, state_dict, predictions)


def score_metrics(
    train_labels: np.ndarray,
    train: Evaluation,
    test_labels: np.ndarray,
    test: Evaluation,
    class_names: tuple[str, ...],
) -> dict[str, Any]:
    """Accuracy, loss, scikit-learn's classification report and confusion matrix per split."""
    from sklearn.metrics import classification_report, confusion_matrix  # slow to import

    classes = list(range(len(class_names)))
    metrics: dict[str, Any] = {"classification_report": {}, "confusion_matrix": {}}
    for split, labels, scores in (("train", train_labels, train), ("test", test_labels, test)):
        metrics[f"{split}_accuracy"] = scores.accuracy
        metrics[f"{split}_loss"] = scores.loss
        metrics["classification_report"][split] = classification_report(
            labels,
            scores.predictions,
            labels=classes,
            target_names=list(class_names),
            output_dict=True,
            zero_division=0,
        )
        metrics["confusion_matrix"][split] = confusion_matrix(
            labels, scores.predictions, labels=classes
        ).tolist()
    return metrics


def baseline(train_labels: np.ndarray, test_labels: np.ndarray) -> dict[str, Any]:
    """Test accuracy of always predicting the training subset's most frequent class."""
    most_frequent = int(np.bincount(train_labels).argmax())
    return {
        "baseline_class": most_frequent,
        "baseline_accuracy": float(np.mean(test_labels == most_frequent)),
    }


def versions() -> dict[str, str]:
    """The versions that produced a result."""
    return {
        "python": platform.python_version(),
        "torch": _installed("torch"),
        "numpy": np.__version__,
        "cnnlab": __version__,
    }


def _installed(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def report_text(labels: np.ndarray, scores: Evaluation, class_names: tuple[str, ...]) -> str:
    """scikit-learn's classification report and the confusion matrix, as text."""
    from sklearn.metrics import classification_report, confusion_matrix

    classes = list(range(len(class_names)))
    report = classification_report(
        labels,
        scores.predictions,
        labels=classes,
        target_names=list(class_names),
        digits=3,
        zero_division=0,
    )
    matrix = confusion_matrix(labels, scores.predictions, labels=classes)
    width = max(max(len(name) for name in class_names), len(str(matrix.max()))) + 1
    header = " " * width + "".join(name[:5].rjust(6) for name in class_names)
    rows = [
        name.rjust(width) + "".join(str(count).rjust(6) for count in row)
        for name, row in zip(class_names, matrix, strict=True)
    ]
    lines = [report, "confusion matrix (rows: true class, columns: predicted)", header, *rows]
    return "\n".join(lines)
