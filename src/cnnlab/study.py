"""Study file -> explicit list of runs; run them, skip finished ones.

A study file (TOML) declares:

    [study]            name, description, repeats (seeds per grid point, default 3), data
    [defaults]         any run field (see `cnnlab.train.RunConfig`) shared by every experiment
    [architectures.N]  layers = [{...}, ...]: a new architecture N as layer specs, description
    [experiments.N]    grid = {field = [values, ...]}, fixed run fields, repeats, and for the
                       report: title, description, kind ("size", "l1", "pooling", "depth") and
                       [[experiments.N.reference]] rows (grid values + the seed report's numbers)

Every grid point of every experiment is repeated with seeds `seed + 0 .. seed + repeats - 1`.
A run's id is a hash of its resolved config (seed included), so a run that two experiments share
is one run. The store (`cnnlab.store`) remembers what finished; re-running skips it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import platform
import re
import time
import tomllib
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.config import ConfigError, RunConfig, check_config, check_value, run_id
from cnnlab.errors import CnnlabError
from cnnlab.store import FINISHED, RunRecord, Store

KINDS = ("size", "l1", "pooling", "depth")  # what the report draws for an experiment
REFERENCE_METRICS = ("fit_seconds", "parameters", "train_accuracy", "test_accuracy")
RUNS_FOLDER = "runs"
LOCK_NAME = ".lock"

_STUDY_KEYS = {"name": str, "description": str, "repeats": int, "data": str}
_ARCHITECTURE_KEYS = {"layers": list, "description": str}
_EXPERIMENT_KEYS = {
    "title": str,
    "description": str,
    "kind": str,
    "grid": dict,
    "repeats": int,
    "reference": list,
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_AT_LEAST_ONE = ("train_size", "epochs", "batch_size")
_NOT_NEGATIVE = ("l1", "l2", "learning_rate", "epsilon", "seed", "subset_seed")


@dataclass(frozen=True)
class Experiment:
    """One named grid of runs, plus what the report needs to draw and compare it."""

    name: str
    title: str
    description: str
    kind: str | None  # one of KINDS, or None for a plain table
    fixed: dict[str, Any]  # run fields set for every point of this experiment
    grid: dict[str, tuple[Any, ...]]  # run field -> values; the runs are their product
    repeats: int | None  # seeds per grid point; None: the study's
    reference: tuple[dict[str, Any], ...]  # the seed report's rows: grid values + metrics


@dataclass(frozen=True)
class Study:
    """A parsed, validated study file."""

    name: str
    description: str
    path: Path
    text: str  # the file as read: the store keeps it so reports need no file
    sha256: str
    data: str | None  # the study's data source, resolved against the file's folder
    repeats: int
    defaults: dict[str, Any]
    architectures: dict[str, tuple[dict[str, Any], ...]]
    experiments: tuple[Experiment, ...]


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan: its id, config, and where it sits in each experiment."""

    id: str
    config: RunConfig
    experiments: dict[str, dict[str, Any]]  # experiment -> the grid fields that place it there

    def label(self) -> str:
        """'sizes: train_size=5000 | l1: l1=0.0001' (what differs, per experiment)."""
        return " | ".join(
            f"{name}: " + (" ".join(f"{k}={v}" for k, v in fields.items()) or "-")
            for name, fields in self.experiments.items()
        )


@dataclass
class StudyOutcome:
    """What `run_study` did: where, how many of each status, and how long."""

    study_dir: Path
    report_path: Path | None
    planned: int
    skipped: int
    counts: dict[str, int]
    problems: list[tuple[str, str, str]]  # (run id, status, reason) of diverged and failed runs
    seconds: float


Runner = Callable[..., Any]  # fit's signature: runner(config, data, *, device, progress)


# --- parsing ----------------------------------------------------------------------------------


def load_study(
    path: str | os.PathLike[str], text: str | None = None, *, check_architectures: bool = True
) -> Study:
    """Read and validate a study file; any mistake raises one CnnlabError naming file/key/line.

    `text` replaces the file's content (the store keeps the text a study ran with);
    `check_architectures=False` skips building them (reports of finished studies).
    """
    path = Path(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise CnnlabError(f"{path}: cannot read the study file: {error.strerror}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise CnnlabError(f"{path}: not valid TOML: {error}") from None
    return _Parser(path, text, check_architectures).study(document)


class _Parser:
    """Strict validation of a decoded study file with messages that point into the text."""

    def __init__(self, path: Path, text: str, check_architectures: bool):
        self.path = path
        self.text = text
        self.check_architectures = check_architectures
        self.field_types = typing.get_type_hints(RunConfig)

    def fail(self, keys: tuple[str, ...], message: str) -> typing.NoReturn:
        line = _line_of(self.text, keys)
        where = f"{self.path}:{line}" if line else str(self.path)
        raise CnnlabError(f"{where}: {'.'.join(keys)}: {message}")

    def check_keys(self, table: Any, keys: tuple[str, ...], valid: typing.Iterable[str]) -> None:
        if not isinstance(table, dict):
            self.fail(keys, f"expected a table, got {_show(table)}")
        valid = list(valid)
        for key in table:
            if key not in valid:
                self.fail((*keys, key), f"unknown key; valid keys: {', '.join(valid)}")

    def typed(self, value: Any, expected: type, keys: tuple[str, ...]) -> Any:
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if not ok:
            self.fail(keys, f"expected {_type_name(expected)}, got {_show(value)}")
        return value

    def run_field(self, name: str, value: Any, keys: tuple[str, ...]) -> Any:
        """A run field's value, checked by the config's own rules (`config.check_value`)."""
        try:
            return check_value(name, value)
        except ConfigError as error:
            self.fail(keys, error.reason)

    def run_fields(self, table: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        return {
            name: self.run_field(name, value, (*keys, name))
            for name, value in table.items()
            if name in self.field_types
        }

    def study(self, document: dict[str, Any]) -> Study:
        self.check_keys(document, (), ["study", "defaults", "architectures", "experiments"])
        header = document.get("study")
        if header is None:
            self.fail(("study",), "missing: every study file needs [study] with a name")
        self.check_keys(header, ("study",), _STUDY_KEYS)
        for key, expected in _STUDY_KEYS.items():
            if key in header:
                self.typed(header[key], expected, ("study", key))
        name = header.get("name")
        if name is None:
            self.fail(("study", "name"), "missing: the study needs a name")
        if not _NAME.fullmatch(name):
            self.fail(("study", "name"), f"{name!r} must be letters, digits, '.', '_' or '-'")
        repeats = header.get("repeats", 3)
        if repeats < 1:
            self.fail(("study", "repeats"), f"must be at least 1, got {repeats}")
        data = header.get("data")
        if data is not None:
            data = str((self.path.parent / Path(data).expanduser()).resolve())

        run_keys = [f for f in self.field_types if f != "layers"]
        defaults = document.get("defaults", {})
        self.check_keys(defaults, ("defaults",), run_keys)
        defaults = self.run_fields(defaults, ("defaults",))

        architectures = {}
        for arch_name, table in document.get("architectures", {}).items():
            keys = ("architectures", arch_name)
            self.check_keys(table, keys, _ARCHITECTURE_KEYS)
            layers = self.typed(table.get("layers"), list, (*keys, "layers"))
            if not layers or not all(isinstance(layer, dict) for layer in layers):
                self.fail((*keys, "layers"), "expected a non-empty list of layer tables")
            architectures[arch_name] = tuple(layers)
            if self.check_architectures:
                _check_builds(self, arch_name, tuple(layers), (*keys, "layers"))

        experiments = []
        tables = document.get("experiments")
        if not tables:
            self.fail(("experiments",), "missing: declare at least one [experiments.NAME]")
        self.check_keys(tables, ("experiments",), tables)
        for experiment_name, table in tables.items():
            experiments.append(self.experiment(experiment_name, table, run_keys, architectures))
        if self.check_architectures:
            # Every architecture a run uses, with the key that names it.
            used = [(defaults.get("arch", RunConfig.arch), ("defaults", "arch"))]
            for experiment in experiments:
                keys = ("experiments", experiment.name)
                used.append((experiment.fixed.get("arch"), (*keys, "arch")))
                grid_archs = experiment.grid.get("arch", ())
                used += [(arch, (*keys, "grid", "arch")) for arch in grid_archs]
            for arch, keys in used:
                if arch is not None and arch not in architectures:
                    _check_registered(self, arch, keys)
        return Study(
            name=name,
            description=header.get("description", ""),
            path=self.path,
            text=self.text,
            sha256=hashlib.sha256(self.text.encode()).hexdigest(),
            data=data,
            repeats=repeats,
            defaults=defaults,
            architectures=architectures,
            experiments=tuple(experiments),
        )

    def experiment(
        self, name: str, table: Any, run_keys: list[str], architectures: dict[str, Any]
    ) -> Experiment:
        keys = ("experiments", name)
        if not _NAME.fullmatch(name):
            self.fail(keys, "experiment names must be letters, digits, '.', '_' or '-'")
        self.check_keys(table, keys, [*_EXPERIMENT_KEYS, *run_keys])
        for key, expected in _EXPERIMENT_KEYS.items():
            if key in table:
                self.typed(table[key], expected, (*keys, key))
        kind = table.get("kind")
        if kind is not None and kind not in KINDS:
            self.fail((*keys, "kind"), f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        repeats = table.get("repeats")
        if repeats is not None and repeats < 1:
            self.fail((*keys, "repeats"), f"must be at least 1, got {repeats}")
        grid: dict[str, tuple[Any, ...]] = {}
        if "grid" in table:
            raw_grid = table["grid"]
            if not raw_grid:
                self.fail((*keys, "grid"), "empty grid: give at least one field with values")
            self.check_keys(raw_grid, (*keys, "grid"), run_keys)
            for field_name, values in raw_grid.items():
                field_keys = (*keys, "grid", field_name)
                if not isinstance(values, list) or not values:
                    self.fail(field_keys, f"expected a non-empty list of values, got {values!r}")
                values = tuple(self.run_field(field_name, value, field_keys) for value in values)
                if len(set(values)) != len(values):
                    self.fail(field_keys, f"repeated values in {list(values)}")
                grid[field_name] = values
        fixed = self.run_fields(table, keys)
        for field_name in grid.keys() & fixed.keys():
            self.fail((*keys, field_name), "set both as a fixed field and in the grid")
        reference = []
        for index, row in enumerate(table.get("reference", [])):
            row_keys = (*keys, "reference")
            self.check_keys(row, row_keys, [*grid, *REFERENCE_METRICS])
            for metric in REFERENCE_METRICS:
                if metric in row and not isinstance(row[metric], int | float):
                    self.fail((*row_keys, metric), f"expected a number, got {_show(row[metric])}")
            for field_name in grid:
                if field_name in row:
                    value = self.run_field(field_name, row[field_name], (*row_keys, field_name))
                    if value not in grid[field_name]:
                        self.fail(
                            (*row_keys, field_name),
                            f"row {index + 1}: {value!r} is not among the grid's values",
                        )
                    row = {**row, field_name: value}
            reference.append(row)
        return Experiment(
            name=name,
            title=table.get("title", name),
            description=table.get("description", ""),
            kind=kind,
            fixed=fixed,
            grid=grid,
            repeats=repeats,
            reference=tuple(reference),
        )


def _check_registered(parser: _Parser, arch: str, keys: tuple[str, ...]) -> None:
    """An architecture that is neither defined in the file nor registered is an error."""
    from cnnlab import models

    try:
        models.get_architecture(arch)
    except CnnlabError as error:
        parser.fail(keys, f"{error} (or define it under [architectures.{arch}])")


def _check_builds(
    parser: _Parser, name: str, layers: tuple[dict[str, Any], ...], keys: tuple[str, ...]
) -> None:
    """An inline architecture must build into a network on 32x32x3 images."""
    from cnnlab import models

    try:
        models.build_model(RunConfig(arch=name, layers=layers))
    except CnnlabError as error:
        parser.fail(keys, f"does not build: {error}")
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        parser.fail(keys, f"does not build: {type(error).__name__}: {error}")


def _line_of(text: str, keys: tuple[str, ...]) -> int | None:
    """Best-effort line of a key path: the deepest matching [table] header, then the key in it."""
    if not keys:
        return None
    header_line, header_depth = None, 0
    current: tuple[str, ...] = ()
    start = 0
    lines = text.splitlines()
    sections: list[tuple[int, tuple[str, ...]]] = []
    for number, line in enumerate(lines, 1):
        stripped = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"\[\[?\s*([^\]]+?)\s*\]\]?", stripped)
        if match:
            current = tuple(part.strip().strip("\"'") for part in match.group(1).split("."))
            sections.append((number, current))
    for number, section in sections:
        depth = len(section)
        if depth > header_depth and section == keys[:depth]:
            header_line, header_depth, start = number, depth, number
    rest = keys[header_depth:]
    if not rest:
        return header_line
    end = next((n for n, _ in sections if n > start), len(lines) + 1)
    pattern = re.compile(rf"^\s*[\"']?{re.escape(rest[0])}[\"']?\s*[=.]")
    inline = re.compile(rf"[{{,]\s*[\"']?{re.escape(rest[-1])}[\"']?\s*=")
    for number in range(start + 1, end):
        if pattern.search(lines[number - 1]):
            # In an inline table (grid = {train_size = [...]}) the key sits on the same line.
            for inner in range(number, end):
                if len(rest) == 1 or inline.search(lines[inner - 1]):
                    return inner
            return number
    return header_line


def _type_name(expected: type) -> str:
    return {str: "a string", int: "an integer", list: "a list", dict: "a table"}.get(
        expected, expected.__name__
    )


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


# --- planning ---------------------------------------------------------------------------------


def plan_runs(study: Study, repeats: int | None = None) -> list[PlannedRun]:
    """The explicit runs of every experiment, deduplicated by id, in declaration order."""
    if repeats is not None and repeats < 1:
        raise CnnlabError(f"--repeats must be at least 1, got {repeats}")
    planned: dict[str, PlannedRun] = {}
    for experiment in study.experiments:
        count = repeats or experiment.repeats or study.repeats
        names = list(experiment.grid)
        for values in itertools.product(*experiment.grid.values()):
            point = dict(zip(names, values, strict=True))
            fields = {**study.defaults, **experiment.fixed, **point}
            base_seed = fields.pop("seed", RunConfig.seed)
            arch = fields.get("arch", RunConfig.arch)
            if arch in study.architectures:
                fields["layers"] = study.architectures[arch]
            for offset in range(count):
                config = RunConfig(**fields, seed=base_seed + offset)
                _check_config(study, experiment, config)
                identifier = run_id(config)
                run = planned.setdefault(identifier, PlannedRun(identifier, config, {}))
                # What places the run in this experiment: its grid point and fixed fields.
                run.experiments.setdefault(experiment.name, {**experiment.fixed, **point})
    return list(planned.values())


def _check_config(
    study: Study, experiment: Experiment, config: RunConfig, data: Any = None
) -> None:
    """The training loop's own checks, reported against the study file and experiment."""
    try:
        if data is None:
            check_config(config)
        else:
            check_config(config, available=len(data.train_labels), classes=len(data.class_names))
    except CnnlabError as error:
        raise CnnlabError(f"{study.path}: experiments.{experiment.name}: {error}") from None


def describe_plan(plan: list[PlannedRun]) -> Iterator[str]:
    """One line per run: id, seed, and per experiment the fields that place it there."""
    for run in plan:
        yield f"{run.id}  seed={run.config.seed:<3} {run.label()}"


# --- running ----------------------------------------------------------------------------------


def artifacts_intact(study_dir: Path, record: RunRecord) -> bool:
    """A finished run is kept only if every artifact it listed is still there and non-empty."""
    if not record.artifacts:
        return False
    for relative in record.artifacts.values():
        path = study_dir / relative
        if not path.is_file() or path.stat().st_size == 0:
            return False
    return True


def execute_runs(
    plan: list[PlannedRun],
    data: Any,
    store: Store,
    study_dir: Path,
    *,
    device: str = "auto",
    workers: int | None = None,
    runner: Runner | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Train every run of `plan`, recording each in `store` as it finishes.

    The one place that executes runs. By default the fastest path for the device is taken: on
    the CPU, lone runs in `workers` processes side by side (default: one per core;
    `cnnlab.workers`); on CUDA, compatible runs trained together as groups (`batched.schedule`),
    the groups side by side on `workers` streams (default: all, up to 8; `cnnlab.streams`).
    `runner` (fit's signature) replaces both with one run at a time, in order, in this process.
    Runs training side by side are recorded by this process as they finish. A run is marked
    running when it starts, and recorded (artifacts first, then its row) when it ends. An
    exception while training marks the run (or its group) failed and the rest go on; a failed
    write stops the study (the disk is full or gone), leaving the run marked failed.
    """
    from cnnlab import batched, train

    target = train.resolve_device(device)
    if runner is None:
        configs = [run.config for run in plan]
        parallel = batched.side_by_side(configs, data, device=device, workers=workers)
        if parallel is not None:
            events, how = parallel
            echo(how)
            _execute_events(plan, events, data, store, study_dir, echo)
            return
        groups = batched.schedule(configs, target)

        def train_group(configs: list[RunConfig], progress: Callable) -> list[Any]:
            return batched.train_together(configs, data, device=device, progress=progress)

    else:
        groups = [[index] for index in range(len(plan))]

        def train_group(configs: list[RunConfig], progress: Callable) -> list[Any]:
            return [runner(configs[0], data, device=device, progress=progress)]

    done = 0
    for group in groups:
        runs = [plan[index] for index in group]
        for run in runs:
            done += 1
            echo(_start_line(done, len(plan), run))
            store.mark_running(run.id)

        def progress(row: dict[str, Any], runs: list[PlannedRun] = runs) -> None:
            echo(_progress_line(row, runs[row["member"]].id if len(runs) > 1 else ""))

        try:
            results = train_group([run.config for run in runs], progress)
        except KeyboardInterrupt:
            for run in runs:
                store.mark_pending(run.id)
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {error}".strip()
            for run in runs:
                store.record_failure(run.id, reason)
            echo(f"    failed: {reason}")
            continue
        for run, result in zip(runs, results, strict=True):
            _record(run, result, data, store, study_dir, echo)


def _execute_events(
    plan: list[PlannedRun],
    events: Iterator[Any],
    data: Any,
    store: Store,
    study_dir: Path,
    echo: Callable[[str], None],
) -> None:
    """`execute_runs` for runs training side by side: record what `events` reports as it comes.

    The events are `workers.Event`s, from CPU worker processes or CUDA streams
    (`batched.side_by_side`); closing them stops the training.
    """
    started = 0
    in_hand: set[str] = set()
    try:
        with contextlib.closing(events):
            for event in events:
                run = plan[event.index]
                if event.kind == "started":
                    started += 1
                    in_hand.add(run.id)
                    echo(_start_line(started, len(plan), run))
                    store.mark_running(run.id)
                elif event.kind == "progress":
                    echo(_progress_line(event.payload, run.id))
                elif event.kind == "failed":
                    in_hand.discard(run.id)
                    store.record_failure(run.id, event.payload)
                    echo(f"    {run.id} failed: {event.payload}")
                else:
                    in_hand.discard(run.id)
                    _record(run, event.payload, data, store, study_dir, echo)
    except KeyboardInterrupt:
        for run_id in in_hand:
            store.mark_pending(run_id)
        raise


def _start_line(number: int, total: int, run: PlannedRun) -> str:
    return f"[{number}/{total}] {run.id}  seed={run.config.seed}  {run.label()}"


def _progress_line(row: dict[str, Any], run_id: str) -> str:
    """One epoch's line, prefixed by its run's id where several runs report at once."""
    return (
        f"    {run_id + '  ' if run_id else ''}epoch {row['epoch']}/{row.get('epochs', '?')}"
        f"  loss {row['loss']:.4f}  acc {row['accuracy']:.3f}"
        f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.3f}"
        f"  {row['seconds']:.1f} s"
    )


def _record(
    run: PlannedRun,
    result: Any,
    data: Any,
    store: Store,
    study_dir: Path,
    echo: Callable[[str], None],
) -> None:
    """Write a finished run's folder, then its row: a row marked done always has its files."""
    from cnnlab import train

    run_dir = study_dir / RUNS_FOLDER / run.id
    try:
        paths = train.save_run(result, run_dir, data.class_names)
    except OSError as error:
        where = error.filename or run_dir
        store.record_failure(run.id, f"cannot write {where}: {error.strerror or error}")
        raise CnnlabError(
            f"{where}: cannot write the run's files ({error.strerror or error});"
            f" run {run.id} is marked failed"
        ) from None
    artifacts = {name: os.path.relpath(path, study_dir) for name, path in paths.items()}
    metrics = result.metrics
    reason = ""
    if result.status == "diverged":
        reason = f"loss not finite at epoch {metrics.get('diverged_epoch', '?')}"
    store.record_result(
        run.id,
        status=result.status,
        metrics=metrics,
        history=result.history,
        artifacts=artifacts,
        reason=reason,
    )
    echo(f"    {run.id} " + _result_line(result.status, metrics, reason))


def _result_line(status: str, metrics: dict[str, Any], reason: str) -> str:
    def number(key: str, form: str) -> str:
        value = metrics.get(key)
        return format(value, form) if isinstance(value, int | float) else "?"

    line = (
        f"{status}: train {number('train_accuracy', '.3f')}  test {number('test_accuracy', '.3f')}"
        f"  val {number('val_accuracy', '.3f')}  {number('fit_seconds', '.1f')} s"
    )
    return f"{line}  ({reason})" if reason else line


@contextlib.contextmanager
def _locked(study_dir: Path) -> Iterator[None]:
    """Only one process runs a study folder at a time (the lock dies with the process)."""
    try:
        handle = open(study_dir / LOCK_NAME, "a")  # noqa: SIM115 - held for the block
    except OSError as error:
        raise CnnlabError(f"{study_dir}: cannot write the study folder: {error.strerror}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CnnlabError(
                f"{study_dir}: another cnnlab process is running this study"
            ) from None
        yield
    finally:
        handle.close()


def prepare_folder(study_dir: Path, *, force: bool) -> None:
    """Create the study folder; a non-empty folder that is not a study needs `force`."""
    from cnnlab.store import DATABASE_NAME

    if study_dir.exists() and not study_dir.is_dir():
        raise CnnlabError(f"{study_dir}: exists and is not a folder")
    if (
        study_dir.is_dir()
        and any(entry.name != LOCK_NAME for entry in study_dir.iterdir())
        and not (study_dir / DATABASE_NAME).exists()
        and not force
    ):
        raise CnnlabError(
            f"{study_dir}: not empty and not a cnnlab study folder; choose another --out"
            " or pass --force"
        )
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CnnlabError(
            f"{study_dir}: cannot create the study folder: {error.strerror}"
        ) from None
    if not os.access(study_dir, os.W_OK):
        raise CnnlabError(f"{study_dir}: the study folder is read-only")


def run_study(
    study_file: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    data: Any = None,
    repeats: int | None = None,
    force: bool = False,
    device: str = "auto",
    workers: int | None = None,
    runner: Runner | None = None,
    report: bool = True,
    echo: Callable[[str], None] = print,
) -> StudyOutcome:
    """Run every unfinished run of a study file, then write its report.

    `data` is a source for `load_cifar10` (default: the study's, then cnnlab's usual search) or an
    already loaded `Cifar10`; it is loaded only if some run has to train. `workers` is how many
    processes train side by side on the CPU (default: one per core), or how many groups of runs
    on CUDA (default: all, up to 8); 1 trains one after another in this process.
    """
    from cnnlab import workers as workers_module

    started = time.perf_counter()
    workers_module.check_requested(workers)  # before any data is loaded
    study = load_study(study_file)
    plan = plan_runs(study, repeats)
    study_dir = Path(out) if out is not None else Path("results") / study.name
    prepare_folder(study_dir, force=force)
    with _locked(study_dir), Store.open(study_dir) as store:
        store.claim(study.name, study.text, study.sha256, force=force)
        store.sync_plan(
            (run.id, dataclasses.asdict(run.config), run.config.seed, run.experiments)
            for run in plan
        )
        recovered = store.recover_interrupted()
        if recovered:
            echo(f"redoing {len(recovered)} run(s) interrupted earlier: {', '.join(recovered)}")
        records = {record.id: record for record in store.runs(planned_only=True)}
        todo = [
            run
            for run in plan
            if not (
                records[run.id].status in FINISHED and artifacts_intact(study_dir, records[run.id])
            )
        ]
        skipped = len(plan) - len(todo)
        echo(
            f"study {study.name}: {len(plan)} runs, {skipped} already finished,"
            f" {len(todo)} to run -> {study_dir}"
        )
        if todo:
            from cnnlab import train

            train.resolve_device(device)
            dataset = _load_data(data if data is not None else study.data, store, force=force)
            experiments = {experiment.name: experiment for experiment in study.experiments}
            for run in todo:
                first = experiments[next(iter(run.experiments))]
                _check_config(study, first, run.config, dataset)
            execute_runs(
                todo,
                dataset,
                store,
                study_dir,
                device=device,
                workers=workers,
                runner=runner,
                echo=echo,
            )
        final = store.runs(planned_only=True)
        store.set_meta({"last_wall_seconds": f"{time.perf_counter() - started:.3f}"})
    counts = {status: 0 for status in ("done", "diverged", "failed", "pending")}
    problems = []
    for record in final:
        counts[record.status] = counts.get(record.status, 0) + 1
        if record.status in ("diverged", "failed"):
            problems.append((record.id, record.status, record.reason))
    report_path = None
    if report:
        from cnnlab.report import write_report

        report_path = write_report(study_dir)["html"]
    return StudyOutcome(
        study_dir=study_dir,
        report_path=report_path,
        planned=len(plan),
        skipped=skipped,
        counts=counts,
        problems=problems,
        seconds=time.perf_counter() - started,
    )


def _load_data(data: Any, store: Store, *, force: bool) -> Any:
    """Load the data (unless given loaded) and make sure it is what earlier runs trained on."""
    if isinstance(data, str | os.PathLike) or data is None:
        from cnnlab.data import load_cifar10

        data = load_cifar10(None if data is None else str(data))
    known = store.meta().get("data_sha256")
    if known and data.source_sha256 and known != data.source_sha256 and not force:
        raise CnnlabError(
            f"data {data.source}: checksum {data.source_sha256[:12]} differs from the data this"
            f" study's earlier runs used ({known[:12]}); pass the same --data, or --force"
        )
    store.set_meta(
        {
            "data_source": str(data.source),
            "data_sha256": data.source_sha256,
            "class_names": json.dumps(list(data.class_names)),
            "machine": machine_description(),
            "cpu_count": str(os.cpu_count()),
        }
    )
    return data


def machine_description() -> str:
    """Host, OS and CPU model of this machine, for the report's environment section."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{platform.node()}: {platform.platform()}, {cpu}"


def summary_lines(outcome: StudyOutcome) -> list[str]:
    """The closing summary: counts, the runs that diverged or failed and why, time, report."""
    counts = ", ".join(f"{count} {status}" for status, count in outcome.counts.items() if count)
    lines = [
        f"study finished in {outcome.seconds:.1f} s: {outcome.planned} runs ({counts};"
        f" {outcome.skipped} were already finished)"
    ]
    lines += [f"  {status} {run}: {reason}" for run, status, reason in outcome.problems]
    if outcome.report_path is not None:
        lines.append(f"report: {outcome.report_path}")
    return lines
