"""benchmarks/gpu_check.py: its dry run plans every step on any machine, and its steps' code
runs (on the CPU, on tiny data) to the rows its table prints."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.config import RunConfig

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_plans_every_step_within_six_minutes(tmp_path):
    out = tmp_path / "plan.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split()[0] for line in done.stdout.splitlines()[2:] if line.strip()]
    assert rows[:7] == ["setup", "a", "b", "c", "d", "e", "f"]
    assert "11 runs in 6 groups, 6 threads" in done.stdout  # the seed study on CUDA
    assert "11 CPU accuracies" in done.stdout
    plan = json.loads(out.read_text())
    assert plan["dry_run"] and set(plan["steps"]) == set(plan["budgets"])
    assert sum(plan["budgets"].values()) <= 360


def test_a_missing_reference_accuracy_is_named_by_the_dry_run(tmp_path, monkeypatch):
    gpu_check = load_script()
    readme = gpu_check.README.read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("seed-deep n=50000"))
    broken = tmp_path / "README.md"
    broken.write_text(readme.replace(row + "\n", ""), encoding="utf-8")
    monkeypatch.setattr(gpu_check, "README", broken)
    with pytest.raises(
        ValueError, match=r"no CPU accuracy for 1 seed-study run.*seed-deep n=50000"
    ):
        gpu_check.plan_checks(None)


def test_a_missing_data_path_is_named_by_the_dry_run(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--data", str(tmp_path / "none.tar.gz")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert done.stderr.strip().endswith("none.tar.gz: no such file or folder")
    assert not (tmp_path / "gpu_check.json").exists()


def test_the_steps_code_runs_to_the_rows_of_its_table(tiny_cifar, monkeypatch):
    gpu_check = load_script()
    tiny = RunConfig(arch="tiny", train_size=100, epochs=1, batch_size=32)
    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_check, "load", lambda data: tiny_cifar)
    monkeypatch.setattr(
        gpu_check, "seed_configs", lambda epochs=None: [tiny, dataclasses.replace(tiny, l1=0.0)]
    )
    monkeypatch.setattr(
        gpu_check, "strong_configs", lambda: [tiny, dataclasses.replace(tiny, seed=1)]
    )
    together = gpu_check.step_c(None)
    assert together["failed_runs"] == 0 and together["capture_failures"] == 0
    assert len(together["test_accuracy"]) == 2
    strong = gpu_check.step_e(None)
    assert [run["seed"] for run in strong["runs"]] == [0, 1]
    assert 0 <= strong["mean_test_accuracy"] <= 1
    assert "failed runs 0" in gpu_check.summary("c", {"status": "done", **together})
    assert gpu_check.summary("e", {"status": "done", **strong}).startswith("test 0.")


def test_the_full_study_row_sets_each_run_beside_its_cpu_accuracy(tiny_cifar, monkeypatch):
    gpu_check = load_script()
    seed = RunConfig(arch="seed", train_size=100, epochs=1, l1=1e-4)
    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_check, "load", lambda data: tiny_cifar)
    monkeypatch.setattr(gpu_check, "seed_configs", lambda epochs=None: [seed])
    monkeypatch.setattr(gpu_check, "cpu_accuracies", lambda: {("seed", 100, 1e-4): 0.5})
    real_study = gpu_check.study
    monkeypatch.setattr(
        gpu_check, "study", lambda configs, data, workers: real_study(configs, data, 1)
    )
    row = gpu_check.step_d(None)
    assert set(row["test_accuracy"]) == set(row["cpu_test_accuracy"]) == {"seed n=100 l1=0.0001"}
    assert "over 1 runs" in gpu_check.summary("d", {"status": "done", **row})
