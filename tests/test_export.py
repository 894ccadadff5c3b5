"""TensorBoard and MLflow exports, read back with TensorBoard's and MLflow's own readers."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import (
    api_pb2,
    backend_context,
    get_experiment,
    list_session_groups,
)
from tensorboard.plugins.hparams import metadata as hparams_metadata

import fake_runs
import fake_studies
from cnnlab.errors import CnnlabError
from cnnlab.store import FINISHED, RunRecord, Store
from cnnlab.study import runner
from cnnlab.study.callbacks import TrainBegin
from cnnlab.tracking import export
from cnnlab.training import runfolder

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")

EPOCH_KEYS = {"loss": "loss", "accuracy": "accuracy", "val_loss": "val_loss"}
EPOCH_KEYS |= {"val_accuracy": "val_accuracy", "seconds": "epoch_seconds"}
FINAL_KEYS = ("train_accuracy", "train_loss", "test_accuracy", "test_loss", "val_accuracy")
FINAL_KEYS += ("val_loss", "fit_seconds")


def _scratch_folder(tmp_path_factory) -> Path:
    """A folder in memory where there is one: MLflow's SQLite migrations fsync a lot."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shm.stat().st_mode & 0o002:
        return Path(tempfile.mkdtemp(prefix="cnnlab-export-", dir=shm))
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-seed study of 12 runs (fake training), two of them diverged."""
    folder = tmp_path_factory.mktemp("export")
    path = folder / "mini.toml"
    path.write_text(fake_studies.STUDY_TOML.replace("[0, 0.0001, 1]", "[0, 0.0001, 1, 100]"))
    with fake_studies.fake_training(fake_runs.fake_fit):
        runner.run_study(
            path,
            out=folder / "out",
            data=fake_runs.zeros_cifar(),
            execution=fake_studies.IN_PROCESS,
        )
    return folder / "out"


@pytest.fixture(scope="module")
def records(finished) -> list[RunRecord]:
    with Store.open(finished, create=False) as store:
        return [record for record in store.runs(planned_only=True) if record.status in FINISHED]


@pytest.fixture(scope="module")
def exported(finished, tmp_path_factory):
    """The study exported once to TensorBoard and to an MLflow SQLite store."""
    scratch = _scratch_folder(tmp_path_factory)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        uri = f"sqlite:///{scratch}/mlflow.db"
        lines = export.export_study(finished, tensorboard=scratch / "tensorboard", mlflow=uri)
        from mlflow import MlflowClient

        yield {
            "lines": lines,
            "logdir": scratch / "tensorboard",
            "uri": uri,
            "client": MlflowClient(uri),
            "scratch": scratch,
        }
    shutil.rmtree(scratch, ignore_errors=True)


# --- TensorBoard -----------------------------------------------------------------------------


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run folder as TensorBoard reads it: tag -> [(step, value)]."""
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def expected_scalars(record: RunRecord) -> dict[str, list[tuple[int, float]]]:
    """What a run's folder should hold, from the store, as float32 (TensorBoard's scalars)."""
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in record.history:
        for key, tag in EPOCH_KEYS.items():
            expected.setdefault(tag, []).append((row["epoch"], float(np.float32(row[key]))))
    last = record.history[-1]["epoch"]
    for key in FINAL_KEYS:
        expected[f"final/{key}"] = [(last, float(np.float32(record.metrics[key])))]
    return expected


def same_series(actual, expected) -> bool:
    """Equal (step, value) series, NaN equal to NaN (a diverged run's loss)."""
    return [step for step, _ in actual] == [step for step, _ in expected] and np.array_equal(
        [value for _, value in actual], [value for _, value in expected], equal_nan=True
    )


def assert_tensorboard_holds(logdir: Path, records: list[RunRecord]) -> None:
    folders = {path.name for path in logdir.iterdir() if path.is_dir()}
    assert folders == {export.run_name(record) for record in records}
    for record in records:
        folder = logdir / export.run_name(record)
        assert len(list(folder.iterdir())) == 1  # one event file: nothing appended to old ones
        actual, expected = scalars(folder), expected_scalars(record)
        assert sorted(actual) == sorted(expected)
        for tag in expected:
            assert same_series(actual[tag], expected[tag]), (record.id, tag)


def test_tensorboard_holds_every_scalar_of_every_run(exported, records):
    assert len(records) == 12 and any(record.status == "diverged" for record in records)
    assert any(math.isnan(row["loss"]) for record in records for row in record.history)
    assert_tensorboard_holds(exported["logdir"], records)
    assert exported["lines"][0].startswith("TensorBoard: 12 runs -> ")


def hparams_contents(folder: Path) -> dict[str, bytes]:
    """The HParams plugin's summaries in a folder's own event files: tag -> plugin content."""
    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator.PluginTagToContent(hparams_metadata.PLUGIN_NAME)


def test_the_hparams_summaries_name_each_runs_varied_fields_and_final_metrics(exported, records):
    logdir = exported["logdir"]
    experiment = hparams_metadata.parse_experiment_plugin_data(
        hparams_contents(logdir)[hparams_metadata.EXPERIMENT_TAG]
    )
    # train_size, l1 and arch place runs in the experiments; the seed repeats them.
    infos = {info.name: info for info in experiment.hparam_infos}
    assert sorted(infos) == ["arch", "l1", "seed", "train_size"]
    assert infos["arch"].type == api_pb2.DATA_TYPE_STRING
    assert list(infos["arch"].domain_discrete) == ["seed", "seed-maxpool"]
    assert list(infos["l1"].domain_discrete) == [0, 0.0001, 1, 100]
    assert [info.name.tag for info in experiment.metric_infos] == [
        f"final/{key}" for key in FINAL_KEYS
    ]
    for record in records:
        contents = hparams_contents(logdir / export.run_name(record))
        start = hparams_metadata.parse_session_start_info_plugin_data(
            contents[hparams_metadata.SESSION_START_INFO_TAG]
        )
        assert {
            key: value.number_value for key, value in start.hparams.items() if key != "arch"
        } == {key: record.config[key] for key in ("l1", "seed", "train_size")}
        assert start.hparams["arch"].string_value == record.config["arch"]
        end = hparams_metadata.parse_session_end_info_plugin_data(
            contents[hparams_metadata.SESSION_END_INFO_TAG]
        )
        assert end.status == (
            api_pb2.STATUS_SUCCESS if record.status == "done" else api_pb2.STATUS_FAILURE
        )


def hparams_table(logdir: Path) -> tuple[api_pb2.Experiment, dict[str, api_pb2.SessionGroup]]:
    """The HParams dashboard's experiment and table, computed by the plugin's own backend."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(
        base_plugin.TBContext(logdir=str(logdir), data_provider=provider, multiplexer=multiplexer)
    )
    request_context = context.RequestContext()
    experiment = get_experiment.Handler(
        request_context, backend, "", api_pb2.GetExperimentRequest()
    ).run()
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=1000,
        allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE],
        col_params=[api_pb2.ColParams(hparam=info.name) for info in experiment.hparam_infos]
        + [api_pb2.ColParams(metric=info.name) for info in experiment.metric_infos],
    )
    table = list_session_groups.Handler(request_context, backend, "", request).run()
    return experiment, {group.name: group for group in table.session_groups}


def test_the_hparams_dashboard_shows_one_row_per_run_with_its_final_metrics(exported, records):
    experiment, rows = hparams_table(exported["logdir"])
    assert [info.name.tag for info in experiment.metric_infos][:2] == [
        "final/train_accuracy",
        "final/train_loss",
    ]
    assert sorted(rows) == sorted(export.run_name(record) for record in records)
    for record in records:
        row = rows[export.run_name(record)]
        assert row.hparams["seed"].number_value == record.seed
        assert row.hparams["arch"].string_value == record.config["arch"]
        values = {metric.name.tag: metric.value for metric in row.metric_values}
        assert values == {
            f"final/{key}": pytest.approx(record.metrics[key], rel=1e-6) for key in FINAL_KEYS
        }
        assert {metric.training_step for metric in row.metric_values} == {
            record.history[-1]["epoch"]
        }


# --- MLflow ----------------------------------------------------------------------------------


def mlflow_children(client, study_name: str):
    """The study's parent MLflow run and its children by cnnlab run id (each id once)."""
    experiment = client.get_experiment_by_name(study_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in runs if run.data.tags.get("cnnlab.role") == "study"]
    assert len(parents) == 1
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId")]
    assert len(runs) == len(children) + 1
    by_id = {run.data.tags["cnnlab.run_id"]: run for run in children}
    assert len(by_id) == len(children), "a cnnlab run is logged twice"
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}
    return parents[0], by_id


def metric_series(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, key))


def assert_mlflow_holds(
    client, study_name: str, records: list[RunRecord], study_dir: Path, failed: tuple = ()
):
    """Every finished run once, with all its values; besides them only the `failed` run ids."""
    _, children = mlflow_children(client, study_name)
    assert sorted(children) == sorted([*failed, *(record.id for record in records)])
    for record in records:
        run = children[record.id]
        assert run.info.status == "FINISHED"
        assert run.info.run_name == export.run_name(record)
        assert run.data.tags["cnnlab.status"] == record.status
        params = run.data.params
        assert sorted(params) == sorted(record.config)
        for key, value in record.config.items():
            assert (
                params[key] == value if isinstance(value, str) else json.loads(params[key]) == value
            )
        assert len(run.data.metrics) == len(EPOCH_KEYS) + len(FINAL_KEYS)
        for key, name in EPOCH_KEYS.items():
            expected = [(row["epoch"], row[key]) for row in record.history]
            assert same_series(metric_series(client, run.info.run_id, name), expected)
        last = record.history[-1]["epoch"]
        for key in FINAL_KEYS:
            assert metric_series(client, run.info.run_id, f"final/{key}") == [
                (last, record.metrics[key])
            ]
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"config.json", "metrics.json", "history.png", "measurements.json"}


def test_mlflow_holds_a_parent_per_study_and_every_param_metric_and_artifact(
    exported, records, finished
):
    client = exported["client"]
    parent, _ = mlflow_children(client, "mini")
    with Store.open(finished, create=False) as store:
        meta = store.meta()
    assert parent.data.tags["cnnlab.study.runner"] == "mini"
    assert parent.data.tags["cnnlab.study_sha256"] == meta["study_sha256"]
    assert parent.info.status == "FINISHED"
    assert_mlflow_holds(client, "mini", records, finished)
    record = records[0]
    _, children = mlflow_children(client, "mini")
    downloaded = client.download_artifacts(
        children[record.id].info.run_id, "metrics.json", str(exported["scratch"])
    )
    assert Path(downloaded).read_bytes() == (finished / record.artifacts["metrics"]).read_bytes()
    assert exported["lines"][1].startswith("MLflow: 12 runs logged, 0 unchanged -> sqlite:///")


def test_reexporting_duplicates_nothing(exported, records, finished):
    client = exported["client"]
    _, before = mlflow_children(client, "mini")
    lines = export.export_study(finished, tensorboard=exported["logdir"], mlflow=exported["uri"])
    assert lines[1].startswith("MLflow: 0 runs logged, 12 unchanged")
    _, after = mlflow_children(client, "mini")
    assert {key: run.info.run_id for key, run in after.items()} == {
        key: run.info.run_id for key, run in before.items()
    }
    assert_tensorboard_holds(exported["logdir"], records)
    assert_mlflow_holds(client, "mini", records, finished)


def test_a_run_trained_again_replaces_its_mlflow_run_and_tensorboard_folder(
    exported, finished, tmp_path
):
    # A copy of the study under another name (its own MLflow experiment), one run redone.
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    logdir = tmp_path / "tensorboard"
    with Store.open(copy) as store:
        store.set_meta({"study_name": "mini-redo"})
    export.export_study(copy, tensorboard=logdir, mlflow=exported["uri"])
    client = exported["client"]
    _, before = mlflow_children(client, "mini-redo")
    with Store.open(copy) as store:
        record = next(record for record in store.runs() if record.status == "done")
        store.mark_running(record.id)
        history = [{**row, "loss": row["loss"] / 2} for row in record.history]
        store.record_result(
            record.id,
            status="done",
            metrics=record.metrics,
            history=history,
            artifacts=record.artifacts,
        )
        redone = store.runs(planned_only=True)
    lines = export.export_study(copy, tensorboard=logdir, mlflow=exported["uri"])
    assert lines[1].startswith("MLflow: 1 runs logged, 11 unchanged")
    _, after = mlflow_children(client, "mini-redo")
    assert after[record.id].info.run_id != before[record.id].info.run_id
    assert client.get_run(before[record.id].info.run_id).info.lifecycle_stage == "deleted"
    finished_records = [run for run in redone if run.status in FINISHED]
    assert_mlflow_holds(client, "mini-redo", finished_records, copy)
    assert_tensorboard_holds(logdir, finished_records)


# --- live ------------------------------------------------------------------------------------


def test_the_live_loggers_driven_like_a_study_log_what_the_export_does(
    exported, records, finished, tmp_path
):
    # The store as a study leaves it: each run marked running, its epochs, then recorded, and
    # the callbacks told after the store (as `runner` tells them).
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    logdir = tmp_path / "tensorboard"
    with Store.open(copy) as store:
        store.set_meta({"study_name": "mini-live"})
        logger = export.open_loggers([f"tensorboard:{logdir}", f"mlflow:{exported['uri']}"])
        planned = store.runs(planned_only=True)
        logger.on_train_begin(TrainBegin(records, "live", copy, store.meta(), planned))
        for record in records:
            store.mark_running(record.id)
            logger.on_run_begin(record, store.get(record.id))
            for row in record.history:
                logger.on_epoch_end(record, row)
            store.record_result(
                record.id,
                status=record.status,
                metrics=record.metrics,
                history=record.history,
                artifacts=record.artifacts,
                reason=record.reason,
            )
            logger.on_run_end(record, store.get(record.id))
        # A run redone that fails after one epoch.
        failing = records[0]
        store.mark_running(failing.id)
        logger.on_run_begin(failing, store.get(failing.id))
        logger.on_epoch_end(failing, failing.history[0])
        store.record_failure(failing.id, "RuntimeError: boom")
        logger.on_run_end(failing, store.get(failing.id))
        logger.on_train_end()
        live_records = [run for run in store.runs(planned_only=True) if run.status in FINISHED]
    # TensorBoard: the same folders, scalars and HParams sessions as the export.
    names = [export.run_name(record) for record in live_records]
    folders = {path.name for path in logdir.iterdir() if path.is_dir()}
    assert folders == {*names, export.run_name(failing)}  # the failed run's folder stays
    assert scalars(logdir / export.run_name(failing))["loss"] == [
        (1, float(np.float32(failing.history[0]["loss"])))
    ]
    for name in names:
        live_scalars, exported_scalars = scalars(logdir / name), scalars(exported["logdir"] / name)
        assert sorted(live_scalars) == sorted(exported_scalars)
        for tag, series in live_scalars.items():
            assert same_series(series, exported_scalars[tag]), (name, tag)
        live_start, exported_start = (
            hparams_metadata.parse_session_start_info_plugin_data(
                hparams_contents(folder)[hparams_metadata.SESSION_START_INFO_TAG]
            ).hparams
            for folder in (logdir / name, exported["logdir"] / name)
        )
        assert live_start == exported_start
    # MLflow: the failed run is FAILED with its reason and the epoch it reached ...
    client = exported["client"]
    _, live = mlflow_children(client, "mini-live")
    assert live[failing.id].info.status == "FAILED"
    assert live[failing.id].data.tags["cnnlab.reason"] == "RuntimeError: boom"
    assert metric_series(client, live[failing.id].info.run_id, "loss") == [
        (1, failing.history[0]["loss"])
    ]
    # ... and every other run holds what the export holds.
    assert_mlflow_holds(client, "mini-live", live_records, copy, failed=(failing.id,))
    _, exported_children = mlflow_children(client, "mini")
    for record in live_records:
        assert live[record.id].data.params == exported_children[record.id].data.params


# --- specs, extras, imports ------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    ["tensorboard", "tensorboard:", "mlflow:", "mlflow:mlruns", "mlflow:ftp://host", "wandb:x"],
)
def test_a_bad_log_spec_is_one_line_naming_it(spec):
    with pytest.raises(CnnlabError) as raised:
        export.open_logger(spec)
    assert spec in str(raised.value) and "\n" not in str(raised.value)
    assert "tensorboard:DIR or mlflow:URI" in str(raised.value) or "sqlite:///" in str(raised.value)


@pytest.mark.parametrize("package", ["tensorboard", "mlflow"])
def test_a_missing_extra_says_how_to_install_it(package, finished, tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name.split(".")[0] == package]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError
    target = {"tensorboard": tmp_path / "tb", "mlflow": f"sqlite:///{tmp_path}/m.db"}[package]
    with pytest.raises(CnnlabError) as raised:
        export.export_study(finished, **{package: target})
    assert str(raised.value) == (
        f"--{package} needs the {package} package: pip install 'cnnlab[{package}]'"
    )
    with pytest.raises(CnnlabError, match=f"^--log {package} needs the {package} package"):
        export.open_logger(f"{package}:{target}")
    assert not (tmp_path / "tb").exists() and not (tmp_path / "m.db").exists()


def test_exporting_a_folder_that_is_no_study_says_so(tmp_path):
    with pytest.raises(CnnlabError, match="not a cnnlab study folder"):
        export.export_study(tmp_path, tensorboard=tmp_path / "tb")
    assert not (tmp_path / "tb").exists()


def test_importing_the_module_loads_neither_extra_nor_torch():
    code = (
        "import sys, cnnlab.tracking.export; "
        "print(sorted({'tensorboard', 'mlflow', 'torch'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_command_logs_a_study_live_and_exports_the_same(tmp_path, monkeypatch, capsys):
    # Through `cnnlab study --log` and `cnnlab export`, with the fake training in this process.
    from cnnlab.cli import main
    from cnnlab.execution import planning
    from cnnlab.training import loop

    def fit(config, data, *, device="auto", progress=None, prune=None):
        result = fake_runs.fake_fit(config, data, device=device)
        for row in result.history:  # as a real run reports its epochs
            progress({**row, "member": 0, "epochs": config.epochs})
        return result

    monkeypatch.setattr(loop, "fit", fit)
    monkeypatch.setattr(runfolder, "_save_files", fake_runs.fake_save_run)
    monkeypatch.setattr(planning, "process_count", lambda *args: 1)
    data = fake_runs.zeros_cifar()
    monkeypatch.setattr(
        "cnnlab.data.datasets.load_dataset", lambda name, source=None, **options: data
    )
    path = tmp_path / "mini.toml"
    path.write_text(fake_studies.STUDY_TOML)
    out, live, replayed = tmp_path / "out", tmp_path / "live", tmp_path / "replayed"
    command = ["study", str(path), "--out", str(out), "--repeats", "1"]
    assert main([*command, "--log", f"tensorboard:{live}"]) == 0
    assert main(["export", str(out), "--tensorboard", str(replayed)]) == 0
    assert "tensorboard" in capsys.readouterr().out
    for folder in sorted(p for p in live.iterdir() if p.is_dir()):
        ours, theirs = EventAccumulator(str(folder)), EventAccumulator(str(replayed / folder.name))
        ours.Reload()
        theirs.Reload()
        tags = sorted(ours.Tags()["scalars"])
        assert tags and tags == sorted(theirs.Tags()["scalars"])
        for tag in tags:
            values = [(e.step, e.value) for e in ours.Scalars(tag)]
            assert values == [(e.step, e.value) for e in theirs.Scalars(tag)], (folder, tag)
    assert main([*command, "--log", "wandb:project"]) == 2
    assert "wandb" in capsys.readouterr().err
