"""Studies run with fake training, in this process or in a child to kill: the harness of the
orchestration tests (`fake_runs` holds the fakes themselves)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from cnnlab.config import Execution
from cnnlab.store import RunRecord, Store
from cnnlab.study import runner
from cnnlab.study.progress import Lines
from cnnlab.training import group_net, runfolder
from fake_runs import fake_save_run, zeros_cifar

# Fake training runs in this process, one run after another (the patched trainer is this
# process's): the in-process execution every fake study uses.
IN_PROCESS = Execution(device="cpu", workers=1)


@contextlib.contextmanager
def fake_training(fit, save_run=fake_save_run) -> Iterator[None]:
    """While open, runs train by `fit` (`loop.fit`'s signature) and their folders are written
    by `save_run` (`runfolder.save_run`'s inner writer), in this process: studies run with
    `IN_PROCESS` train no net."""

    def train_together(jobs, data, *, device, progress):
        (job,) = jobs  # on the CPU every run trains alone
        pruning = {"prune": job.prune} if job.prune is not None else {}
        return [fit(job.config, data, device=device, progress=progress, **pruning)]

    saved = group_net.train_together, runfolder._save_files
    group_net.train_together = train_together
    if save_run is not None:
        runfolder._save_files = save_run
    try:
        yield
    finally:
        group_net.train_together, runfolder._save_files = saved


def study_records(
    study_file: Path, out: Path, data, fit=None, *, workers=None, echo=None, **options
) -> dict[str, RunRecord]:
    """Run `study_file` into `out` on the CPU (in this process, trained by `fit`, if given),
    no report; its runs' records by id. `echo` gets the study's lines."""
    callbacks = [Lines(echo)] if echo is not None else []
    if fit is not None:
        with fake_training(fit, save_run=None):
            runner.run_study(
                study_file, out=out, data=data, execution=IN_PROCESS, callbacks=callbacks, **options
            )
    else:
        execution = Execution(device="cpu", workers=workers)
        runner.run_study(
            study_file, out=out, data=data, execution=execution, callbacks=callbacks, **options
        )
    with Store.open(out, create=False) as store:
        return {record.id: record for record in store.runs()}


def run_fake_study(
    folder: Path,
    toml: str,
    fit,
    *,
    file_name: str = "study.toml",
    repeats: int | None = None,
    save_run=None,
) -> Path:
    """`toml` written into `folder` as `file_name` and run there, quietly, with `fit` on
    `zeros_cifar` (and `save_run`, by default `fake_save_run`); returns the study folder."""
    path = folder / file_name
    path.write_text(toml)
    with fake_training(fit, save_run or fake_save_run):
        outcome = runner.run_study(
            path, out=folder / "out", data=zeros_cifar(), repeats=repeats, execution=IN_PROCESS
        )
    return outcome.study_dir


_FAKE_STUDY = """
import sys
sys.path.insert(0, {tests!r})
import fake_studies, {module}
from cnnlab.study import runner
from cnnlab.study.progress import Lines
from fake_runs import zeros_cifar
with fake_studies.fake_training({fit}):
    runner.run_study({path!r}, out={out!r}, data=zeros_cifar(), execution=fake_studies.IN_PROCESS)
"""


def start_fake_study(path: Path, out: Path, seconds: float, fit: str = "fake_runs.fake_fit"):
    """`run_study` of `path` in a child process with a fake fit (`fit`: "module.function" of the
    tests) taking `seconds` a run and no real save: a study to kill -9 at a chosen moment."""
    code = _FAKE_STUDY.format(
        tests=str(Path(__file__).parent),
        module=fit.rsplit(".", 1)[0],
        path=str(path),
        out=str(out),
        fit=fit,
    )
    env = {**os.environ, "CNNLAB_FAKE_SECONDS": str(seconds)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL)


def stored_statuses(out: Path) -> list[str]:
    """Every run's status in the study folder `out`, as another process sees them now."""
    try:
        with sqlite3.connect(out / "study.sqlite", timeout=5) as connection:
            return [row[0] for row in connection.execute("SELECT status FROM runs")]
    except sqlite3.Error:
        return []


def events_by_run(events) -> dict[int, list]:
    """`events.Event`s (from worker processes or streams) grouped by run index, in order."""
    by_run: dict[int, list] = {}
    for event in events:
        by_run.setdefault(event.index, []).append(event)
    return by_run


def tiny_study_toml(name: str, grid: str) -> str:
    """A one-repeat, one-experiment study of 2-epoch `tiny` runs on 100 images; `grid` in TOML."""
    return f"""
[study]
name = "{name}"
repeats = 1

[defaults]
arch = "tiny"
train_size = 100
epochs = 2
batch_size = 32

[experiments.grid]
grid = {grid}
"""


STUDY_TOML = """
[study]
name = "mini"
description = "A small study for tests."
repeats = 2

[defaults]
arch = "seed"
train_size = 5000
l1 = 0.0001
epochs = 4

[experiments.sizes]
title = "Sizes"
kind = "size"
grid = { train_size = [5000, 10000] }

[[experiments.sizes.reference]]
train_size = 5000
fit_seconds = 172.7
train_accuracy = 0.63
test_accuracy = 0.50

[experiments.l1]
title = "L1"
kind = "l1"
grid = { l1 = [0, 0.0001, 1] }

[[experiments.l1.reference]]
l1 = 1
train_accuracy = 0.22
test_accuracy = 0.22

[experiments.pooling]
title = "Pooling"
kind = "pooling"
grid = { arch = ["seed", "seed-maxpool"] }
"""
