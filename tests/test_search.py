"""Searches: one-line spec errors, seeded trials as runs, resume to the same trials, report."""

from __future__ import annotations

import math
import signal
import subprocess
import time
from pathlib import Path

import pytest

import fake_runs
import fake_studies
from cnnlab.cli import main
from cnnlab.config import Execution
from cnnlab.errors import CnnlabError
from cnnlab.report.report import build
from cnnlab.store import Store
from cnnlab.study import plan, runner
from cnnlab.study.studyfile import load_study
from cnnlab.training import runfolder

SEARCH_TOML = """
[study]
name = "tune"
repeats = 2

[defaults]
arch = "tiny"
train_size = 100
epochs = 2
batch_size = 32

[experiments.tune]
title = "Tuning"
epochs = 3

[experiments.tune.search]
trials = 6
sampler = "tpe"
seed = 7
batch = 2
retrain = 2

[experiments.tune.search.space]
learning_rate = { low = 1e-4, high = 1e-1, log = true }
l1 = { low = 0.0, high = 0.01 }
batch_size = { choices = [16, 32, 64] }
"""


def search_fit(config, data, *, device="auto", progress=None, prune=None, seed_effect=0.003):
    """`fake_runs.fake_fit` whose validation accuracy peaks at learning rate 10^-2.5; a run
    stops where `prune` says, as `loop.fit` stops it."""
    result = fake_runs.fake_fit(config, data, device=device)
    score = 0.6 - 0.05 * abs(math.log10(config.learning_rate) + 2.5) - config.batch_size / 1000
    score += seed_effect * config.seed - 2 * (config.l1 or 0)
    for row in result.history:
        row["val_accuracy"] = score * (1 - 0.5 ** row["epoch"])
    for epoch in range(1, len(result.history) + 1) if prune is not None else ():
        if prune(result.history[:epoch]):
            result.history = result.history[:epoch]
            result.status = "pruned"
            result.metrics["pruned_epoch"] = epoch
            break
    result.metrics["val_accuracy"] = result.history[-1]["val_accuracy"]
    return result


@pytest.fixture
def tune(tmp_path) -> Path:
    path = tmp_path / "tune.toml"
    path.write_text(SEARCH_TOML)
    return path


@pytest.fixture
def fake_save(monkeypatch):
    monkeypatch.setattr(runfolder, "_save_files", fake_runs.fake_save_run)


def _search(path: Path, out: Path, **options):
    trained = []

    def fit(config, data, *, device="auto", progress=None, prune=None):
        trained.append(config)
        return search_fit(config, data, device=device, prune=prune)

    options = {"data": fake_runs.zeros_cifar(), **options}
    with fake_studies.fake_training(fit, save_run=None):
        runner.run_study(path, out=out, execution=fake_studies.IN_PROCESS, **options)
    return trained


def _trials(out: Path) -> list[tuple[int, dict, list[str]]]:
    with Store.open(out, create=False) as store:
        return store.trials("tune")


# --- the spec ---------------------------------------------------------------------------------


def test_a_search_parses_into_its_spec_and_plans_no_grid_runs(tune):
    study = load_study(tune)
    assert [e.name for e in study.searches] == ["tune"] and study.experiments == ()
    spec = study.searches[0].search
    assert (spec.trials, spec.sampler, spec.seed, spec.batch, spec.retrain) == (6, "tpe", 7, 2, 2)
    assert (spec.metric, spec.direction) == ("val_accuracy", "maximize")
    assert spec.space["learning_rate"].log and spec.space["l1"].low == 0.0
    assert spec.space["batch_size"].choices == (16, 32, 64)
    assert plan.plan_runs(study) == []


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('sampler = "tpe"', 'sampler = "cmaes"', "search.sampler: unknown sampler 'cmaes'"),
        ("trials = 6", "trials = 0", "search.trials: must be between 1 and 10000"),
        ("trials = 6\n", "", "search.trials: missing"),
        ("batch = 2", 'batch = "2"', "search.batch: expected an integer"),
        ("retrain = 2", 'metric = "test_accuracy"', "never looks at the test set"),
        ("retrain = 2", 'direction = "up"', "search.direction: expected one of maximize"),
        ("retrain = 2", "pruner = 'hyperband'", "search.pruner: unknown pruner str 'hyperband'"),
        ("retrain = 2", "pruner = 3", "search.pruner: expected a string or a table, got int 3"),
        ("retrain = 2", "pruner = { startup_trials = 2 }", "search.pruner.type: unknown pruner"),
        (
            "retrain = 2",
            "pruner = { type = 'median', min_epochs = 2 }",
            "search.pruner.min_epochs: unknown key; valid keys: type, startup_trials",
        ),
        (
            "retrain = 2",
            "pruner = { type = 'median', warmup_epochs = -1 }",
            "search.pruner.warmup_epochs: must be between 0 and 1000000, got -1",
        ),
        (
            "retrain = 2",
            "pruner = { type = 'successive_halving', reduction_factor = 1 }",
            "search.pruner.reduction_factor: must be between 2 and",
        ),
        (
            "retrain = 2",
            "pruner = { type = 'successive_halving', min_epochs = 1.5 }",
            "search.pruner.min_epochs: expected an integer, got float 1.5",
        ),
        ("high = 1e-1, log", "high = 1e-5, log", "learning_rate.high: must be greater than low"),
        ("low = 0.0, high", "low = -1.0, high", "l1.low: must not be negative"),
        ("low = 0.0, high = 0.01", "low = 0.0, high = 0.01, log = true", "a log range needs"),
        ("choices = [16, 32, 64]", "choices = []", "batch_size.choices: expected a non-empty"),
        ("choices = [16, 32, 64]", "choices = [16, 16]", "repeated values"),
        ("choices = [16, 32, 64]", "choices = [16, 0]", "batch_size.choices: must be at least 1"),
        ("batch_size = {", "seed = {", "space.seed: unknown key"),
        ("batch_size = { choices = [16, 32, 64] }", "optimizer = { low = 1, high = 2 }", "choices"),
        ('sampler = "tpe"', 'sampler = "grid"', "the grid sampler needs choices"),
        ("epochs = 3\n", "epochs = 3\nbatch_size = 8\n", "set both as a fixed field and in"),
        ("epochs = 3\n", "epochs = 3\ngrid = { l2 = [0.0, 0.1] }\n", "no grid"),
        ("learning_rate = { low", "learning_rate = { lo", "learning_rate.lo: unknown key"),
    ],
)
def test_bad_search_specs_are_one_line_naming_the_key_and_line(tune, old, new, message):
    assert old in SEARCH_TOML
    tune.write_text(SEARCH_TOML.replace(old, new, 1))
    with pytest.raises(CnnlabError) as caught:
        plan.plan_runs(load_study(tune))
    text = str(caught.value)
    assert message in text and "\n" not in text
    assert text.startswith(f"{tune}:") and text.split(":")[1].isdigit()


def test_a_bad_search_spec_exits_2_with_one_line(tune, capsys):
    tune.write_text(SEARCH_TOML.replace('sampler = "tpe"', 'sampler = "bayes"'))
    assert main(["study", str(tune), "--dry-run"]) == 2
    error = capsys.readouterr().err.strip()
    assert "sampler" in error and len(error.splitlines()) == 1


def test_a_dry_run_says_how_many_runs_a_search_may_take(tune, capsys):
    assert main(["study", str(tune), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "search tune: 6 trials x 2 seed(s) + 2 retrained = up to 14 runs" in text


def test_a_space_bound_the_loop_refuses_is_named_before_anything_trains(tune, tmp_path):
    tune.write_text(
        SEARCH_TOML.replace(
            "[experiments.tune.search.space]",
            "[experiments.tune.search.space]\ntrain_size = { low = 50, high = 100000 }",
        )
    )
    with pytest.raises(CnnlabError, match=r"space\.train_size"):
        _search(tune, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_grid_search_visits_every_point_once(tune, tmp_path, fake_save):
    tune.write_text(
        SEARCH_TOML.replace('sampler = "tpe"', 'sampler = "grid"')
        .replace("trials = 6\n", "")
        .replace("learning_rate = { low = 1e-4, high = 1e-1, log = true }", "")
        .replace("l1 = { low = 0.0, high = 0.01 }", "l1 = { low = 0.0, high = 0.01, step = 0.005 }")
    )
    _search(tune, tmp_path / "out")
    points = {(t[1]["l1"], t[1]["batch_size"]) for t in _trials(tmp_path / "out")}
    assert len(_trials(tmp_path / "out")) == 9 and len(points) == 9


# --- trials as runs ---------------------------------------------------------------------------


def test_trials_are_runs_whose_mean_validation_score_is_the_value(tune, tmp_path, fake_save):
    out = tmp_path / "out"
    trained = _search(tune, out)
    trials = _trials(out)
    assert [t[0] for t in trials] == list(range(6))
    with Store.open(out) as store:
        records = {r.id: r for r in store.runs(planned_only=True)}
    # 6 trials x 2 seeds, plus the best retrained on 2 fresh seeds, each trained once.
    assert len(trained) == len(records) == 14 and {r.status for r in records.values()} == {"done"}
    values = {}
    for number, params, run_ids in trials:
        runs = [records[run_id] for run_id in run_ids]
        assert [r.seed for r in runs] == [0, 1] and all(r.config["epochs"] == 3 for r in runs)
        assert all(r.config[name] == value for r in runs for name, value in params.items())
        assert all(r.experiments["tune"] == {"trial": number, **params} for r in runs)
        values[number] = sum(r.metrics["val_accuracy"] for r in runs) / 2
    best = max(values, key=values.get)
    fresh = [r for r in records.values() if "retrain" in r.experiments["tune"]]
    assert sorted(r.seed for r in fresh) == [2, 3]
    assert {r.experiments["tune"]["retrain"] for r in fresh} == {best}
    assert all(r.config["learning_rate"] == trials[best][1]["learning_rate"] for r in fresh)


def test_the_same_file_gives_the_same_trials_and_another_seed_others(tune, tmp_path, fake_save):
    _search(tune, tmp_path / "a")
    _search(tune, tmp_path / "b")
    assert _trials(tmp_path / "a") == _trials(tmp_path / "b")
    tune.write_text(SEARCH_TOML.replace("seed = 7", "seed = 8"))
    _search(tune, tmp_path / "c")
    assert [t[1] for t in _trials(tmp_path / "c")] != [t[1] for t in _trials(tmp_path / "a")]


def test_a_finished_search_reruns_nothing_and_more_trials_continue_it(tune, tmp_path, fake_save):
    out = tmp_path / "out"
    _search(tune, out)
    first = _trials(out)
    assert _search(tune, out) == []
    tune.write_text(SEARCH_TOML.replace("trials = 6", "trials = 8"))
    trained = _search(tune, out)
    assert _trials(out)[:6] == first and len(_trials(out)) == 8
    # Only the two new trials train (and the retraining, if the best trial changed).
    assert 4 <= len(trained) <= 6
    tune.write_text(SEARCH_TOML.replace("trials = 6", "trials = 8"))
    clean = tmp_path / "clean"
    _search(tune, clean)
    assert _trials(clean) == _trials(out)


# --- kill -9 ----------------------------------------------------------------------------------


def _start(path: Path, out: Path, seconds: float) -> subprocess.Popen:
    return fake_studies.start_fake_study(path, out, seconds, fit="test_search.search_fit")


@pytest.mark.parametrize("pruner", ["none", "median"])
def test_kill_9_during_a_search_resumes_to_the_trials_of_an_uninterrupted_one(
    tune, tmp_path, pruner
):
    options = ", startup_trials = 2" if pruner == "median" else ""
    spec = f"retrain = 2\npruner = {{ type = '{pruner}'{options} }}"
    tune.write_text(SEARCH_TOML.replace("retrain = 2", spec).replace("trials = 6", "trials = 8"))
    out = tmp_path / "out"
    # Kill in the first batch, between batches, and during the retraining.
    for done_before_kill in (0, 4, 14):
        child = _start(tune, out, seconds=0.15)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            statuses = fake_studies.stored_statuses(out)
            ended = statuses.count("done") + statuses.count("pruned")
            if ended >= done_before_kill and "running" in statuses:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert fake_studies.stored_statuses(out).count("running") == 1
    child = _start(tune, out, seconds=0)
    assert child.wait(timeout=120) == 0
    clean = tmp_path / "clean"
    assert _start(tune, clean, seconds=0).wait(timeout=120) == 0
    assert _trials(out) == _trials(clean)
    with Store.open(out) as store:
        runs = store.runs(planned_only=True)
        assert store.integrity_ok()
    with Store.open(clean) as store:
        expected = {r.id: (r.metrics, r.history) for r in store.runs(planned_only=True)}
    assert {r.id: (r.metrics, r.history) for r in runs} == expected
    # No finished run was trained again: only the three killed runs took a second attempt.
    assert sum(r.attempts for r in runs) == len(runs) + 3
    assert ("pruned" in {r.status for r in runs}) == (pruner == "median")


# --- what a user sees -------------------------------------------------------------------------


def test_the_report_shows_the_best_trial_its_retraining_and_the_figures(tune, tmp_path, fake_save):
    out = tmp_path / "out"
    _search(tune, out)
    best = max(
        _trials(out),
        key=lambda t: search_fit_value(t[1]),
    )
    text = build(out).markdown()
    assert "## Tuning (search)" in text
    assert f"Best trial: **#{best[0]}**" in text
    assert "retrained on fresh seeds | 2, 3 |" in text
    assert "The selection's optimism" in text and "Parameter importances (Optuna's fANOVA" in text
    for figure in ("search-history", "search-importances", "search-parallel"):
        assert f"tune-{figure}.png" in text
    # The search's best run is looked at from inside too (a fake run cannot be explained).
    inside = text.split("## Inside the best runs", 1)[1].split("\n## ", 1)[0]
    assert "Not explained" in inside and "Tuning (`" in inside


def search_fit_value(params: dict) -> float:
    """The mean validation score `search_fit` gives a trial over seeds 0 and 1 at epoch 3."""
    score = 0.6 - 0.05 * abs(math.log10(params["learning_rate"]) + 2.5)
    score += -params["batch_size"] / 1000 + 0.0015 - 2 * params["l1"]
    return score * (1 - 0.5**3)


def test_cnnlab_results_lists_the_trials(tune, tmp_path, fake_save, capsys):
    out = tmp_path / "out"
    _search(tune, out)
    assert main(["results", str(out)]) == 0
    text = capsys.readouterr().out
    assert "search tune: 6 trial(s)" in text
    header = next(line for line in text.splitlines() if line.startswith("trial "))
    assert header.split() == [
        "trial",
        "state",
        "learning_rate",
        "l1",
        "batch_size",
        "val_accuracy",
        "runs",
    ]
    assert sum(" complete " in line for line in text.splitlines()) == 6
    assert text.count("(best)") == 1


# --- real training ----------------------------------------------------------------------------

REAL_TOML = """
[study]
name = "tune"
repeats = 1

[defaults]
arch = "tiny"
train_size = 100
epochs = 2
batch_size = 32

[experiments.tune]
[experiments.tune.search]
trials = 4
sampler = "random"
batch = 2
retrain = 1

[experiments.tune.search.space]
learning_rate = { low = 1e-3, high = 1e-1, log = true }
batch_size = { choices = [16, 32] }
"""
# The same search with a median pruner that judges from the first batch on.
PRUNED_REAL_TOML = REAL_TOML.replace(
    "retrain = 1", "retrain = 1\npruner = { type = 'median', startup_trials = 1 }"
).replace("trials = 4", "trials = 6")
_TIMINGS = {"fit_seconds", "eval_seconds", "seconds", "measurements"}


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in _TIMINGS}
    if isinstance(value, list | tuple):
        return [_without_timings(v) for v in value]
    return value


def _real(path: Path, out: Path, data, **settings) -> dict:
    execution = Execution(device="cpu", **settings)
    runner.run_study(path, out=out, data=data, execution=execution)
    with Store.open(out, create=False) as store:
        runs = {r.id: _without_timings((r.status, r.metrics, r.history)) for r in store.runs()}
    return {"trials": _trials(out), "runs": runs}


@pytest.mark.slow
def test_a_real_search_trains_its_trials_as_runs_and_reports_them(tiny_cifar, tmp_path):
    path = tmp_path / "tune.toml"
    path.write_text(REAL_TOML)
    found = _real(path, tmp_path / "out", tiny_cifar, workers=1)
    assert len(found["trials"]) == 4 and len(found["runs"]) == 5
    assert {status for status, _, _ in found["runs"].values()} == {"done"}
    text = build(tmp_path / "out").markdown()
    assert "retrained on fresh seeds | 1 |" in text


@pytest.mark.slow
def test_a_real_pruned_search_is_the_same_in_worker_processes_as_in_this_one(tiny_cifar, tmp_path):
    path = tmp_path / "tune.toml"
    path.write_text(PRUNED_REAL_TOML)
    alone = _real(path, tmp_path / "alone", tiny_cifar, workers=1)
    side_by_side = _real(path, tmp_path / "parallel", tiny_cifar, workers=2)
    statuses = [status for status, _, _ in alone["runs"].values()]
    assert "pruned" in statuses and "done" in statuses
    # One process uses both cores, a worker one: the last bits differ, the verdicts do not.
    assert side_by_side["trials"] == alone["trials"]
    assert _verdicts(side_by_side) == _verdicts(alone)


def _verdicts(found: dict) -> dict:
    return {run: (status, len(history)) for run, (status, _, history) in found["runs"].items()}
