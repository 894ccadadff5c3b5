"""fit(config, data) -> RunResult: the seed ConvNet trained with the semantics Keras uses.

CONTRACT (the study and speed code rely on these names):
- `RunConfig`: every number the loop uses.
- `fit(config, data, progress=None) -> RunResult`.
- `save_run(result, run_dir, class_names) -> dict[str, str]`: artifact name -> path.

Keras semantics kept here: Adam with epsilon 1e-7; the validation part is the last fraction of the
subset, cut before any shuffling; the training part is reshuffled every epoch; the epoch's loss
and accuracy are running means over its batches with dropout active, the validation scores are
taken in eval mode after the epoch; every reported loss includes the kernel penalty.
The data stays on the device as uint8 tensors; batches are gathered there by index.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab import __version__, atomic, models, optim
from cnnlab import data as data_module
from cnnlab.config import RunConfig, check_config
from cnnlab.errors import CnnlabError

HISTORY_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")
EVAL_BATCH_SIZE = 1000  # images per forward pass when evaluating (no gradients kept)


@dataclass
class RunResult:
    """What a run gives back: per-epoch history, final metrics and the trained weights."""

    config: RunConfig
    status: str  # "done" or "diverged"
    history: list[dict[str, float]]  # per epoch: epoch, loss, accuracy, val_loss, val_accuracy
    metrics: dict[str, Any] = field(default_factory=dict)
    state_dict: dict[str, Any] = field(default_factory=dict)


# --- devices and tensors ----------------------------------------------------------------------


def available_devices() -> list[str]:
    """Device names this machine can train on."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' (CUDA if present, else the CPU), 'cpu', 'cuda', 'cuda:N' or 'mps', checked."""
    available = available_devices()
    if name == "auto":
        return torch.device("cuda" if "cuda" in available else "cpu")
    if name not in available:
        raise CnnlabError(
            f"device {name!r} is not available here; available: {', '.join(available)}"
        )
    return torch.device(name)


def images_to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, C) -> a uint8 NCHW view on `device`, stored channels-last."""
    # The NHWC buffer permuted to NCHW is exactly PyTorch's channels-last layout, which the
    # CPU convolutions run fastest on (about 1.4x a contiguous NCHW copy, measured).
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:
        images = images.copy()  # cached arrays may be read-only maps; torch wants writable
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1], as the report scaled them."""
    return images.float().div_(255.0)


# --- evaluation -------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Scores of a model on a set of images, in eval mode."""

    loss: float  # mean cross-entropy plus the kernel penalty, as Keras reports it
    accuracy: float
    predictions: np.ndarray  # predicted class per image


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The forward pass's compute type: float32, or opt-in bfloat16 mixed precision.

    Parameters, gradients and Adam's state stay float32 either way; bfloat16 only changes the
    arithmetic inside convolutions and matrix products (the loss is computed in float32).
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def evaluate_model(
    model: models.ConvNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = EVAL_BATCH_SIZE,
    precision: str = "float32",
) -> Evaluation:
    """Loss, accuracy and predictions of `model` on uint8 NCHW `images` (on the model's device)."""
    was_training = model.training
    model.eval()
    cross_entropy = torch.zeros((), device=images.device)
    predictions = []
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            with autocast(precision, images.device):
                logits = model(normalise(images[start : start + batch_size])).float()
            batch_labels = labels[start : start + batch_size]
            cross_entropy += F.cross_entropy(logits, batch_labels, reduction="sum")
            predictions.append(logits.argmax(1))
        penalty = model.penalty()
        predicted = torch.cat(predictions) if predictions else labels.new_zeros(0)
        correct = (predicted == labels).sum()
        total = cross_entropy / max(len(labels), 1) + (0.0 if penalty is None else penalty)
        loss, correct_count = torch.stack([total, correct.float()]).tolist()
    model.train(was_training)
    return Evaluation(loss, correct_count / max(len(labels), 1), predicted.cpu().numpy())


# --- training ---------------------------------------------------------------------------------


def train_one_epoch(
    model: models.ConvNet,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    precision: str = "float32",
) -> tuple[float, float]:
    """One pass over a fresh shuffle; (loss, accuracy) as running means over the batches."""
    model.train()
    order = torch.randperm(len(labels), generator=generator).to(images.device)
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for start in range(0, len(labels), batch_size):
        batch = order[start : start + batch_size]
        batch_labels = labels[batch]
        with autocast(precision, images.device):
            logits = model(normalise(images[batch])).float()
        loss = F.cross_entropy(logits, batch_labels)
        penalty = model.penalty()
        if penalty is not None:
            loss = loss + penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Keras weights each batch's loss by its size; no host sync until the epoch ends.
        loss_sum += loss.detach() * len(batch)
        correct += (logits.argmax(1) == batch_labels).sum()
    loss_mean, accuracy = (torch.stack([loss_sum, correct.float()]) / len(labels)).tolist()
    return loss_mean, accuracy


def subset_indices(config: RunConfig, data: data_module.Cifar10) -> tuple[np.ndarray, np.ndarray]:
    """(training part, validation part) of the run's subset: Keras holds out the last fraction."""
    check_config(config, available=len(data.train_labels), classes=len(data.class_names))
    subset = data_module.stratified_subset(data.train_labels, config.train_size, config.subset_seed)
    train_part, validation_part = data_module.validation_split(subset, config.validation_split)
    if len(train_part) == 0 or len(validation_part) == 0:
        raise CnnlabError(
            f"validation_split {config.validation_split} of {config.train_size} images leaves"
            f" {len(train_part)} to train on and {len(validation_part)} to validate on"
        )
    return train_part, validation_part


def run_flops(config: RunConfig, test_images: int = 10_000) -> float:
    """Network FLOPs of a whole run: training (backward ~ 2 forwards), validation, evaluation."""
    forward = models.forward_flops(models.resolve_layers(config))
    trained = int(config.train_size * (1 - config.validation_split))  # Keras floors
    validation = config.train_size - trained
    passes = (3 * trained + validation) * config.epochs + config.train_size + test_images
    return float(forward) * passes


def make_optimizer(
    model: torch.nn.Module, config: RunConfig, *, capturable: bool = False
) -> torch.optim.Optimizer:
    """The config's optimizer over `model`'s parameters (see `cnnlab.optim`).

    `capturable` keeps every step's state on the GPU so the step can be replayed from a CUDA
    graph.
    """
    return optim.make_optimizer(list(model.parameters()), config, capturable=capturable)


def _generators(seed: int, device: torch.device) -> tuple[torch.Generator, ...]:
    """Independent streams for initialisation, shuffles (CPU) and dropout (on the device)."""
    init_seed, shuffle_seed, dropout_seed = np.random.SeedSequence(seed).generate_state(3)
    dropout = torch.Generator(device=device)
    dropout.manual_seed(int(dropout_seed))
    return (
        torch.Generator().manual_seed(int(init_seed)),
        torch.Generator().manual_seed(int(shuffle_seed)),
        dropout,
    )


def fit(
    config: RunConfig,
    data: data_module.Cifar10,
    *,
    device: str = "auto",
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train `config` on `data` as Keras would; `progress` gets each epoch's row as it ends."""
    target = resolve_device(device)
    layers = models.resolve_layers(config)
    train_part, validation_part = subset_indices(config, data)
    ordered = np.concatenate([train_part, validation_part])
    train_count = len(train_part)
    images = images_to_device(data.train_images[ordered], target)
    labels = torch.from_numpy(data.train_labels[ordered].astype(np.int64)).to(target)
    init_generator, shuffle_generator, dropout_generator = _generators(config.seed, target)

    model = models.ConvNet(layers, models.INPUT_SHAPE)
    models.initialise(model, init_generator)
    model.to(target)
    model.set_dropout_generator(dropout_generator)
    optimizer = make_optimizer(model, config)

    history: list[dict[str, float]] = []
    diverged_epoch = None
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        loss, accuracy = train_one_epoch(
            model,
            optimizer,
            images[:train_count],
            labels[:train_count],
            config.batch_size,
            shuffle_generator,
            config.precision,
        )
        validation = evaluate_model(
            model, images[train_count:], labels[train_count:], precision=config.precision
        )
        now = time.perf_counter()
        row = {
            "epoch": epoch,
            "loss": loss,
            "accuracy": accuracy,
            "val_loss": validation.loss,
            "val_accuracy": validation.accuracy,
            "seconds": now - epoch_started,
        }
        history.append(row)
        if progress is not None:
            elapsed = now - started
            remaining = elapsed / epoch * (config.epochs - epoch)
            progress({**row, "epochs": config.epochs, "elapsed": elapsed, "eta": remaining})
        if not (math.isfinite(loss) and math.isfinite(validation.loss)):
            diverged_epoch = epoch
            break
    fit_seconds = time.perf_counter() - started

    evaluated = time.perf_counter()
    test_images = images_to_device(data.test_images, target)
    test_labels = torch.from_numpy(data.test_labels.astype(np.int64)).to(target)
    train_scores = evaluate_model(model, images, labels, precision=config.precision)
    test_scores = evaluate_model(model, test_images, test_labels, precision=config.precision)
    eval_seconds = time.perf_counter() - evaluated

    state_dict = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
    timings = {"fit_seconds": fit_seconds, "eval_seconds": eval_seconds}
    scores = (train_scores, test_scores)
    parameters = models.count_parameters(model)
    return make_result(
        config,
        data,
        ordered,
        history,
        diverged_epoch,
        scores,
        parameters,
        timings,
        target,
        state_dict,
    )


def make_result(
    config: RunConfig,
    data: data_module.Cifar10,
    ordered: np.ndarray,
    history: list[dict[str, float]],
    diverged_epoch: int | None,
    scores: tuple[Evaluation, Evaluation],
    parameters: int,
    timings: dict[str, float],
    device: torch.device,
    state_dict: dict[str, torch.Tensor],
) -> RunResult:
    """A finished run's RunResult: `scores` are (whole subset, test set) in eval mode."""
    subset_labels = data.train_labels[ordered]
    train_scores, test_scores = scores
    last = history[-1] if history else {}
    metrics = {
        **score_metrics(
            subset_labels, train_scores, data.test_labels, test_scores, data.class_names
        ),
        "val_accuracy": last.get("val_accuracy", math.nan),
        "val_loss": last.get("val_loss", math.nan),
        **baseline(subset_labels, data.test_labels),
        "parameters": parameters,
        **timings,
        "epochs_run": len(history),
        "diverged_epoch": diverged_epoch,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),  # the timings depend on it
        "versions": versions(),
        "data_source": str(data.source),
        "data_sha256": data.source_sha256,
    }
    status = "done" if diverged_epoch is None else "diverged"
    return RunResult(config, status, history, metrics, state_dict)


def score_metrics(
    train_labels: np.ndarray,
    train: Evaluation,
    test_labels: np.ndarray,
    test: Evaluation,
    class_names: tuple[str, ...],
) -> dict[str, Any]:
    """Accuracy, loss, scikit-learn's classification report and confusion matrix per split."""
    from sklearn.metrics import classification_report, confusion_matrix

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
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cnnlab": __version__,
    }


# --- run folders ------------------------------------------------------------------------------


def resolved_config(config: RunConfig) -> dict[str, Any]:
    """The config as JSON-ready data, with the registry's layers written out."""
    resolved = dataclasses.asdict(config)
    if config.layers is None:
        resolved["layers"] = [dict(layer) for layer in models.get_architecture(config.arch)]
    else:
        resolved["layers"] = [dict(layer) for layer in config.layers]
    return resolved


def save_run(
    result: RunResult, run_dir: str | Path, class_names: tuple[str, ...] | list[str]
) -> dict[str, str]:
    """Write the run folder (every file atomically); returns artifact name -> path."""
    from cnnlab import plots

    run_dir = Path(run_dir)
    paths = {
        "config": run_dir / "config.json",
        "history_csv": run_dir / "history.csv",
        "history_json": run_dir / "history.json",
        "metrics": run_dir / "metrics.json",
        "weights": run_dir / "weights.pt",
        "history_png": run_dir / "history.png",
        "confusion_train_png": run_dir / "confusion_train.png",
        "confusion_test_png": run_dir / "confusion_test.png",
    }
    atomic.write_json(paths["config"], resolved_config(result.config))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_KEYS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: row.get(key) for key in HISTORY_KEYS} for row in result.history)
    atomic.write_text(paths["history_csv"], buffer.getvalue())
    atomic.write_json(paths["history_json"], result.history)
    atomic.write_json(paths["metrics"], {"status": result.status, **result.metrics})
    with atomic.atomic_path(paths["weights"]) as tmp:
        torch.save(result.state_dict, tmp)
    title = f"{result.config.arch}, {result.config.train_size:,} images, seed {result.config.seed}"
    plots.save_figure(plots.history_figure(result.history, title), paths["history_png"])
    for split in ("train", "test"):
        matrix = result.metrics.get("confusion_matrix", {}).get(split)
        if matrix is not None:
            figure = plots.confusion_matrix_figure(
                matrix, list(class_names), f"{split} confusion matrix ({title})"
            )
            plots.save_figure(figure, paths[f"confusion_{split}_png"])
        else:
            del paths[f"confusion_{split}_png"]
    return {name: str(path) for name, path in paths.items()}


@dataclass
class SavedRun:
    """A run folder read back: config, history, metrics and the model with its weights."""

    config: RunConfig
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    model: models.ConvNet


def load_run(run_dir: str | Path) -> SavedRun:
    """Read a run folder written by `save_run` (weights with `weights_only=True`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnlabError(f"{run_dir}: not a run folder")
    try:
        config_data = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        history = json.loads((run_dir / "history.json").read_text(encoding="utf-8"))
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        state_dict = torch.load(run_dir / "weights.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise CnnlabError(f"{run_dir}: not a readable run folder ({error})") from None
    known = {item.name for item in dataclasses.fields(RunConfig)}
    unknown = sorted(set(config_data) - known)
    if unknown:
        raise CnnlabError(f"{run_dir / 'config.json'}: unknown keys {', '.join(unknown)}")
    if config_data.get("layers") is not None:
        config_data["layers"] = tuple(config_data["layers"])
    config = RunConfig(**config_data)
    model = models.build_model(config)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CnnlabError(f"{run_dir / 'weights.pt'}: weights do not fit {config.arch}") from error
    return SavedRun(config, history, metrics, model)


def evaluate_run(
    run: SavedRun, data: data_module.Cifar10, device: str = "auto"
) -> dict[str, tuple[np.ndarray, Evaluation]]:
    """A saved run's model on its training subset and the test set: split -> (labels, scores)."""
    target = resolve_device(device)
    config = run.config
    subset = data_module.stratified_subset(data.train_labels, config.train_size, config.subset_seed)
    model = run.model.to(target)
    splits = {"train": (data.train_images[subset], data.train_labels[subset])}
    splits["test"] = (data.test_images, data.test_labels)
    results = {}
    for split, (images, labels) in splits.items():
        tensor_labels = torch.from_numpy(labels.astype(np.int64)).to(target)
        scores = evaluate_model(
            model, images_to_device(images, target), tensor_labels, precision=config.precision
        )
        results[split] = (labels, scores)
    return results


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
