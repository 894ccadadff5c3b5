"""A run folder: the files a finished run leaves (save_run), read back (load_run) and re-scored.

Every file is written atomically. Weights are a plain state_dict, read with
`torch.load(weights_only=True)`: a file that is anything else is refused, never unpickled.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab import atomic, plots
from cnnlab.config import DEFAULTS, ConfigError, RunConfig, check_arch_fields, check_value
from cnnlab.data.datasets import Dataset, stratified_subset, validation_split
from cnnlab.errors import CnnlabError
from cnnlab.nn import modules
from cnnlab.nn.architectures import get_architecture, is_module_net
from cnnlab.training import loop
from cnnlab.training.device import images_to_device, resolve_device
from cnnlab.training.metrics import HISTORY_KEYS, Evaluation, RunResult


def resolved_config(config: RunConfig) -> dict[str, Any]:
    """The config as JSON-ready data, with the registry's layers written out."""
    resolved = dataclasses.asdict(config)
    if is_module_net(config):
        resolved["layers"] = None  # the package's factory rebuilds it from arch_fields
    elif config.layers is None:
        resolved["layers"] = [dict(layer) for layer in get_architecture(config.arch)]
    else:
        resolved["layers"] = [dict(layer) for layer in config.layers]
    return resolved


# Replaced whole only where cnnlab wrote it (its files, before it kept a marker, and explain/).
RUN_FOLDER = atomic.FolderKind(
    "a run folder",
    legacy=(
        *("config.json", "history.csv", "history.json", "metrics.json", "weights.pt"),
        *("history.png", "confusion_train.png", "confusion_test.png", "measurements.json"),
        *("predictions_test.npy", "misclassified_test.npz", "kernels_first.npy", "explain"),
    ),
)
MISCLASSIFIED_KEPT = 32  # misclassified test images kept for the report's grid


def _save_files(
    result: RunResult,
    run_dir: str | Path,
    class_names: tuple[str, ...] | list[str],
    *,
    test_images: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
) -> dict[str, str]:
    """Write the run folder's files into `run_dir`; returns artifact name -> path.

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
    weights = io.BytesIO()  # torch.save would turn a full disk into a RuntimeError
    torch.save(result.state_dict, weights)
    atomic.write_bytes(paths["weights"], weights.getvalue())
    with plots.quiet():  # a diverged history (NaN, inf) makes a figure, not a warning
        _save_figures(result, paths, class_names)
    if result.measurements:  # none with measurements off
        paths["measurements"] = run_dir / "measurements.json"
        atomic.write_json(paths["measurements"], result.measurements)
    paths.update(_save_arrays(result, run_dir, test_images, test_labels))
    return {name: str(path) for name, path in paths.items()}


def _save_figures(result: RunResult, paths: dict[str, Path], class_names: Sequence[str]) -> None:
    """history.png and the confusion matrices (a split without a matrix loses its entry)."""
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
    model: torch.nn.Module  # a modules.ConvNet, or a module net's module_nets.ModuleNet
    measurements: dict[str, Any] = dataclasses.field(default_factory=dict)  # {}: none kept


MAX_JSON_BYTES = 64 << 20  # a run folder's JSON files are kilobytes
MAX_WEIGHTS_BYTES = 1 << 30  # the seed nets' weights are ~150 KB


def load_run(run_dir: str | Path) -> SavedRun:
    """Read a run folder written by `save_run`; anything else is one CnnlabError line.

    The weights are read with `torch.load(weights_only=True)`: a file that is not a plain
    state_dict of tensors is refused, never unpickled.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CnnlabError(f"{run_dir}: not a run folder")
    config_data = _json_file(run_dir / "config.json", dict)
    history = _json_file(run_dir / "history.json", list)
    metrics = _json_file(run_dir / "metrics.json", dict)
    config = _config_from(config_data, run_dir / "config.json")
    state_dict = _weights_file(run_dir / "weights.pt")
    shape, classes = metrics.get("input_shape"), metrics.get("class_names")
    try:
        model = modules.build_model(
            config,
            tuple(shape) if isinstance(shape, list) and len(shape) == 3 else None,
            len(classes) if isinstance(classes, list) and classes else None,
        )
        model.load_state_dict(state_dict)
    except CnnlabError as error:
        raise CnnlabError(f"{run_dir / 'config.json'}: {error}") from None
    except (RuntimeError, TypeError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CnnlabError(
            f"{run_dir / 'weights.pt'}: weights do not fit {config.arch} ({reason})"
        ) from None
    measured = run_dir / "measurements.json"  # older folders have none
    measurements = _json_file(measured, dict) if measured.exists() else {}
    return SavedRun(config, history, metrics, model, measurements)


def _json_file(path: Path, kind: type) -> Any:
    try:
        value = json.loads(atomic.read_regular(path, MAX_JSON_BYTES, "a run folder"))
    except (ValueError, RecursionError) as error:  # bad JSON, bad UTF-8, nested too deeply
        if isinstance(error, CnnlabError):
            raise
        reason = type(error).__name__ if isinstance(error, RecursionError) else error
        raise CnnlabError(f"{path}: not valid JSON ({reason})") from None
    if not isinstance(value, kind):
        expected = "an object" if kind is dict else "a list"
        raise CnnlabError(f"{path}: expected {expected}, got {type(value).__name__}")
    return value


def _config_from(data: dict[str, Any], path: Path) -> RunConfig:
    """A RunConfig from config.json, every field checked by the config's own rules."""
    known = {item.name for item in dataclasses.fields(RunConfig)}
    unknown = sorted(str(key) for key in set(data) - known)
    if unknown:
        raise CnnlabError(f"{path}: unknown keys {', '.join(unknown)}")
    fields = dict(data)
    layers = fields.pop("layers", None)
    module = {name: fields.pop(name, None) for name in ("arch_fields", "arch_package")}
    if layers is not None and not (
        isinstance(layers, list) and all(isinstance(layer, dict) for layer in layers)
    ):
        raise CnnlabError(f"{path}: layers: expected a list of layer objects")
    try:
        for name, value in fields.items():
            if value is not None or DEFAULTS[name] is not None:
                fields[name] = check_value(name, value)
        check_arch_fields(module["arch_fields"])
        if not isinstance(module["arch_package"], str | None):
            raise ConfigError("arch_package", "expected the name of a package")
        config = RunConfig(**fields, **module, layers=None if layers is None else tuple(layers))
    except ConfigError as error:
        raise CnnlabError(f"{path}: {error}") from None
    return config


def _weights_file(path: Path) -> dict[str, torch.Tensor]:
    data = atomic.read_regular(path, MAX_WEIGHTS_BYTES, "a run folder (cnnlab's weights)")
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles before refusing them
            warnings.simplefilter("ignore")
            state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # torch's refusal of a pickle, a truncated or empty file, ...
        raise CnnlabError(
            f"{path}: not a plain state_dict of tensors; it will not be loaded (cnnlab only"
            " reads weights with torch.load(weights_only=True))"
        ) from None
    if not (
        isinstance(state_dict, dict)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items())
    ):
        raise CnnlabError(
            f"{path}: holds a {type(state_dict).__name__}, not a state_dict of named tensors"
        )
    return state_dict


def evaluate_run(
    run: SavedRun, data: Dataset, device: str = "auto"
) -> dict[str, tuple[np.ndarray, Evaluation]]:
    """A saved run's model on its training subset and the test set: split -> (labels, scores)."""
    target = resolve_device(device)
    config = run.config
    shape = loop.data_input(data)[0]
    if tuple(run.model.input_shape) != shape:
        trained = "x".join(map(str, run.model.input_shape))
        raise CnnlabError(
            f"the run's net takes {trained} images; {data.source} holds"
            f" {'x'.join(map(str, shape))} images (pass the dataset it was trained on)"
        )
    subset = stratified_subset(data.train_labels, config.train_size, config.subset_seed)
    model = run.model.to(target)
    train_labels = data.train_labels[subset]
    if config.label_noise:  # the labels the run trained and scored itself on
        train_count = len(validation_split(subset, config.validation_split)[0])
        classes = len(data.class_names)
        train_labels = loop.noisy_labels(config, train_labels, train_count, classes)[0]
    splits = {"train": (data.train_images[subset], train_labels)}
    splits["test"] = (data.test_images, data.test_labels)
    results = {}
    for split, (images, labels) in splits.items():
        tensor_labels = torch.from_numpy(labels.astype(np.int64)).to(target)
        scores = loop.evaluate_model(
            model,
            images_to_device(images, target),
            tensor_labels,
            precision=config.precision,
            tta=config.tta if split == "test" else "none",  # as the run scored itself
            label_smoothing=config.label_smoothing,
        )
        results[split] = (labels, scores)
    return results


def check_target(run_dir: str | Path, what: str = "--out") -> None:
    """A run folder can be written at `run_dir`: a new path, or a run folder to replace."""
    atomic.check_folder_replaceable(run_dir, what, RUN_FOLDER)


def save_run(
    result: RunResult, run_dir: str | Path, class_names: Sequence[str], **options: Any
) -> dict[str, str]:
    """Write a run folder: config, history, metrics, weights, plots and the report's arrays;
    returns artifact name -> path.

    The files go into a temporary folder that replaces `run_dir` whole once every file is in: a
    failure or a kill never leaves a half-written run folder (see `atomic.atomic_folder`). With
    the test set's uint8 images and labels (`test_images`, `test_labels`: the set
    `result.test_predictions` scored), a sample of its misclassified images is kept too, so the
    report needs no data source.
    """
    run_dir = Path(run_dir)
    with atomic.atomic_folder(run_dir, "run folder", RUN_FOLDER) as tmp:
        paths = _save_files(result, tmp, class_names, **options)
    return {name: str(run_dir / Path(path).relative_to(tmp)) for name, path in paths.items()}
