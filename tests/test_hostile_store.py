"""A study folder edited by hand: `cnnlab results` and `cnnlab report` read it defensively.

Every column of a finished run's row is replaced, one at a time, by hostile values (not JSON,
the wrong type, non-finite or huge numbers, ragged matrices); the commands either show the
study or refuse in one line with exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

import fake_runs
import fake_studies
from cnnlab.cli import main

STUDY = fake_studies.tiny_study_toml("edited", "{ l1 = [0.0, 0.01], seed = [0, 1] }")

HOSTILE_JSON = [
    "not json",
    "",
    "[1, 2",
    "null",
    "1e999",
    "[]",
    '"text"',
    "{}",
    '{"a": NaN}',
    "[" * 5000 + "]" * 5000,
]
METRICS = [
    {"test_accuracy": "high"},
    {"test_accuracy": None},
    {"test_accuracy": float("nan")},
    {"test_accuracy": 1e308, "train_accuracy": -1e308},
    {"fit_seconds": "slow", "parameters": "many"},
    {"confusion_matrix": {"train": [[1, 2], [3]], "test": [[1]]}},
    {"confusion_matrix": "diagonal"},
    {"confusion_matrix": {"train": [[1e308] * 10] * 10, "test": [["x"] * 10] * 10}},
    {"classification_report": [1, 2]},
    {"baseline_accuracy": "ten percent"},
]
HISTORY = [
    [{"epoch": 1, "loss": float("nan"), "accuracy": float("inf"), "val_accuracy": 0.1}],
    [{"epoch": 1, "loss": 1e308, "accuracy": 1e308, "val_loss": -1e308, "val_accuracy": 1e308}],
    [1, 2, 3],
    [{"epoch": "one", "loss": "low"}],
    [{}],
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edited")
    (root / "edited.toml").write_text(STUDY)
    with fake_studies.fake_training(fake_runs.fake_fit):
        fake_studies.study_records(root / "edited.toml", root / "out", fake_runs.zeros_cifar())
    return root / "out"


def edited(finished: Path, tmp_path: Path, column: str, value: str) -> Path:
    """A copy of the study whose first run has `value` (raw text) in `column`."""
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    with sqlite3.connect(copy / "study.sqlite") as connection:
        first = connection.execute("SELECT id FROM runs ORDER BY id LIMIT 1").fetchone()[0]
        connection.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (value, first))
    return copy


def assert_shown_or_refused(study: Path, capsys) -> None:
    for command in (["results", str(study)], ["results", str(study), "--format", "json"]):
        code = main(command)
        err = capsys.readouterr().err
        assert code in (0, 2) and len(err.strip().splitlines()) <= (code == 2), err
    code = main(["report", str(study)])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert code == 0 or len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("value", HOSTILE_JSON)
@pytest.mark.parametrize("column", ["config", "metrics", "history", "artifacts"])
def test_a_column_that_is_not_what_cnnlab_wrote(finished, tmp_path, capsys, column, value):
    assert_shown_or_refused(edited(finished, tmp_path, column, value), capsys)


@pytest.mark.parametrize("changes", METRICS)
def test_metrics_of_the_wrong_type_or_size(finished, tmp_path, capsys, changes):
    with sqlite3.connect(finished / "study.sqlite") as connection:
        metrics = json.loads(connection.execute("SELECT metrics FROM runs LIMIT 1").fetchone()[0])
    metrics.update(changes)
    assert_shown_or_refused(edited(finished, tmp_path, "metrics", json.dumps(metrics)), capsys)


@pytest.mark.parametrize("history", HISTORY)
def test_histories_that_no_run_wrote(finished, tmp_path, capsys, history):
    assert_shown_or_refused(edited(finished, tmp_path, "history", json.dumps(history)), capsys)


# Values the schema admits (status has a CHECK constraint, seed and attempts NOT NULL).
@pytest.mark.parametrize("value", ["1e308", "-5", "'x'", "x'00ff'"])
@pytest.mark.parametrize("column", ["fit_seconds", "seed", "attempts", "reason"])
def test_plain_columns_out_of_range(finished, tmp_path, capsys, column, value):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    with sqlite3.connect(copy / "study.sqlite") as connection:
        connection.execute(f"UPDATE runs SET {column} = {value}")
    assert_shown_or_refused(copy, capsys)


@pytest.mark.parametrize("value", ["not json", "{}", "[1, 2]", '["a"]', "null"])
def test_class_names_in_the_store_that_are_not_a_list_of_names(finished, tmp_path, capsys, value):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    with sqlite3.connect(copy / "study.sqlite") as connection:
        connection.execute("UPDATE meta SET value = ? WHERE key = 'class_names'", (value,))
    assert_shown_or_refused(copy, capsys)


# "$\\bad{$" is no formula mathtext could parse: drawn as a formula, it would raise.
MARKUP_NAMES = ["**bold**", "_it_", "`code`", "<b>tag</b>", "a|b", "[link](x)", r"$\bad{$", "# h"]


def test_class_names_holding_markup_are_shown_as_text(finished, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    names = [*MARKUP_NAMES, "plain", "other"]
    with sqlite3.connect(copy / "study.sqlite") as connection:
        connection.execute(
            "UPDATE meta SET value = ? WHERE key = 'class_names'", (json.dumps(names),)
        )
    assert main(["report", str(copy)]) == 0
    page = (copy / "report.html").read_text(encoding="utf-8")
    assert "<strong>bold</strong>" not in page and "<b>tag</b>" not in page
    assert "<em>it</em>" not in page and "<code>code</code>" not in page
    assert "**bold**" in page and "&lt;b&gt;tag&lt;/b&gt;" in page and "a|b" in page
    markdown = (copy / "report.md").read_text(encoding="utf-8")
    assert r"\*\*bold\*\*" in markdown and r"a\|b" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "plain" in line]
    assert rows and all(line.count(" | ") == rows[0].count(" | ") for line in rows)
