"""Study files -> runs: strict parsing, the seed study's plan, resuming, failures, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import fake_runs
import fake_studies
from cnnlab.cli import main
from cnnlab.config import Execution, RunConfig, run_id
from cnnlab.errors import CnnlabError
from cnnlab.execution import planning
from cnnlab.store import Store
from cnnlab.study import folder, runner
from cnnlab.study.plan import plan_runs
from cnnlab.study.progress import Lines
from cnnlab.study.runner import StudyRun, load_study, run_study
from cnnlab.training import loop, runfolder

SEED_STUDY = Path(__file__).parents[1] / "studies" / "seed.toml"


@pytest.fixture
def fake_training(monkeypatch):
    """`fit` and `save_run` replaced by instant stand-ins; returns the configs trained."""
    trained: list[RunConfig] = []

    def fit(config, data, *, device="auto", progress=None, prune=None):
        trained.append(config)
        return fake_runs.fake_fit(config, data, device=device)

    monkeypatch.setattr(loop, "fit", fit)
    monkeypatch.setattr(runfolder, "_save_files", fake_runs.fake_save_run)
    # The stand-ins live in this process: worker processes would import the real `fit`.
    monkeypatch.setattr(planning, "process_count", lambda runs, device_type, requested=None: 1)
    return trained


@pytest.fixture
def tiny_data():
    """Ten black images: the fake runner never looks at them."""
    return fake_runs.zeros_cifar()


@pytest.fixture
def mini(tmp_path) -> Path:
    path = tmp_path / "mini.toml"
    path.write_text(fake_studies.STUDY_TOML)
    return path


def _run(path, out, data, *, force=False, device="auto", **options):
    """The study run as `cnnlab study` runs it (quietly)."""
    execution = Execution(device=device)
    return StudyRun(path, out=out, data=data, force=force, execution=execution, **options).run()


# --- parsing ----------------------------------------------------------------------------------


def test_the_seed_study_is_eleven_distinct_runs_per_repeat():
    seed = load_study(SEED_STUDY)
    plan = plan_runs(seed, repeats=1)
    assert len(plan) == 11
    assert len(plan_runs(seed)) == 33  # 3 repeats by default
    (shared,) = [run for run in plan if len(run.experiments) > 1]
    assert sorted(shared.experiments) == ["l1", "pooling", "sizes"]
    assert (shared.config.arch, shared.config.train_size, shared.config.l1) == ("seed", 5000, 1e-4)
    by_experiment = {name: [r for r in plan if name in r.experiments] for name in seed.defaults}
    del by_experiment
    sizes = sorted(r.config.train_size for r in plan if "sizes" in r.experiments)
    assert sizes == [5000, 10000, 20000, 40000]
    l1s = sorted(r.config.l1 for r in plan if "l1" in r.experiments)
    assert l1s == [0, 1e-4, 1e-3, 1, 10, 100]
    (deep,) = [r for r in plan if "depth" in r.experiments]
    assert (deep.config.arch, deep.config.train_size) == ("seed-deep", 50000)
    assert {r.config.epochs for r in plan} == {20}
    sizes_table = {row["train_size"]: row for row in seed.experiments[0].reference}
    assert sizes_table[40000]["fit_seconds"] == 914.9


def test_repeats_use_consecutive_seeds_and_change_the_id():
    plan = plan_runs(load_study(SEED_STUDY), repeats=3)
    seeds = sorted(r.config.seed for r in plan if r.config.train_size == 10000)
    assert seeds == [0, 1, 2]
    assert len({r.id for r in plan}) == len(plan)


def test_the_run_id_depends_on_the_config_only():
    assert run_id(RunConfig(l1=0.0)) == run_id(RunConfig(l1=0.0))
    assert run_id(RunConfig(seed=1)) != run_id(RunConfig(seed=0))
    assert len(run_id(RunConfig())) == 12


def test_integers_and_floats_for_a_float_field_give_one_run(tmp_path):
    text = fake_studies.STUDY_TOML.replace("l1 = 0.0001\nepochs", "l1 = 0\nepochs")
    path = tmp_path / "a.toml"
    path.write_text(text.replace("grid = { l1 = [0, 0.0001, 1] }", "grid = { l1 = [0.0, 1] }"))
    plan = plan_runs(load_study(path), repeats=1)
    (shared,) = [r for r in plan if "l1" in r.experiments and "sizes" in r.experiments]
    assert shared.config.l1 == 0.0


def test_dry_run_lists_every_run_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["study", str(SEED_STUDY), "--dry-run", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("11 runs")
    assert len({line.split()[0] for line in lines[:-1]}) == 11
    assert any("sizes: train_size=5000 | l1: l1=0.0001 | pooling: arch=seed" in x for x in lines)
    assert not any(tmp_path.iterdir())


BAD_INPUT = [
    # (replace this, with this, the line that is wrong, what the message says)
    ("epochs = 4", "epochs = 4\nepoch = 3", "epoch = 3", "defaults.epoch: unknown key; valid keys"),
    ("epochs = 4", 'epochs = "four"', 'epochs = "four"', "expected an integer, got str 'four'"),
    ("l1 = 0.0001\nepochs", 'l1 = "small"\nepochs', 'l1 = "small"', "expected a number"),
    ("grid = { l1 = [0, 0.0001, 1] }", "grid = {}", "grid = {}", "empty grid"),
    ("grid = { l1 = [0, 0.0001, 1] }", "grid = { l1 = [] }", "l1 = []", "non-empty list"),
    ('kind = "l1"', 'kind = "l2"', 'kind = "l2"', "unknown kind 'l2'; valid kinds: size, l1"),
    (
        "repeats = 2",
        "repeats = 0",
        "repeats = 0",
        "study.repeats: must be between 1 and 1000, got 0",
    ),
    ("train_size = 5000\nfit", "train_size = 7000\nfit", "train_size = 7000", "not among"),
    (
        '[experiments.l1]\ntitle = "L1"',
        '[experiments.l1]\ntitle = "L1"\ncolour = 1',
        "colour = 1",
        "experiments.l1.colour: unknown key",
    ),
    ("[experiments.pooling]", "[experiments.sizes]", "[experiments.sizes]", "twice"),
    ('name = "mini"', 'name = "a b"', 'name = "a b"', "must be letters, digits"),
    (
        'kind = "size"',
        'kind = "size"\ntargets = [0.7, 1.5]',
        "targets = [0.7, 1.5]",
        "a target is an accuracy between 0 and 1, got float 1.5",
    ),
    (
        'kind = "size"',
        'kind = "size"\ntargets = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]',
        "targets = [0.1",
        "at most 5 target accuracies, got 6",
    ),
    ('kind = "size"', 'kind = "size"\ntargets = 0.7', "targets = 0.7", "expected a list"),
]


@pytest.mark.parametrize(("old", "new", "wrong_line", "message"), BAD_INPUT)
def test_bad_study_files_fail_in_one_line_naming_file_key_and_line(
    tmp_path, capsys, old, new, wrong_line, message
):
    assert old in fake_studies.STUDY_TOML
    text = fake_studies.STUDY_TOML.replace(old, new, 1)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    lines = [n for n, t in enumerate(text.splitlines(), 1) if wrong_line in t]
    assert main(["study", str(path), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("cnnlab: error: ")
    assert message in error
    assert any(f"{path}:{n}:" in error or f"at line {n}," in error for n in lines), lines


def test_an_unknown_architecture_names_the_known_ones(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(fake_studies.STUDY_TOML.replace('"seed-maxpool"', '"seed-maxpoool"'))
    line = next(n for n, t in enumerate(path.read_text().splitlines(), 1) if "maxpoool" in t)
    with pytest.raises(
        CnnlabError,
        match=rf"bad.toml:{line}: experiments.pooling.grid.arch: unknown architecture"
        r" 'seed-maxpoool'; known: .*seed-maxpool",
    ):
        load_study(path)


# --- running and resuming ---------------------------------------------------------------------


def test_a_rerun_skips_finished_runs_and_redoes_broken_ones(
    mini, tmp_path, tiny_data, fake_training
):
    out = tmp_path / "out"
    outcome = _run(mini, out, tiny_data)
    assert (outcome.planned, outcome.counts["done"], len(fake_training)) == (10, 10, 10)
    assert len({run_id(config) for config in fake_training}) == 10

    again = _run(mini, out, tiny_data)
    assert (again.skipped, len(fake_training)) == (10, 10)

    with Store.open(out) as store:
        broken = store.runs()[3]
    (out / broken.artifacts["weights"]).unlink()
    _run(mini, out, tiny_data)
    assert len(fake_training) == 11 and run_id(fake_training[-1]) == broken.id
    with Store.open(out) as store:
        assert len(store.runs()) == 10
        assert all(r.status == "done" for r in store.runs())


def test_editing_the_study_adds_runs_and_keeps_matching_ones(
    mini, tmp_path, tiny_data, fake_training
):
    out = tmp_path / "out"
    _run(mini, out, tiny_data)
    mini.write_text(mini.read_text().replace("[5000, 10000]", "[5000, 10000, 20000]"))
    outcome = _run(mini, out, tiny_data)
    assert outcome.planned == 12
    assert [c.train_size for c in fake_training[10:]] == [20000, 20000]
    # Fewer repeats: every run of seed 0 is already there.
    assert _run(mini, out, tiny_data, repeats=1).skipped == 6
    assert len(fake_training) == 12


def test_a_folder_of_another_study_is_refused_unless_forced(
    mini, tmp_path, tiny_data, fake_training
):
    out = tmp_path / "out"
    _run(mini, out, tiny_data)
    other = tmp_path / "other.toml"
    other.write_text(mini.read_text().replace('name = "mini"', 'name = "other"'))
    with pytest.raises(CnnlabError, match="holds the study 'mini', not 'other'"):
        _run(other, out, tiny_data)
    assert _run(other, out, tiny_data, force=True).skipped == 10  # the same runs: kept


def test_a_non_empty_folder_that_is_not_a_study_is_refused(mini, tmp_path, tiny_data):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(CnnlabError, match="not empty and not a cnnlab study folder"):
        _run(mini, out, tiny_data)


def test_the_default_folder_is_results_slash_the_study_name(
    mini, tmp_path, monkeypatch, tiny_data, fake_training
):
    monkeypatch.chdir(tmp_path)
    outcome = _run(mini, None, tiny_data, repeats=1)
    assert outcome.study_dir == Path("results/mini")
    assert (tmp_path / "results/mini/study.sqlite").is_file()


def test_failed_and_diverged_runs_are_recorded_and_the_study_goes_on(
    mini, tmp_path, tiny_data, fake_training, monkeypatch, capsys
):
    text = mini.read_text().replace("[0, 0.0001, 1]", "[0, 0.0001, 1, 100]")
    mini.write_text(text + "\n[experiments.broken]\nlearning_rate = 0.5\n")
    monkeypatch.setattr(
        "cnnlab.data.datasets.load_dataset", lambda name, data=None, **options: tiny_data
    )
    out = tmp_path / "out"
    code = main(["study", str(mini), "--out", str(out), "--repeats", "1"])
    printed = capsys.readouterr().out
    assert code == 1  # a failed run makes the command fail, after all the others ran
    with Store.open(out) as store:
        status = {r.id: (r.status, r.reason) for r in store.runs()}
    assert sorted(s for s, _ in status.values()) == [
        "diverged",
        "done",
        "done",
        "done",
        "done",
        "done",
        "failed",
    ]
    failed = next(reason for s, reason in status.values() if s == "failed")
    assert failed == "RuntimeError: the fake runner refuses learning_rate 0.5"
    diverged = next(reason for s, reason in status.values() if s == "diverged")
    assert diverged == "loss not finite at epoch 2"
    summary = printed[printed.index("study finished") :]
    assert "failed" in summary and "refuses learning_rate 0.5" in summary
    assert "diverged" in summary and f"report: {out / 'report.html'}" in summary


def test_a_write_that_fails_marks_the_run_failed_and_exits_2(
    mini, tmp_path, tiny_data, fake_training, monkeypatch, capsys
):
    monkeypatch.setattr(
        "cnnlab.data.datasets.load_dataset", lambda name, data=None, **options: tiny_data
    )
    out = tmp_path / "out"
    Store.open(out).close()  # a study folder (empty) with a file where the run folders would go
    (out / "runs").write_text("a file where the runs folder should go")
    assert main(["study", str(mini), "--out", str(out), "--repeats", "1"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is marked failed" in error
    with Store.open(out) as store:
        assert store.integrity_ok()
        statuses = sorted(r.status for r in store.runs())
    # The study stopped at the first run it could not write; the others were never recorded.
    assert statuses.count("failed") == 1 and set(statuses) == {"failed", "pending"}
    (out / "runs").unlink()
    assert main(["study", str(mini), "--out", str(out), "--repeats", "1"]) == 0
    with Store.open(out) as store:
        assert {r.status for r in store.runs()} == {"done"}


def test_a_folder_that_cannot_be_created_is_one_clear_error(mini, tmp_path, tiny_data):
    (tmp_path / "file").write_text("")
    with pytest.raises(CnnlabError, match="cannot create the study folder"):
        _run(mini, tmp_path / "file" / "out", tiny_data)


def test_a_read_only_folder_is_one_clear_error(mini, tmp_path, tiny_data, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: show the check what a user would see
        monkeypatch.setattr(runner.os, "access", lambda path, mode: False)
    assert main(["study", str(mini), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"cnnlab: error: {out}: the study folder is read-only\n"


def test_two_processes_cannot_run_one_folder(mini, tmp_path, tiny_data):
    out = tmp_path / "out"
    out.mkdir()
    with folder._locked(out), pytest.raises(CnnlabError, match="another cnnlab process"):
        _run(mini, out, tiny_data)


# --- kill -9 ----------------------------------------------------------------------------------


def _start(path: Path, out: Path, seconds: float) -> subprocess.Popen:
    return fake_studies.start_fake_study(path, out, seconds, fit="fake_runs.fake_fit")


def test_kill_9_at_several_points_loses_at_most_the_run_in_progress(mini, tmp_path):
    out = tmp_path / "out"
    # Kill when the first run is in progress, after two are done, and after seven.
    for done_before_kill in (0, 2, 7):
        child = _start(mini, out, seconds=0.15)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            statuses = fake_studies.stored_statuses(out)
            if statuses.count("done") >= done_before_kill and "running" in statuses:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        statuses = fake_studies.stored_statuses(out)
        assert len(statuses) == 10 and statuses.count("running") == 1
        assert statuses.count("done") >= done_before_kill
    child = _start(mini, out, seconds=0)
    assert child.wait(timeout=60) == 0
    with Store.open(out) as store:
        runs = store.runs()
        assert store.integrity_ok()
    assert len(runs) == 10 and {r.status for r in runs} == {"done"}
    assert max(r.attempts for r in runs) == 2  # a killed run was redone, once
    # The results equal those of a run that was never interrupted.
    clean = tmp_path / "clean"
    child = _start(mini, clean, seconds=0)
    assert child.wait(timeout=60) == 0
    with Store.open(clean) as store:
        expected = {r.id: (r.metrics, r.history) for r in store.runs()}
    assert {r.id: (r.metrics, r.history) for r in runs} == expected


# --- architectures defined in the study file ---------------------------------------------------

INLINE = """
[architectures.narrow]
description = "seed with half the filters"
layers = [
    { type = "conv", filters = 8, kernel = 3, stride = 2, padding = "same", activation = "relu" },
    { type = "flatten" },
    { type = "dense", units = 10, activation = "softmax", l1 = 0.0001 },
]

[experiments.narrow]
grid = { arch = ["seed", "narrow"] }
"""


def test_an_inline_architecture_becomes_the_runs_layers(mini):
    mini.write_text(mini.read_text() + INLINE)
    plan = plan_runs(load_study(mini), repeats=1)
    (narrow,) = [r for r in plan if r.config.arch == "narrow"]
    assert narrow.config.layers[0]["filters"] == 8
    assert all(r.config.layers is None for r in plan if r.config.arch != "narrow")


def test_an_inline_architecture_that_does_not_build_names_its_key(mini):
    mini.write_text(mini.read_text() + INLINE.replace("filters = 8", "filters = 0"))
    line = next(n for n, t in enumerate(mini.read_text().splitlines(), 1) if "layers = [" in t)
    with pytest.raises(CnnlabError, match=rf"mini.toml:{line}: architectures.narrow.layers: does"):
        load_study(mini)


def test_an_inline_architecture_that_does_not_fit_the_studys_data_names_its_key(mini):
    # Checked against the dataset the study trains on (here CIFAR-10's 10 classes).
    mini.write_text(mini.read_text() + INLINE.replace("units = 10", "units = 7"))
    line = next(n for n, t in enumerate(mini.read_text().splitlines(), 1) if "layers = [" in t)
    with pytest.raises(
        CnnlabError,
        match=rf"mini.toml:{line}: architectures.narrow.layers: does not build: narrow on cifar10"
        r" .*needs 10 units",
    ):
        load_study(mini)


def test_runs_that_cannot_train_on_the_data_stop_before_any_training(
    mini, tmp_path, fake_training, capsys
):
    small = fake_runs.zeros_cifar(train_count=6000)
    with pytest.raises(
        CnnlabError,
        match=r"mini.toml:\d+: experiments.sizes.grid.train_size: 10000 must be between",
    ):
        _run(mini, tmp_path / "out", small)
    assert fake_training == []
    assert not (tmp_path / "out").exists()  # a new study leaves nothing behind


def test_an_unavailable_device_is_one_clear_error(mini, tmp_path, fake_training, tiny_data):
    with pytest.raises(CnnlabError, match="device 'cuda:7' is not available here"):
        _run(mini, tmp_path / "out", tiny_data, device="cuda:7")


def test_settings_the_loop_refuses_name_their_line(mini):
    mini.write_text(mini.read_text().replace("epochs = 4", "epochs = 4\nlearning_rate = 0"))
    message = r"mini.toml:12: defaults.learning_rate: must be a positive finite number, got 0.0"
    with pytest.raises(CnnlabError, match=message):
        plan_runs(load_study(mini))


def test_a_study_over_two_datasets_is_watched_as_one(mini, tmp_path, tiny_data, fake_training):
    text = mini.read_text() + (
        '\n[experiments.digits]\ndataset = "digits"\narch = "tiny"\ntrain_size = 100\n'
    )
    mini.write_text(text)
    lines: list[str] = []
    outcome = run_study(
        mini, out=tmp_path / "out", data=tiny_data, repeats=1, callbacks=[Lines(lines.append)]
    )
    assert outcome.counts["done"] == outcome.planned == 6
    # One numbering over both datasets' runs: the watchers see one study.
    starts = [line.split("]")[0] for line in lines if line.startswith("[")]
    assert starts == [f"[{n}/6" for n in range(1, 7)]
    assert {config.dataset for config in fake_training} == {"cifar10", "digits"}
    with Store.open(tmp_path / "out") as store:
        meta = store.meta()
    assert meta["data_sha256"] == tiny_data.source_sha256 and meta["data_sha256.digits"]


# --- variants (an ablation) -------------------------------------------------------------------

VARIANTS = """
[experiments.parts]
title = "Parts"
grid = { train_size = [5000, 10000] }
l1 = 0.0001

[[experiments.parts.variants]]
name = "full"

[[experiments.parts.variants]]
name = "without L1"
l1 = 0.0

[[experiments.parts.variants]]
name = "faster"
learning_rate = 0.002
epochs = 3
"""


def test_variants_times_the_grid_are_the_runs_with_each_variants_fields(mini):
    mini.write_text(mini.read_text() + VARIANTS)
    study_file = load_study(mini)
    (parts,) = [e for e in study_file.experiments if e.name == "parts"]
    assert parts.grid == {"variant": ("full", "without L1", "faster"), "train_size": (5000, 10000)}
    runs = [r for r in plan_runs(study_file, repeats=1) if "parts" in r.experiments]
    placed = {
        (r.experiments["parts"]["variant"], r.experiments["parts"]["train_size"]): r.config
        for r in runs
    }
    assert len(placed) == len(runs) == 6
    assert placed[("full", 5000)].l1 == 0.0001  # the experiment's fixed field
    assert placed[("without L1", 10000)].l1 == 0.0  # the variant's over the fixed one
    faster = placed[("faster", 5000)]
    assert (faster.learning_rate, faster.epochs, faster.l1) == (0.002, 3, 0.0001)
    (labelled,) = [r for r in runs if r.config is faster]
    assert "parts: l1=0.0001 variant=faster train_size=5000" in labelled.label()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "faster"', "", "variants.name: variant 3: expected a name"),
        ('name = "faster"', 'name = "full"', "variants.name: variant 3: 'full' is used twice"),
        ("epochs = 3", "train_size = 20000", "variants.train_size: variant 'faster' sets a field"),
        ("epochs = 3", "epochs = 0", "variants.epochs: must be at least 1"),
        ("epochs = 3", "colour = 3", "variants.colour: unknown key"),
        ("learning_rate = 0.002\nepochs = 3", "l1 = 0.0001", "train the same runs"),
    ],
)
def test_bad_variants_are_one_line_naming_the_key(mini, old, new, message):
    mini.write_text(mini.read_text() + VARIANTS.replace(old, new))
    with pytest.raises(CnnlabError) as caught:
        plan_runs(load_study(mini), repeats=1)
    text = str(caught.value)
    assert message in text and "\n" not in text
    assert text.startswith(f"{mini}:")


def test_a_variant_with_an_unknown_architecture_names_its_line(mini):
    mini.write_text(mini.read_text() + VARIANTS.replace("epochs = 3", 'arch = "nope"'))
    with pytest.raises(CnnlabError, match=r"experiments.parts.variants.arch: unknown architecture"):
        load_study(mini)


def test_the_new_run_fields_are_study_fields_with_their_rules(mini):
    text = mini.read_text() + VARIANTS.replace(
        "epochs = 3", 'flip = true\ncrop_padding = 2\ntta = "flip"\nlr_schedule = "cosine"'
    )
    mini.write_text(text)
    (faster,) = [
        r.config
        for r in plan_runs(load_study(mini), repeats=1)
        if r.experiments.get("parts", {}).get("variant") == "faster" and r.config.train_size == 5000
    ]
    assert (faster.flip, faster.crop_padding, faster.tta) == (True, 2, "flip")
    mini.write_text(text.replace("flip = true", "flip = 1"))
    with pytest.raises(CnnlabError, match=r"variants\.flip: expected true or false, got int 1"):
        load_study(mini)
