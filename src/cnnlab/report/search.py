"""The report of a search: its trials, the best one retrained on fresh seeds, and three figures.

The best trial is chosen on the validation metric it was searched on; its configuration
retrained on seeds no trial used and scored on the test set shows how optimistic that choice is.
The parameter importances are Optuna's (fANOVA, seeded). `trial_lines` is `cnnlab results`'s
listing of the trials (no torch, no matplotlib).
"""

from __future__ import annotations

import math
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib import colormaps

from cnnlab import plots
from cnnlab.report.document import Document, Image
from cnnlab.report.tables import show_value
from cnnlab.store import FINISHED, RunRecord, Store
from cnnlab.study import search
from cnnlab.study.studyfile import Experiment, Study, load_study

IMPORTANCE_SEED = 0  # fANOVA's forest is random: a fixed seed gives the same report twice


@dataclass
class Trial:
    """One trial of a search as the store holds it: its values, runs, state and value."""

    number: int
    params: dict[str, Any]
    records: list[RunRecord]
    state: search.TrialStatus  # `search.trial_state`
    value: float | None  # the mean of the metric over the trial's seeds

    def epochs(self) -> list[int]:
        """The epochs each of its runs trained."""
        return [len(record.history) for record in self.records]


def trials_of(experiment: Experiment, store: Store) -> list[Trial]:
    """The search's trials in number order, each with its runs' records."""
    trials = []
    for number, params, run_ids in store.trials(experiment.name):
        records = [store.get(run_id) for run_id in run_ids]
        state, value = search.trial_state(records, experiment.search.metric)
        trials.append(Trial(number, params, records, state, value))
    return trials


def best_of(experiment: Experiment, trials: list[Trial]) -> Trial | None:
    """The best complete trial (the first of equals), as Optuna picks it."""
    complete = [t for t in trials if t.value is not None]
    if not complete:
        return None
    sign = 1 if experiment.search.direction == "maximize" else -1
    return max(complete, key=lambda t: (sign * t.value, -t.number))


def retrained(experiment: Experiment, records: list[RunRecord]) -> list[RunRecord]:
    """The best configuration's runs on fresh seeds, by seed."""
    runs = [r for r in records if "retrain" in r.experiments.get(experiment.name, {})]
    return sorted(runs, key=lambda r: r.seed)


def trial_lines(study_dir: str | os.PathLike[str]) -> list[str]:
    """Each search's trials as aligned text lines (`cnnlab results`); none without a search."""
    with Store.open(study_dir, create=False) as store:
        meta = store.meta()
        if "study_text" not in meta:
            return []
        study = load_study(
            Path(study_dir) / f"{meta['study_name']}.toml",
            meta["study_text"],
            check_architectures=False,
        )
        lines = []
        for experiment in study.searches:
            trials = trials_of(experiment, store)
            headers, rows = _trial_table(experiment, trials, best_of(experiment, trials))
            widths = [max(len(c) for c in column) for column in zip(headers, *rows, strict=True)]
            lines += ["", f"search {experiment.name}: {len(trials)} trial(s)"]
            lines += [
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                for row in [headers, *rows]
            ]
    return lines


def _trial_table(
    experiment: Experiment, trials: list[Trial], best: Trial | None
) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: trial number, state, the searched values, the value, its runs (and,
    with a pruner, the epochs each run trained)."""
    names = list(experiment.search.space)
    pruned = experiment.search.pruner is not None
    headers = ["trial", "state", *names, experiment.search.metric, *(["epochs"] * pruned), "runs"]
    rows = []
    for trial in trials:
        mark = " (best)" if best is not None and trial.number == best.number else ""
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        epochs = [" ".join(map(str, trial.epochs()))] if pruned else []
        runs = " ".join(r.id[:8] for r in trial.records)
        params = [show_value(trial.params.get(name, "-")) for name in names]
        rows.append([f"{trial.number}{mark}", trial.state, *params, value, *epochs, runs])
    return headers, rows


def search_sections(
    document: Document, study: Study, records: list[RunRecord], study_dir: Path
) -> None:
    """One section per search of the study (nothing for a study without one)."""
    if not study.searches:
        return
    with Store.open(study_dir, create=False) as store:
        found = {e.name: trials_of(e, store) for e in study.searches}
    for experiment in study.searches:
        _section(document, experiment, found[experiment.name], records)


def _section(
    document: Document, experiment: Experiment, trials: list[Trial], records: list[RunRecord]
) -> None:
    spec = experiment.search
    document.heading(f"{experiment.title} (search)")
    if experiment.description:
        document.paragraph(experiment.description)
    states = {state: sum(t.state == state for t in trials) for state in search.TrialStatus}
    seeds = len(trials[0].records) if trials else 0
    document.paragraph(
        f"{len(trials)} of {spec.trials} trials asked of Optuna's {spec.sampler} sampler (seed"
        f" {spec.seed}), {spec.batch} at a time; a trial's value is the mean final"
        f" {spec.metric} over its {seeds} seed(s), to {spec.direction}: the search never looks"
        " at the test set. "
        + ", ".join(f"{count} {state}" for state, count in states.items() if count)
        + ". "
        + _pruning_text(spec, trials)
    )
    best = best_of(experiment, trials)
    if best is None:
        document.paragraph("No trial has completed yet.")
        return
    _best(document, experiment, best, retrained(experiment, records))
    headers, rows = _trial_table(experiment, trials, best)
    document.table(headers, rows)
    slug = re.sub(r"[^a-z0-9]+", "-", experiment.name.lower())
    complete = [t for t in trials if t.value is not None]
    document.image(
        Image(f"{slug}-search-history.png", plots.png_bytes(_history(spec, trials)), "History")
    )
    _importances(document, experiment, trials, slug)
    if len(complete) > 1:
        figure = _parallel_coordinates(experiment, complete)
        caption = f"Parallel coordinates: each complete trial, coloured by its {spec.metric}"
        document.image(Image(f"{slug}-search-parallel.png", plots.png_bytes(figure), caption))


def _pruning_text(spec, trials: list[Trial]) -> str:
    """What the pruner did, counted in trials and in the epochs its runs trained."""
    if spec.pruner is None:
        return "There is no pruning: every trial trains all its epochs."
    options = ", ".join(f"{key} {value}" for key, value in spec.pruner.options)
    ended = [
        t for t in trials if t.state in (search.TrialStatus.COMPLETE, search.TrialStatus.PRUNED)
    ]
    trained = sum(sum(t.epochs()) for t in ended)
    full = sum(r.config.get("epochs", 0) for t in ended for r in t.records)
    saved = f" ({1 - trained / full:.0%} fewer)" if full else ""
    pruned = sum(t.state == search.TrialStatus.PRUNED for t in trials)
    return (
        f"Optuna's {spec.pruner.kind.replace('_', ' ')} pruner ({options}) judged each run after"
        " every epoch against the runs of the same seed in earlier batches; a trial is pruned when"
        f" one of its runs is. {pruned} of {len(ended)} ended"
        f" trials were pruned: their runs trained {trained} of the {full} epochs they would have"
        f" trained unpruned{saved}."
    )


def _best(document: Document, experiment: Experiment, best: Trial, fresh: list[RunRecord]) -> None:
    """The best trial, and its configuration retrained on fresh seeds beside it."""
    spec = experiment.search
    params = ", ".join(f"{name}={show_value(v)}" for name, v in best.params.items())
    document.paragraph(f"Best trial: **#{best.number}** ({params}).")
    rows = [
        [
            f"trial #{best.number} (selected on it)",
            _seeds(best.records),
            _mean_std(best.records, spec.metric),
            _mean_std(best.records, "test_accuracy"),
        ]
    ]
    done = [r for r in fresh if r.status in FINISHED]
    if done:
        rows.append(
            [
                "retrained on fresh seeds",
                _seeds(done),
                _mean_std(done, spec.metric),
                _mean_std(done, "test_accuracy"),
            ]
        )
    document.table(["configuration", "seeds", spec.metric, "test_accuracy"], rows)
    if done:
        searched = statistics.fmean(r.metrics[spec.metric] for r in best.records)
        again = _finite([r.metrics.get(spec.metric) for r in done])
        if again:
            document.paragraph(
                f"The selection's optimism: the best trial's {spec.metric} was"
                f" {searched:.4f} on the seeds it was selected on, {statistics.fmean(again):.4f}"
                f" on {len(again)} fresh seed(s) (a difference of"
                f" {searched - statistics.fmean(again):+.4f}); the test accuracy of the fresh"
                " seeds is the search's unbiased result."
            )
    else:
        document.paragraph("The best configuration has not been retrained on fresh seeds yet.")


def _seeds(records: list[RunRecord]) -> str:
    return ", ".join(str(r.seed) for r in records)


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def _mean_std(records: list[RunRecord], metric: str) -> str:
    values = _finite([r.metrics.get(metric) for r in records])
    if not values:
        return "–"
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4f}{spread} ({len(values)})"


def _importances(document: Document, experiment: Experiment, trials: list[Trial], slug: str):
    """Optuna's fANOVA importances of the searched fields, as a table and a bar chart."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    complete = [t for t in trials if t.value is not None]
    varied = [n for n in experiment.search.space if len({str(t.params[n]) for t in complete}) > 1]
    if len(complete) < 2 or not varied or len({t.value for t in complete}) < 2:
        document.paragraph("Parameter importances need at least two complete, differing trials.")
        return
    study = search.rebuilt(experiment.search, [(t.params, t.value) for t in trials])
    evaluator = FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)
    importances = get_param_importances(study, evaluator=evaluator, params=varied)
    document.paragraph(
        "Parameter importances (Optuna's fANOVA over the complete trials: the share of the"
        " value's variance each field explains; with few trials, a rough guide): "
        + ", ".join(f"{name} {share:.2f}" for name, share in importances.items())
        + "."
    )
    figure = plots.Figure(figsize=(6, 0.5 + 0.4 * len(importances)), layout="constrained")
    axes = figure.subplots()
    names = list(importances)[::-1]
    axes.barh(names, [importances[n] for n in names], color="#1f77b4")
    axes.set_xlabel("importance (fANOVA)")
    axes.set_xlim(0, 1)
    caption = "Parameter importances"
    document.image(Image(f"{slug}-search-importances.png", plots.png_bytes(figure), caption))


def _history(spec, trials: list[Trial]):
    """Each trial's value in trial order, and the best so far."""
    figure = plots.Figure(figsize=(6.4, 3.4), layout="constrained")
    axes = figure.subplots()
    complete = [t for t in trials if t.value is not None]
    axes.plot([t.number for t in complete], [t.value for t in complete], "o", label="trial")
    pick = max if spec.direction == "maximize" else min
    best, running = [], None
    for trial in complete:
        running = trial.value if running is None else pick(running, trial.value)
        best.append(running)
    axes.step([t.number for t in complete], best, where="post", color="#d62728", label="best")
    for trial in trials:
        if trial.value is None:
            axes.axvline(trial.number, color="#bbb", linestyle=":", linewidth=1)
    axes.set_xlabel("trial (dotted: pruned, failed or pending)")
    axes.set_ylabel(f"{spec.metric} (mean over seeds)")
    axes.set_title("Optimisation history")
    axes.legend(loc="best")
    return figure


def _parallel_coordinates(experiment: Experiment, trials: list[Trial]):
    """One line per trial across the searched fields (each axis scaled to its range)."""
    spec = experiment.search
    names = list(spec.space)
    figure = plots.Figure(figsize=(1.6 * len(names) + 2.4, 3.6), layout="constrained")
    axes = figure.subplots()
    values = [t.value for t in trials]
    low, high = min(values), max(values)
    colours = colormaps["viridis"]
    for trial in trials:
        heights = [_scaled(spec.space[name], trial.params[name]) for name in names]
        shade = 0.5 if high == low else (trial.value - low) / (high - low)
        axes.plot(range(len(names)), heights, color=colours(shade), alpha=0.8)
    axes.set_xticks(range(len(names)), names)
    axes.set_yticks([0, 1], ["low", "high"])
    axes.set_title(f"Trials across the searched fields (yellow: higher {spec.metric})")
    return figure


def _scaled(param, value) -> float:
    """Where `value` sits on its field's axis, 0 to 1 (log ranges on a log scale)."""
    if param.choices:
        index = param.choices.index(value) if value in param.choices else 0
        return index / max(len(param.choices) - 1, 1)
    low, high, value = param.low, param.high, value
    if param.log:
        low, high, value = math.log(low), math.log(high), math.log(value)
    return (value - low) / (high - low)
