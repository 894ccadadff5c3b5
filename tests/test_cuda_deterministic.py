"""The deterministic run field: off by default (no run id, no CPU result changes), and on CUDA
a run that trains alone, one group at a time, in deterministic math."""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import pytest
import torch

from cnnlab.config import RunConfig, check_value, run_id
from cnnlab.execution import execute, threads
from cnnlab.training import device, group_plan, loop

TINY = RunConfig(arch="tiny", train_size=100, epochs=1, batch_size=32)


def test_run_ids_of_existing_runs_are_unchanged():
    # Computed by the config before the field existed (ID_VERSION 2).
    assert run_id(RunConfig()) == "9e7e65453739"
    assert run_id(RunConfig(arch="seed-deep", seed=3, l1=1e-3)) == "401d400b2a29"
    assert run_id(dataclasses.replace(TINY, deterministic=True)) != run_id(TINY)


def test_the_field_is_a_checked_boolean():
    assert check_value("deterministic", True) is True
    with pytest.raises(Exception, match="deterministic: expected true or false"):
        check_value("deterministic", "yes")


def test_a_deterministic_run_is_never_grouped():
    configs = [dataclasses.replace(TINY, seed=seed, deterministic=True) for seed in range(3)]
    assert group_plan.groupable(TINY)
    assert not any(group_plan.groupable(config) for config in configs)
    assert group_plan.plan_groups(configs, max_members=32) == [[0], [1], [2]]


def test_a_study_with_deterministic_runs_trains_one_group_at_a_time_on_cuda():
    configs = [dataclasses.replace(TINY, train_size=size) for size in (100, 120, 140)]
    cuda = torch.device("cuda")
    assert execute.plan_in_process(configs, cuda, None)[1] == 3
    configs[1] = dataclasses.replace(configs[1], deterministic=True)
    assert execute.plan_in_process(configs, cuda, None)[1] == 1


def test_deterministic_math_is_set_while_training_and_restored_after():
    backends = torch.backends
    before = (
        backends.cuda.matmul.allow_tf32,
        backends.cudnn.allow_tf32,
        backends.cudnn.benchmark,
        backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
    )
    with device.cuda_math(deterministic=False):
        assert backends.cuda.matmul.allow_tf32 and backends.cudnn.benchmark
    with device.cuda_math(deterministic=True):
        assert not backends.cuda.matmul.allow_tf32
        assert not backends.cudnn.allow_tf32
        assert not backends.cudnn.benchmark
        assert backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled()
    after = (
        backends.cuda.matmul.allow_tf32,
        backends.cudnn.allow_tf32,
        backends.cudnn.benchmark,
        backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
    )
    assert after == before


def test_on_the_cpu_the_field_changes_nothing(tiny_cifar):
    plain = loop.fit(TINY, tiny_cifar, device="cpu", measurements=False)
    marked = loop.fit(
        dataclasses.replace(TINY, deterministic=True), tiny_cifar, device="cpu", measurements=False
    )
    for name, weight in plain.state_dict.items():
        assert torch.equal(marked.state_dict[name], weight)
    assert plain.metrics["test_accuracy"] == marked.metrics["test_accuracy"]


@pytest.mark.parametrize(("deterministic", "most_at_once"), [(False, 3), (True, 1)])
def test_cuda_threads_train_deterministic_groups_one_at_a_time(
    tiny_cifar, monkeypatch, deterministic, most_at_once
):
    configs = [dataclasses.replace(TINY, train_size=size) for size in (100, 120, 140)]
    configs[2] = dataclasses.replace(configs[2], deterministic=deterministic)
    monkeypatch.setattr(threads, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(threads, "_own_stream", lambda target: contextlib.nullcontext())
    running, most = [], []
    all_started = threading.Barrier(3, timeout=1)

    def train_group(group_configs, data, *, device, progress):
        running.append(1)
        most.append(len(running))
        with contextlib.suppress(threading.BrokenBarrierError):
            all_started.wait()  # lets three threads meet, if there are three
        running.pop()
        return ["trained"] * len(group_configs)

    events = threads.train_concurrently(
        configs, [[0], [1], [2]], tiny_cifar, device="cuda", streams=3, train_group=train_group
    )
    assert [event.kind for event in events].count("result") == 3
    assert max(most) == most_at_once
