"""The main job as one object and one call: StudyRun, its callbacks, and the report after it."""

from __future__ import annotations

import sys

import pytest

import cnnlab
import fake_runs
import fake_studies
from cnnlab.cli import main
from cnnlab.config import Execution
from cnnlab.data import datasets
from cnnlab.errors import CnnlabError
from cnnlab.execution import planning
from cnnlab.store import Status
from cnnlab.study.callbacks import Callback, CallbackList
from cnnlab.study.runner import StudyRun

STUDY = fake_studies.tiny_study_toml("piped", "{ l1 = [0.0, 0.5, 100] }").replace(
    "epochs = 2", "epochs = 3"
)


def reporting_fit(config, data, *, device="auto", progress=None, prune=None):
    """`fake_runs.fake_fit`, telling each epoch's row as a real run does."""
    result = fake_runs.fake_fit(config, data, device=device)
    for row in result.history:
        progress({**row, "member": 0, "epochs": config.epochs})
    return result


class Recorder(Callback):
    """Every call, in order, as (method, what it was told)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def on_message(self, line):
        self.calls.append(("message", line))

    def on_train_begin(self, begin):
        self.calls.append(("train_begin", [run.id for run in begin.runs], begin.study_dir))

    def on_run_begin(self, run, record):
        self.calls.append(("run_begin", run.id, record.status))

    def on_epoch_end(self, run, row):
        self.calls.append(("epoch_end", run.id, row["epoch"]))

    def on_run_end(self, run, record):
        self.calls.append(("run_end", run.id, record.status))

    def on_train_end(self):
        self.calls.append(("train_end",))


def _study(tmp_path) -> StudyRun:
    path = tmp_path / "piped.toml"
    path.write_text(STUDY)
    execution = fake_studies.IN_PROCESS
    return StudyRun(path, out=tmp_path / "out", data=fake_runs.zeros_cifar(), execution=execution)


def test_a_callback_is_told_every_run_in_order_after_the_store(tmp_path):
    study = _study(tmp_path)
    recorder = Recorder()
    with fake_studies.fake_training(reporting_fit):
        outcome = study.run([recorder])
    kinds = [call[0] for call in recorder.calls]
    assert kinds[0] == "message" and kinds[1] == "train_begin" and kinds[-1] == "train_end"
    planned = recorder.calls[1][1]
    assert sorted(planned) == sorted(run.id for run in study.plan()) and len(planned) == 3
    for run_id in planned:
        mine = [call for call in recorder.calls if call[0] != "message" and run_id in call]
        assert [call[0] for call in mine] == [
            "run_begin",
            *["epoch_end"] * (2 if mine[-1][2] == Status.DIVERGED else 3),
            "run_end",
        ]
        assert mine[0][2] == Status.RUNNING  # told after the store marked it
        assert mine[-1][2] in (Status.DONE, Status.DIVERGED)
    assert outcome.counts[Status.DIVERGED] == 1 and outcome.counts[Status.DONE] == 2
    # Again: nothing to train, so no batch begins; the study's own lines still come.
    again = Recorder()
    with fake_studies.fake_training(fake_runs.fake_fit):
        assert study.run([again]).skipped == 3
    assert {call[0] for call in again.calls} == {"message"}


def test_a_callback_that_fails_is_dropped_with_one_line_only_where_asked(tmp_path):
    class Broken(Callback):
        name = "the broken one"

        def on_epoch_end(self, run, row):
            raise OSError("the disk went away")

    told: list[str] = []
    recorder = Recorder()
    tolerant = CallbackList([Broken(), recorder], on_error=told.append)
    with fake_studies.fake_training(reporting_fit):
        _study(tmp_path).run([tolerant])
    assert told == ["the broken one: the disk went away; it is told nothing more"]
    assert [call[0] for call in recorder.calls].count("run_end") == 3
    (tmp_path / "strict").mkdir()
    with fake_studies.fake_training(reporting_fit), pytest.raises(OSError, match="disk"):
        _study(tmp_path / "strict").run([Broken()])


def test_the_python_route_and_the_command_write_the_same_report(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: fake_runs.zeros_cifar())
    monkeypatch.setattr(planning, "process_count", lambda *args: 1)
    path = tmp_path / "piped.toml"
    path.write_text(STUDY)
    with fake_studies.fake_training(fake_runs.fake_fit):
        done = cnnlab.study_and_report(StudyRun(path, out=tmp_path / "api"))
        code = main(["study", str(path), "--out", str(tmp_path / "cli")])
    assert code == 0 and done.outcome.counts[Status.DONE] == 2
    by_api = done.paths["md"].read_text()
    by_cli = (tmp_path / "cli" / "report.md").read_text()
    assert _without_times(by_api) == _without_times(by_cli)
    assert "## Inside the best runs" in by_api


def _without_times(markdown: str) -> str:
    """The report without the lines that hold wall-clock times or its own folder's name."""
    return "\n".join(
        line
        for line in markdown.splitlines()
        if not any(word in line for word in ("wall", "seconds", " s ", "api", "cli", "UTC"))
    )


def test_without_captum_the_study_is_reported_and_says_how_to_install_it(
    tmp_path, monkeypatch, capsys
):
    # The base install (`pip install cnnlab`): no Captum. The study trains, the report is
    # written, and its "Inside the best runs" says how to get Grad-CAM.
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: fake_runs.zeros_cifar())
    monkeypatch.setattr(planning, "process_count", lambda *args: 1)
    path = tmp_path / "piped.toml"
    path.write_text(STUDY)
    with fake_studies.fake_training(fake_runs.fake_fit):
        assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("report: ")
    markdown = (tmp_path / "out" / "report.md").read_text()
    section = markdown.split("## Inside the best runs", 1)[1].split("\n## ", 1)[0]
    assert "pip install 'cnnlab[explain]'" in section


def test_no_explain_skips_the_explain_step(tmp_path, monkeypatch):
    # The explain step is the report's: with --no-explain it is never asked.
    from cnnlab.report import report

    asked = []
    monkeypatch.setattr(report, "explain_best_runs", lambda folder: asked.append(folder))
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: fake_runs.zeros_cifar())
    monkeypatch.setattr(planning, "process_count", lambda *args: 1)
    path = tmp_path / "piped.toml"
    path.write_text(STUDY)
    with fake_studies.fake_training(fake_runs.fake_fit):
        assert main(["study", str(path), "--out", str(tmp_path / "out"), "--no-explain"]) == 0
        assert main(["report", str(tmp_path / "out"), "--no-explain"]) == 0
        assert asked == []
        assert main(["report", str(tmp_path / "out")]) == 0
    assert asked == [str(tmp_path / "out")]


def test_execution_settings_are_checked_where_they_are_made(tmp_path):
    with pytest.raises(CnnlabError, match="workers 0: must be at least 1"):
        Execution(workers=0)
    with pytest.raises(CnnlabError, match="backend 'slurm'"):
        Execution(backend="slurm")
    with pytest.raises(CnnlabError, match="is for the Ray backend"):
        _study_with(tmp_path, Execution(address="127.0.0.1:6379"))
    assert not (tmp_path / "out").exists()


def _study_with(tmp_path, execution: Execution) -> StudyRun:
    path = tmp_path / "piped.toml"
    path.write_text(STUDY)
    return StudyRun(path, out=tmp_path / "out", execution=execution)


def test_a_new_folder_of_a_study_refused_after_its_store_exists_is_removed(tmp_path):
    # A refusal found only once the store exists (here: the data's record), for a folder made by
    # this run: nothing of it stays. A folder holding finished runs is kept whatever happens.
    study = _study(tmp_path)

    def refuse(*args, **options):
        raise CnnlabError("data x: refused")

    with fake_studies.fake_training(fake_runs.fake_fit), pytest.MonkeyPatch.context() as patch:
        patch.setattr("cnnlab.study.data._record_data", refuse)
        with pytest.raises(CnnlabError, match="refused"):
            study.run()
        assert not (tmp_path / "out").exists()
        patch.undo()
        study.run()
        patch.setattr("cnnlab.store.Store.claim", refuse)
        with pytest.raises(CnnlabError, match="refused"):
            study.run()
    assert (tmp_path / "out" / "study.sqlite").is_file()
