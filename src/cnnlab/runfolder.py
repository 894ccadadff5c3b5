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


def save_run(
    result: RunResult, run_dir: str | Path, class_names: tuple[str, ...] | list[str]
) -> dict[str, str]:
    """Write the run folder (every file atomically); returns artifact name -> path."""
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
