"""Study file (TOML) -> a validated `Study`; every mistake is one line naming file, line and key.

A study file declares:

    [study]            name, description, repeats (seeds per grid point, default 3), data,
                       backend ("local" or "ray"), address (a Ray cluster's; default: local)
    [defaults]         any run field (see `cnnlab.config.RunConfig`) shared by every experiment
    [architectures.N]  layers = [{...}, ...]: a new architecture N as layer specs, description
    [experiments.N]    grid = {field = [values, ...]}, fixed run fields, repeats, and for the
                       report: title, description, kind ("size", "l1", "pooling", "depth") and
                       [[experiments.N.reference]] rows (grid values + the seed report's numbers)
    [[experiments.N.variants]]  name = "...", then run fields: named variants of the experiment
                       (an ablation: each variant's fields over the fixed ones); the runs are
                       variants x grid points, and the report holds each variant against the
                       first
    [experiments.N.search]  a search over run fields instead of a grid: its trials, sampler,
                       metric, pruner and [experiments.N.search.space] (see
                       `cnnlab.study.searchfile`, which parses it, and `cnnlab.study.search`)

Run fields are checked by the config's own rules (`cnnlab.config.check_value`). This module
imports no torch: architectures are checked by `cnnlab.nn.specs` and `cnnlab.nn.shapes`, which
need none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnlab.config import BACKENDS, DATASET_SHAPES, ConfigError, RunConfig, check_value
from cnnlab.errors import CnnlabError
from cnnlab.nn.architectures import (
    ARCHITECTURES,
    FactoryField,
    factory_fields,
    get_architecture,
    module_architecture,
    module_architectures,
)
from cnnlab.nn.shapes import resolve_layers
from cnnlab.nn.specs import parse_specs
from cnnlab.study.searchfile import MAX_REPEATS, Search, SearchParsing, typed_repr

KINDS = ("size", "l1", "pooling", "depth")  # what the report draws for an experiment
REFERENCE_METRICS = ("fit_seconds", "parameters", "train_accuracy", "test_accuracy")
MAX_FILE_BYTES = 1 << 20  # a study file is a page of TOML; this is generous


_STUDY_KEYS = {
    "name": str,
    "description": str,
    "repeats": int,
    "data": str,
    "backend": str,
    "address": str,
}
_ARCHITECTURE_KEYS = {"layers": list, "description": str}
_EXPERIMENT_KEYS = {
    "title": str,
    "description": str,
    "kind": str,
    "grid": dict,
    "repeats": int,
    "reference": list,
    "variants": list,
    "search": dict,
    "targets": list,
}
MAX_TARGETS = 5  # target accuracies a size experiment's learning curve answers for
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
VARIANT = "variant"  # the pseudo grid field whose values are an experiment's variant names
MAX_VARIANT_NAME = 60  # characters: a variant's name labels table rows and figure bars


@dataclass(frozen=True)
class Experiment:
    """One named grid of runs, plus what the report needs to draw and compare it."""

    name: str
    title: str
    description: str
    kind: str | None  # one of KINDS, or None for a plain table
    fixed: dict[str, Any]  # run fields set for every point of this experiment
    # run field -> values; the runs are their product. With variants, "variant" comes first
    # and its values are the variants' names.
    grid: dict[str, tuple[Any, ...]]
    repeats: int | None  # seeds per grid point; None: the study's
    reference: tuple[dict[str, Any], ...]  # the seed report's rows: grid values + metrics
    variants: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # name -> fields
    search: Search | None = None  # a search's experiment has no grid: its trials are its points
    targets: tuple[float, ...] = ()  # test accuracies whose data needs the learning curve reads

    def points(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Each grid point as (what places a run there, the run fields it sets), in order."""
        names = list(self.grid)
        points = []
        for values in itertools.product(*self.grid.values()):
            place = dict(zip(names, values, strict=True))
            fields = {**self.fixed, **self.variants.get(place.get(VARIANT), {})}
            fields |= {name: value for name, value in place.items() if name != VARIANT}
            points.append(({**self.fixed, **place}, fields))
        return points


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
    backend: str = "local"  # one of BACKENDS
    address: str | None = None  # the Ray cluster to join (backend "ray"); None: a local instance
    # Experiments with [experiments.N.search]: planned trial by trial (`cnnlab.study.runner`),
    # so they are not among `experiments`, whose runs are known before any trains.
    searches: tuple[Experiment, ...] = ()


def load_study(
    path: str | os.PathLike[str], text: str | None = None, *, check_architectures: bool = True
) -> Study:
    """Read and validate a study file; any mistake raises one CnnlabError naming file/key/line.

    `text` replaces the file's content (the store keeps the text a study ran with);
    `check_architectures=False` skips building them (reports of finished studies).
    """
    path = Path(path)
    if text is None:
        text = _read_text(path)
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise CnnlabError(f"{path}: not valid TOML: {error}") from None
    except RecursionError:
        raise CnnlabError(f"{path}: not valid TOML: nested too deeply") from None
    return _Parser(path, text, check_architectures).study(document)


def _read_text(path: Path) -> str:
    """The file's text: UTF-8, at most MAX_FILE_BYTES; anything else is one line."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise CnnlabError(f"{path}: cannot read the study file: {error.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise CnnlabError(f"{path}: larger than {MAX_FILE_BYTES:,} bytes; not a study file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CnnlabError(
            f"{path}: not UTF-8 text (byte {error.start}): a study file is UTF-8 TOML"
        ) from None


def where(study: Study, keys: tuple[str, ...]) -> str:
    """'FILE:LINE: a.b.c' for a key path of `study`'s file (the line where it is set)."""
    line = _line_of(study.text, keys)
    return f"{study.path}:{line}: {'.'.join(keys)}" if line else f"{study.path}: {'.'.join(keys)}"


class _Parser(SearchParsing):
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
            self.fail(keys, f"expected a table, got {typed_repr(table)}")
        valid = list(valid)
        for key in table:
            if key not in valid:
                note = getattr(self, "net_note", "") if "arch" in valid else ""
                self.fail((*keys, key), f"unknown key; valid keys: {', '.join(valid)}{note}")

    def typed(self, value: Any, expected: type, keys: tuple[str, ...]) -> Any:
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if not ok:
            self.fail(keys, f"expected {_type_name(expected)}, got {typed_repr(value)}")
        return value

    def run_field(self, name: str, value: Any, keys: tuple[str, ...]) -> Any:
        """A run field's value, checked by the config's own rules (`config.check_value`); a
        module net's field by its factory's signature (each run's net is checked in the plan)."""
        if name not in self.field_types:
            if name not in self.net_fields:
                return value  # a finished study's net that is not installed here
            kind = self.net_fields[name].kind
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if type(value) is not kind:
                self.fail(keys, f"expected {_type_name(kind)}, got {typed_repr(value)}")
            return value
        try:
            return check_value(name, value)
        except ConfigError as error:
            self.fail(keys, error.reason)

    def run_fields(self, table: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        return {
            name: self.run_field(name, value, (*keys, name))
            for name, value in table.items()
            if name in self.field_types or name in self.net_keys
        }

    def module_nets(self, document: dict[str, Any]) -> None:
        """The fields of the module nets the file names (`self.net_fields`), and every key a run
        table may hold beside the run fields (`self.net_keys`). A net that is not installed is
        refused where it is named; a finished study's (`check_architectures` off) lets its
        tables' other keys through, as they were checked when it ran."""
        self.net_fields: dict[str, FactoryField] = {}
        self.net_keys: set[str] = set()
        self.net_note = ""
        inline = _table(document.get("architectures"))
        for arch in _named_archs(document):
            if arch in ARCHITECTURES or arch in inline:
                continue
            if arch not in module_architectures():
                if not self.check_architectures:
                    self.net_keys |= _run_table_keys(document)
                continue  # an unknown name: refused with the key that names it
            try:
                fields = factory_fields(arch)
            except CnnlabError as error:
                self.fail(_arch_keys(document, arch), str(error))
            for name, declared in fields.items():
                if name in _EXPERIMENT_KEYS or name == "name":
                    self.fail(
                        _arch_keys(document, arch),
                        f"{module_architecture(arch).label()}: its field {name!r} is a study"
                        " file key; rename it in the factory",
                    )
                self.net_fields.setdefault(name, declared)
            found = module_architecture(arch)
            self.net_note += f"; {found.label()} declares: {', '.join(fields) or 'no fields'}"
        self.net_keys |= set(self.net_fields)

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
        if not 1 <= repeats <= MAX_REPEATS:
            self.fail(("study", "repeats"), f"must be between 1 and {MAX_REPEATS}, got {repeats}")
        backend = header.get("backend", "local")
        if backend not in BACKENDS:
            self.fail(
                ("study", "backend"), f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}"
            )
        address = header.get("address")
        if address is not None and not address.strip():
            self.fail(("study", "address"), "empty: give a Ray cluster's address, e.g. 'HOST:6379'")
        data = header.get("data")
        if data is not None:
            data = str((self.path.parent / Path(data).expanduser()).resolve())

        self.module_nets(document)
        run_keys = [f for f in self.field_types if f not in _NOT_RUN_KEYS]
        run_keys += sorted(self.net_keys - set(run_keys))
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
        folded: dict[str, str] = {}
        for experiment_name in tables:
            # Names become file names: they must differ on case-insensitive file systems too.
            other = folded.setdefault(experiment_name.casefold(), experiment_name)
            if other != experiment_name:
                self.fail(
                    ("experiments", experiment_name),
                    f"differs from experiments.{other} only by case; experiment names must"
                    " differ in more than case",
                )
        for experiment_name, table in tables.items():
            experiments.append(self.experiment(experiment_name, table, run_keys, architectures))
        if self.check_architectures:
            # Every architecture a run uses, with the key that names it.
            used = [(defaults.get("arch", RunConfig.arch), ("defaults", "arch"))]
            for experiment in experiments:
                keys = ("experiments", experiment.name)
                used.append((experiment.fixed.get("arch"), (*keys, "arch")))
                used += [
                    (fields.get("arch"), (*keys, "variants", "arch"))
                    for fields in experiment.variants.values()
                ]
                grid_archs = experiment.grid.get("arch", ())
                used += [(arch, (*keys, "grid", "arch")) for arch in grid_archs]
                if experiment.search is not None and "arch" in experiment.search.space:
                    space_keys = (*keys, "search", "space", "arch")
                    used += [(a, space_keys) for a in experiment.search.space["arch"].choices]
            for arch, keys in used:
                if arch is not None and arch not in architectures:
                    _check_registered(self, arch, keys)
            datasets = _datasets_of(defaults, experiments)
            for arch_name, layers in architectures.items():
                _check_fits(
                    self, arch_name, layers, ("architectures", arch_name, "layers"), datasets
                )
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
            experiments=tuple(e for e in experiments if e.search is None),
            backend=backend,
            address=address,
            searches=tuple(e for e in experiments if e.search is not None),
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
        if repeats is not None and not 1 <= repeats <= MAX_REPEATS:
            self.fail((*keys, "repeats"), f"must be between 1 and {MAX_REPEATS}, got {repeats}")
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
        variants = self.variants(table.get("variants", []), (*keys, "variants"), run_keys, grid)
        search = None
        if "search" in table:
            for other in ("grid", "variants", "reference", "kind"):
                if other in table:
                    self.fail((*keys, other), "a search's trials are its points: no " + other)
            search = self.search(table["search"], (*keys, "search"), run_keys, fixed)
        if variants:
            grid = {VARIANT: tuple(variants), **grid}
        reference = []
        for index, row in enumerate(table.get("reference", [])):
            row_keys = (*keys, "reference")
            self.check_keys(row, row_keys, [*grid, *REFERENCE_METRICS])
            if VARIANT in row and row[VARIANT] not in variants:
                self.fail(
                    (*row_keys, VARIANT), f"row {index + 1}: no variant is named {row[VARIANT]!r}"
                )
            for metric in REFERENCE_METRICS:
                value = row.get(metric)
                if metric in row and (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or not math.isfinite(value)
                ):
                    self.fail(
                        (*row_keys, metric), f"expected a finite number, got {typed_repr(value)}"
                    )
            for field_name in grid:
                if field_name in row and field_name != VARIANT:
                    value = self.run_field(field_name, row[field_name], (*row_keys, field_name))
                    if value not in grid[field_name]:
                        self.fail(
                            (*row_keys, field_name),
                            f"row {index + 1}: {value!r} is not among the grid's values",
                        )
                    row = {**row, field_name: value}
            reference.append(row)
        targets = self.targets(table.get("targets", []), (*keys, "targets"))
        return Experiment(
            name=name,
            title=table.get("title", name),
            description=table.get("description", ""),
            kind=kind,
            fixed=fixed,
            grid=grid,
            repeats=repeats,
            reference=tuple(reference),
            variants=variants,
            search=search,
            targets=targets,
        )

    def targets(self, values: list, keys: tuple[str, ...]) -> tuple[float, ...]:
        """Target test accuracies: numbers strictly between 0 and 1, at most MAX_TARGETS."""
        if len(values) > MAX_TARGETS:
            self.fail(keys, f"at most {MAX_TARGETS} target accuracies, got {len(values)}")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
                self.fail(keys, f"a target is an accuracy between 0 and 1, got {typed_repr(value)}")
        return tuple(float(v) for v in values)

    def variants(
        self, tables: Any, keys: tuple[str, ...], run_keys: list[str], grid: dict[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """[[experiments.N.variants]]: name -> run fields, in the file's order."""
        if not isinstance(tables, list):
            self.fail(keys, f"expected a list of tables, got {typed_repr(tables)}")
        variants: dict[str, dict[str, Any]] = {}
        for index, table in enumerate(tables, 1):
            self.check_keys(table, keys, ["name", *run_keys])
            name = table.get("name")
            if not isinstance(name, str) or not name.strip() or len(name) > MAX_VARIANT_NAME:
                self.fail(
                    (*keys, "name"),
                    f"variant {index}: expected a name of 1 to {MAX_VARIANT_NAME} characters,"
                    f" got {typed_repr(name)}",
                )
            if name in variants:
                self.fail((*keys, "name"), f"variant {index}: {name!r} is used twice")
            fields = self.run_fields(table, keys)
            for field_name in fields.keys() & grid.keys():
                self.fail((*keys, field_name), f"variant {name!r} sets a field of the grid")
            variants[name] = fields
        return variants


_NOT_RUN_KEYS = ("layers", "arch_fields", "arch_package")  # set by the file's structure


def _table(value: Any) -> dict[str, Any]:
    """`value` where it is a table, else an empty one (the pre-scan reads unchecked TOML)."""
    return value if isinstance(value, dict) else {}


def _named_archs(document: dict[str, Any]) -> list[str]:
    """Every architecture name a study file's run tables give (before they are checked)."""
    tables = [_table(document.get("defaults"))]
    for table in map(_table, _table(document.get("experiments")).values()):
        tables.append(table)
        tables.append({"arch": _table(table.get("grid")).get("arch")})
        variants = table.get("variants")
        tables += [_table(v) for v in variants] if isinstance(variants, list) else []
        space = _table(_table(table.get("search")).get("space"))
        tables.append({"arch": _table(space.get("arch")).get("choices")})
    names = []
    for table in tables:
        value = table.get("arch")
        names += value if isinstance(value, list) else [value]
    return list(dict.fromkeys(name for name in names if isinstance(name, str)))


def _run_table_keys(document: dict[str, Any]) -> set[str]:
    """Every key of a study file's run tables and grids (a finished study's, read leniently)."""
    keys = set(_table(document.get("defaults")))
    for table in map(_table, _table(document.get("experiments")).values()):
        keys |= set(table) | set(_table(table.get("grid")))
        variants = table.get("variants")
        for variant in variants if isinstance(variants, list) else []:
            keys |= set(_table(variant))
    return {key for key in keys if isinstance(key, str)} - set(_EXPERIMENT_KEYS) - {"name"}


def _arch_keys(document: dict[str, Any], arch: str) -> tuple[str, ...]:
    """The key path of the first run table that names `arch` (for the error's line)."""
    if _table(document.get("defaults")).get("arch") == arch:
        return ("defaults", "arch")
    for name, table in _table(document.get("experiments")).items():
        if arch in str(table):
            return ("experiments", name, "arch")
    return ("defaults", "arch")


def _check_registered(parser: _Parser, arch: str, keys: tuple[str, ...]) -> None:
    """An architecture that is neither defined in the file, registered nor installed is an
    error."""
    try:
        if arch not in module_architectures():
            get_architecture(arch)
    except CnnlabError as error:
        parser.fail(keys, f"{error} (or define it under [architectures.{arch}])")


def _check_builds(
    parser: _Parser, name: str, layers: tuple[dict[str, Any], ...], keys: tuple[str, ...]
) -> None:
    """An inline architecture's specs must parse; its shapes are checked per run, against the
    images and classes of the dataset that run trains on (see `study.runner`)."""
    try:
        parse_specs(layers)
    except CnnlabError as error:
        parser.fail(keys, f"does not build: {error}")
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        parser.fail(keys, f"does not build: {type(error).__name__}: {error}")


def _datasets_of(defaults: dict[str, Any], experiments: list[Any]) -> list[str]:
    """The datasets a study's runs train on, its defaults' first."""
    named = [defaults.get("dataset", RunConfig.dataset)]
    for experiment in experiments:
        named.append(experiment.fixed.get("dataset"))
        named += experiment.grid.get("dataset", ())
        named += [fields.get("dataset") for fields in experiment.variants.values()]
    return [name for name in dict.fromkeys(named) if isinstance(name, str)]


def _check_fits(
    parser: _Parser,
    name: str,
    layers: tuple[dict[str, Any], ...],
    keys: tuple[str, ...],
    datasets: list[str],
) -> None:
    """An inline architecture must build on one of the study's datasets whose shape is known
    before loading (each run is then checked on its own dataset, see `study.runner`)."""
    errors = []
    for dataset in datasets:
        shape = DATASET_SHAPES.get(dataset)
        if shape is None:
            return  # an image folder's shape is known once it is read
        try:
            resolve_layers(RunConfig(arch=name, layers=layers, dataset=dataset), *shape)
            return
        except CnnlabError as error:
            errors.append(error)
    if errors:
        parser.fail(keys, f"does not build: {errors[0]}")


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


def _type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(_type_name(one) for one in expected)
    return {str: "a string", int: "an integer", list: "a list", dict: "a table"}.get(
        expected, expected.__name__
    )
