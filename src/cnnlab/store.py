"""The results store: one SQLite file per study folder; the only module that touches it.

Tables: `meta` (which study owns the folder), `runs` (one row per run id: status, config,
metrics, per-epoch history, artifact paths, timings) and `memberships` (which experiments a run
belongs to, with the grid fields that place it there: a run shared by two experiments is one row
in `runs` and two in `memberships`). Every state change is one transaction, so a process killed at
any moment leaves the database as it was before or after that change.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError

DATABASE_NAME = "study.sqlite"
STATUSES = ("pending", "running", "done", "diverged", "failed")
FINISHED = ("done", "diverged")  # a run in one of these has a result worth keeping
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'diverged', 'failed')),
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
CREATE TABLE IF NOT EXISTS memberships (
    run_id TEXT NOT NULL REFERENCES runs(id),
    experiment TEXT NOT NULL,
    position INTEGER NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (run_id, experiment)
);
"""


@dataclass
class RunRecord:
    """One row of `runs`, decoded, with the experiments it belongs to."""

    id: str
    status: str
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
        now = time.time()
        with self._transaction() as connection:
            connection.execute("DELETE FROM memberships")
            for position, (run_id, config, seed, experiments) in enumerate(planned):
                connection.execute(
                    "INSERT INTO runs (id, status, config, seed, created_at) "
                    "VALUES (?, 'pending', ?, ?, ?) ON CONFLICT(id) DO NOTHING",
                    (run_id, _dumps(config), seed, now),
                )
                connection.executemany(
                    "INSERT INTO memberships (run_id, experiment, position, fields) "
                    "VALUES (?, ?, ?, ?)",
                    [(run_id, name, position, _dumps(f)) for name, f in experiments.items()],
                )

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
        status: str,
        metrics: dict[str, Any],
        history: list[dict[str, Any]],
        artifacts: dict[str, str],
        reason: str = "",
    ) -> None:
        """Store a finished run ('done' or 'diverged') with everything it produced."""
        assert status in FINISHED, status
        fit_seconds = metrics.get("fit_seconds")
        with self._transaction() as connection:
            connection.execute(
                "UPDATE runs SET status = ?, metrics = ?, history = ?, artifacts = ?, reason = ?, "
                "fit_seconds = ?, finished_at = ? WHERE id = ?",
                (
                    status,
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
        memberships = self._connection.execute(
            "SELECT experiment, fields FROM memberships WHERE run_id = ? ORDER BY experiment",
            (row[0],),
        ).fetchall()
        return RunRecord(
            id=row[0],
            status=row[1],
            config=json.loads(row[2]),
            seed=row[3],
            metrics=json.loads(row[4]),
            history=json.loads(row[5]),
            artifacts=json.loads(row[6]),
            reason=row[7],
            attempts=row[8],
            fit_seconds=row[9],
            created_at=row[10],
            started_at=row[11],
            finished_at=row[12],
            experiments={name: json.loads(fields) for name, fields in memberships},
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
