"""The run folder's NumPy files (predictions, misclassified sample, first-layer kernels), read back
as the report reads them, and the report's layer responses against torch's own convolution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.config import RunConfig
from cnnlab.report import learned
from cnnlab.training import loop, runfolder
from cnnlab.training.runfolder import first_conv_kernels, misclassified_sample

TINY = RunConfig(arch="tiny", train_size=200, epochs=2, seed=3)


@pytest.fixture(scope="module")
def tiny_run_folder(tmp_path_factory) -> tuple:
    """A real tiny run saved with the test set, its result and the data."""
    from conftest import tiny_cifar

    data = tiny_cifar.__wrapped__()
    result = loop.fit(TINY, data, device="cpu")
    folder = tmp_path_factory.mktemp("run") / "run"
    paths = runfolder.save_run(
        result,
        folder,
        data.class_names,
        test_images=data.test_images,
        test_labels=data.test_labels,
    )
    return result, data, paths


def test_a_run_returns_and_saves_its_test_predictions(tiny_run_folder):
    result, data, paths = tiny_run_folder
    predictions = np.load(paths["predictions_test"], allow_pickle=False)
    assert predictions.dtype == np.int16 and predictions.shape == data.test_labels.shape
    np.testing.assert_array_equal(predictions, result.test_predictions)
    accuracy = float(np.mean(predictions == data.test_labels))
    assert accuracy == pytest.approx(result.metrics["test_accuracy"])
    matrix = np.asarray(result.metrics["confusion_matrix"]["test"])
    assert matrix.sum() == len(predictions)
    assert np.trace(matrix) == int(np.sum(predictions == data.test_labels))


def test_the_misclassified_sample_holds_real_mistakes_with_their_images(tiny_run_folder):
    result, data, paths = tiny_run_folder
    with np.load(paths["misclassified_test"], allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    assert set(arrays) == {"images", "index", "true", "predicted"}
    wrong = int(np.sum(result.test_predictions != data.test_labels))
    assert len(arrays["index"]) == min(wrong, runfolder.MISCLASSIFIED_KEPT) > 0
    assert arrays["images"].dtype == np.uint8 and arrays["images"].shape[1:] == (32, 32, 3)
    np.testing.assert_array_equal(arrays["images"], data.test_images[arrays["index"]])
    np.testing.assert_array_equal(arrays["true"], data.test_labels[arrays["index"]])
    np.testing.assert_array_equal(arrays["predicted"], result.test_predictions[arrays["index"]])
    assert np.all(arrays["true"] != arrays["predicted"])
    assert learned._load_misclassified(Path(paths["misclassified_test"])) is not None


def test_the_first_layer_kernels_are_the_first_convs_weights(tiny_run_folder):
    result, _, paths = tiny_run_folder
    kernels = np.load(paths["kernels_first"], allow_pickle=False)
    assert kernels.dtype == np.float32
    np.testing.assert_array_equal(kernels, result.state_dict["layers.0.weight"].numpy())
    assert kernels.ndim == 4 and kernels.shape[1] == 3
    assert first_conv_kernels({"dense.weight": np.zeros((10, 4))}) is None


def test_the_old_call_writes_no_misclassified_sample(tiny_run_folder, tmp_path):
    result, data, _ = tiny_run_folder
    paths = runfolder.save_run(result, tmp_path / "run", data.class_names)
    assert "misclassified_test" not in paths
    assert not (tmp_path / "run" / "misclassified_test.npz").exists()
    assert {"predictions_test", "kernels_first"} <= set(paths)
    assert json.loads(Path(paths["metrics"]).read_text())["status"] == result.status


def test_the_misclassified_sample_takes_each_class_in_turn():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predictions = np.array([1, 1, 0, 0, 0, 2, 0, 0, 0])
    # wrong: class 0 at 0, 1; class 1 at 3, 4; class 2 at 6, 7, 8
    assert misclassified_sample(labels, predictions, 4).tolist() == [0, 1, 3, 6]
    assert misclassified_sample(labels, predictions, 3).tolist() == [0, 3, 6]
    assert misclassified_sample(labels, predictions).tolist() == [0, 1, 3, 4, 6, 7, 8]
    assert misclassified_sample(labels, labels).tolist() == []


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_layer_responses_are_what_the_conv_layer_computes(kernel_size):
    rng = np.random.default_rng(kernel_size)
    image = rng.uniform(0, 1, (13, 17, 3))
    kernels = rng.normal(0, 0.3, (4, 3, kernel_size, kernel_size))
    ours = learned.layer_responses(image, kernels)
    reference = F.conv2d(
        torch.from_numpy(image).permute(2, 0, 1)[None],
        torch.from_numpy(kernels),
        padding=kernel_size // 2,
    )[0].numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-12)
