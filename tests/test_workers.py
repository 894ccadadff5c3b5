"""Lone CPU runs in worker processes end exactly as they would in this process."""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fake_studies
from cnnlab.config import Execution, RunConfig
from cnnlab.data.datasets import Dataset
from cnnlab.execution import execute, planning, processes, transport
from cnnlab.study import runner
from cnnlab.training import loop, metrics
from proc_table import children_of, wait_gone

BASE = RunConfig(arch="tiny", train_size=100, epochs=2, batch_size=32)
CONFIGS = [
    dataclasses.replace(BASE, seed=0),
    dataclasses.replace(BASE, seed=1, l1=1e-2),
    dataclasses.replace(BASE, seed=2, train_size=150),
]


def run_script(path, source: str) -> subprocess.CompletedProcess:
    """Write `source` (dedented) to `path` and run it with this Python, within two minutes."""
    path.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)


def test_runs_in_workers_end_with_the_weights_of_runs_in_this_process(tiny_cifar):
    by_run = fake_studies.events_by_run(processes.train_parallel(CONFIGS, tiny_cifar, processes=2))
    assert sorted(by_run) == [0, 1, 2]
    threads = planning.cpu_count() // 2 or 1
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)  # the workers' share: then the arithmetic is the same
    try:
        lone = [loop.fit(config, tiny_cifar, device="cpu") for config in CONFIGS]
    finally:
        torch.set_num_threads(saved)
    for index, events in by_run.items():
        assert [event.kind for event in events] == ["started", "epoch", "epoch", "result"]
        result = events[-1].payload
        assert result.config == CONFIGS[index]
        assert result.metrics["cpu_threads"] == threads
        assert [row["epoch"] for row in result.history] == [1, 2]
        shown = [{key: event.payload[key] for key in metrics.HISTORY_KEYS} for event in events[1:3]]
        assert shown == result.history
        assert result.state_dict.keys() == lone[index].state_dict.keys()
        for name, weight in lone[index].state_dict.items():
            assert isinstance(result.state_dict[name], torch.Tensor)
            assert torch.equal(result.state_dict[name], weight), (index, name)
        for key in ("train_accuracy", "test_accuracy", "val_loss"):
            assert result.metrics[key] == lone[index].metrics[key], (index, key)


def test_a_failing_run_is_reported_and_the_others_finish(tiny_cifar):
    configs = [CONFIGS[0], dataclasses.replace(BASE, train_size=10_000), CONFIGS[1]]
    by_run = fake_studies.events_by_run(processes.train_parallel(configs, tiny_cifar, processes=2))
    assert by_run[1][-1].kind == "error"
    assert "train_size: 10000" in by_run[1][-1].payload
    assert [by_run[index][-1].kind for index in (0, 2)] == ["result", "result"]


def test_a_killed_worker_fails_its_run_only(tiny_cifar):
    # Runs long enough that the kill lands mid-run; a fresh worker takes the remaining ones.
    configs = [dataclasses.replace(BASE, seed=seed, epochs=30) for seed in range(4)]
    seen, killed = [], False
    for event in processes.train_parallel(configs, tiny_cifar, processes=2):
        seen.append(event)
        if event.kind == "epoch" and not killed:
            victim = next(
                child
                for child in multiprocessing.active_children()
                if child.name.startswith("cnnlab-worker")
            )
            victim.kill()
            killed = True
    ends = {event.index: event for event in seen if event.kind in ("result", "error")}
    assert sorted(ends) == [0, 1, 2, 3]
    failed = [event for event in ends.values() if event.kind == "error"]
    assert len(failed) == 1 and "killed by signal 9" in failed[0].payload


def test_workers_die_with_a_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import dataclasses, sys
            import numpy as np
            from cnnlab.execution import processes
            from cnnlab.data.datasets import CLASS_NAMES, Dataset
            from cnnlab.config import RunConfig

            if __name__ == "__main__":
                labels = np.repeat(np.arange(10), 50)
                images = np.zeros((500, 32, 32, 3), np.uint8)
                data = Dataset(images, labels, images[:100], labels[:100], CLASS_NAMES, "zeros")
                config = RunConfig(arch="tiny", train_size=500, epochs=1000, batch_size=8)
                configs = [dataclasses.replace(config, seed=seed) for seed in range(2)]
                for event in processes.train_parallel(configs, data, processes=2):
                    print(event.kind, flush=True)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "started"  # a worker is training
        children = children_of(parent.pid)
        assert len(children) >= 2
    finally:
        parent.kill()
        parent.wait()
    assert not wait_gone(children)


def test_a_script_without_a_main_guard_still_trains_in_workers(tmp_path):
    # Spawned children re-run the parent's __main__ unless the pool hides it: without the
    # usual `if __name__ == "__main__":` every worker would start a study of its own and die.
    finished = run_script(
        tmp_path / "unguarded.py",
        """
        import dataclasses
        import numpy as np
        from cnnlab.execution import execute
        from cnnlab.config import RunConfig
        from cnnlab.data.datasets import CLASS_NAMES, Dataset

        print("script body ran", flush=True)
        labels = np.repeat(np.arange(10), 10)
        images = np.zeros((100, 32, 32, 3), np.uint8)
        data = Dataset(images, labels, images, labels, CLASS_NAMES, "zeros")
        config = RunConfig(arch="tiny", train_size=100, epochs=1, batch_size=32)
        configs = [dataclasses.replace(config, seed=seed) for seed in range(2)]
        for index, result in enumerate(execute.train_all(configs, data, device="cpu", workers=2)):
            print("done", index, result.config.seed, flush=True)
        """,
    )
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert lines.count("script body ran") == 1, lines  # the workers never ran it
    assert sorted(lines[1:]) == ["done 0 0", "done 1 1"]
    assert "Traceback" not in finished.stderr


def test_workers_dying_as_they_start_fail_their_runs_without_blocking_the_parent(tmp_path):
    # 6 MB of in-memory data: more than a pipe holds, so handing it to a dead child once hung.
    (tmp_path / "crash.py").write_text("import os\n\ndef at_start(*args):\n    os._exit(3)\n")
    finished = run_script(
        tmp_path / "parent.py",
        f"""
        import dataclasses, sys
        sys.path.insert(0, {str(tmp_path)!r})
        import crash
        import numpy as np
        from cnnlab.execution import processes
        from cnnlab.data.datasets import CLASS_NAMES, Dataset
        from cnnlab.config import RunConfig

        processes._worker_main = crash.at_start
        labels = np.repeat(np.arange(10), 200)
        images = np.zeros((2000, 32, 32, 3), np.uint8)
        data = Dataset(images, labels, images, labels, CLASS_NAMES, "zeros")
        configs = [RunConfig(arch="tiny", train_size=100, seed=seed) for seed in range(3)]
        for event in processes.train_parallel(configs, data, processes=2):
            print(event.kind, event.index, event.payload, flush=True)
        """,
    )
    assert finished.returncode == 0, finished.stderr
    assert sorted(finished.stdout.splitlines()) == [
        f"error {index} its worker process died (exit code 3)" for index in range(3)
    ]


def test_memory_maps_travel_by_file_name_and_views_by_value(tmp_path, tiny_cifar):
    np.save(tmp_path / "images.npy", tiny_cifar.train_images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    data = dataclasses.replace(tiny_cifar, train_images=mapped, test_images=mapped[:100])
    portable = transport.portable(data)
    assert isinstance(portable.train_images, transport.MappedArray)
    assert isinstance(portable.test_images, np.ndarray)  # a view: its offset is not the file's
    assert len(pickle.dumps(portable.train_images)) < 1000
    rebuilt = transport.rebuild(pickle.loads(pickle.dumps(portable)))
    assert isinstance(rebuilt, Dataset)
    np.testing.assert_array_equal(rebuilt.train_images, tiny_cifar.train_images)
    np.testing.assert_array_equal(rebuilt.test_images, tiny_cifar.train_images[:100])


def test_process_count_is_one_per_core_on_the_cpu_only(monkeypatch):
    monkeypatch.setattr(planning, "cpu_count", lambda: 4)
    cpu, cuda = "cpu", "cuda"
    assert planning.process_count(11, cpu) == 4
    assert planning.process_count(3, cpu) == 3
    assert planning.process_count(1, cpu) == 1
    assert planning.process_count(11, cpu, requested=1) == 1
    assert planning.process_count(11, cpu, requested=2) == 2
    assert planning.process_count(11, cuda) == 1


def test_the_longest_runs_start_first():
    sizes = [5_000, 40_000, 10_000]
    configs = [RunConfig(arch="seed", train_size=size) for size in sizes]
    configs.append(RunConfig(arch="seed-maxpool", train_size=5_000))
    # seed-maxpool's forward pass costs 6 times the seed net's.
    assert planning.longest_first(configs) == [1, 3, 2, 0]


STUDY = fake_studies.tiny_study_toml("parallel", "{ l1 = [0.0, 0.001, 0.01] }")


def test_a_study_in_workers_records_what_a_study_in_this_process_records(tiny_cifar, tmp_path):
    study_file = tmp_path / "parallel.toml"
    study_file.write_text(STUDY)
    lines: list[str] = []

    def run(out: str, workers_count: int) -> dict:
        return fake_studies.study_records(
            study_file, tmp_path / out, tiny_cifar, workers=workers_count, echo=lines.append
        )

    parallel = run("parallel", 2)
    assert "training on the CPU in 2 worker processes side by side, 1 thread(s) each" in lines
    assert sum(line.startswith("[") for line in lines) == 3  # one start line per run
    lone = run("lone", 1)
    assert parallel.keys() == lone.keys() and len(lone) == 3
    for run_id, record in parallel.items():
        assert record.status == lone[run_id].status == "done"
        for key in ("train_accuracy", "test_accuracy", "val_loss"):
            assert record.metrics[key] == pytest.approx(lone[run_id].metrics[key], rel=1e-4)
        assert len(record.history) == 2
        assert (tmp_path / "parallel" / record.artifacts["weights"]).stat().st_size > 0


@pytest.mark.parametrize("count", [0, -1])
def test_a_bad_worker_count_is_one_clear_error(tiny_cifar, tmp_path, count):
    study_file = tmp_path / "parallel.toml"
    study_file.write_text(STUDY)
    with pytest.raises(runner.CnnlabError, match=f"workers {count}: must be at least 1"):
        runner.run_study(
            study_file, out=tmp_path / "out", data=tiny_cifar, execution=Execution(workers=count)
        )
    assert not (tmp_path / "out").exists()
    with pytest.raises(runner.CnnlabError, match=f"workers {count}: must be at least 1"):
        execute.train_all([BASE, BASE], tiny_cifar, device="cpu", workers=count)
