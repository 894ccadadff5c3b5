"""Measurements of trained runs: right numbers, saved with the run, and the training untouched."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import fake_studies
from cnnlab.config import RunConfig
from cnnlab.nn import modules
from cnnlab.nn.architectures import get_architecture
from cnnlab.nn.shapes import parse_layers
from cnnlab.report import mechanisms
from cnnlab.report.report import build
from cnnlab.training import group_net, loop, measure, runfolder

TIMING_KEYS = {"fit_seconds", "eval_seconds"}
# Dropout (masks from the run's generator), an L1 penalty, and a net with batch norms, residual
# blocks and augmentation (moving statistics, augmentation streams): measuring must move none.
CONFIGS = (
    RunConfig(arch="seed", train_size=120, epochs=2, batch_size=32, seed=4),
    RunConfig(
        arch="tiny-modern", train_size=120, epochs=2, batch_size=32, seed=2, flip=True, ema=0.9
    ),
)
# Members differ in their seeds and in their dense kernel's L1 weight (part of their gradient).
GROUP = [
    RunConfig(arch="tiny", train_size=100, epochs=2, batch_size=32, seed=seed, l1=l1)
    for seed, l1 in ((1, 1e-4), (2, 0.05))
]


def _untimed(result) -> tuple:
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in result.history]
    metrics = {k: v for k, v in result.metrics.items() if k not in TIMING_KEYS}
    return history, metrics


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.arch)
def test_measuring_leaves_the_training_bit_for_bit(tiny_cifar, config):
    torch.manual_seed(0)
    measured = loop.fit(config, tiny_cifar, device="cpu")
    global_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    plain = loop.fit(config, tiny_cifar, device="cpu", measurements=False)
    assert plain.measurements == {} and measured.measurements["gradients"]
    assert _untimed(measured) == _untimed(plain)
    assert np.array_equal(measured.test_predictions, plain.test_predictions)
    assert measured.state_dict.keys() == plain.state_dict.keys()
    for name, tensor in plain.state_dict.items():
        assert torch.equal(measured.state_dict[name], tensor), name
    # Not even the global generator, which no run draws from, moved differently.
    assert torch.equal(global_state, torch.random.get_rng_state())


def test_a_runs_measurements_cover_every_layer_and_epoch(tiny_cifar):
    result = loop.fit(CONFIGS[0], tiny_cifar, device="cpu")
    readings = result.measurements
    kernels = [name for name, value in result.state_dict.items() if value.dim() in (2, 4)]
    assert sorted(readings["weights"]) == sorted(name.removesuffix(".weight") for name in kernels)
    assert [row["epoch"] for row in readings["gradients"]] == [1, 2]
    # The seed net: four relu convs (dropout, flatten and the softmax dense are no activations).
    assert sorted(readings["activations"]) == [f"layers.{i}" for i in range(4)]
    assert readings["probe_images"] == {"train": 64, "test": len(tiny_cifar.test_labels)}
    dense = readings["weights"]["layers.6"]
    assert dense["kind"] == "dense" and dense["count"] == 10 * dense["shape"][1]
    assert sum(dense["histogram"]["counts"]) == dense["count"]
    assert json.loads(json.dumps(readings, allow_nan=False)) == readings  # plain JSON
    assert readings["seconds"] > 0


def test_weight_readings_match_a_hand_computation():
    kernel = np.zeros((4, 25), dtype=np.float32)
    kernel[0, :5] = [-2.0, 1.0, 0.5, 0.001, -0.01]  # largest |w| 2: 0.001 is below 1% of it
    readings = measure.weight_layers({"layers.3.weight": torch.from_numpy(kernel)})["layers.3"]
    assert readings["l1"] == pytest.approx(3.511)
    assert readings["l2"] == pytest.approx(math.sqrt(4 + 1 + 0.25 + 1e-6 + 1e-4))
    assert readings["max_abs"] == 2.0
    assert readings["small_fraction"] == (100 - 3) / 100  # all but -2, 1 and 0.5
    counts = readings["histogram"]["counts"]
    assert counts[0] == 1 and counts[-1] == 0 and counts[measure.HISTOGRAM_BINS // 2] == 97
    assert measure.weight_layers({"layers.0.bias": torch.ones(3)}) == {}


def test_dead_units_and_activation_statistics_are_those_of_the_probe():
    layers = (
        {"type": "flatten"},
        {"type": "dense", "units": 3, "activation": "relu"},
        {"type": "activation", "activation": "softmax"},
    )
    model = modules.build_model(layers, (1, 2, 1), 3)
    with torch.no_grad():
        model.layers[1].weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]]))
        model.layers[1].bias.zero_()
    # Pixels 0..255 become [0, 1]: unit 1 (negative weights) is dead on every image.
    images = torch.tensor([[[[255, 0]]], [[[0, 255]]]], dtype=torch.uint8)
    readings = measure.activations(model.eval(), images)
    assert list(readings) == ["layers.1"]  # a softmax is no activation to measure
    readings = readings["layers.1"]
    outputs = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert readings["dead_fraction"] == pytest.approx(1 / 3)
    assert readings["zero_fraction"] == pytest.approx(3 / 6)
    assert readings["mean"] == pytest.approx(outputs.mean())
    assert readings["std"] == pytest.approx(outputs.std(ddof=1))


def test_gradient_norms_are_those_of_the_training_objective(tiny_cifar):
    layers = parse_layers(get_architecture("tiny"), (32, 32, 3), 10)
    model = modules.ConvNet(layers, (32, 32, 3))
    modules.initialise(model, torch.Generator().manual_seed(0))
    images = torch.from_numpy(tiny_cifar.train_images[:16]).permute(0, 3, 1, 2)
    labels = torch.from_numpy(tiny_cifar.train_labels[:16])
    copy = measure.lone_model(layers, (32, 32, 3), model.state_dict(), torch.device("cpu"))
    readings = measure.gradient_norms(copy, images, labels, smoothing=0.1)
    loss = loop.cross_entropy(model(images.float() / 255), labels, 0.1) + model.penalty()
    loss.backward()
    for index in (0, 2):
        layer = model.layers[index]
        expected = torch.cat([layer.weight.grad.ravel(), layer.bias.grad.ravel()]).norm()
        assert readings["layers"][f"layers.{index}"] == pytest.approx(float(expected), rel=1e-5)
    every = torch.cat([p.grad.ravel() for p in model.parameters()]).norm()
    assert readings["global"] == pytest.approx(float(every), rel=1e-5)
    assert all(p.grad is None for p in copy.parameters())  # torch.autograd.grad: no .grad left


def test_the_measuring_copy_draws_no_random_numbers_and_shares_no_memory():
    model = modules.build_model("tiny")
    state = model.state_dict()
    before = torch.random.get_rng_state()
    copy = measure.lone_model(model.specs, model.input_shape, state, torch.device("cpu"))
    assert torch.equal(before, torch.random.get_rng_state())
    assert not copy.training
    for name, tensor in copy.state_dict().items():
        assert torch.equal(tensor, state[name])
        assert tensor.data_ptr() != state[name].data_ptr()


def test_grouped_members_record_the_measurements_of_their_lone_runs(tiny_cifar):
    results = group_net.fit_group(GROUP, tiny_cifar, device="cpu")
    for result, config in zip(results, GROUP, strict=True):
        lone = loop.fit(config, tiny_cifar, device="cpu").measurements
        mine = result.measurements
        assert mine["weights"].keys() == lone["weights"].keys()
        for name, readings in lone["weights"].items():
            assert mine["weights"][name]["l1"] == pytest.approx(readings["l1"], rel=1e-4)
        for row, lone_row in zip(mine["gradients"], lone["gradients"], strict=True):
            assert row["global"] == pytest.approx(lone_row["global"], rel=1e-3)
        for name, readings in lone["activations"].items():
            theirs = mine["activations"][name]["zero_fraction"]
            assert theirs == pytest.approx(readings["zero_fraction"], abs=1e-3)
    assert results[0].measurements["weights"] != results[1].measurements["weights"]


def test_a_diverged_run_is_measured_up_to_its_last_finite_epoch(tiny_cifar):
    exploding = dataclasses.replace(GROUP[0], l1=1e38, epochs=3)
    result = loop.fit(exploding, tiny_cifar, device="cpu")
    assert result.status == "diverged"
    readings = result.measurements
    assert len(readings["gradients"]) == result.metrics["diverged_epoch"] - 1
    json.dumps(readings, allow_nan=False)  # non-finite numbers are written as null


def test_the_run_folder_keeps_the_measurements_and_older_folders_still_load(tiny_cifar, tmp_path):
    result = loop.fit(GROUP[0], tiny_cifar, device="cpu")
    paths = runfolder.save_run(result, tmp_path / "run", tiny_cifar.class_names)
    saved = json.loads((tmp_path / "run" / "measurements.json").read_text())
    assert paths["measurements"] == str(tmp_path / "run" / "measurements.json")
    assert saved == result.measurements
    assert runfolder.load_run(tmp_path / "run").measurements == result.measurements
    plain = dataclasses.replace(result, measurements={})
    paths = runfolder.save_run(plain, tmp_path / "old", tiny_cifar.class_names)
    assert "measurements" not in paths and not (tmp_path / "old" / "measurements.json").exists()
    old = runfolder.load_run(tmp_path / "old")
    assert old.history == result.history and old.measurements == {}


def test_a_studys_store_lists_each_runs_measurements_and_its_report_shows_them(
    tiny_cifar, tmp_path
):
    study = tmp_path / "grid.toml"
    study.write_text(fake_studies.tiny_study_toml("grid", "{ l1 = [0, 0.5] }"))
    records = fake_studies.study_records(study, tmp_path / "out", tiny_cifar)
    for record in records.values():
        saved = mechanisms.load_measurements(tmp_path / "out", record)
        assert saved is not None and [row["epoch"] for row in saved["gradients"]] == [1, 2]
    markdown = build(tmp_path / "out").markdown()
    assert "## Inside the nets: the mechanism beside the result" in markdown
    assert "| point | most dead units (layer) | final gradient norm |" in markdown
