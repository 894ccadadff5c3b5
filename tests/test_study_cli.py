"""End to end through the `cnnlab` command: real training of the tiny net on a PNG folder."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import image_folders
from cnnlab.store import Store
from proc_table import alive, children_of, command_line, wait_gone

pytestmark = pytest.mark.slow

TINY_STUDY = """
[study]
name = "tiny"
repeats = 1

[defaults]
arch = "tiny"
train_size = 150
epochs = 2
batch_size = 32

[experiments.l1]
kind = "l1"
grid = { l1 = [0, 1] }

[experiments.seeds]
grid = { seed = [0, 1] }
l1 = 0.0001
subset_seed = 1
"""


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory) -> Path:
    return image_folders.write_png_folder(tmp_path_factory.mktemp("pngs"))


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("study") / "tiny.toml"
    path.write_text(TINY_STUDY)
    return path


def _at_a_terminal() -> None:
    """Ctrl-C's default action, as at a terminal: a shell's background job (`pytest &`)
    starts with SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cnnlab(*arguments: str, **options) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_at_a_terminal,
        **options,
    )


def _study(study_file: Path, data: Path, out: Path) -> subprocess.Popen:
    # Two runs train at once in worker processes, as they do by default on a 2-core machine.
    return _cnnlab(
        "study", str(study_file), "--workers", "2", "--data", str(data), "--out", str(out)
    )


@pytest.fixture(scope="module")
def uninterrupted(png_folder, study_file, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("clean") / "out"
    child = _study(study_file, png_folder, out)
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr
    return out, stdout


def test_a_study_trains_every_run_and_says_where_the_report_is(uninterrupted):
    out, stdout = uninterrupted
    assert stdout.rstrip().splitlines()[-1] == f"report: {out / 'report.html'}"
    with Store.open(out) as store:
        runs = store.runs()
    # Two L1 weights, and two seeds on another subset of images (subset_seed 1).
    assert len(runs) == 4
    assert all(r.status == "done" for r in runs), [(r.id, r.reason) for r in runs]
    for run in runs:
        assert len(run.history) == 2
        assert 0 <= run.metrics["test_accuracy"] <= 1
        assert all((out / path).stat().st_size > 0 for path in run.artifacts.values())
    html = (out / "report.html").read_text()
    assert html.count("<img ") >= 4


def test_kill_9_then_rerun_gives_the_uninterrupted_results(
    uninterrupted, png_folder, study_file, tmp_path
):
    out = tmp_path / "out"
    database = out / "study.sqlite"
    # Kills mid-study: with one run done, then with three, so that one run is left to redo alone
    # (it trains in the command's process, where the others trained in workers).
    for done_before_kill in (1, 3):
        child = _study(study_file, png_folder, out)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            statuses = _statuses(database)
            if statuses.count("done") >= done_before_kill and "running" in statuses:
                break
            time.sleep(0.005)
        workers = children_of(child.pid)
        child.send_signal(signal.SIGKILL)
        child.communicate()
        assert _statuses(database).count("running") <= 2  # at most the runs in the workers' hands
        assert not wait_gone(workers), "a worker outlived its killed study"
    child = _study(study_file, png_folder, out)
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr
    with Store.open(out) as store, Store.open(uninterrupted[0]) as clean:
        resumed = {r.id: r for r in store.runs()}
        expected = {r.id: r for r in clean.runs()}
    assert sorted(resumed) == sorted(expected)
    assert max(r.attempts for r in resumed.values()) >= 2
    assert not list((out / "runs").glob(".*")), "a temporary file or folder was left behind"
    timing = {"fit_seconds", "eval_seconds"}
    for run_id, run in expected.items():
        assert resumed[run_id].status == "done"
        # Bit for bit: every metric but the timings, every history value but the seconds...
        ours = {k: v for k, v in resumed[run_id].metrics.items() if k not in timing}
        assert ours == {k: v for k, v in run.metrics.items() if k not in timing}, run_id
        strip = [{k: v for k, v in row.items() if k != "seconds"} for row in run.history]
        assert [
            {k: v for k, v in row.items() if k != "seconds"} for row in resumed[run_id].history
        ] == strip
        # ...and every weight.
        weights = torch.load(out / resumed[run_id].artifacts["weights"], weights_only=True)
        reference = torch.load(uninterrupted[0] / run.artifacts["weights"], weights_only=True)
        assert all(torch.equal(weights[name], reference[name]) for name in reference), run_id


def test_ctrl_c_while_the_study_starts_stops_it(png_folder, study_file, tmp_path):
    # A Ctrl-C pressed while the workers start was once ignored: the study trained on.
    for delay in (0.8, 1.6, 2.4):
        out = tmp_path / f"out-{delay}"
        child = _study(study_file, png_folder, out)
        time.sleep(delay)
        children = children_of(child.pid)
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=120)
        # 130, never a death by SIGINT: the study ignores a late Ctrl-C on its way out, which
        # Python's finalisation would otherwise meet with SIGINT's default action.
        assert child.returncode == 130, (delay, stderr)
        assert stderr.strip().endswith("cnnlab: interrupted"), stderr
        assert "Traceback" not in stderr, stderr
        assert not wait_gone(children), [command_line(pid) for pid in children]


def test_ctrl_c_stops_the_workers_and_leaves_their_runs_pending(png_folder, study_file, tmp_path):
    out = tmp_path / "out"
    child = _study(study_file, png_folder, out)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "running" not in _statuses(out / "study.sqlite"):
        time.sleep(0.005)
    children = children_of(child.pid)
    workers = [pid for pid in children if "multiprocessing.spawn" in command_line(pid)]
    assert workers, [command_line(pid) for pid in children]
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130 and stderr.strip().endswith("cnnlab: interrupted")
    assert "Traceback" not in stderr
    statuses = _statuses(out / "study.sqlite")
    assert "running" not in statuses and "pending" in statuses
    # The study kills and reaps its workers before it exits...
    assert not any(alive(pid) for pid in workers), "a worker outlived its interrupted study"
    # ...while multiprocessing's resource tracker leaves by itself once the study's pipe closes.
    assert not wait_gone(children), [command_line(pid) for pid in children]


def _statuses(database: Path) -> list[str]:
    if not database.is_file():
        return []
    try:
        with sqlite3.connect(database, timeout=5) as connection:
            return [row[0] for row in connection.execute("SELECT status FROM runs")]
    except sqlite3.Error:
        return []
