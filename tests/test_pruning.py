"""Seed-aware pruning in a search: runs stop where the rule says, seed by seed, and stay stopped."""

from __future__ import annotations

import dataclasses
import sqlite3
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnlab.store as store_module
import fake_runs
import fake_studies
import test_search
from cnnlab.cli import main
from cnnlab.config import RunConfig
from cnnlab.report.report import build
from cnnlab.store import Store
from cnnlab.study import pruning, runner
from cnnlab.study.searchfile import Pruner
from cnnlab.study.studyfile import load_study
from cnnlab.training import group_net, loop

MEDIAN = 'pruner = { type = "median", startup_trials = 2 }'


def pruned_toml(pruner: str = MEDIAN, trials: int = 8) -> str:
    text = test_search.SEARCH_TOML.replace("retrain = 2", f"retrain = 2\n{pruner}")
    return text.replace("trials = 6", f"trials = {trials}")


@pytest.fixture
def fake_save(monkeypatch):
    from cnnlab.training import runfolder

    monkeypatch.setattr(runfolder, "_save_files", fake_runs.fake_save_run)


def _search(path: Path, out: Path, seed_effect: float = 0.003) -> list[RunConfig]:
    trained = []

    def fit(config, data, *, device="auto", progress=None, prune=None):
        trained.append(config)
        return test_search.search_fit(config, data, prune=prune, seed_effect=seed_effect)

    data = fake_runs.zeros_cifar()
    with fake_studies.fake_training(fit, save_run=None):
        runner.run_study(path, out=out, data=data, execution=fake_studies.IN_PROCESS)
    return trained


def _trial_runs(out: Path) -> list[tuple[int, list]]:
    with Store.open(out, create=False) as store:
        return [(n, [store.get(i) for i in ids]) for n, _, ids in store.trials("tune")]


def _median_rule(trials: list[tuple[int, list]], batch: int, *, by_seed: bool) -> dict:
    """Each trial run's pruned epoch by MedianPruner's rule, written out without Optuna: after
    epoch e (once `startup_trials` earlier runs completed), a run whose value is below the median
    of the completed earlier runs' values at e stops. Earlier: the trials of earlier batches,
    and (`by_seed`) only their runs of the same seed offset."""
    expected = {}
    for number, records in trials:
        for offset, record in enumerate(records):
            earlier = [
                r
                for n, rs in trials
                if n // batch < number // batch
                for k, r in enumerate(rs)
                if r.status == "done" and (k == offset or not by_seed)
            ]
            values = [row["val_accuracy"] for row in _full_history(record)]
            stop = None
            if len(earlier) >= 2:
                for epoch, value in enumerate(values, 1):
                    others = [r.history[epoch - 1]["val_accuracy"] for r in earlier]
                    if value < statistics.median(others):
                        stop = epoch
                        break
            expected[record.id] = stop
    return expected


def _full_history(record) -> list[dict]:
    """The history the run would have had unpruned (the fake fit's curve is a formula)."""
    config = RunConfig(**record.config)
    return test_search.search_fit(config, fake_runs.zeros_cifar()).history


def test_the_median_pruner_stops_runs_against_the_same_seed_of_earlier_batches(tmp_path, fake_save):
    path = tmp_path / "tune.toml"
    path.write_text(pruned_toml())
    out = tmp_path / "out"
    # Seed 1 scores 0.05 above seed 0 for every configuration: pooled, seed 0 would look bad.
    _search(path, out, seed_effect=0.05)
    trials = _trial_runs(out)
    actual = {
        r.id: r.metrics.get("pruned_epoch") if r.status == "pruned" else None
        for _, records in trials
        for r in records
    }
    assert actual == _median_rule_with(trials, seed_effect=0.05, by_seed=True)
    assert actual != _median_rule_with(trials, seed_effect=0.05, by_seed=False)
    pruned = [r for _, records in trials for r in records if r.status == "pruned"]
    assert pruned, "the search pruned nothing: the test would not see a wrong rule"
    for record in pruned:
        epoch = record.metrics["pruned_epoch"]
        assert len(record.history) == epoch < 3
        assert record.reason == f"pruned after epoch {epoch} by the search's pruner"


def _median_rule_with(trials, *, seed_effect: float, by_seed: bool) -> dict:
    original = test_search.search_fit

    def fit(config, data, **options):
        return original(config, data, seed_effect=seed_effect, **options)

    test_search.search_fit = fit
    try:
        return _median_rule(trials, batch=2, by_seed=by_seed)
    finally:
        test_search.search_fit = original


def test_a_pruned_trial_is_told_pruned_shown_as_such_and_saves_epochs(tmp_path, fake_save, capsys):
    path = tmp_path / "tune.toml"
    path.write_text(pruned_toml())
    out = tmp_path / "out"
    _search(path, out)
    states = {n: {r.status for r in records} for n, records in _trial_runs(out)}
    pruned = [n for n, found in states.items() if "pruned" in found]
    assert pruned
    assert main(["results", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("trial "))
    assert header.split()[-2:] == ["epochs", "runs"]
    for number in pruned:
        row = next(line for line in lines if line.split()[:1] == [str(number)])
        assert row.split()[1] == "pruned" and " - " in row
    text = build(out).markdown()
    assert f"{len(pruned)} of 8 ended trials were pruned" in text
    trained = sum(len(r.history) for _, records in _trial_runs(out) for r in records)
    assert f"their runs trained {trained} of the 48 epochs" in text


def test_a_search_without_a_pruner_trains_every_epoch_and_says_so(tmp_path, fake_save):
    path = tmp_path / "tune.toml"
    path.write_text(pruned_toml(pruner="pruner = 'none'"))
    out = tmp_path / "out"
    _search(path, out)
    assert {r.status for _, records in _trial_runs(out) for r in records} == {"done"}
    assert "There is no pruning" in build(out).markdown()


def test_a_rerun_trains_nothing_and_a_changed_pruner_retrains_what_it_no_longer_prunes(
    tmp_path, fake_save
):
    path = tmp_path / "tune.toml"
    path.write_text(pruned_toml())
    out = tmp_path / "out"
    _search(path, out)
    first = _trial_runs(out)
    assert _search(path, out) == []
    assert [[r.id for r in rs] for _, rs in _trial_runs(out)] == [
        [r.id for r in rs] for _, rs in first
    ]
    path.write_text(pruned_toml(pruner="pruner = 'none'"))
    retrained = _search(path, out)
    assert retrained
    clean = tmp_path / "clean"
    _search(path, clean)
    assert _states(out) == _states(clean)


def _states(out: Path) -> list:
    return [(n, [(r.id, r.status) for r in records]) for n, records in _trial_runs(out)]


def test_successive_halving_decides_from_its_rungs_the_same_on_every_replay():
    spec = Pruner("successive_halving", (("min_epochs", 1), ("reduction_factor", 2)))
    earlier = []
    for values in ([0.5, 0.6, 0.7, 0.72], [0.4, 0.45, 0.5, 0.52], [0.6, 0.7, 0.75, 0.8]):
        stopped, notes = pruning.judge(spec, "maximize", earlier, values)
        earlier.append(pruning.Curve(tuple(values[: stopped or 4]), stopped is not None, notes))
    assert any(key.startswith("completed_rung_") for key, _ in earlier[0].notes)
    # A curve below every rival at the first rung stops there; a better one goes on.
    assert pruning.judge(spec, "maximize", earlier, [0.1, 0.2])[0] == 1
    assert pruning.judge(spec, "maximize", earlier, [0.9, 0.95, 0.97, 0.99])[0] is None
    again = pruning.judge(spec, "maximize", earlier, [0.55, 0.58, 0.6, 0.61])
    assert again == pruning.judge(spec, "maximize", earlier, [0.55, 0.58, 0.6, 0.61])


def test_a_run_pickles_with_its_pruning_and_judges_the_same_after():
    import pickle

    spec = Pruner("median", (("startup_trials", 1), ("warmup_epochs", 0)))
    earlier = (pruning.Curve((0.5, 0.6), False),)
    prune = pruning.RunPruning(spec, "maximize", "val_accuracy", earlier)
    copy = pickle.loads(pickle.dumps(prune))
    history = [{"val_accuracy": 0.4}]
    assert prune(history) is copy(history) is True
    assert copy([{"val_accuracy": 0.7}]) is False


# --- the training loop ------------------------------------------------------------------------

_TINY = RunConfig(arch="tiny", train_size=100, epochs=3, batch_size=32, validation_split=0.2)


def _stop_after(epoch: int):
    return lambda history: len(history) >= epoch


def test_a_pruned_run_stops_with_the_weights_of_a_run_that_trained_that_long(tiny_cifar):
    pruned = loop.fit(_TINY, tiny_cifar, device="cpu", prune=_stop_after(2))
    shorter = loop.fit(dataclasses.replace(_TINY, epochs=2), tiny_cifar, device="cpu")
    assert pruned.status == "pruned" and pruned.metrics["pruned_epoch"] == 2
    assert "pruned_epoch" not in shorter.metrics and shorter.status == "done"
    assert _rows(pruned.history) == _rows(shorter.history)
    for name, tensor in shorter.state_dict.items():
        assert torch.equal(pruned.state_dict[name], tensor), name
    assert pruned.metrics["test_accuracy"] == shorter.metrics["test_accuracy"]


def test_a_pruned_member_of_a_group_leaves_the_others_as_they_were(tiny_cifar):
    configs = [_TINY, dataclasses.replace(_TINY, seed=1)]
    alone = group_net.fit_group(configs, tiny_cifar, device="cpu")
    jobs = [loop.Job(configs[0], _stop_after(1)), loop.Job(configs[1])]
    pruned = group_net.fit_group(jobs, tiny_cifar, device="cpu")
    assert [r.status for r in pruned] == ["pruned", "done"]
    assert len(pruned[0].history) == 1 and _rows(pruned[0].history) == _rows(alone[0].history[:1])
    assert _rows(pruned[1].history) == _rows(alone[1].history)
    for name, tensor in alone[1].state_dict.items():
        assert torch.equal(pruned[1].state_dict[name], tensor), name
    # The pruned member keeps its weights of the epoch it stopped at, not the group's last.
    one_epoch = [dataclasses.replace(config, epochs=1) for config in configs]
    short = group_net.fit_group(one_epoch, tiny_cifar, device="cpu")
    for name, tensor in short[0].state_dict.items():
        assert torch.equal(pruned[0].state_dict[name], tensor), name


def _rows(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# --- the store --------------------------------------------------------------------------------


def test_a_store_made_before_pruning_takes_pruned_runs_and_keeps_its_rows(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    # The schema as it was: the status CHECK without 'pruned'.
    schema = store_module._SCHEMA.replace(
        ",\n                                           'pruned'", ""
    )
    assert "'pruned'" not in schema
    with sqlite3.connect(folder / "study.sqlite") as connection:
        connection.executescript(schema)
        connection.execute(
            "INSERT INTO runs (id, status, config, seed, created_at)"
            " VALUES ('a', 'done', '{}', 0, 1)"
        )
        connection.execute("INSERT INTO memberships VALUES ('a', 'tune', 0, '{}')")
    with pytest.raises(sqlite3.IntegrityError), sqlite3.connect(folder / "study.sqlite") as c:
        c.execute("UPDATE runs SET status = 'pruned' WHERE id = 'a'")
    with Store.open(folder, create=False) as store:  # reading changes nothing
        assert store.get("a").status == "done"
    with Store.open(folder) as store:
        store.record_result(
            "a", status="pruned", metrics={"pruned_epoch": 1}, history=[], artifacts={}
        )
        assert store.get("a").status == "pruned" and store.get("a").experiments == {"tune": {}}
        assert store.integrity_ok()


def test_the_pruned_search_parses_into_optunas_pruner(tmp_path):
    path = tmp_path / "tune.toml"
    path.write_text(pruned_toml('pruner = { type = "successive_halving", reduction_factor = 3 }'))
    spec = load_study(path).searches[0].search
    assert spec.pruner == Pruner(
        "successive_halving",
        (("min_epochs", 1), ("reduction_factor", 3), ("min_early_stopping_rate", 0)),
    )
    made = pruning.optuna_pruner(spec.pruner)
    assert (made._min_resource, made._reduction_factor) == (1, 3)
    path.write_text(pruned_toml("pruner = 'median'"))
    made = pruning.optuna_pruner(load_study(path).searches[0].search.pruner)
    assert (made._n_startup_trials, made._n_warmup_steps) == (5, 1)
    assert np.isclose(made._percentile, 50.0)


def test_warmup_epochs_are_never_judged_and_the_next_one_is():
    spec = Pruner("median", (("startup_trials", 1), ("warmup_epochs", 2)))
    earlier = [pruning.Curve((0.5, 0.6, 0.7, 0.8), False)]
    assert pruning.judge(spec, "maximize", earlier, [0.1, 0.1, 0.1, 0.1])[0] == 3
    assert pruning.judge(spec, "minimize", earlier, [0.9, 0.9, 0.9])[0] == 3
    assert pruning.judge(spec, "minimize", earlier, [0.1, 0.1, 0.1])[0] is None


def test_a_successive_halving_search_prunes_and_resumes_to_the_same_trials(tmp_path, fake_save):
    halving = "pruner = { type = 'successive_halving', reduction_factor = 2 }"
    path = tmp_path / "tune.toml"
    path.write_text(pruned_toml(halving))
    out = tmp_path / "out"
    _search(path, out)
    statuses = {r.status for _, records in _trial_runs(out) for r in records}
    assert statuses == {"done", "pruned"}
    assert _search(path, out) == []  # the rung notes replay to the same verdicts: nothing retrains
    clean = tmp_path / "clean"
    _search(path, clean)
    assert _states(clean) == _states(out)
