"""A run folder: the files a finished run leaves (save_run), read back (load_run) and re-scored.

Every file is written atomically. Weights are a plain state_dict, read with
`torch.load(weights_only=True)`: a file that is anything else is refused, never unpickled.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab import atomic, models, plots, train
from cnnlab.config import RunConfig
from cnnlab.data import Cifar10, stratified_subset
from cnnlab.errors import CnnlabError
from cnnlab.metrics import HISTORY_KEYS, Evaluation, RunResult


def resolved_config(config: RunConfig) -> dict[str, Any]:
    """The config as JSON-ready data, with the registry's layers written out."""
    resolved = dataclasses.asdict(config)
    if config.layers is None:
        resolved["layers"] = [dict(layer) for layer in models.get_architecture(config.arch)]
    else:
        resolved["layers"] = [dict(layer) for layer in config.layers]
    return resolved


MISCLASSIFIED_KEPT = 32  # misclassified test images kept for the report's grid


def save_run(
    result: RunResult,
    run_dir: str | Path,
    class_names: tuple[str, ...] | list[str],
    *,
    test_images: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
) -> dict[str, str]:
    """Write the run folder (every file atomically); returns artifact name -> path.

    With the test set's uint8 images and labels (the set `result.test_predictions` scored), a
    sample of its misclassified images is kept too, so the report needs no data source.
    """
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
    paths.update(_save_arrays(result, run_dir, test_images, test_labels))
    return {name: str(path) for name, path in paths.items()}


def _save_arrays(
    result: RunResult,
    run_dir: Path,
    test_images: np.ndarray | None,
    test_labels: np.ndarray | None,
) -> dict[str, Path]:
    """The report's NumPy files: test predictions, misclassified samples, first-layer kernels."""
    paths = {}
    predictions = result.test_predictions
    if predictions is not None:
        predictions = np.asarray(predictions).astype(np.int16)
        paths["predictions_test"] = run_dir / "predictions_test.npy"
        _save_npy(paths["predictions_test"], predictions)
        if test_images is not None and test_labels is not None:
            if len(test_images) != len(predictions) or len(test_labels) != len(predictions):
                raise ValueError(
                    f"{len(predictions)} test predictions for {len(test_images)} images and"
                    f" {len(test_labels)} labels"
                )
            paths["misclassified_test"] = run_dir / "misclassified_test.npz"
            sample = misclassified_sample(test_labels, predictions)
            with atomic.atomic_path(paths["misclassified_test"]) as tmp, open(tmp, "wb") as file:
                np.savez(
                    file,
                    images=np.asarray(test_images[sample], dtype=np.uint8),
                    index=sample.astype(np.int32),
                    true=np.asarray(test_labels)[sample].astype(np.int16),
                    predicted=predictions[sample],
                )
    kernels = first_conv_kernels(result.state_dict)
    if kernels is not None:
        paths["kernels_first"] = run_dir / "kernels_first.npy"
        _save_npy(paths["kernels_first"], kernels)
    return paths


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.save(file, array, allow_pickle=False)


def misclassified_sample(
    labels: np.ndarray, predictions: np.ndarray, count: int = MISCLASSIFIED_KEPT
) -> np.ndarray:
    """Indices of up to `count` misclassified images, taken from each true class in turn.

    Round-robin over the classes (in test-set order within each) so the grid shows every class's
    mistakes, not only the first class's; the indices come back sorted by true class, then index.
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    wrong = np.flatnonzero(labels != predictions)
    by_class = [wrong[labels[wrong] == label] for label in np.unique(labels[wrong])]
    chosen = []
    for rank in range(max((len(indices) for indices in by_class), default=0)):
        chosen += [int(indices[rank]) for indices in by_class if rank < len(indices)]
        if len(chosen) >= count:
            break
    chosen = chosen[:count]
    return np.array(sorted(chosen, key=lambda index: (labels[index], index)), dtype=np.int64)


def first_conv_kernels(state_dict: dict[str, Any]) -> np.ndarray | None:
    """The first conv layer's kernels as float32 filters x in x kh x kw (None without a conv)."""
    for value in state_dict.values():  # a ConvNet's state_dict lists its layers in order
        weight = value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else value
        weight = np.asarray(weight)
        if weight.ndim == 4:
            return weight.astype(np.float32)
    return None


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
    run: SavedRun, data: Cifar10, device: str = "auto"
) -> dict[str, tuple[np.ndarray, Evaluation]]:
    """A saved run's model on its training subset and the test set: split -> (labels, scores)."""
    target = train.resolve_device(device)
    config = run.config
    subset = stratified_subset(data.train_labels, config.train_size, config.subset_seed)
    model = run.model.to(target)
    splits = {"train": (data.train_images[subset], data.train_labels[subset])}
    splits["test"] = (data.test_images, data.test_labels)
    results = {}
    for split, (images, labels) in splits.items():
        tensor_labels = torch.from_numpy(labels.astype(np.int64)).to(target)
        scores = train.evaluate_model(
            model, train.images_to_device(images, target), tensor_labels, precision=config.precision
        )
        results[split] = (labels, scores)
    return results
