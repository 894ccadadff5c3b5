"""A search's space and size under hostile input, checked whole before anything trains.

Generated search tables: every size is held to the study's run limit and the grid sampler's
trial cap, counted without building the grid; every step is one line or a step the sampler
takes; a space is refused exactly when some trial its sampler can draw would not run.
"""

from __future__ import annotations

import itertools
import math
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import cnnlab
import fake_runs
import fake_studies
from cnnlab.cli import main
from cnnlab.data.datasets import Dataset
from cnnlab.errors import CnnlabError
from cnnlab.study import plan, runner, search
from cnnlab.study.searchfile import MAX_TRIALS, grid_values
from cnnlab.study.studyfile import load_study

MAX_RUNS = plan.MAX_RUNS
MEMORY_LIMIT = 3 << 30  # address space for a command: torch's import needs about 1.5 GiB
HEADER = """
[study]
name = "hostile"
repeats = {repeats}

[defaults]
dataset = "digits"
arch = "tiny"
train_size = 100
epochs = 4
"""


def study_text(search_table: str, space: str, grid: str = "", repeats: int = 1) -> str:
    """A study of one search (and a grid experiment, if `grid` is given) on digits."""
    text = HEADER.format(repeats=repeats)
    if grid:
        text += f"\n[experiments.grid]\ngrid = {grid}\n"
    return (
        text + f"\n[experiments.s.search]\n{search_table}\n[experiments.s.search.space]\n{space}\n"
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hostile.toml"
    path.write_text(text)
    return path


def assert_one_line(error: CnnlabError, path: Path) -> str:
    text = str(error)
    assert "\n" not in text and text.startswith(f"{path}:"), text
    return text


# --- sizes -------------------------------------------------------------------------------------


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    trials=st.integers(1, MAX_TRIALS),
    repeats=st.integers(1, 1000),
    retrain=st.integers(0, 1000),
    grid_points=st.integers(1, 5),
    study_repeats=st.integers(1, 20),
    override=st.none() | st.integers(1, 20),
)
def test_a_search_counts_toward_the_study_run_limit(
    tmp_path, trials, repeats, retrain, grid_points, study_repeats, override
):
    table = f'sampler = "random"\ntrials = {trials}\nrepeats = {repeats}\nretrain = {retrain}'
    sizes = ", ".join(str(100 + n) for n in range(grid_points))
    grid = f"{{ train_size = [{sizes}] }}"
    text = study_text(table, "learning_rate = { low = 1e-4, high = 1e-1 }", grid, study_repeats)
    path = write(tmp_path, text)
    study = load_study(path)
    bound = grid_points * (override or study_repeats) + trials * (override or repeats) + retrain
    if bound > MAX_RUNS:
        with pytest.raises(CnnlabError) as caught:
            plan.plan_runs(study, override)
        assert f"up to {bound:,} runs" in assert_one_line(caught.value, path)
        return
    assert len(plan.plan_runs(study, override)) == grid_points * (override or study_repeats)
    lines = list(plan.describe_searches(study, override))
    assert lines[-1] == f"up to {bound:,} runs in all (limit {MAX_RUNS:,})"


def test_the_dry_run_refuses_the_issues_search_and_states_the_bound_otherwise(tmp_path, capsys):
    table = 'sampler = "random"\ntrials = 10000\nrepeats = 1000\nretrain = 1000'
    path = write(tmp_path, study_text(table, "learning_rate = { low = 1e-4, high = 1e-1 }"))
    assert main(["study", str(path), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "up to 10,001,000 runs" in error and "100,000" in error
    path.write_text(path.read_text().replace("repeats = 1000\n", "repeats = 2\n"))
    assert main(["study", str(path), "--dry-run"]) == 0
    assert "up to 21,000 runs in all (limit 100,000)" in capsys.readouterr().out


# A field of the grid: an integer range, a float range with a step, or choices.
INT_FIELDS = {"subset_seed": (0, 2**63 - 1), "train_size": (1, 2**62), "epochs": (1, 2**40)}
FLOAT_FIELDS = {"learning_rate": (1e-6, 1e3), "l1": (0.0, 1e6), "weight_decay": (0.0, 10.0)}


@st.composite
def grid_fields(draw) -> tuple[str, int | None]:
    """A grid field's TOML and its size (None where a float step may make it uncountable)."""
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(INT_FIELDS)))
        least, most = INT_FIELDS[name]
        low = draw(st.integers(least, most - 1))
        high = draw(st.integers(low + 1, min(most, low + draw(st.sampled_from([9, 10**6, 2**62])))))
        step = draw(st.integers(1, max(1, (high - low) // draw(st.integers(1, 10**4)))))
        return f"{name} = {{ low = {low}, high = {high}, step = {step} }}", (high - low) // step + 1
    name = draw(st.sampled_from(sorted(FLOAT_FIELDS)))
    least, most = FLOAT_FIELDS[name]
    low = draw(st.floats(least, most / 2, allow_nan=False))
    if name == "learning_rate":
        low = max(low, least)
    high = draw(st.floats(low, most, allow_nan=False, exclude_min=True))
    step = draw(st.sampled_from([1e-300, 1e-12, 1e-6, (high - low) / 3, high - low, 1e308]))
    return f"{name} = {{ low = {low!r}, high = {high!r}, step = {step!r} }}", None


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(grid_fields(), min_size=1, max_size=3, unique_by=lambda f: f[0].split()[0]))
@example([("subset_seed = { low = 0, high = 1000000, step = 1 }", 1_000_001)])  # first
def test_a_grid_is_counted_without_building_it_and_held_to_the_trial_cap(tmp_path, fields):
    path = write(tmp_path, study_text('sampler = "grid"', "\n".join(f for f, _ in fields)))
    tracemalloc.start()
    try:
        study = load_study(path)
    except CnnlabError as error:
        assert_one_line(error, path)
        study = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak:,} bytes to read a grid"
    sizes = [size for _, size in fields]
    if None not in sizes and math.prod(sizes) > MAX_TRIALS:
        assert study is None
    if study is not None:
        spec = study.searches[0].search
        values = [grid_values(param) for param in spec.space.values()]
        assert spec.trials == math.prod(map(len, values)) <= MAX_TRIALS
        assert None in sizes or spec.trials == math.prod(sizes)


def cnnlab_child(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command in a child process under a memory limit, importing this tree's code."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    source = str(Path(cnnlab.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": source}
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
        env=env,
    )


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ("subset_seed = { low = 0, high = 1000000000000 }", "1,000,000,000,001 points"),
        ("l1 = { low = 0.0, high = 1.0, step = 1e-12 }", "1,000,000,000,001 points"),
        ("epochs = { low = 1, high = 201 }\nbatch_size = { low = 1, high = 200 }", "40,200 points"),
    ],
)
def test_the_issues_grids_are_refused_fast_in_bounded_memory_by_the_dry_run(
    tmp_path, space, expected
):
    path = write(tmp_path, study_text('sampler = "grid"', space))
    done = cnnlab_child("study", str(path), "--dry-run", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "at most 10,000" in lines[0], lines


STEPS = [math.nan, math.inf, -math.inf, 0.0, -1.0, 5e-324, 1e-300, 1e-30, 1e-12, 0.25, 1e308]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sampler=st.sampled_from(["tpe", "random", "grid"]),
    step=st.sampled_from(STEPS),
    field=st.sampled_from(["l1", "learning_rate", "label_smoothing"]),
)
def test_a_hostile_step_is_one_line_or_a_step_the_sampler_takes(tmp_path, sampler, step, field):
    space = f"{field} = {{ low = 0.0001, high = 0.5, step = {_toml_float(step)} }}"
    path = write(tmp_path, study_text(f'sampler = "{sampler}"\ntrials = 1', space))
    try:
        study = load_study(path)
    except CnnlabError as error:
        assert "step" in assert_one_line(error, path)
        return
    assert math.isfinite(step) and step > 0
    experiment = study.searches[0]
    plan.plan_runs(study)
    optuna_study = search.new_study(experiment.search)
    trial = optuna_study.ask(search.distributions(experiment.search))
    plan.search_runs(study, experiment, trial.params, {}, range(1))


def _toml_float(value: float) -> str:
    return {math.inf: "inf", -math.inf: "-inf"}.get(
        value, "nan" if math.isnan(value) else repr(value)
    )


# --- a space checked whole ---------------------------------------------------------------------

# Fields that checks combine, each with values valid alone: numbers as (kind, values).
NUMBERS = {
    "momentum": (float, [0.0, 0.5, 0.9]),
    "lr_warmup_epochs": (float, [0.0, 2.0, 5.0]),
    "epochs": (int, [1, 3, 6]),
    "weight_decay": (float, [0.0, 1.0, 30.0]),
    "learning_rate": (float, [0.001, 0.1, 0.5]),
    "train_size": (int, [10, 100, 5000]),
    "batch_size": (int, [1, 32, 100000]),
    "crop_padding": (int, [0, 4, 8]),
    "cutout": (int, [0, 8, 9]),
}
CHOICES = {
    "optimizer": ["adam", "sgd", "adamw"],
    "nesterov": [False, True],
    "dataset": ["digits", "mnist", "cifar10"],
    "arch": ["tiny", "seed-deep", "strong-s"],
    "crop_padding_mode": ["constant", "reflect"],
}


@st.composite
def spaces(draw) -> dict[str, tuple[str, list]]:
    """A search space over fields that checks combine: field -> (its TOML, every value a sampler
    can draw, or for a continuous range its ends and a point between)."""
    names = draw(st.lists(st.sampled_from(sorted({**NUMBERS, **CHOICES})), min_size=2, max_size=5))
    space = {}
    for name in dict.fromkeys(names):
        if name in CHOICES:
            values = draw(st.lists(st.sampled_from(CHOICES[name]), min_size=1, unique=True))
            space[name] = (f"{{ choices = {_toml_list(values)} }}", values)
            continue
        kind, known = NUMBERS[name]
        values = draw(st.lists(st.sampled_from(known), min_size=1, max_size=3, unique=True))
        if len(values) == 1 or draw(st.booleans()):  # choices, in the file's order
            space[name] = (f"{{ choices = {_toml_list(values)} }}", values)
            continue
        low, high = min(values), max(values)
        middle = (low + high) // 2 if kind is int else (low + high) / 2
        space[name] = (f"{{ low = {low!r}, high = {high!r} }}", [low, high, middle])
    return space


def _toml_list(values: list) -> str:
    return "[" + ", ".join(str(v).lower() if isinstance(v, bool) else repr(v) for v in values) + "]"


def _runs(study, experiment, params) -> bool:
    try:
        plan.search_runs(study, experiment, params, {}, range(1))
    except CnnlabError:
        return False
    return True


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(space=spaces(), sampler=st.sampled_from(["tpe", "random", "grid"]))
def test_a_space_is_refused_exactly_when_a_trial_it_can_draw_would_not_run(
    tmp_path, space, sampler
):
    ranged = any("low" in toml for toml, _ in space.values())
    if sampler == "grid" and ranged:
        sampler = "random"  # a grid takes a float range only with a step
    lines = "\n".join(f"{name} = {toml}" for name, (toml, _) in space.items())
    path = write(tmp_path, study_text(f'sampler = "{sampler}"\ntrials = 1', lines))
    try:
        study = load_study(path)
    except CnnlabError as error:  # a value invalid alone: not this test's question
        assert_one_line(error, path)
        return
    experiment = study.searches[0]
    every = [
        dict(zip(space, values, strict=True))
        for values in itertools.product(*(values for _, values in space.values()))
    ]
    failing = [params for params in every if not _runs(study, experiment, params)]
    try:
        plan.plan_runs(study)
    except CnnlabError as error:
        assert "a trial the search can draw" in assert_one_line(error, path)
        assert failing, "refused, but every trial the sampler can draw runs"
        return
    assert not failing, f"accepted, but {failing[0]} does not run"
    optuna_study = search.new_study(experiment.search)  # what the sampler draws, all of it runs
    known = search.distributions(experiment.search)
    for _ in range(10):
        assert _runs(study, experiment, optuna_study.ask(known).params)


MODES = 'crop_padding_mode = { choices = ["constant", "reflect"] }'


def test_the_issues_stuck_searches_are_refused_by_the_dry_run(tmp_path, capsys):
    spaces_and_messages = [
        (
            f"crop_padding = {{ choices = [0, 8] }}\n{MODES}",
            "crop_padding: 8 pixels: expected 0 to 7 for 8x8 images with reflect padding",
        ),
        (
            "lr_warmup_epochs = { low = 0.0, high = 5.0 }\nepochs = { choices = [10, 3] }",
            "lr_warmup_epochs: 5.0 must be fewer than the 3 epochs",
        ),
    ]
    for space, message in spaces_and_messages:
        path = write(tmp_path, study_text('sampler = "tpe"\ntrials = 20', space))
        assert main(["study", str(path), "--dry-run"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and message in error, error
        field = message.split(":")[0]
        lines = path.read_text().splitlines()
        line = next(n for n, t in enumerate(lines, 1) if t.startswith(f"{field} ="))
        assert f"hostile.toml:{line}: experiments.s.search.space.{field}:" in error, error


def _images(side: int) -> Dataset:
    """An 'images' dataset of `side` x `side` pictures, 10 classes, 30 train images a class."""
    labels = np.repeat(np.arange(10), 30)
    images = np.zeros((labels.size, side, side, 3), dtype=np.uint8)
    names = tuple(f"c{n}" for n in range(10))
    return Dataset(images, labels, images[:50], labels[:50], names, "synthetic", name="images")


def test_a_space_that_does_not_fit_the_loaded_images_trains_nothing(tmp_path):
    space = f"crop_padding = {{ choices = [0, 6] }}\n{MODES}"
    text = study_text('sampler = "random"\ntrials = 30\nbatch = 1\nretrain = 0', space)
    path = write(tmp_path, text.replace('dataset = "digits"', 'dataset = "images"'))
    trained = []

    def fit(config, data, *, device="auto", progress=None, prune=None):
        trained.append(config)
        return fake_runs.fake_fit(config, data, device=device)

    with (
        fake_studies.fake_training(fit),
        pytest.raises(CnnlabError, match=r"crop_padding: 6 pixels: expected 0 to 5 for 6x6"),
    ):
        runner.run_study(
            path, out=tmp_path / "out", data=_images(6), execution=fake_studies.IN_PROCESS
        )
    assert trained == [] and not (tmp_path / "out").exists()


def test_a_space_with_too_many_combinations_to_check_is_refused_before_any_is(tmp_path):
    names = [f"a{n}" for n in range(1500)]
    flat = '[{ type = "flatten" }, { type = "dense", units = 10, activation = "softmax" }]'
    tables = "".join(f"\n[architectures.{name}]\nlayers = {flat}\n" for name in names)
    space = (
        f"arch = {{ choices = {_toml_list(names)} }}\n"
        'dataset = { choices = ["digits", "mnist", "cifar10", "fashion-mnist"] }\n'
        "batch_size = { low = 16, high = 64 }\ntrain_size = { low = 100, high = 1000 }"
    )
    path = write(tmp_path, study_text('sampler = "random"\ntrials = 5', space) + tables)
    study = load_study(path)
    started = time.perf_counter()
    with pytest.raises(CnnlabError) as caught:
        plan.plan_runs(study)
    assert "more than 10,000 combinations" in assert_one_line(caught.value, path)
    assert time.perf_counter() - started < 5
