"""Stand-ins for `fit` and `save_run`: deterministic, instant, no torch.

The numbers follow the seed report's shape (more data helps, large L1 collapses to 0.10) so the
report's tables, plots and observations have something real to say. Special configs misbehave:
learning_rate 0.5 raises (a failed run), l1 >= 50 diverges.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from cnnlab.config import RunConfig
from cnnlab.store import Status
from cnnlab.training.metrics import RunResult

_PNG = None


def fake_fit(config: RunConfig, data, *, device="auto", progress=None, prune=None) -> RunResult:
    """A deterministic RunResult computed from the config alone (`prune` is not asked)."""
    if config.learning_rate == 0.5:
        raise RuntimeError("the fake runner refuses learning_rate 0.5")
    delay = float(__import__("os").environ.get("CNNLAB_FAKE_SECONDS", "0"))
    if delay:
        time.sleep(delay)
    size_gain = 0.05 * math.log2(config.train_size / 5000) if config.train_size >= 5000 else 0
    collapse = (config.l1 or 0) >= 1
    jitter = 0.004 * ((config.seed * 7) % 3 - 1)
    test = (
        0.10 if collapse else 0.50 + size_gain + jitter + (0.03 if "maxpool" in config.arch else 0)
    )
    train = 0.10 if collapse else test + 0.13 - size_gain / 2
    history = []
    for epoch in range(1, config.epochs + 1):
        val = 0.10 if collapse else test * (1 - 0.5**epoch)
        val_loss = 1.2 + 0.05 * (epoch - config.epochs / 2) ** 2 / config.epochs
        history.append(
            {
                "epoch": epoch,
                "loss": 2.0 / epoch,
                "accuracy": train * (1 - 0.5**epoch),
                "val_loss": val_loss,
                "val_accuracy": val,
                "seconds": 0.01,
                "data_loss": 2.0 / epoch,
                # Keras's val_loss above rises with its penalty; the data loss alone keeps
                # falling: a fit that over-fits by the first and not by the second
                "val_data_loss": 1.2 + 0.5 / epoch + 0.002 * config.seed,
            }
        )
    diverged = (config.l1 or 0) >= 50
    if diverged:
        history = history[:2]
        history[-1]["loss"] = math.nan
    parameters = 98586 if "maxpool" in config.arch else 37146
    metrics = {
        "train_accuracy": train,
        "train_loss": 1.0,
        "test_accuracy": test,
        "test_loss": 1.3,
        "val_accuracy": history[-1]["val_accuracy"],
        "val_loss": history[-1]["val_loss"],
        "baseline_accuracy": 0.1,
        "baseline_class": 0,
        "parameters": parameters,
        "fit_seconds": config.train_size / 1000 * (4 if "maxpool" in config.arch else 1),
        "eval_seconds": 0.5,
        "epochs_run": len(history),
        "diverged_epoch": 2 if diverged else None,
        "device": "cpu",
        "versions": {"torch": "fake"},
        "classification_report": {"train": {}, "test": {}},
        "confusion_matrix": {
            "train": [[5 if i == j else 1 for j in range(10)] for i in range(10)],
            "test": test_matrix(test),
        },
        "data_source": "synthetic",
        "data_sha256": "",
    }
    labels = getattr(data, "test_labels", None)
    labels = np.arange(100) % 10 if labels is None else np.asarray(labels)
    predictions = labels.astype(np.int16)
    wrong = np.arange(len(labels)) % 4 == config.seed % 4  # a quarter of the test set
    predictions[wrong] = (labels[wrong] + 1 + config.seed) % 10
    status = Status.DIVERGED if diverged else Status.DONE
    return RunResult(config, status, history, metrics, fake_weights(config.seed), predictions)


def test_matrix(accuracy: float, per_class: int = 1000, classes: int = 10) -> list[list[int]]:
    """A test confusion matrix of `accuracy` over CIFAR-10's test set (1,000 images a class):
    each class right round(accuracy · per_class) times, its mistakes on the next class."""
    right = round(accuracy * per_class)
    matrix = [[0] * classes for _ in range(classes)]
    for label in range(classes):
        matrix[label][label] = right
        matrix[label][(label + 1) % classes] = per_class - right
    return matrix


def fake_weights(seed: int) -> dict[str, np.ndarray]:
    """A first conv layer of 16 recognisable 3x3x3 kernels (edges, spots, colours), jittered."""
    bases = [
        [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],  # vertical edges
        [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],  # horizontal edges
        [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]],  # spots
        [[1, 1, 1], [1, 1, 1], [1, 1, 1]],  # brightness
    ]
    colours = [(1, 1, 1), (1, -1, 0), (0, 1, -1), (-1, 0, 1)]
    kernels = np.array(
        [[np.multiply(base, c) for c in colour] for base in bases for colour in colours],
        dtype=np.float32,
    )
    jitter = np.random.default_rng(seed).normal(0, 0.1, kernels.shape).astype(np.float32)
    return {"layers.0.weight": (kernels + jitter) / 8, "layers.0.bias": np.zeros(16, np.float32)}


def fake_save_run(
    result: RunResult, run_dir, class_names, *, test_images=None, test_labels=None
) -> dict[str, str]:
    """Write the files `save_run` promises (small stand-ins) and return name -> path.

    The NumPy files have `save_run`'s format; without test images (the call before save_run took
    them) the misclassified sample shows coloured stand-ins labelled like `zeros_cifar`'s.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "config": run_dir / "config.json",
        "metrics": run_dir / "metrics.json",
        "history_png": run_dir / "history.png",
        "weights": run_dir / "weights.pt",
        "measurements": run_dir / "measurements.json",
    }
    paths["config"].write_text(json.dumps(result.config.__dict__, default=list))
    paths["measurements"].write_text(json.dumps(result.measurements))
    paths["metrics"].write_text(json.dumps(result.metrics))
    paths["history_png"].write_bytes(_tiny_png())
    paths["weights"].write_bytes(b"fake weights")
    if result.test_predictions is not None:
        predictions = np.asarray(result.test_predictions, dtype=np.int16)
        paths["predictions_test"] = run_dir / "predictions_test.npy"
        np.save(paths["predictions_test"], predictions, allow_pickle=False)
        labels = np.arange(len(predictions)) % 10 if test_labels is None else test_labels
        labels = np.asarray(labels, dtype=np.int16)
        wrong = np.flatnonzero(labels != predictions)[:32]
        images = _stand_in_images(labels) if test_images is None else np.asarray(test_images)
        paths["misclassified_test"] = run_dir / "misclassified_test.npz"
        np.savez(
            paths["misclassified_test"],
            images=images[wrong].astype(np.uint8),
            index=wrong.astype(np.int32),
            true=labels[wrong],
            predicted=predictions[wrong],
        )
    kernels = [w for w in result.state_dict.values() if np.ndim(w) == 4]
    if kernels:
        paths["kernels_first"] = run_dir / "kernels_first.npy"
        np.save(paths["kernels_first"], np.asarray(kernels[0], np.float32), allow_pickle=False)
    return {name: str(path) for name, path in paths.items()}


def _stand_in_images(labels) -> np.ndarray:
    """32x32 RGB pictures: a colour per class with a light diagonal band, one per label."""
    hues = np.array(
        [
            [200, 60, 50],
            [230, 150, 40],
            [220, 210, 60],
            [90, 170, 70],
            [40, 150, 150],
            [50, 110, 200],
            [110, 70, 190],
            [190, 70, 160],
            [120, 120, 120],
            [60, 40, 30],
        ]
    )
    row, column = np.mgrid[0:32, 0:32]
    band = (np.abs(row - column) < 5)[..., None]
    images = np.where(band, 235, hues[np.asarray(labels) % 10][:, None, None, :])
    return images.astype(np.uint8)


def zeros_cifar(train_count: int = 50_000):
    """Black images (allocated lazily, never touched): data for runs that never look at it."""
    import numpy as np

    from cnnlab.data.datasets import Dataset

    images = np.zeros((train_count, 32, 32, 3), np.uint8)
    labels = np.arange(train_count, dtype=np.int64) % 10
    return Dataset(
        images, labels, images[:100], labels[:100], source="zeros", source_sha256="0" * 64
    )


def _tiny_png() -> bytes:
    global _PNG
    if _PNG is None:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (120, 60), (40, 120, 200)).save(buffer, format="PNG")
        _PNG = buffer.getvalue()
    return _PNG
