"""fit, its Keras semantics, run folders, and the train/evaluate/archs/summary commands."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab import atomic
from cnnlab.cli import main
from cnnlab.config import RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.nn import modules
from cnnlab.training import loop, runfolder
from cnnlab.training.device import images_to_device, normalise, resolve_device
from cnnlab.training.metrics import HISTORY_KEYS, RunResult

TINY = RunConfig(arch="tiny", train_size=200, epochs=2, seed=3)
TIMING_KEYS = {"fit_seconds", "eval_seconds"}


@pytest.fixture
def tiny_run(tiny_cifar) -> RunResult:
    return loop.fit(TINY, tiny_cifar, device="cpu")


@pytest.fixture
def tiny_folder(tiny_cifar, tmp_path) -> Path:
    """tiny_cifar as an image folder (train/<class>/*.png, test/<class>/*.png) for the CLI."""
    from PIL import Image

    root = tmp_path / "tiny-images"
    for split, images, labels in (
        ("train", tiny_cifar.train_images, tiny_cifar.train_labels),
        ("test", tiny_cifar.test_images, tiny_cifar.test_labels),
    ):
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / tiny_cifar.class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index:04d}.png")
    return root


def without_timing(result: RunResult) -> tuple:
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in result.history]
    metrics = {k: v for k, v in result.metrics.items() if k not in TIMING_KEYS}
    return history, metrics


def test_fit_is_deterministic_on_the_cpu(tiny_cifar, tiny_run):
    again = loop.fit(TINY, tiny_cifar, device="cpu")
    assert without_timing(again) == without_timing(tiny_run)
    for name, tensor in tiny_run.state_dict.items():
        assert torch.equal(tensor, again.state_dict[name]), name
    other_seed = loop.fit(RunConfig(**{**TINY.__dict__, "seed": 4}), tiny_cifar, device="cpu")
    assert other_seed.history[0]["loss"] != tiny_run.history[0]["loss"]


def test_fit_reports_what_the_report_looked_at(tiny_cifar, tiny_run):
    assert tiny_run.status == "done"
    assert [row["epoch"] for row in tiny_run.history] == [1, 2]
    assert set(tiny_run.history[0]) == set(HISTORY_KEYS)
    metrics = tiny_run.metrics
    assert metrics["parameters"] == 10_362
    assert metrics["epochs_run"] == 2 and metrics["diverged_epoch"] is None
    assert metrics["val_accuracy"] == tiny_run.history[-1]["val_accuracy"]
    # tiny_cifar is balanced: the most frequent class is the first, right 10% of the time.
    assert (metrics["baseline_class"], metrics["baseline_accuracy"]) == (0, 0.1)
    test_report = metrics["classification_report"]["test"]
    assert test_report["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert test_report["airplane"]["support"] == 10
    train_matrix = np.array(metrics["confusion_matrix"]["train"])
    # Train scores cover the whole subset: training part and validation part.
    assert train_matrix.sum() == TINY.train_size
    assert np.trace(train_matrix) / TINY.train_size == pytest.approx(metrics["train_accuracy"])
    assert np.array(metrics["confusion_matrix"]["test"]).sum() == 100
    assert set(metrics["versions"]) == {"python", "torch", "numpy", "cnnlab"}
    assert metrics["device"] == "cpu" and metrics["data_source"] == "synthetic"
    assert all(tensor.device.type == "cpu" for tensor in tiny_run.state_dict.values())


def test_adam_uses_keras_defaults():
    model = modules.build_model("tiny")
    (group,) = loop.make_optimizer(model, RunConfig()).param_groups
    assert (group["lr"], group["betas"], group["eps"]) == (1e-3, (0.9, 0.999), 1e-7)
    defaults = RunConfig()
    assert (defaults.batch_size, defaults.epochs, defaults.validation_split) == (128, 20, 0.1)


def test_validation_part_is_the_last_fraction_of_the_subset(tiny_cifar):
    from cnnlab.data.datasets import stratified_subset

    train_part, validation_part = loop.subset_indices(TINY, tiny_cifar)
    subset = stratified_subset(tiny_cifar.train_labels, TINY.train_size, TINY.subset_seed)
    assert (len(train_part), len(validation_part)) == (180, 20)
    np.testing.assert_array_equal(np.concatenate([train_part, validation_part]), subset)
    np.testing.assert_array_equal(validation_part, subset[-20:])


def test_epoch_scores_are_batch_size_weighted_running_means(tiny_cifar):
    # With a zero step and no dropout, the running means equal an evaluation of the same images.
    model = modules.build_model("tiny", generator=torch.Generator().manual_seed(0))
    images = images_to_device(tiny_cifar.train_images[:180], torch.device("cpu"))
    labels = torch.from_numpy(tiny_cifar.train_labels[:180])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loss, accuracy, data_loss = loop.train_one_epoch(
        model, optimizer, images, labels, 128, torch.Generator().manual_seed(0)
    )
    evaluated = loop.evaluate_model(model, images, labels)
    assert loss == pytest.approx(evaluated.loss, rel=1e-5)
    assert accuracy == pytest.approx(evaluated.accuracy)
    assert data_loss == pytest.approx(evaluated.data_loss, rel=1e-5)
    # The tiny net's dense kernel carries an L1 penalty: Keras's loss is the data loss plus it.
    assert loss - data_loss == pytest.approx(model.penalty().item(), rel=1e-4)


def test_reported_loss_includes_the_l1_penalty(tiny_cifar):
    model = modules.build_model("tiny", generator=torch.Generator().manual_seed(0))
    images = images_to_device(tiny_cifar.test_images, torch.device("cpu"))
    labels = torch.from_numpy(tiny_cifar.test_labels)
    with torch.no_grad():
        model.layers[-1].bias.fill_(3.0)  # biases are not penalised
        cross_entropy = F.cross_entropy(model(normalise(images)), labels).item()
    penalty = 1e-4 * model.layers[-1].weight.abs().sum().item()
    evaluated = loop.evaluate_model(model, images, labels, batch_size=32)
    assert evaluated.loss == pytest.approx(cross_entropy + penalty, rel=1e-5)
    assert penalty > 1e-3  # large enough that leaving it out would fail the check above


def test_a_non_finite_loss_stops_the_run(tiny_cifar):
    config = RunConfig(arch="tiny", train_size=200, epochs=3, l1=1e38)  # float32 overflows
    result = loop.fit(config, tiny_cifar, device="cpu")
    assert result.status == "diverged"
    assert result.metrics["diverged_epoch"] == 1 and len(result.history) == 1
    assert not math.isfinite(result.history[0]["loss"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train_size": 201}, "train_size: 201"),
        ({"train_size": 9}, "one image per class"),
        ({"validation_split": 0.0}, "validation_split"),
        ({"validation_split": 1.0}, "validation_split"),
        ({"epochs": 0}, "epochs: must be at least 1, got 0"),
        ({"arch": "nope"}, "unknown architecture"),
        ({"arch": "x", "layers": ({"type": "dense", "units": 10},)}, "layer 0"),
    ],
)
def test_bad_configs_are_refused(tiny_cifar, changes, message):
    config = RunConfig(**{**TINY.__dict__, **changes})
    with pytest.raises(CnnlabError, match=message):
        loop.fit(config, tiny_cifar, device="cpu")


def test_unavailable_device_says_which_are_there():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(CnnlabError, match="available: cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_run_folder_round_trip(tiny_cifar, tiny_run, tmp_path):
    paths = runfolder.save_run(tiny_run, tmp_path / "run", tiny_cifar.class_names)
    assert all(Path(path).parent == tmp_path / "run" for path in paths.values())
    assert {Path(path).name for path in paths.values()} >= {
        "config.json",
        "history.csv",
        "history.json",
        "metrics.json",
        "weights.pt",
        "history.png",
        "confusion_train.png",
        "confusion_test.png",
    }
    # No temporary files or folders: only the marker that says cnnlab wrote the folder whole.
    assert [p.name for p in tmp_path.rglob(".*")] == [atomic.MARKER]
    csv_lines = Path(paths["history_csv"]).read_text().splitlines()
    assert csv_lines[0] == ",".join(HISTORY_KEYS) and len(csv_lines) == 3
    metrics = json.loads(Path(paths["metrics"]).read_text())
    assert (
        metrics["status"] == "done"
        and metrics["test_accuracy"] == tiny_run.metrics["test_accuracy"]
    )
    torch.load(paths["weights"], weights_only=True)
    saved = runfolder.load_run(tmp_path / "run")
    assert saved.history == tiny_run.history
    assert saved.config.train_size == TINY.train_size and saved.config.layers is not None
    scores = runfolder.evaluate_run(saved, tiny_cifar, "cpu")
    assert scores["test"][1].accuracy == pytest.approx(tiny_run.metrics["test_accuracy"])
    assert scores["train"][1].accuracy == pytest.approx(tiny_run.metrics["train_accuracy"])


def test_load_run_refuses_a_folder_without_a_run(tmp_path):
    with pytest.raises(CnnlabError, match=r"config.json: cannot read .*; not a run folder"):
        runfolder.load_run(tmp_path)


# --- the commands -----------------------------------------------------------------------------


def test_cli_train_then_evaluate(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnnlab",
            "train",
            "--arch",
            "tiny",
            "--train-size",
            "200",
            "--epochs",
            "2",
            "--data",
            str(tiny_folder),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # Not a terminal: one plain line per epoch, then the summary.
    assert lines[0].startswith("epoch 1/2  loss") and lines[1].startswith("epoch 2/2")
    assert lines[0].endswith(" s") and " ETA " in lines[0]  # one epoch line, as a study prints
    assert "test accuracy" in lines[-1] and str(out) in lines[-1]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["parameters"] == 10_362
    assert main(["evaluate", str(out), "--data", str(tiny_folder)]) == 0
    printed = capsys.readouterr().out
    assert f"accuracy {metrics['test_accuracy']:.4f} (saved: {metrics['test_accuracy']:.4f})" in (
        printed
    )
    assert "macro avg" in printed and "confusion matrix" in printed


def test_cli_divergence_exits_3_with_one_line(tiny_folder, tmp_path, capsys):
    code = main(
        [
            "train",
            "--arch",
            "tiny",
            "--train-size",
            "200",
            "--epochs",
            "2",
            "--l1",
            "1e38",
            "--data",
            str(tiny_folder),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 3
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "epoch 1" in error
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--arch", "nope"], "unknown architecture 'nope'; known:"),
        (["--validation-split", "1.5"], "--validation-split 1.5: must be between 0 and 1"),
        (["--epochs", "0"], "--epochs 0: must be at least 1"),
        (["--learning-rate", "nan"], "--learning-rate nan: must be a positive finite number"),
        (["--seed", "-1"], "--seed -1: must be between 0 and"),
        (["--device", "tpu"], "device 'tpu' is not available"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(arguments, message, capsys):
    assert main(["train", *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error


@pytest.mark.parametrize("size", ["500", "5"])
def test_cli_train_size_outside_the_data(tiny_folder, capsys, size):
    assert main(["train", "--arch", "tiny", "--train-size", size, "--data", str(tiny_folder)]) == 2
    error = capsys.readouterr().err
    assert "between 10 (one image per class) and 200 (the training images available)" in error


def test_cli_archs_and_summary(capsys):
    assert main(["archs"]) == 0
    listed = capsys.readouterr().out
    for name, parameters in (
        ("seed", "37,146"),
        ("seed-maxpool", "98,586"),
        ("seed-deep", "22,994"),
    ):
        assert any(
            line.startswith(name + " ") and parameters in line for line in listed.splitlines()
        )
    assert main(["summary", "seed-maxpool"]) == 0
    summary = capsys.readouterr().out
    assert "max_pooling2d (MaxPooling2D)" in summary and "Total params: 98,586" in summary
    assert main(["summary", "nope"]) == 2


def test_bfloat16_is_opt_in_and_still_learns(tiny_cifar):
    base = RunConfig(arch="tiny", train_size=200, epochs=3, batch_size=32, seed=0)
    full = loop.fit(base, tiny_cifar, device="cpu")
    mixed = loop.fit(dataclasses.replace(base, precision="bfloat16"), tiny_cifar, device="cpu")
    assert all(value.dtype == torch.float32 for value in mixed.state_dict.values())
    assert mixed.history[-1]["loss"] != full.history[-1]["loss"]  # bfloat16 arithmetic ran
    assert mixed.history[-1]["loss"] < mixed.history[0]["loss"]
    assert mixed.metrics["train_accuracy"] > 0.3  # the synthetic classes are easy


def test_an_unknown_precision_is_one_clear_error(tiny_cifar):
    config = RunConfig(arch="tiny", train_size=200, epochs=1, precision="float16")
    with pytest.raises(CnnlabError, match="precision: expected one of float32, bfloat16"):
        loop.fit(config, tiny_cifar, device="cpu")
