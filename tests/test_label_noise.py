"""label_noise: a planted harm of known size (a share of the training labels made wrong).

Exactly round(share x training part) labels change, each to another class drawn uniformly, from
the run seed's own stream; the validation part and the test set keep their labels; at 0 a run
trains bit for bit as before the field existed, under the same run id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from cnnlab.cli import main
from cnnlab.config import ConfigError, RunConfig, check_value, run_id
from cnnlab.data.datasets import Dataset
from cnnlab.training import group_net, group_plan, loop, runfolder

CPU = torch.device("cpu")
TINY = RunConfig(arch="tiny", train_size=200, epochs=2, seed=3)  # 180 train, 20 validation


def subset_of(config: RunConfig, data: Dataset) -> loop.OnDevice:
    return loop.to_device(config, data, CPU)


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5, 0.99])
def test_exactly_the_share_of_training_labels_is_wrong_and_nothing_else(tiny_cifar, share):
    test_labels = tiny_cifar.test_labels.copy()
    train_labels = tiny_cifar.train_labels.copy()
    on_device = subset_of(dataclasses.replace(TINY, label_noise=share), tiny_cifar)
    count = on_device.train_count
    true = tiny_cifar.train_labels[on_device.ordered]
    trained = on_device.labels.numpy()
    changed = np.flatnonzero(trained != true)
    assert count == 180 and len(changed) == round(share * count)  # no label kept its class
    assert changed.tolist() == on_device.noisy.tolist() and changed.max() < count
    assert np.array_equal(trained[count:], true[count:])  # the validation part: untouched
    assert np.array_equal(on_device.subset_labels, trained)
    assert trained.min() >= 0 and trained.max() < 10
    # The dataset itself (training and test labels) is never changed in place.
    assert np.array_equal(tiny_cifar.train_labels, train_labels)
    assert np.array_equal(tiny_cifar.test_labels, test_labels)


def test_a_wrong_label_is_drawn_uniformly_from_the_other_classes():
    labels = np.repeat(np.arange(10), 1000)
    config = RunConfig(label_noise=0.5, seed=7)
    noisy, positions = loop.noisy_labels(config, labels, len(labels), 10)
    assert len(positions) == 5000 and len(np.unique(positions)) == 5000
    pairs = np.zeros((10, 10), dtype=int)
    np.add.at(pairs, (labels[positions], noisy[positions]), 1)
    assert np.trace(pairs) == 0  # never the true class
    off = pairs[~np.eye(10, dtype=bool)]
    assert off.sum() == 5000 and off.min() > 25 and off.max() < 95  # about 500/9 = 56 each


def test_the_draw_is_the_seeds_own_and_reproducible(tiny_cifar):
    noisy = dataclasses.replace(TINY, label_noise=0.2)
    first, again = subset_of(noisy, tiny_cifar), subset_of(noisy, tiny_cifar)
    assert torch.equal(first.labels, again.labels)
    other = subset_of(dataclasses.replace(noisy, seed=4), tiny_cifar)
    assert len(other.noisy) == len(first.noisy) == 36
    assert not np.array_equal(other.noisy, first.noisy)
    # The subset is the subset_seed's: the seed moves only which labels are wrong.
    assert np.array_equal(other.ordered, first.ordered)


def test_at_zero_a_run_trains_bit_for_bit_as_before_under_the_same_id(tiny_cifar):
    # The id hashes the fields that differ from their defaults: label_noise 0 is not among them.
    changed = {"arch": "tiny", "epochs": 2, "seed": 3, "train_size": 200}
    canonical = json.dumps({"id": 2, **changed}, sort_keys=True, separators=(",", ":"))
    expected = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    assert run_id(TINY) == run_id(dataclasses.replace(TINY, label_noise=0.0)) == expected
    on_device = subset_of(TINY, tiny_cifar)
    assert len(on_device.noisy) == 0
    assert np.array_equal(on_device.labels.numpy(), tiny_cifar.train_labels[on_device.ordered])
    plain = loop.fit(TINY, tiny_cifar, device="cpu")
    zero = loop.fit(dataclasses.replace(TINY, label_noise=0.0), tiny_cifar, device="cpu")
    # A share too small to change one of 180 labels: the noise's own stream moves nothing else.
    none = loop.fit(dataclasses.replace(TINY, label_noise=0.002), tiny_cifar, device="cpu")
    assert "label_noise_count" not in plain.metrics and none.metrics["label_noise_count"] == 0
    for result in (zero, none):
        assert [strip(row) for row in result.history] == [strip(row) for row in plain.history]
        assert np.array_equal(result.test_predictions, plain.test_predictions)
        assert untimed(result.metrics) == untimed(plain.metrics)
        for name, tensor in plain.state_dict.items():
            assert torch.equal(result.state_dict[name], tensor), name


def strip(row: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in row.items() if key != "seconds"}


def untimed(metrics: dict) -> dict:
    skipped = ("fit_seconds", "eval_seconds", "label_noise_count")
    return {key: value for key, value in metrics.items() if key not in skipped}


def test_a_noisy_run_is_a_plain_run_on_the_wrong_labels(tiny_cifar, tmp_path):
    config = dataclasses.replace(TINY, label_noise=0.3)
    noisy = loop.fit(config, tiny_cifar, device="cpu")
    on_device = subset_of(config, tiny_cifar)
    assert noisy.metrics["label_noise_count"] == len(on_device.noisy) == 54
    # The plain run's subset with these labels put in by hand: the same training, step for step
    # (the noise moved no other stream: initialisation, shuffles and dropout are the plain run's).
    plain = subset_of(TINY, tiny_cifar)
    relabelled = dataclasses.replace(
        plain, labels=on_device.labels, subset_labels=on_device.subset_labels
    )
    members = loop.LoneNet(TINY, relabelled)
    by_hand = loop.fit_members([TINY], tiny_cifar, relabelled, members)[0]
    assert [strip(row) for row in noisy.history] == [strip(row) for row in by_hand.history]
    for name, tensor in by_hand.state_dict.items():
        assert torch.equal(noisy.state_dict[name], tensor), name
    # The training scores are against the labels trained on; evaluating the saved run agrees.
    runfolder.save_run(noisy, tmp_path / "run", tiny_cifar.class_names)
    saved = runfolder.evaluate_run(runfolder.load_run(tmp_path / "run"), tiny_cifar, "cpu")
    assert saved["train"][1].accuracy == pytest.approx(noisy.metrics["train_accuracy"])
    assert np.array_equal(saved["train"][0], on_device.subset_labels)


def test_a_noisy_run_trains_alone_never_in_a_group(tiny_cifar):
    noisy = [RunConfig(seed=seed, label_noise=0.1) for seed in range(2)]
    assert group_plan.groupable(RunConfig()) and not group_plan.groupable(noisy[0])
    plain = [RunConfig(seed=seed) for seed in range(2)]
    assert group_plan.plan_groups([*plain, *noisy], max_members=8) == [[0, 1], [2], [3]]
    tiny = [dataclasses.replace(TINY, seed=seed, label_noise=0.1) for seed in range(2)]
    with pytest.raises(ValueError, match="label_noise"):
        group_net.fit_group(tiny, tiny_cifar, device="cpu")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.1, 1.0, 1.5, True, "0.1"])
def test_values_outside_zero_to_one_are_refused(value):
    with pytest.raises(ConfigError, match=r"^label_noise: "):
        check_value("label_noise", value)
    assert check_value("label_noise", 0) == 0.0 and check_value("label_noise", 0.999) == 0.999


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1.0", "--label-noise 1.0: must be in [0, 1), got 1.0"),
        ("-0.1", "--label-noise -0.1: must be in [0, 1), got -0.1"),
        ("nan", "--label-noise nan: must be in [0, 1), got nan"),
        ("inf", "--label-noise inf: must be in [0, 1), got inf"),
    ],
)
def test_the_train_command_refuses_a_bad_share_in_one_line(capsys, value, message):
    assert main(["train", "--label-noise", value]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error, error


STUDY = """[study]
name = "noisy"
[defaults]
dataset = "mnist"
arch = "a"
label_noise = {value}
[architectures.a]
layers = [{{ type = "flatten" }}, {{ type = "dense", units = 10, activation = "softmax" }}]
[experiments.e]
grid = {{ seed = [0] }}
"""


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5", "1.0", "true", '"0.1"'])
def test_a_study_file_refuses_a_bad_share_at_its_line(tmp_path, capsys, value):
    path = tmp_path / "noisy.toml"
    path.write_text(STUDY.format(value=value))
    assert main(["study", str(path), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{path}:6:" in error and "label_noise" in error, error


def test_a_study_file_plans_a_good_share(tmp_path, capsys):
    path = tmp_path / "noisy.toml"
    path.write_text(STUDY.format(value="0.2"))
    assert main(["study", str(path), "--dry-run"]) == 0
