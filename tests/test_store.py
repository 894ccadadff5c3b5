"""The results store: one row per run, state changes as transactions, ownership of a folder."""

from __future__ import annotations

import sqlite3

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.store import DATABASE_NAME, Store


def _plan(*ids: str, experiments=("sizes",)):
    return [
        (run_id, {"arch": "seed", "seed": 0}, 0, {e: {"n": 1} for e in experiments})
        for run_id in ids
    ]


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "study") as opened:
        yield opened


def test_sync_plan_adds_pending_runs_once_and_keeps_results(store):
    store.sync_plan(_plan("aaa", "bbb", experiments=("sizes", "l1")))
    store.mark_running("aaa")
    store.record_result(
        "aaa", status="done", metrics={"test_accuracy": 0.5}, history=[], artifacts={}
    )
    store.sync_plan(_plan("aaa", "bbb", "ccc"))  # the study file gained a run and lost l1
    runs = {r.id: r for r in store.runs()}
    assert sorted(runs) == ["aaa", "bbb", "ccc"]
    assert runs["aaa"].status == "done" and runs["aaa"].metrics == {"test_accuracy": 0.5}
    assert runs["bbb"].status == "pending"
    assert list(runs["aaa"].experiments) == ["sizes"]


def test_a_run_shared_by_two_experiments_is_one_row(store):
    store.sync_plan(_plan("aaa", experiments=("sizes", "l1", "pooling")))
    (run,) = store.runs()
    assert sorted(run.experiments) == ["l1", "pooling", "sizes"]


def test_runs_dropped_from_the_plan_keep_their_row_but_not_their_experiments(store):
    store.sync_plan(_plan("aaa", "bbb"))
    store.sync_plan(_plan("bbb"))
    assert [r.id for r in store.runs(planned_only=True)] == ["bbb"]
    assert [r.id for r in store.runs()] == ["bbb", "aaa"]


def test_interrupted_runs_go_back_to_pending_and_count_attempts(store):
    store.sync_plan(_plan("aaa", "bbb"))
    store.mark_running("aaa")
    assert store.recover_interrupted() == ["aaa"]
    store.mark_running("aaa")
    run = store.get("aaa")
    assert (run.status, run.attempts) == ("running", 2)
    assert store.recover_interrupted() == ["aaa"]
    assert store.recover_interrupted() == []


def test_a_failure_keeps_its_reason_and_drops_partial_results(store):
    store.sync_plan(_plan("aaa"))
    store.mark_running("aaa")
    store.record_result("aaa", status="diverged", metrics={"x": 1}, history=[{}], artifacts={})
    store.record_failure("aaa", "OSError: disk full")
    run = store.get("aaa")
    assert (run.status, run.reason, run.metrics, run.history) == (
        "failed",
        "OSError: disk full",
        {},
        [],
    )


def test_a_transaction_that_raises_changes_nothing(store):
    store.sync_plan(_plan("aaa"))

    def broken_plan():
        yield from _plan("bbb")
        raise RuntimeError("the plan broke halfway")

    with pytest.raises(RuntimeError):
        store.sync_plan(broken_plan())
    assert [(r.id, list(r.experiments)) for r in store.runs()] == [("aaa", ["sizes"])]
    assert store.integrity_ok()


def test_a_folder_belongs_to_one_study_unless_forced(store):
    store.claim("seed", "text", "hash", force=False)
    store.claim("seed", "edited text", "hash2", force=False)  # an edited file: same study
    with pytest.raises(CnnlabError, match=r"holds the study 'seed', not 'other'.*--force"):
        store.claim("other", "text", "hash", force=False)
    store.claim("other", "text", "hash", force=True)
    assert store.meta()["study_name"] == "other"


def test_get_accepts_a_unique_prefix(store):
    store.sync_plan(_plan("abc111", "abc222", "def333"))
    assert store.get("def").id == "def333"
    with pytest.raises(CnnlabError, match="ambiguous"):
        store.get("abc")
    with pytest.raises(CnnlabError, match="no run with id 'zzz'"):
        store.get("zzz")


def test_open_without_create_refuses_a_folder_that_is_not_a_study(tmp_path):
    with pytest.raises(CnnlabError, match=f"not a cnnlab study folder \\(no {DATABASE_NAME}\\)"):
        Store.open(tmp_path, create=False)


def test_the_status_column_only_holds_known_statuses(store):
    store.sync_plan(_plan("aaa"))
    with pytest.raises(sqlite3.IntegrityError):
        store._connection.execute("UPDATE runs SET status = 'weird'")
