"""Findings you can trust: Holm-corrected verdicts, comparisons.csv, seeds needed, the cost of a
point, and observations that say only what the numbers support (studies with known accuracies)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

import fake_runs
import fake_studies
import oracles
from cnnlab.cli import main
from cnnlab.config import RunConfig
from cnnlab.data import datasets
from cnnlab.execution import planning
from cnnlab.nn.shapes import dataset_input, forward_flops, resolve_layers
from cnnlab.report import cost, stats
from cnnlab.report.document import FILES_FOLDER
from cnnlab.report.report import build


def _fit_from(table: dict[tuple[str, float], list[float]]):
    """A fake fit whose test accuracy per seed comes from `table`, keyed by (field, value)."""

    def fit(config, data, **options):
        result = fake_runs.fake_fit(config, data, **options)
        key = next(key for key in table if getattr(config, key[0]) == key[1])
        accuracy = table[key][config.seed]
        matrix = fake_runs.test_matrix(accuracy)
        metrics = {**result.metrics, "test_accuracy": accuracy}
        metrics["confusion_matrix"] = {**metrics["confusion_matrix"], "test": matrix}
        return dataclasses.replace(result, metrics=metrics)

    return fit


def _run(folder: Path, toml: str, fit, repeats: int | None = None) -> Path:
    return fake_studies.run_fake_study(folder, toml, fit, repeats=repeats)


def _observations(markdown: str) -> list[str]:
    section = markdown.split("## Observations\n\n", 1)[1].split("\n\n", 1)[0]
    return [line.removeprefix("- ") for line in section.splitlines()]


HEADER = """
[study]
name = "{name}"
repeats = 3

[defaults]
arch = "seed"
train_size = 5000
l1 = 0.0001
epochs = 4
"""
CHANCE = "one-sided t-tests, Holm"

# --- a study in which nothing learned ------------------------------------------------------------

NOTHING_TOML = (
    HEADER.format(name="nothing")
    + """
[experiments.l1]
title = "L1"
kind = "l1"
grid = { l1 = [0, 0.0001, 1] }

[experiments.sizes]
title = "Sizes"
kind = "size"
grid = { train_size = [5000, 10000] }
"""
)


def test_a_study_that_learns_nothing_says_so_and_nothing_more(tmp_path):
    # every point at 0.11, a little above the most-frequent class: the issue's own case
    everywhere = {("arch", "seed"): [0.11, 0.105, 0.115]}
    folder = _run(tmp_path, NOTHING_TOML, _fit_from(everywhere))
    report = build(folder)
    observations = _observations(report.markdown())
    assert (
        "**L1**: not shown to learn: no point's test accuracy (0.110) is shown above 0.12, the"
        f" most-frequent-class 0.10 plus the margin 0.02 ({CHANCE})." in observations
    )
    assert (
        "**L1**: no trend in test accuracy along l1 is established: +0.000 per grid step"
        in (observations[0])
    )
    assert not [c for c in report.claims.items if c.established]
    markdown = report.markdown()
    assert "collapses" not in markdown and "over-fits" not in markdown


@pytest.mark.parametrize(
    ("accuracies", "verdict", "shown"),
    [
        # no spread, below chance + 0.02: each point collapsed, nothing was learned
        ([0.11, 0.11, 0.11], "nothing learned", "0.110"),
        # above the margin, but not above the noise (p = 0.2): learning is not shown, no more
        ([0.20, 0.10, 0.16], "not shown to learn", "0.153"),
    ],
)
def test_runs_not_clearly_above_the_baseline_learned_nothing(tmp_path, accuracies, verdict, shown):
    everywhere = {("arch", "seed"): accuracies}
    markdown = build(_run(tmp_path, NOTHING_TOML, _fit_from(everywhere))).markdown()
    assert f"**L1**: {verdict}: no point's test accuracy ({shown})" in markdown
    learned_nothing = verdict == "nothing learned"  # each point then collapsed, by its test
    assert ("collapses the net" in markdown) == learned_nothing


# --- a study that collapses under L1 -------------------------------------------------------------

COLLAPSE_TOML = (
    HEADER.format(name="collapse")
    + """
[experiments.l1]
title = "L1"
kind = "l1"
grid = { l1 = [0, 0.01, 0.1, 1] }
"""
)
COLLAPSE = {
    ("l1", 0): [0.50, 0.51, 0.49],
    ("l1", 0.01): [0.45, 0.46, 0.44],
    ("l1", 0.1): [0.13, 0.131, 0.129],  # low, but clearly above 0.10: not a collapse
    ("l1", 1): [0.10, 0.101, 0.099],
}


@pytest.fixture(scope="module")
def collapsed(tmp_path_factory) -> Path:
    folder = _run(tmp_path_factory.mktemp("collapse"), COLLAPSE_TOML, _fit_from(COLLAPSE))
    build(folder, target_accuracy=0.4).write()
    return folder


def _collapse_p(accuracies: list[float]) -> float:
    """Every run below 0.12 on its 10,000 test images: the largest binomial p, by SciPy."""
    return max(
        scipy_stats.binomtest(round(a * 10000), 10000, 0.12, alternative="less").pvalue
        for a in accuracies
    )


def test_collapse_is_said_only_where_a_point_is_clearly_at_chance(collapsed):
    observations = _observations((collapsed / "report.md").read_text())
    at_one = [line for line in observations if "collapses the net" in line]
    raw = [_collapse_p(COLLAPSE[key]) for key in COLLAPSE]
    holm = oracles.holm_by_definition(raw)[3]
    assert at_one == [
        "**L1**: L1 weight=1 collapses the net to chance in each of its runs: test accuracy"
        " 0.100, 0.101, 0.099, each below 0.12 (the most-frequent-class 0.10 plus the margin"
        " 0.02; one-sided binomial test on each run's test images, the largest p taken; Holm p ="
        f" {holm:.2g} over 4 distinct points)."
    ]  # L1 0.1 is low (0.130), but above chance + 0.02: not a collapse
    assert not any("dense kernel" in line or "nothing learned" in line for line in observations)


def test_the_comparisons_file_holds_scipys_numbers(collapsed):
    rows = list(csv.DictReader(io.StringIO((collapsed / "comparisons.csv").read_text())))
    written = json.loads((collapsed / "comparisons.json").read_text(), parse_constant=pytest.fail)
    assert rows == [{k: "" if v is None else str(v) for k, v in row.items()} for row in written]
    samples = [COLLAPSE[key] for key in COLLAPSE]
    (trend,) = [row for row in rows if row["question"] == "trend"]
    # L1 1's runs spread 100 times less than the others: Bartlett's test sees it, so each point
    # keeps its own variance (Welch's contrast, Games–Howell pairs)
    assert scipy_stats.bartlett(*samples).pvalue < 0.05 and "Welch" in trend["method"]
    centred = np.arange(4) - 1.5
    weights = centred / np.sum(centred**2)
    parts = [w * w * np.var(s, ddof=1) / 3 for w, s in zip(weights, samples, strict=True)]
    error = math.sqrt(sum(parts))
    df = sum(parts) ** 2 / sum(part**2 / 2 for part in parts)
    slope = float(np.dot(weights, [np.mean(s) for s in samples]))
    assert float(trend["difference"]) == pytest.approx(slope, rel=1e-9)
    assert float(trend["statistic"]) == pytest.approx(slope / error, rel=1e-9)
    assert float(trend["p"]) == pytest.approx(2 * scipy_stats.t.sf(abs(slope / error), df))
    pairs = [row for row in rows if row["question"] == "pair"]
    assert len(pairs) == 5  # 3 neighbours, 2 more against the baseline (the first point)
    names = [f"L1 weight={value:g}" for _, value in COLLAPSE]
    for row in pairs:
        i, j = names.index(row["first"]), names.index(row["second"])
        # Games–Howell by its definition: Welch's error and df, the studentized range of 4
        a, b = samples[i], samples[j]
        error = math.sqrt(np.var(a, ddof=1) / 3 + np.var(b, ddof=1) / 3)
        df = error**4 / ((np.var(a, ddof=1) / 3) ** 2 / 2 + (np.var(b, ddof=1) / 3) ** 2 / 2)
        q = abs(np.mean(b) - np.mean(a)) / error * math.sqrt(2)
        half = scipy_stats.studentized_range.ppf(0.95, 4, df) / math.sqrt(2) * error
        p = scipy_stats.studentized_range.sf(q, 4, df)
        assert float(row["adjusted_p"]) == pytest.approx(p, rel=1e-6)
        assert float(row["difference_low"]) == pytest.approx(np.mean(b) - np.mean(a) - half)
        assert float(row["difference_high"]) == pytest.approx(np.mean(b) - np.mean(a) + half)
        wins = np.mean([[b > a for b in samples[j]] for a in samples[i]])
        assert float(row["p_improvement"]) == pytest.approx(wins)
        # a simultaneous interval agrees with its verdict: established iff it leaves out 0
        established = row["verdict"] == "established"
        assert established == (float(row["difference_low"]) * float(row["difference_high"]) > 0)


def test_each_point_shows_its_training_flops_and_its_time_to_the_target(collapsed):
    markdown = (collapsed / "report.md").read_text()
    config = RunConfig(arch="seed", train_size=5000, epochs=4)
    shape = dataset_input(config)[0]
    trained = 4500  # 5,000 less the 10% validation split
    flops = forward_flops(resolve_layers(config, shape), shape) * 3 * trained * config.epochs
    assert "| train GFLOPs | s to val acc ≥ 0.40 |" in markdown
    # the fake's validation accuracy is 0.5 (1 - 0.5^epoch): 0.4 at epoch 3, 0.01 s an epoch
    assert f"| {flops / 1e9:,.0f} | 0.03 [0.03, 0.03] (3/3) |" in markdown
    assert f"| {flops / 1e9:,.0f} | not reached (0/3) |" in markdown  # the collapsed point
    assert f"]({FILES_FOLDER}/l1-compute.png)" in markdown
    assert (collapsed / FILES_FOLDER / "l1-compute.png").stat().st_size > 10_000


# --- Holm's correction takes a verdict back ------------------------------------------------------

DEMOTED_TOML = (
    HEADER.format(name="demoted")
    + """
[experiments.sizes]
title = "Sizes"
kind = "size"
grid = { train_size = [5000, 10000, 20000] }

[experiments.far]
title = "Far"
grid = { l1 = [0.5, 0.7, 0.9] }
"""
)
DEMOTED = {
    ("l1", 0.5): [0.40, 0.41, 0.39],
    ("l1", 0.7): [0.40, 0.42, 0.38],
    ("l1", 0.9): [0.425, 0.435, 0.415],  # p = 0.037 against 0.5 alone; not after Holm
    ("train_size", 5000): [0.50, 0.51, 0.49],
    ("train_size", 10000): [0.60, 0.61, 0.59],
    ("train_size", 20000): [0.605, 0.58, 0.62],
}


@pytest.fixture(scope="module")
def demoted(tmp_path_factory) -> Path:
    folder = _run(tmp_path_factory.mktemp("demoted"), DEMOTED_TOML, _fit_from(DEMOTED))
    build(folder).write()
    return folder


def test_a_pair_is_opened_only_behind_its_experiments_question(demoted):
    uncorrected = scipy_stats.ttest_ind(DEMOTED[("l1", 0.9)], DEMOTED[("l1", 0.5)], equal_var=0)
    assert uncorrected.pvalue < 0.05  # real by a lone, uncorrected Welch test
    markdown = (demoted / "report.md").read_text()
    assert "**Far**: no trend in test accuracy along l1 is established" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| 0.5 → 0.9 |"))
    assert row.startswith("| 0.5 → 0.9 | not established |")
    csv_row = next(
        row
        for row in csv.DictReader((demoted / "comparisons.csv").open())
        if row["second"] == "L1 weight=0.9" and row["first"] == "L1 weight=0.5"
    )
    assert csv_row["verdict"] == "not established"
    assert "not opened: the question is not established" in csv_row["adjustment"]
    html = (demoted / "report.html").read_text()
    established = markdown.count("| **established** |")
    assert established == html.count("<td><strong>established</strong></td>") == 2


# --- how many seeds ------------------------------------------------------------------------------


def _median_spread(samples: list[list[float]]) -> float:
    return float(np.median([np.std(values, ddof=1) for values in samples]))


def test_too_few_seeds_are_named_with_the_number_needed(demoted):
    markdown = (demoted / "report.md").read_text()
    assert "## How many seeds" in markdown
    for name, points in (("Sizes", "train_size"), ("Far", "l1")):
        samples = [values for (field, _), values in DEMOTED.items() if field == points]
        spread = _median_spread(samples)
        needed = stats.repeats_needed(spread, 0.01)
        assert needed > 3
        assert (
            f"| {name} | 3 | {spread:.4f} | {needed} | **too few**: `--repeats {needed}` |"
            in markdown
        )
    assert f"]({FILES_FOLDER}/seeds-needed.png)" in markdown
    report = build(demoted, difference=0.2)  # a larger difference needs fewer
    assert "| Far | 3 | 0.0100 | 2 | enough |" in report.markdown() and not report.advice


def test_one_unstable_point_does_not_set_the_seeds_needed():
    steady = [[0.50, 0.51, 0.49], [0.48, 0.49, 0.47], [0.45, 0.46, 0.44]]
    unstable = [0.10, 0.35, 0.22]  # collapsing in some seeds
    assert cost.typical_spread([*steady, unstable]) == pytest.approx(0.01)
    assert cost.typical_spread([*steady, [0.1, 0.1, 0.1]]) == pytest.approx(0.01)  # constant
    pooled = stats.pooled_spread([*steady, unstable])  # the old rule, for the record
    assert stats.repeats_needed(pooled, 0.01) > 10 * stats.repeats_needed(0.01, 0.01)


def test_the_study_command_prints_the_advice(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: fake_runs.zeros_cifar())
    monkeypatch.setattr(planning, "process_count", lambda *args: 1)
    path = tmp_path / "demoted.toml"
    path.write_text(DEMOTED_TOML)
    with fake_studies.fake_training(_fit_from(DEMOTED)):
        arguments = ["study", str(path), "--out", str(tmp_path / "out"), "--repeats", "2"]
        assert main([*arguments, "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"report: {tmp_path / 'out' / 'report.html'}"  # still the last line
    advice = [line for line in lines if line.startswith("advice")]
    sizes = [values[:2] for (field, _), values in DEMOTED.items() if field == "train_size"]
    spread = _median_spread(sizes)
    needed = stats.repeats_needed(spread, 0.01)
    assert (
        f"advice: Sizes: 2 run(s) per point; telling apart 0.01 test accuracy with 80% power"
        f" (run-to-run std {spread:.4f}) needs `--repeats {needed}`" in advice
    )


# --- cnnlab compare, for two grid points ---------------------------------------------------------


def test_compare_tests_two_grid_points_over_their_seeds(demoted, capsys):
    assert main(["compare", "--study", str(demoted), "l1=0.5", "l1=0.9"]) == 0
    out = capsys.readouterr().out
    first, second = DEMOTED[("l1", 0.5)], DEMOTED[("l1", 0.9)]
    reference = scipy_stats.ttest_ind(second, first, equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert re.search(r"runs\s+3\s+3", out)
    assert f"+0.025 [{interval.low:+.3f}, {interval.high:+.3f}] (95% Welch)" in out
    assert f"{reference.statistic:.2f}, {reference.df:.1f}, {reference.pvalue:.2g}" in out
    assert "real at p < 0.05: this one comparison, uncorrected" in out


@pytest.mark.parametrize(
    ("points", "message"),
    [
        (["train_size=5000", "l1=0.5"], "train_size=5000: its runs differ in l1; name those"),
        (["bogus=1", "l1=0.5"], "bogus=1: no run has the field bogus"),
        (["l1=0.3", "l1=0.5"], "l1=0.3: no finished run of the study is at this point"),
        (["l1=0.5"], "grid points (FIELD=VALUE) go in twos, with --study DIR"),
    ],
)
def test_compare_refuses_points_it_cannot_pin_down(demoted, capsys, points, message):
    assert main(["compare", "--study", str(demoted), *points]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# --- the seed-like study -------------------------------------------------------------------------


def test_the_seed_like_studys_observations(tmp_path):
    report = build(_run(tmp_path, fake_studies.STUDY_TOML, fake_runs.fake_fit, 3))
    observations = _observations(report.markdown())
    assert any(
        line.startswith("**L1**: L1 weight=1 collapses the net to chance in each of its runs")
        for line in observations
    )
    assert any(
        line.startswith("**Sizes**: n=5,000 → n=10,000 changes test accuracy by +0.050")
        for line in observations
    )
    assert not any("nothing learned" in line for line in observations)
    # the fake's Keras val_loss rises with its penalty, its data loss does not
    assert not any("over-fits" in line for line in observations)


def test_means_above_chance_that_too_few_runs_cannot_confirm_are_not_called_nothing_learned(
    tmp_path,
):
    # Two seeds at 0.36/0.38: well above 0.10, but too few runs for a corrected test to confirm.
    everywhere = {("arch", "seed"): [0.36, 0.38]}
    markdown = build(_run(tmp_path, NOTHING_TOML, _fit_from(everywhere))).markdown()
    observations = _observations(markdown)
    assert not any("nothing learned" in line for line in observations)
    assert any("not shown to learn" in line for line in observations), observations


def test_a_size_grid_gets_its_learning_curve_as_claims_and_a_figure(demoted):
    markdown = (demoted / "report.md").read_text()
    claims = {c["id"]: c for c in json.loads((demoted / "claims.json").read_text())}
    assert "### How much data: the learning curve" in markdown
    summary = claims["sizes/curve"]["sentence"]
    assert summary.startswith("**Sizes**: the learning curve e(n) = α + η·n^γ (fitted to 3 sizes")
    assert "(e_N)" in summary and "(β_N)" in summary and summary in markdown
    # three sizes fit the curve; its check by prediction needs a fourth
    assert (
        "not checked by prediction: that needs four sizes"
        in claims["sizes/curve/check"]["sentence"]
    )
    # default targets: the best point's mean accuracy plus 0.02 and 0.05
    best = max(np.mean(v) for (field, _), v in DEMOTED.items() if field == "train_size")
    for step in (0.02, 0.05):
        assert f"sizes/curve/target/{round(best + step, 3):g}" in claims
    assert (demoted / FILES_FOLDER / "sizes-learning-curve.png").stat().st_size > 10_000
    assert "Far" not in "".join(c["sentence"] for c in claims.values() if c["kind"] == "curve")


def test_two_sizes_fit_no_curve_and_say_so(tmp_path):
    report = build(_run(tmp_path, fake_studies.STUDY_TOML, fake_runs.fake_fit, 3))
    (curve,) = [c for c in report.claims.items if c.kind == "curve"]
    assert "no learning curve: it needs three sizes or more" in curve.sentence
