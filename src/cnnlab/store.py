"""The results store: one SQLite file per study folder; the only module that touches it.

Tables: `meta` (which study owns the folder), `runs` (one row per run id: status, config,
metrics, per-epoch history, artifact paths, timings) and `memberships` (which experiments a run
belongs to, with the grid fields that place it there: a run shared by two experiments is one row
in `runs` and two in `memberships`), and `trials` (a search's trials by number: the values its
sampler asked for and the runs, one per seed, that score them). Every state change is one
transaction, so a process killed at any moment leaves the database as it was before or after
that change.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError

DATABASE_NAME = "study.sqlite"


class Status(enum.StrEnum):
    """Where a run stands; the values are what the store's `status` column holds (its CHECK)."""

    PENDING = "pending"  # planned, not trained (or interrupted: it is redone)
    RUNNING = "running"  # a process is training it now
    DONE = "done"  # trained every epoch
    DIVERGED = "diverged"  # its loss stopped being finite: a full result up to there
    FAILED = "failed"  # training raised, or its files could not be written: no result
    PRUNED = "pruned"  # stopped early by a search's pruner (`cnnlab.study.pruning`)


STATUSES = tuple(Status)
FINISHED = (Status.DONE, Status.DIVERGED)  # trained all it could: a full result
# A run in one of these is not trained again: a pruned run is kept as it stopped, but is no full
# result.
KEPT = (*FINISHED, Status.PRUNED)
SCHEMA_VERSION = "1"

_RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'diverged', 'failed',
                                           'pruned')),
    config TEXT NOT NULL,
    seed INTEGER NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    history TEXT NOT NULL DEFAULT '[]',
    artifacts TEXT NOT NULL DEFAULT '{}',
    reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    fit_seconds REAL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
"""
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
    + _RUNS_TABLE.replace("{name}", "runs")
    + """
CREATE TABLE IF NOT EXISTS memberships (
    run_id TEXT NOT NULL REFERENCES runs(id),
    experiment TEXT NOT NULL,
    position INTEGER NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (run_id, experiment)
);
CREATE TABLE IF NOT EXISTS trials (
    experiment TEXT NOT NULL,
    number INTEGER NOT NULL,
    params TEXT NOT NULL,
    run_ids TEXT NOT NULL,
    PRIMARY KEY (experiment, number)
);
"""
)


@dataclass
class RunRecord:
    """One row of `runs`, decoded, with the experiments it belongs to."""

    id: str
    status: Status
    config: dict[str, Any]
    seed: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    artifacts: dict[str, str]
    reason: str
    attempts: int
    fit_seconds: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    # experiment name -> the grid fields that place this run in it
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)

    def label(self) -> str:
        """'sizes: train_size=5000 | l1: l1=0.0001' (what places it, per experiment)."""
        return places_label(self.experiments)


def places_label(experiments: dict[str, dict[str, Any]]) -> str:
    """A run's places in its experiments as text: 'sizes: train_size=5000 | l1: l1=0.0001'."""
    return " | ".join(
        f"{name}: {' '.join(f'{key}={value}' for key, value in fields.items()) or '-'}"
        for name, fields in experiments.items()
    )


class Store:
    """The SQLite database of one study folder."""

    def __init__(self, connection: sqlite3.Connection, path: Path):
        self._connection = connection
        self.path = path

    # --- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, study_dir: str | os.PathLike[str], *, create: bool = True) -> Store:
        """Open (or with `create`, create) the store of `study_dir`; unusable folders raise."""
        folder = Path(study_dir)
        path = folder / DATABASE_NAME
        if not create and not path.is_file():
            raise CnnlabError(f"{folder}: not a cnnlab study folder (no {DATABASE_NAME})")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CnnlabError(
                f"{folder}: cannot create the study folder: {error.strerror}"
            ) from None
        if create and not os.access(folder, os.W_OK):
            raise CnnlabError(f"{folder}: the study folder is read-only")
        try:
            connection = sqlite3.connect(path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.executescript(_SCHEMA)
            if create:
                _allow_pruned(connection)
        except sqlite3.Error as error:
            raise CnnlabError(f"{path}: cannot open the results database: {error}") from None
        return cls(connection, path)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it lands, or none of it."""
        connection = self._connection
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            raise CnnlabError(f"{self.path}: cannot write the results database: {error}") from None
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        try:
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            connection.execute("ROLLBACK")
            raise CnnlabError(f"{self.path}: cannot write the results database: {error}") from None

    # --- the study that owns the folder ---------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return dict(self._connection.execute("SELECT key, value FROM meta").fetchall())

    def set_meta(self, values: dict[str, str]) -> None:
        with self._transaction() as connection:
            connection.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                sorted(values.items()),
            )

    def claim(self, study_name: str, study_text: str, study_sha256: str, *, force: bool) -> None:
        """Record that `study_name` owns this folder; another study's folder needs `force`."""
        owner = self.meta().get("study_name")
        if owner is not None and owner != study_name and not force:
            raise CnnlabError(
                f"{self.path.parent}: this folder holds the study {owner!r}, not {study_name!r};"
                " choose another --out or pass --force"
            )
        self.set_meta(
            {
                "schema_version": SCHEMA_VERSION,
                "study_name": study_name,
                "study_text": study_text,
                "study_sha256": study_sha256,
            }
        )

    # --- runs --------------------------------------------------------------------------------

    def sync_plan(
        self, planned: Iterable[tuple[str, dict[str, Any], int, dict[str, dict]]]
    ) -> None:
        """Add the plan's new runs as pending and make memberships exactly the plan's.

        `planned` yields (run id, config, seed, {experiment: grid fields}). Runs already stored keep
        their status and results; runs no longer planned keep their row but belong to no
        experiment.
        """
        with self._transaction() as connection:
            connection.execute("DELETE FROM memberships")
            _insert_planned(connection, planned, first_position=0)

    def add_planned(
        self, planned: Iterable[tuple[str, dict[str, Any], int, dict[str, dict]]]
    ) -> None:
        """Add runs to the plan (as `sync_plan` does) without dropping the plan's other runs."""
        with self._transaction() as connection:
            (position,) = connection.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM memberships"
            ).fetchone()
            _insert_planned(connection, planned, first_position=position)

    def clear_trials(self) -> None:
        """Forget every search's trials (a search replays them as it starts again)."""
        with self._transaction() as connection:
            connection.execute("DELETE FROM trials")

    def add_trial(self, experiment: str, number: int, params: dict, run_ids: list[str]) -> None:
        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO trials (experiment, number, params, run_ids) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET params = excluded.params, run_ids = excluded.run_ids",
                (experiment, number, _dumps(params), _dumps(run_ids)),
            )

    def trials(self, experiment: str) -> list[tuple[int, dict[str, Any], list[str]]]:
        """A search's trials in number order: (number, params, run ids)."""
        rows = self._connection.execute(
            "SELECT number, params, run_ids FROM trials WHERE experiment = ? ORDER BY number",
            (experiment,),
        ).fetchall()
        return [(number, json.loads(params), json.loads(ids)) for number, params, ids in rows]

    def recover_interrupted(self) -> list[str]:
        """Runs left 'running' by a process that died go back to 'pending'; returns their ids."""
        with self._transaction() as connection:
            ids = [
                row[0] for row in connection.execute("SELECT id FROM runs WHERE status = 'running'")
            ]
            connection.execute("UPDATE runs SET status = 'pending' WHERE status = 'running'")
        return ids

    def mark_running(self, run_id: str) -> None:
        with self._transaction() as connection:
            updated = connection.execute(
                "UPDATE runs SET status = 'running', attempts = attempts + 1, started_at = ?, "
                "finished_at = NULL, reason = '' WHERE id = ?",
                (time.time(), run_id),
            ).rowcount
        assert updated == 1, f"run {run_id} is not in the store"

    def mark_pending(self, run_id: str) -> None:
        with self._transaction() as connection:
            connection.execute("UPDATE runs SET status = 'pending' WHERE id = ?", (run_id,))

    def record_result(
        self,
        run_id: str,
        *,
        status: Status,
        metrics: dict[str, Any],
        history: list[dict[str, Any]],
        artifacts: dict[str, str],
        reason: str = "",
    ) -> None:
        """Store a run that ended (a status of `KEPT`) with all it produced."""
        assert status in KEPT, status
        fit_seconds = metrics.get("fit_seconds")
        with self._transaction() as connection:
            connection.execute(
                "UPDATE runs SET status = ?, metrics = ?, history = ?, artifacts = ?, reason = ?, "
                "fit_seconds = ?, finished_at = ? WHERE id = ?",
                (
                    str(status),
                    _dumps(metrics),
                    _dumps(history),
                    _dumps(artifacts),
                    reason,
                    fit_seconds,
                    time.time(),
                    run_id,
                ),
            )

    def record_failure(self, run_id: str, reason: str) -> None:
        """A run that raised: keep why, drop any partial results."""
        with self._transaction() as connection:
            connection.execute(
                "UPDATE runs SET status = 'failed', reason = ?, metrics = '{}', history = '[]', "
                "artifacts = '{}', finished_at = ? WHERE id = ?",
                (reason, time.time(), run_id),
            )

    def get(self, run_id: str) -> RunRecord:
        """The run `run_id`, or a unique run whose id starts with it."""
        rows = self._connection.execute(
            f"{_SELECT} WHERE id LIKE ? ORDER BY id", (run_id.replace("%", "") + "%",)
        ).fetchall()
        if not rows:
            raise CnnlabError(f"{self.path.parent}: no run with id {run_id!r}")
        if len(rows) > 1 and rows[0][0] != run_id:
            raise CnnlabError(f"{self.path.parent}: run id {run_id!r} is ambiguous")
        return self._decode(rows[0])

    def runs(self, *, planned_only: bool = False) -> list[RunRecord]:
        """Every run, in plan order (runs no longer planned last unless `planned_only`)."""
        rows = self._connection.execute(
            f"{_SELECT} LEFT JOIN (SELECT run_id, MIN(position) AS position FROM memberships "
            "GROUP BY run_id) AS m ON m.run_id = runs.id "
            + ("WHERE m.position IS NOT NULL " if planned_only else "")
            + "ORDER BY m.position IS NULL, m.position, runs.id"
        ).fetchall()
        return [self._decode(row) for row in rows]

    def _decode(self, row: tuple) -> RunRecord:
        """A row as a RunRecord; a row that cnnlab did not write (edited by hand) is refused."""
        memberships = self._connection.execute(
            "SELECT experiment, fields FROM memberships WHERE run_id = ? ORDER BY experiment",
            (row[0],),
        ).fetchall()
        where = f"{self.path}: run {str(row[0])[:40]!r}"
        metrics = _decoded(row[4], dict, where, "metrics")
        history = _decoded(row[5], list, where, "history")
        _check_metrics(metrics, where)
        _check_history(history, where)
        artifacts = _decoded(row[6], dict, where, "artifacts")
        _check_artifacts(artifacts, where)
        if row[1] not in STATUSES:
            expected = ", ".join(STATUSES)
            raise CnnlabError(f"{where}: status {str(row[1])[:40]!r} is not one of {expected}")
        for name, value, kinds in (("seed", row[3], int), ("attempts", row[8], int)):
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise CnnlabError(f"{where}: {name} {str(value)[:40]!r} is not an integer")
        for name, value in (("fit_seconds", row[9]), *zip(_TIMES, row[10:13], strict=True)):
            if value is not None and not _finite_number(value):
                raise CnnlabError(f"{where}: {name} {str(value)[:40]!r} is not a number")
        return RunRecord(
            id=row[0],
            status=Status(row[1]),
            config=_decoded(row[2], dict, where, "config"),
            seed=row[3],
            metrics=metrics,
            history=history,
            artifacts=artifacts,
            reason=str(row[7]),
            attempts=row[8],
            fit_seconds=row[9],
            created_at=row[10],
            started_at=row[11],
            finished_at=row[12],
            experiments={
                name: _decoded(fields, dict, where, f"memberships of {name}")
                for name, fields in memberships
            },
        )

    def integrity_ok(self) -> bool:
        return self._connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


_SELECT = (
    "SELECT runs.id, status, config, seed, metrics, history, artifacts, reason, attempts, "
    "fit_seconds, created_at, started_at, finished_at FROM runs"
)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=True)


def load_results(study_dir: str | os.PathLike[str]) -> list[RunRecord]:
    """Every run of a study folder as a record: config, status, metrics, history, artifacts."""
    with Store.open(study_dir, create=False) as store:
        return store.runs()


# --- reading what may have been edited by hand ---------------------------------------------------

_TIMES = ("created_at", "started_at", "finished_at")
# Metrics that every reader takes as numbers (or None); a run's other metrics are free-form.
_NUMERIC_METRICS = (
    "train_accuracy",
    "train_loss",
    "test_accuracy",
    "test_loss",
    "val_accuracy",
    "val_loss",
    "baseline_accuracy",
    "baseline_class",
    "parameters",
    "fit_seconds",
    "eval_seconds",
    "epochs_run",
    "diverged_epoch",
    "group_size",
)
_OPTIONAL_METRICS = ("diverged_epoch",)  # None: the run did not diverge
# What every epoch of a run records (training.metrics.HISTORY_KEYS names the rest).
_HISTORY_NEEDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


def _decoded(text: Any, kind: type, where: str, name: str) -> Any:
    """A JSON column of `kind` (dict or list), or one line saying why it is not."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise CnnlabError(f"{where}: {name} is not valid JSON (edited by hand?)") from None
    if not isinstance(value, kind):
        expected = "an object" if kind is dict else "a list"
        raise CnnlabError(f"{where}: {name} is not {expected} (edited by hand?)")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite_number(value: Any) -> bool:
    return _number(value) and abs(value) < float("inf")


def _check_metrics(metrics: dict[str, Any], where: str) -> None:
    """The metrics every reader relies on have their types; confusion matrices are square."""
    for name in _NUMERIC_METRICS:
        if name not in metrics or (name in _OPTIONAL_METRICS and metrics[name] is None):
            continue
        if not _number(metrics[name]):
            raise CnnlabError(
                f"{where}: metric {name} is {str(metrics[name])[:40]!r}, not a number"
            )
    matrices = metrics.get("confusion_matrix", {})
    if not isinstance(matrices, dict):
        raise CnnlabError(f"{where}: confusion_matrix is not an object of matrices")
    for split, matrix in matrices.items():
        size = len(matrix) if isinstance(matrix, list) else -1
        if not (
            size > 0
            and all(isinstance(row, list) and len(row) == size for row in matrix)
            and all(_finite_number(count) and count >= 0 for row in matrix for count in row)
        ):
            raise CnnlabError(
                f"{where}: the {str(split)[:20]} confusion matrix is not a square table of counts"
            )
    if not isinstance(metrics.get("classification_report", {}), dict):
        raise CnnlabError(f"{where}: classification_report is not an object")


def _check_history(history: list[Any], where: str) -> None:
    """One object per epoch, every value a number (NaN and infinities included: a diverged
    run's losses) or None."""
    for index, row in enumerate(history, 1):
        if not isinstance(row, dict) or not all(
            value is None or _number(value) for value in row.values()
        ):
            raise CnnlabError(f"{where}: history row {index} is not an object of numbers")
        missing = [name for name in _HISTORY_NEEDS if name not in row]
        if missing:
            raise CnnlabError(f"{where}: history row {index} lacks {', '.join(missing)}")


def _check_artifacts(artifacts: dict[str, Any], where: str) -> None:
    """Artifacts are files inside the study folder: relative paths that stay there."""
    for name, value in artifacts.items():
        path = Path(value) if isinstance(value, str) else None
        if path is None or path.is_absolute() or ".." in path.parts or "\x00" in value:
            raise CnnlabError(f"{where}: artifact {str(name)[:40]!r} is not a path in the study")


def _insert_planned(
    connection: sqlite3.Connection,
    planned: Iterable[tuple[str, dict[str, Any], int, dict[str, dict]]],
    *,
    first_position: int,
) -> None:
    """Planned runs as pending rows (a stored run keeps its row) and their memberships, in
    order from `first_position`; inside the caller's transaction."""
    now = time.time()
    for position, (run_id, config, seed, experiments) in enumerate(planned, first_position):
        connection.execute(
            "INSERT INTO runs (id, status, config, seed, created_at) "
            "VALUES (?, 'pending', ?, ?, ?) ON CONFLICT(id) DO NOTHING",
            (run_id, _dumps(config), seed, now),
        )
        connection.executemany(
            "INSERT INTO memberships (run_id, experiment, position, fields) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(run_id, name, position, _dumps(f)) for name, f in experiments.items()],
        )


def best_runs(records: Iterable[RunRecord], metric: str = "test_accuracy") -> dict[str, RunRecord]:
    """Each experiment's finished run with the highest `metric` (the first of equals)."""
    best: dict[str, RunRecord] = {}
    for record in records:
        value = record.metrics.get(metric)
        if record.status not in FINISHED or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            continue
        for name in record.experiments:
            if name not in best or value > best[name].metrics[metric]:
                best[name] = record
    return best


def _allow_pruned(connection: sqlite3.Connection) -> None:
    """Rebuild the runs table of a store made before runs could be 'pruned' (one transaction).

    SQLite cannot change a CHECK constraint in place: this is its documented way (a new table,
    the rows copied, the old one dropped, the new one renamed), with foreign keys off meanwhile.
    """

    def current() -> str:
        row = connection.execute("SELECT sql FROM sqlite_master WHERE name = 'runs'").fetchone()
        return row[0] if row else ""

    if "'pruned'" in current():
        return
    connection.execute("PRAGMA foreign_keys=OFF")
    try:
        connection.execute("BEGIN IMMEDIATE")
        try:
            if "'pruned'" not in current():  # another process may have done it meanwhile
                connection.execute(_RUNS_TABLE.replace("{name}", "runs_rebuilt"))
                connection.execute("INSERT INTO runs_rebuilt SELECT * FROM runs")
                connection.execute("DROP TABLE runs")
                connection.execute("ALTER TABLE runs_rebuilt RENAME TO runs")
                if connection.execute("PRAGMA foreign_key_check").fetchall():
                    raise sqlite3.DatabaseError("memberships lost their runs")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    finally:
        connection.execute("PRAGMA foreign_keys=ON")
