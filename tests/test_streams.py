"""Groups trained side by side in threads end as they would one after another.

On CUDA each thread has its own stream; the threading, the events and the stopping are the
same on the CPU, where these tests run them.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

import fake_studies
from cnnlab.config import RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.execution import execute, planning, threads
from cnnlab.training import group_net, group_plan

BASE = RunConfig(arch="tiny", train_size=100, epochs=2, batch_size=32)
# Two groups: the 100-image runs (two seeds, two L1 weights) and the 150-image ones.
CONFIGS = [
    dataclasses.replace(BASE, seed=0),
    dataclasses.replace(BASE, seed=1, l1=1e-2),
    dataclasses.replace(BASE, seed=2, train_size=150),
    dataclasses.replace(BASE, seed=3, train_size=150, l1=0.0),
]
GROUPS = [[0, 1], [2, 3]]


def group_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("cnnlab-group")]


def test_groups_side_by_side_end_as_they_would_one_after_another(tiny_cifar):
    by_run = fake_studies.events_by_run(
        threads.train_concurrently(CONFIGS, GROUPS, tiny_cifar, device="cpu", streams=2)
    )
    assert sorted(by_run) == [0, 1, 2, 3]
    for group in GROUPS:
        alone = group_net.fit_group([CONFIGS[index] for index in group], tiny_cifar, device="cpu")
        for index, expected in zip(group, alone, strict=True):
            events = by_run[index]
            assert [event.kind for event in events] == ["started", "epoch", "epoch", "result"]
            assert [event.payload["epoch"] for event in events[1:3]] == [1, 2]
            result = events[-1].payload
            assert result.config == CONFIGS[index]
            assert result.metrics["group_size"] == 2
            for name, weight in expected.state_dict.items():
                torch.testing.assert_close(result.state_dict[name], weight, rtol=1e-5, atol=1e-6)
            for key in ("train_accuracy", "test_accuracy"):
                assert result.metrics[key] == pytest.approx(expected.metrics[key], abs=1e-6)
    assert not group_threads()


def test_a_failing_group_fails_its_runs_and_the_other_group_finishes(tiny_cifar, monkeypatch):
    real = group_net.train_together

    def refuse_the_first_group(jobs, data, **options):
        if jobs[0].config == CONFIGS[0]:
            raise RuntimeError("no memory left on the device")
        return real(jobs, data, **options)

    monkeypatch.setattr(group_net, "train_together", refuse_the_first_group)
    by_run = fake_studies.events_by_run(
        threads.train_concurrently(CONFIGS, GROUPS, tiny_cifar, device="cpu", streams=2)
    )
    for index in (0, 1):
        assert by_run[index][-1].kind == "error"
        assert by_run[index][-1].payload == "RuntimeError: no memory left on the device"
    assert [by_run[index][-1].kind for index in (2, 3)] == ["result", "result"]


def test_closing_the_events_stops_every_group_at_its_next_epoch(tiny_cifar):
    # 100,000 epochs would take hours; a closed iterator must stop both groups within seconds.
    configs = [dataclasses.replace(config, epochs=100_000) for config in CONFIGS]
    events = threads.train_concurrently(configs, GROUPS, tiny_cifar, device="cpu", streams=2)
    seen = []
    for event in events:
        seen.append(event)
        if event.kind == "epoch":
            break
    started = time.perf_counter()
    events.close()
    assert time.perf_counter() - started < 10
    assert not group_threads()
    assert all(event.kind in ("started", "epoch") for event in seen)


def test_more_groups_than_streams_queue_up_longest_first(tiny_cifar, monkeypatch):
    order = []
    real = group_net.train_together

    def note_order(jobs, data, **options):
        order.append(jobs[0].config.train_size)
        return real(jobs, data, **options)

    monkeypatch.setattr(group_net, "train_together", note_order)
    sizes = [100, 150, 120]
    configs = [dataclasses.replace(BASE, train_size=size, epochs=1) for size in sizes]
    by_run = fake_studies.events_by_run(
        threads.train_concurrently(configs, [[0], [1], [2]], tiny_cifar, device="cpu", streams=1)
    )
    assert order == [150, 120, 100]
    assert all(events[-1].kind == "result" for events in by_run.values())


def test_stream_count_is_every_group_up_to_eight_or_what_was_asked():
    assert planning.stream_count(6) == 6
    assert planning.stream_count(20) == planning.MAX_STREAMS == 8
    assert planning.stream_count(6, requested=2) == 2
    assert planning.stream_count(1, requested=4) == 1
    with pytest.raises(CnnlabError, match="workers 0: must be at least 1"):
        planning.stream_count(6, requested=0)


STUDY = fake_studies.tiny_study_toml("streams", "{ train_size = [100, 150], l1 = [0.0, 0.01] }")


def test_a_study_records_the_runs_the_streams_report(tiny_cifar, tmp_path, monkeypatch):
    # CUDA's path on the CPU: the study's groups as cnnlab.execution.threads trains them on a GPU.
    def on_streams(configs, target, workers):
        return group_plan.plan_groups(configs, planning.CUDA_MAX_MEMBERS), 2

    study_file = tmp_path / "threads.toml"
    study_file.write_text(STUDY)
    lines: list[str] = []
    monkeypatch.setattr(execute, "plan_in_process", on_streams)
    together = fake_studies.study_records(
        study_file, tmp_path / "streams", tiny_cifar, workers=1, echo=lines.append
    )
    monkeypatch.undo()
    lone = fake_studies.study_records(study_file, tmp_path / "lone", tiny_cifar, workers=1)
    assert any("2 at a time" in line for line in lines)
    assert together.keys() == lone.keys() and len(lone) == 4
    for run_id, record in together.items():
        assert record.status == "done"
        assert record.metrics["group_size"] == 2
        assert record.metrics["test_accuracy"] == pytest.approx(
            lone[run_id].metrics["test_accuracy"], abs=1e-6
        )
    assert not group_threads()
