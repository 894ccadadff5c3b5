"""A study's results and comparisons as text: `cnnlab results` and `cnnlab compare` (no torch)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from cnnlab import atomic
from cnnlab.errors import CnnlabError
from cnnlab.report import stats
from cnnlab.store import FINISHED, RunRecord, Store

FIELD_LABELS = {"train_size": "n", "l1": "L1 weight", "arch": "architecture", "variant": "variant"}

RESULT_METRICS = ("train_accuracy", "test_accuracy", "val_accuracy", "fit_seconds", "parameters")


def format_results(records: list[RunRecord], form: str = "table") -> str:
    """A study's runs as an aligned table, CSV (one flat row per run) or JSON (everything)."""
    if form == "json":  # strict JSON: a diverged run's NaN losses become null
        return json.dumps([_finite(dataclasses.asdict(r)) for r in records], indent=2)
    headers, rows = _flat_rows(records, missing="")
    if form == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(headers)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
        return buffer.getvalue()
    short = ["id", "status", "experiments", "seed", "arch", "train_size", "l1", "epochs"]
    shown = [h for h in short if h in headers] + ["train acc", "test acc", "fit s", "reason"]
    lines = []
    for r in records:
        line = {
            "id": r.id,
            "status": r.status,
            "experiments": ",".join(r.experiments) or "-",
            **{k: show_value(r.config.get(k, "")) for k in short[3:]},
            "train acc": _number(r.metrics.get("train_accuracy"), ".3f"),
            "test acc": _number(r.metrics.get("test_accuracy"), ".3f"),
            "fit s": _number(r.metrics.get("fit_seconds"), ".1f"),
            "reason": r.reason,
        }
        lines.append([str(line[h]) for h in shown])
    return _aligned(shown, lines)


def results_frame(records: list[RunRecord]) -> Any:
    """A study's runs as a pandas DataFrame indexed by run id: the columns of the CSV export."""
    try:
        import pandas  # optional: only this function needs it
    except ImportError:
        raise CnnlabError("results_frame needs pandas: pip install pandas") from None
    headers, rows = _flat_rows(records, missing=None)
    return pandas.DataFrame(rows, columns=headers).set_index("id")


def _flat_rows(records: list[RunRecord], missing: Any) -> tuple[list[str], list[list[Any]]]:
    """One flat row per run: id, status, experiments, config fields, metrics, attempts, reason."""
    config_fields = sorted({key for r in records for key in r.config if key != "layers"})
    headers = ["id", "status", "experiments", *config_fields, *RESULT_METRICS]
    headers += ["attempts", "reason"]
    rows = []
    for r in records:
        metrics = [r.metrics.get(name, missing) for name in RESULT_METRICS]
        configs = [r.config.get(name, missing) for name in config_fields]
        rows.append(
            [r.id, r.status, ";".join(r.experiments), *configs, *metrics, r.attempts, r.reason]
        )
    return headers, rows


def compare_runs(runs: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str:
    """The config fields and scalar metrics that differ between (label, config, metrics) runs."""
    labels = [label for label, _, _ in runs]
    rows = []
    for section, index in (("config", 1), ("metric", 2)):
        keys = sorted({key for run in runs for key in run[index]})
        for key in keys:
            values = [run[index].get(key) for run in runs]
            if section == "metric" and not all(
                v is None or isinstance(v, int | float | str) for v in values
            ):
                continue
            if len({json.dumps(v, sort_keys=True) for v in values}) > 1:
                rows.append([f"{section} {key}", *(_compare_value(v) for v in values)])
    if not rows:
        return "the runs do not differ in any config field or metric"
    return _aligned(["", *labels], rows)


def _finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _compare_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = show_value(value) if not isinstance(value, list | dict) else json.dumps(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _number(value: Any, form: str) -> str:
    return format(value, form) if isinstance(value, int | float) else "-"


def _aligned(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def run_summary(run: str, study_dir: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(label, config, metrics) of a run id in `study_dir`, or of a run folder's JSON files."""
    folder = Path(run)
    if study_dir is None and folder.is_dir():
        config, metrics = (_run_file(folder / name) for name in ("config.json", "metrics.json"))
        return folder.name, config, metrics
    if study_dir is None:
        # Without --study, look in the studies under ./results (where `cnnlab study` writes).
        found = [p.parent for p in sorted(Path("results").glob("*/study.sqlite")) if _has(p, run)]
        if len(found) != 1:
            where = "in no study under ./results" if not found else "in several studies"
            raise CnnlabError(
                f"{run}: not a run folder, and {where}; give the study with --study STUDY_DIR"
            )
        study_dir = str(found[0])
    with Store.open(study_dir, create=False) as store:
        record = store.get(run)
    return record.id, record.config, record.metrics


MAX_RUN_FILE_BYTES = 64 << 20  # a run folder's JSON files are kilobytes


def _run_file(path: Path) -> dict[str, Any]:
    """A run folder's JSON object (config.json, metrics.json), read as a regular file."""
    try:
        value = json.loads(atomic.read_regular(path, MAX_RUN_FILE_BYTES, "a run folder"))
    except CnnlabError:
        raise
    except (ValueError, RecursionError) as error:  # bad JSON, bad UTF-8, nested too deeply
        raise CnnlabError(f"{path}: not valid JSON ({type(error).__name__})") from None
    if not isinstance(value, dict):
        raise CnnlabError(f"{path}: holds a {type(value).__name__}; a run's file holds an object")
    return value


def _has(database: Path, run: str) -> bool:
    with Store.open(database.parent, create=False) as store:
        try:
            store.get(run)
        except CnnlabError:
            return False
    return True


def show_value(value: Any) -> str:
    """A config value as a table shows it: integers with thousands separators."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:g}"


def point_label(point: dict[str, Any]) -> str:
    """'n=5,000, L1 weight=0.0001': a grid point's fields as tables and figures name them."""
    return ", ".join(f"{FIELD_LABELS.get(k, k)}={show_value(v)}" for k, v in point.items()) or "-"


# --- two grid points, statistically -----------------------------------------------------------


def is_point(text: str) -> bool:
    """Whether a `cnnlab compare` argument names a grid point (FIELD=VALUE[,FIELD=VALUE])."""
    return "=" in text


def compare_points(study_dir: str, first: str, second: str) -> str:
    """Test accuracy of two grid points of a study over their seeds, and whether they differ."""
    with Store.open(study_dir, create=False) as store:
        records = [r for r in store.runs() if r.status in FINISHED]
    samples = [_point_values(records, text) for text in (first, second)]
    rows = [["runs", *(str(len(values)) for values in samples)]]
    rows.append(["test accuracy", *(_show_mean(values) for values in samples)])
    a, b = samples
    untestable = _untestable(a, b)
    if untestable:
        rows.append(["verdict", untestable, ""])
        return _aligned(["", first, second], rows)
    result = stats.welch_t_test(a, b)
    low, high = stats.difference_interval(a, b)
    real = not math.isnan(result.p) and result.p < stats.ALPHA
    rows += [
        ["difference", f"{result.mean_difference:+.3f} [{low:+.3f}, {high:+.3f}] (95% Welch)"],
        ["Hedges' g", _number(stats.hedges_g(a, b), ".2f")],
        ["P(improve)", f"{stats.probability_of_improvement(a, b):.2f}"],
        ["Welch t, df, p", f"{result.t:.2f}, {result.df:.1f}, {result.p:.2g}"],
        [
            "verdict",
            f"{'real' if real else 'not distinguishable'} at p < {stats.ALPHA:g}: this one"
            " comparison, uncorrected (the report's Holm-corrected p is in comparisons.csv)",
        ],
    ]
    return _aligned(["", first, second], [row + [""] * (3 - len(row)) for row in rows])


def _untestable(first: list[float], second: list[float]) -> str | None:
    """Why two points' accuracies cannot be tested (None: they can)."""
    if not first or not second:
        return "a point has no run with a test accuracy: no test"
    if not all(math.isfinite(value) for value in (*first, *second)):
        return "undefined: a test accuracy is NaN or infinite, so no test and no P(improve)"
    if len(first) < 2 or len(second) < 2:
        return "a point with one run: no test (run more seeds)"
    return None


def _show_mean(values: list[float]) -> str:
    if not values:
        return "-"
    if not all(math.isfinite(value) for value in values):
        return "undefined (" + ", ".join(f"{value:.3f}" for value in values) + ")"
    if len(values) < 2:
        return f"{values[0]:.3f}"
    low, high = stats.mean_interval(values)
    return f"{statistics.fmean(values):.3f} [{low:.3f}, {high:.3f}]"


def _point_values(records: list[RunRecord], text: str) -> list[float]:
    """The test accuracies of the finished runs at the point `text` names (one per seed)."""
    wanted = {}
    for part in text.split(","):
        field, _, value = part.partition("=")
        if not field.strip() or not value.strip():
            raise CnnlabError(f"{text}: a point is FIELD=VALUE[,FIELD=VALUE...], e.g. l1=0.0001")
        try:
            wanted[field.strip()] = json.loads(value)
        except ValueError:
            wanted[field.strip()] = value.strip()  # a name: arch=seed-maxpool
    known = {key for r in records for key in r.config}
    unknown = sorted(set(wanted) - known)
    if unknown:
        raise CnnlabError(f"{text}: no run has the field {', '.join(unknown)}")
    matched = [r for r in records if all(r.config.get(k) == v for k, v in wanted.items())]
    if not matched:
        raise CnnlabError(f"{text}: no finished run of the study is at this point")
    differing = sorted(
        key
        for key in {key for r in matched for key in r.config} - {"seed"}
        if len({json.dumps(r.config.get(key), sort_keys=True) for r in matched}) > 1
    )
    if differing:
        raise CnnlabError(
            f"{text}: its runs differ in {', '.join(differing)}; name those fields too"
        )
    return [
        float(r.metrics["test_accuracy"])
        for r in matched
        if isinstance(r.metrics.get("test_accuracy"), int | float)
    ]
