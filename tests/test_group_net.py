"""Several runs trained as one grouped network end where each would end alone."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import fake_studies
from cnnlab.config import RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.execution import planning
from cnnlab.training import group_net, group_plan, loop
from cnnlab.training.metrics import RunResult

# Every layer kind, the asymmetric 'same' padding of a strided 3x3 conv, a 2x2 strided kernel,
# and dropout on both sides of the flatten.
LAYERS = (
    {
        "type": "conv",
        "filters": 4,
        "kernel": 3,
        "stride": 2,
        "padding": "same",
        "activation": "relu",
    },
    {
        "type": "conv",
        "filters": 6,
        "kernel": 2,
        "stride": 2,
        "padding": "same",
        "activation": "relu",
    },
    {"type": "maxpool", "size": 2},
    {"type": "dropout", "rate": 0.5},
    {"type": "flatten"},
    {"type": "dense", "units": 12, "activation": "tanh", "l2": 1e-3},
    {"type": "dropout", "rate": 0.25},
    {"type": "dense", "units": 10, "activation": "softmax", "l1": 1e-4},
)
BASE = RunConfig(
    arch="probe", layers=LAYERS, train_size=100, epochs=2, batch_size=32, learning_rate=3e-3
)
# 90 training images in batches of 32: two full batches and a partial one of 26 each epoch.
MEMBERS = [
    dataclasses.replace(BASE, seed=0, l1=0.0),
    dataclasses.replace(BASE, seed=1),
    dataclasses.replace(BASE, seed=2, l1=1e-2, l2=0.0),
]


def assert_same_run(grouped: RunResult, lone: RunResult) -> None:
    assert grouped.status == lone.status
    assert grouped.state_dict.keys() == lone.state_dict.keys()
    for name, weight in lone.state_dict.items():
        torch.testing.assert_close(grouped.state_dict[name], weight, rtol=1e-4, atol=1e-5)
    assert len(grouped.history) == len(lone.history)
    for grouped_row, lone_row in zip(grouped.history, lone.history, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert grouped_row[key] == pytest.approx(lone_row[key], rel=1e-4, abs=1e-5), key
    for key in ("train_accuracy", "test_accuracy", "train_loss", "test_loss", "parameters"):
        assert grouped.metrics[key] == pytest.approx(lone.metrics[key], rel=1e-4, abs=1e-5), key


def test_group_members_end_with_the_weights_of_lone_runs(tiny_cifar):
    results = group_net.fit_group(MEMBERS, tiny_cifar, device="cpu")
    assert [result.config for result in results] == MEMBERS
    for result, config in zip(results, MEMBERS, strict=True):
        assert_same_run(result, loop.fit(config, tiny_cifar, device="cpu"))
    # Members really differ: the same architecture, different seeds and penalties.
    first, second = (result.state_dict["layers.0.weight"] for result in results[:2])
    assert not torch.allclose(first, second)


def test_a_diverging_member_leaves_the_others_untouched(tiny_cifar):
    exploding = dataclasses.replace(BASE, seed=5, l1=1e38)
    results = group_net.fit_group([MEMBERS[0], exploding, MEMBERS[1]], tiny_cifar, device="cpu")
    assert results[1].status == "diverged"
    assert results[1].metrics["diverged_epoch"] == 1
    assert len(results[1].history) == 1
    assert not math.isfinite(results[1].history[0]["loss"])
    assert_same_run(results[0], loop.fit(MEMBERS[0], tiny_cifar, device="cpu"))
    assert_same_run(results[2], loop.fit(MEMBERS[1], tiny_cifar, device="cpu"))


def test_epoch_drawn_masks_train_deterministically(tiny_cifar):
    # The mask protocol of the CUDA path, exercised on the CPU through the same static buffers.
    first = group_net.fit_group(MEMBERS[:2], tiny_cifar, device="cpu", masks="epoch")
    again = group_net.fit_group(MEMBERS[:2], tiny_cifar, device="cpu", masks="epoch")
    for a, b in zip(first, again, strict=True):
        assert a.history == [
            {**row, "seconds": a_row["seconds"]}
            for row, a_row in zip(b.history, a.history, strict=True)
        ]
        for name, weight in a.state_dict.items():
            assert torch.equal(weight, b.state_dict[name])
    assert all(math.isfinite(row["loss"]) for result in first for row in result.history)
    # Drawn per epoch, the masks differ from a lone run's per-step draws: the runs differ.
    lone = loop.fit(MEMBERS[0], tiny_cifar, device="cpu")
    assert not torch.allclose(
        first[0].state_dict["layers.0.weight"], lone.state_dict["layers.0.weight"]
    )


def test_plan_groups_puts_only_compatible_runs_together():
    sizes = [dataclasses.replace(BASE, train_size=size) for size in (150, 200)]
    configs = [*MEMBERS, *sizes, dataclasses.replace(BASE, seed=7)]
    groups = group_plan.plan_groups(configs, max_members=3)
    assert sorted(index for group in groups for index in group) == list(range(len(configs)))
    for group in groups:
        assert len({group_plan.group_key(configs[index]) for index in group}) == 1
        assert len(group) <= 3
    # BASE with seeds 0, 1, 2, 7 differs only in member fields: 4 runs -> groups of 3 and 1.
    assert sorted(len(group) for group in groups) == [1, 1, 1, 3]


def test_a_group_of_incompatible_runs_is_refused(tiny_cifar):
    with pytest.raises(ValueError, match="differ only in"):
        group_net.fit_group([BASE, dataclasses.replace(BASE, epochs=3)], tiny_cifar, device="cpu")


def test_a_missing_device_is_a_user_error(tiny_cifar):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(CnnlabError, match="available: cpu"):
        group_net.fit_group(MEMBERS, tiny_cifar, device="cuda")


GROUPED_STUDY = """
[study]
name = "grouped"
repeats = 2

[defaults]
arch = "probe"
train_size = 100
epochs = 2
batch_size = 32
learning_rate = 0.003

[architectures.probe]
layers = [
  {type = "conv", filters = 4, kernel = 3, stride = 2, padding = "same", activation = "relu"},
  {type = "dropout", rate = 0.5},
  {type = "flatten"},
  {type = "dense", units = 10, activation = "softmax", l1 = 0.0001},
]

[experiments.l1]
grid = { l1 = [0.0, 0.001] }
"""


def test_a_study_trained_in_groups_records_what_lone_runs_record(tiny_cifar, tmp_path, monkeypatch):
    study_file = tmp_path / "group_net.toml"
    study_file.write_text(GROUPED_STUDY)

    def run(out: str) -> dict:
        # One worker: in this process, where `schedule` decides.
        return fake_studies.study_records(study_file, tmp_path / out, tiny_cifar, workers=1)

    lone = run("lone")
    # What the CUDA path does: every compatible run in one group (here all four).
    trained_together: list[int] = []

    def schedule(configs, device_type):
        groups = group_plan.plan_groups(configs, max_members=8)
        trained_together.extend(len(group) for group in groups)
        return groups

    monkeypatch.setattr(planning, "schedule", schedule)
    results = run("grouped")
    assert trained_together == [4]
    assert lone.keys() == results.keys() and len(lone) == 4
    for run_id, record in results.items():
        assert record.status == lone[run_id].status == "done"
        assert record.metrics["group_size"] == 4
        for key in ("train_accuracy", "test_accuracy", "train_loss", "test_loss"):
            assert record.metrics[key] == pytest.approx(lone[run_id].metrics[key], rel=1e-4)
        assert (tmp_path / "grouped" / record.artifacts["weights"]).stat().st_size > 0


def test_a_bfloat16_group_trains_in_mixed_precision(tiny_cifar):
    mixed = [dataclasses.replace(config, precision="bfloat16") for config in MEMBERS[:2]]
    results = group_net.fit_group(mixed, tiny_cifar, device="cpu")
    full = group_net.fit_group(MEMBERS[:2], tiny_cifar, device="cpu")
    for result, reference in zip(results, full, strict=True):
        assert result.status == "done"
        assert all(math.isfinite(row["loss"]) for row in result.history)
        assert result.history[-1]["loss"] != reference.history[-1]["loss"]
