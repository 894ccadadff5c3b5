"""The report: SEED.md's tables beside ours, charts, observations; it renders in a real browser."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats as scipy_stats

import fake_runs
import fake_studies
import oracles
from cnnlab.cli import main
from cnnlab.errors import CnnlabError
from cnnlab.report import design, tables
from cnnlab.report.document import FILES_FOLDER, Document
from cnnlab.report.learned import confused_pairs, per_class_accuracy
from cnnlab.report.report import Report, build, write_report
from cnnlab.store import Store
from cnnlab.study import runner
from cnnlab.study.studyfile import load_study


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-seed study (fake training, one diverged run) and its report."""
    folder = tmp_path_factory.mktemp("report")
    path = folder / "mini.toml"
    path.write_text(fake_studies.STUDY_TOML.replace("[0, 0.0001, 1]", "[0, 0.0001, 1, 100]"))
    with fake_studies.fake_training(fake_runs.fake_fit):
        outcome = runner.run_study(
            path,
            out=folder / "out",
            data=fake_runs.zeros_cifar(),
            execution=fake_studies.IN_PROCESS,
        )
    assert write_report(outcome.study_dir, explain=False)["html"] == folder / "out" / "report.html"
    return folder / "out"


def test_the_markdown_puts_the_reports_numbers_beside_ours(finished):
    markdown = (finished / "report.md").read_text()
    # n | train acc (report) | train acc (cnnlab) | test acc (report) | test acc (cnnlab) | ...
    # each mean with its 95% t interval: 0.628 ± t(0.975, 1) · 0.004 / √2 = 0.628 ± 0.025
    assert (
        "| 5,000 | 0.63 | 0.628 [0.603, 0.653] (2) | 0.50 | 0.498 [0.473, 0.523] (2) | 172.7 |"
        in markdown
    )
    assert "| 10,000 | – | 0.653 [0.628, 0.678] (2) | – |" in markdown
    assert "| 1 | 0.22 | 0.100 [0.100, 0.100] (2) | 0.22 | 0.100 [0.100, 0.100] (2) |" in markdown
    assert "| seed-maxpool | 0.658 [0.633, 0.683] (2) |" in markdown
    assert "**mean [95% confidence interval] (number of runs)** over seeds, the t interval" in (
        markdown
    )
    assert "with 2–5 seeds a percentile bootstrap has only 3 to 126 distinct resamples" in markdown


def test_observations_are_rendered_from_the_claims(finished):
    markdown = (finished / "report.md").read_text()
    claims = json.loads((finished / "claims.json").read_text(), parse_constant=pytest.fail)
    observations = markdown.split("## Observations\n\n", 1)[1].split("\n\n", 1)[0]
    said = [c["sentence"] for c in claims if c["sentence"] in observations]
    # every observation but the best run's (a selection, said as such) is a claim's sentence
    lines = [line.removeprefix("- ") for line in observations.splitlines()]
    assert [line for line in lines if line not in said and "further claim" not in line] == [
        line for line in lines if line.startswith("The best run's test accuracy")
    ]
    assert "**L1**: L1 weight=1 collapses the net to chance in each of its runs" in markdown
    assert "seed-maxpool has 2.65× the parameters" in markdown
    # two repeats of the fake: 5K at 0.496/0.500, 10K at 0.546/0.550
    assert "the train−test accuracy gap (mean [95% t interval]) is n=5,000 0.130" in markdown


def test_diverged_runs_and_the_environment_are_listed(finished):
    markdown = (finished / "report.md").read_text()
    assert re.search(r"\| `\w{12}` \| diverged \| l1 \| loss not finite at epoch 2 \|", markdown)
    assert f"| data SHA-256 | `{'0' * 64}` |" in markdown
    assert "| data source | zeros |" in markdown
    assert "| CPU cores |" in markdown and "total fit time" in markdown


def test_every_figure_is_a_file_beside_the_markdown_and_embedded_in_the_html(finished):
    markdown = (finished / "report.md").read_text()
    html = (finished / "report.html").read_text()
    linked = re.findall(rf"\]\(({FILES_FOLDER}/[^)]+\.png)\)", markdown)
    # curves x3, size and L1 charts, pooling bars, histories x3, confusion, mistakes, kernels x3,
    # accuracy against time and FLOPs x3, seeds needed
    assert len(linked) >= 17
    for name in ("sizes-compute", "l1-compute", "pooling-compute", "seeds-needed"):
        assert f"{FILES_FOLDER}/{name}.png" in linked, name
    for relative in linked:
        with Image.open(finished / relative) as image:
            image.verify()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == len(linked)
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert "http://" not in html and "https://" not in html  # nothing to fetch: self-contained


def test_the_report_command_rewrites_both_files(finished, capsys):
    (finished / "report.md").unlink()
    assert main(["report", str(finished)]) == 0
    assert capsys.readouterr().out.startswith(f"report: {finished / 'report.html'}")
    assert (finished / "report.md").is_file()


def test_the_report_of_a_folder_that_is_no_study_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a cnnlab study folder" in capsys.readouterr().err


def test_results_export_one_row_per_run(finished, capsys):
    assert main(["results", str(finished), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 12
    assert {row["status"] for row in rows} == {"done", "diverged"}
    shared = [row for row in rows if row["experiments"] == "l1;pooling;sizes"]
    assert len(shared) == 2 and {row["seed"] for row in shared} == {"0", "1"}
    assert main(["results", str(finished), "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out, parse_constant=pytest.fail)  # no NaN
    assert len(records) == 12 and len(records[0]["history"]) == 4
    assert main(["results", str(finished)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["id", "status", "experiments"] and len(table) == 13


def test_compare_shows_only_what_differs(finished, capsys):
    with Store.open(finished) as store:
        runs = {
            (r.config["arch"], r.config["train_size"], r.config["l1"], r.seed): r.id
            for r in store.runs()
        }
    strided, pooled = runs[("seed", 5000, 1e-4, 0)], runs[("seed-maxpool", 5000, 1e-4, 0)]
    assert main(["compare", "--study", str(finished), strided[:6], pooled]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [strided, pooled]
    differing = [line.split()[:2] for line in lines[1:3]]
    assert differing == [["config", "arch"], ["metric", "fit_seconds"]]
    assert not any(line.split()[:2] in (["config", "seed"], ["config", "epochs"]) for line in lines)
    folders = [str(finished / "runs" / run) for run in (strided, pooled)]
    assert main(["compare", *folders]) == 0
    assert "config arch" in capsys.readouterr().out


# --- a real browser ---------------------------------------------------------------------------

_PROBE = """<script>
addEventListener("load", () => {
  const broken = [...document.images].filter((i) => !(i.complete && i.naturalWidth > 0));
  document.body.setAttribute("data-images", document.images.length + ":" + broken.length);
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
    pytest.skip("chromium is not installed")


_VERDICTS = """<script>
addEventListener("load", () => {
  let cells = 0, hidden = 0;
  for (const table of document.querySelectorAll("table")) {
    const column = [...table.querySelectorAll("th")].map((h) => h.textContent).indexOf("verdict");
    if (column < 0) continue;
    const box = table.getBoundingClientRect();
    for (const row of table.querySelectorAll("tbody tr")) {
      const edge = row.children[column].getBoundingClientRect().right;
      cells += 1;
      hidden += edge > Math.min(box.right, innerWidth) + 0.5 ? 1 : 0;
    }
  }
  const sideways = document.documentElement.scrollWidth > innerWidth;
  document.body.setAttribute("data-images", cells + ":" + hidden + ":" + sideways);
});
</script>"""


def _render(
    page: Path, profile: Path, probe: str = _PROBE, width: int = 1280
) -> tuple[str, list[str]]:
    """Load `page` headless, `width` pixels wide, with a probe; returns its result (the body's
    data-images attribute) and the console lines."""
    probed = profile.parent / f"probed-{page.name}"  # beside the profile, not the report
    probed.write_text(page.read_text().replace("</body>", f"{probe}</body>"))
    done = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            f"--window-size={width},900",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r'data-images="([^"]+)"', done.stdout)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return (match.group(1) if match else "no result"), console


@pytest.mark.browser
def test_every_verdict_is_visible_at_a_laptops_width(finished, tmp_path):
    result, console = _render(finished / "report.html", tmp_path / "profile", _VERDICTS, 1280)
    cells, hidden, sideways = result.split(":")
    assert int(cells) >= 5 and (hidden, sideways, console) == ("0", "false", [])
    # the probe sees a verdict pushed out of view by a wide first column
    wide = Document("wide")
    wide.table(["comparison", "verdict"], [["→".join(["a point"] * 60), "established"]])
    page = tmp_path / "wide.html"
    page.write_text(wide.html())
    assert _render(page, tmp_path / "wide", _VERDICTS, 1280)[0] == "1:1:false"


@pytest.mark.browser
def test_the_html_loads_in_headless_chromium_and_every_image_decodes(finished, tmp_path):
    html = (finished / "report.html").read_text()
    images = len(re.findall(r"<img ", html))
    assert images >= 17  # the new figures (mistakes, kernels, compute, seeds needed) among them
    for caption in ("against mean fit time and training FLOPs", "Runs per point needed against"):
        assert re.search(rf'<img [^>]*alt="[^"]*{caption}', html), caption
    result, console = _render(finished / "report.html", tmp_path / "profile")
    assert (result, console) == (f"{images}:0", [])
    # A notebook shows the fragment inside its own page: it decodes there too.
    notebook = tmp_path / "notebook.html"
    fragment = build(finished)._repr_html_()
    notebook.write_text(f"<!DOCTYPE html><html><body><p>cell</p>{fragment}</body></html>")
    result, console = _render(notebook, tmp_path / "profile")
    assert (result, console) == (f"{images}:0", [])
    # The probe can fail: a truncated image and a script error are both caught.
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!DOCTYPE html><html><body><img src="data:image/png;base64,iVBORw0KGgo=">'
        "<script>missing();</script></body></html>"
    )
    result, console = _render(broken, tmp_path / "profile")
    assert result == "1:1"
    assert len(console) == 1 and "Uncaught ReferenceError" in console[0]


def test_compare_finds_run_ids_in_the_studies_under_results(
    finished, tmp_path, monkeypatch, capsys
):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "mini").symlink_to(finished)
    monkeypatch.chdir(tmp_path)
    with Store.open(finished) as store:
        first, second = (r.id for r in store.runs()[:2])
    assert main(["compare", first, second]) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["config", "seed", "0", "1"]
    assert main(["compare", "ffffffff", first]) == 2
    assert "in no study under ./results" in capsys.readouterr().err


# --- is a difference real? ------------------------------------------------------------------------

CONTROLLED_TOML = """
[study]
name = "controlled"
repeats = 3

[defaults]
arch = "seed"
train_size = 5000
epochs = 4

[experiments.sizes]
title = "Sizes"
kind = "size"
grid = { train_size = [5000, 10000, 20000] }

[experiments.far]
title = "Far"
grid = { l1 = [0.5, 0.7] }
"""
# test accuracy per (grid point, seed): 5K and 10K clearly apart, 10K and 20K overlapping
CONTROLLED = {
    ("train_size", 5000): [0.50, 0.51, 0.49],
    ("train_size", 10000): [0.60, 0.61, 0.59],
    ("train_size", 20000): [0.605, 0.58, 0.62],
    ("l1", 0.5): [0.40, 0.41, 0.39],
    ("l1", 0.7): [0.40, 0.42, 0.38],
}


def _known_matrix() -> list[list[int]]:
    """Class i is right (50 + 5 i)% of the time; cat (3) and dog (5) are mixed up both ways."""
    matrix = np.zeros((10, 10), dtype=int)
    for label in range(10):
        matrix[label, label] = 50 + 5 * label
        matrix[label, (label + 1) % 10] = 50 - 5 * label
    matrix[3, 4], matrix[3, 5] = 0, 35
    matrix[5, 6], matrix[5, 3] = 0, 25
    return matrix.tolist()


def _controlled_fit(config, data, **options):
    result = fake_runs.fake_fit(config, data, **options)
    key = ("l1", config.l1) if config.l1 in (0.5, 0.7) else ("train_size", config.train_size)
    metrics = {**result.metrics, "test_accuracy": CONTROLLED[key][config.seed]}
    metrics["confusion_matrix"] = {**metrics["confusion_matrix"], "test": _known_matrix()}
    return dataclasses.replace(result, metrics=metrics)


def _controlled_study(folder: Path, repeats: int | None = None, save_run=None) -> Path:
    return fake_studies.run_fake_study(
        folder,
        CONTROLLED_TOML,
        _controlled_fit,
        file_name="controlled.toml",
        repeats=repeats,
        save_run=save_run,
    )


@pytest.fixture(scope="module")
def controlled(tmp_path_factory) -> str:
    """The Markdown report of the controlled study (3 seeds per point)."""
    return build(_controlled_study(tmp_path_factory.mktemp("controlled"))).markdown()


def _pooled(samples: list[list[float]]) -> tuple[float, int]:
    """The within-point variance pooled over `samples` and its degrees of freedom, by definition."""
    df = sum(len(s) - 1 for s in samples)
    return sum((len(s) - 1) * np.var(s, ddof=1) for s in samples) / df, df


def _trend(samples: list[list[float]], x: list[float]) -> tuple[float, float, float]:
    """The least-squares slope of the means on x, its t and two-sided p, by definition."""
    centred = np.asarray(x) - np.mean(x)
    weights = centred / np.sum(centred**2)
    slope = float(np.dot(weights, [np.mean(s) for s in samples]))
    variance, df = _pooled(samples)
    error = math.sqrt(variance * sum(w * w / len(s) for w, s in zip(weights, samples, strict=True)))
    t = slope / error
    return slope, t, 2 * scipy_stats.t.sf(abs(t), df)


def _tukey_row(first: str, second: str, against: str, samples, i: int, j: int, verdict: str):
    """The pair row the report should print, its numbers from `scipy.stats.tukey_hsd`."""
    result = scipy_stats.tukey_hsd(*samples)
    interval = result.confidence_interval(0.95)
    a, b = samples[i], samples[j]
    pooled = np.sqrt(((len(a) - 1) * np.var(a, ddof=1) + (len(b) - 1) * np.var(b, ddof=1)) / 4)
    df = len(a) + len(b) - 2  # Hedges' J(df) = Γ(df/2) / (√(df/2) Γ((df-1)/2))
    correction = math.gamma(df / 2) / (math.sqrt(df / 2) * math.gamma((df - 1) / 2))
    hedges = (np.mean(b) - np.mean(a)) / pooled * correction
    improve = scipy_stats.mannwhitneyu(b, a).statistic / (len(a) * len(b))
    return (
        f"| {first} → {second} | {verdict} | {np.mean(b) - np.mean(a):+.3f}"
        f" [{interval.low[j, i]:+.3f}, {interval.high[j, i]:+.3f}] | {result.pvalue[i, j]:.2g} |"
        f" {against} | {hedges:.2f} | {improve:.2f} |"
    )


SIZES = [CONTROLLED[("train_size", size)] for size in (5000, 10000, 20000)]
FAR = [CONTROLLED[("l1", 0.5)], CONTROLLED[("l1", 0.7)]]


def test_an_ordered_grid_asks_its_trend_first_then_tukeys_pairs(controlled):
    slope, t, p = _trend(SIZES, [math.log2(n) for n in (5000, 10000, 20000)])
    far = scipy_stats.ttest_ind(FAR[1], FAR[0])  # Student's: the two spreads do not differ
    holm = oracles.holm_by_definition([p, far.pvalue])
    assert f"**Sizes**: test accuracy rises along n: {slope:+.3f} per doubling of n" in controlled
    assert f"statistic {t:.3g}, df 6, p = {p:.2g}, Holm p = {holm[0]:.2g};" in controlled
    for row in (
        _tukey_row("5,000", "10,000", "neighbours, baseline", SIZES, 0, 1, "**established**"),
        _tukey_row("10,000", "20,000", "neighbours", SIZES, 1, 2, "not established"),
        _tukey_row("5,000", "20,000", "baseline", SIZES, 0, 2, "**established**"),
    ):
        assert row in controlled, row
    variance, _ = _pooled(SIZES)
    assert f"pooled over them (6 df, pooled std {math.sqrt(variance):.4f})" in controlled
    assert (
        "| n | verdict | difference [simultaneous 95%] | adjusted p | against | Hedges' g |"
        " P(improve) |" in controlled
    )
    assert (
        "Tukey–Kramer, simultaneous over all 3 pairs (baseline **n=5,000**, the point that"
        " matches the study's defaults)" in controlled
    )
    # each point's mean and its 95% t interval over its three repeats, in the table above
    assert re.search(r"\| 5,000 \| [^|]+ \| 0\.500 \[0\.475, 0\.525\] \(3\) \|", controlled)
    assert re.search(r"\| 20,000 \| [^|]+ \| 0\.602 \[0\.551, 0\.652\] \(3\) \|", controlled)


def test_a_two_point_experiment_asks_its_one_difference(controlled):
    far = scipy_stats.ttest_ind(FAR[1], FAR[0])
    interval = far.confidence_interval(0.95)
    assert (
        f"**Far**: L1 weight=0.5 → L1 weight=0.7 changes test accuracy by +0.000"
        f" [{interval.low:+.3f}, {interval.high:+.3f}]; not established (Student's t-test;"
        f" statistic {far.statistic:.3g}, df 4, p = {far.pvalue:.2g}" in controlled
    )
    assert "| L1 weight | verdict |" not in controlled  # no pair table beside its question


def test_without_a_point_at_the_defaults_the_first_point_is_the_baseline(tmp_path):
    folder = _controlled_study(tmp_path)
    study = load_study(tmp_path / "controlled.toml")
    with Store.open(folder, create=False) as store:
        records = store.runs()
    far = design.analyse(study, study.experiments[1], records)
    assert (far.baseline, far.why) == (
        0,
        "the experiment's first point: no point matches the study's defaults",
    )


def test_a_single_repeat_makes_no_claim_of_difference_or_cause(tmp_path):
    report = build(_controlled_study(tmp_path, repeats=1))
    markdown = report.markdown()
    assert markdown.count("one run per point: no run-to-run spread to test against") >= 2
    assert "| n | verdict |" not in markdown and "**established**" not in markdown
    assert not [c for c in report.claims.items if c.established]
    assert "No claim of a difference, trend, collapse or cause is established." in markdown


# --- classes ----------------------------------------------------------------------------------


def test_per_class_accuracy_and_confused_pairs_of_a_known_matrix():
    matrix = _known_matrix()
    assert per_class_accuracy(matrix) == pytest.approx([0.5 + 0.05 * i for i in range(10)])
    assert confused_pairs(matrix, 3) == [(3, 5, 35, 25), (0, 1, 50, 0), (1, 2, 45, 0)]
    assert per_class_accuracy([[0, 0], [1, 3]])[1] == 0.75
    assert np.isnan(per_class_accuracy([[0, 0], [1, 3]])[0])  # a class without test images


def test_the_per_class_table_shows_each_experiments_best_run(controlled):
    assert "## Per-class accuracy of each experiment's best run" in controlled
    assert re.search(r"\| class \| Sizes \(`\w{8}`\) \| Far \(`\w{8}`\) \|", controlled)
    assert "| airplane | 0.500 | 0.500 |" in controlled
    assert "| cat | 0.650 | 0.650 |" in controlled
    assert "| truck | 0.950 | 0.950 |" in controlled
    pairs = (
        "cat ↔ dog 60 (cat→dog 35, dog→cat 25); airplane ↔ automobile 50"
        " (airplane→automobile 50, automobile→airplane 0); automobile ↔ bird 45"
    )
    # the best run of Sizes is 20K seed 2 (0.62); of Far, L1 0.7 seed 1 (0.42)
    for experiment, where in (
        ("Sizes", "n=20,000, seed 2, test accuracy 0.620"),
        ("Far", "L1 weight=0.7, seed 1, test accuracy 0.420"),
    ):
        line = rf"- \*\*{experiment}\*\*, run `\w{{12}}` \({where}\): {re.escape(pairs)}"
        assert re.search(line, controlled), experiment


# --- the best run's mistakes and kernels ------------------------------------------------------


def test_the_best_runs_mistakes_and_kernels_are_figures(finished):
    markdown = (finished / "report.md").read_text()
    names = ["best-misclassified", "best-kernels", "kernels-sample-shapes", "kernels-sample-mosaic"]
    for name in names:
        assert f"]({FILES_FOLDER}/{name}.png)" in markdown, name
        with Image.open(finished / FILES_FOLDER / f"{name}.png") as image:
            image.load()  # decodes the whole image
            assert image.width > 400 and image.height > 150
    assert "misclassified test images of the best run" in markdown
    assert "holds 16 kernels of 3×3×3 weights" in markdown
    assert "averaged down 2×2 to 160×120 pixels" in markdown
    html = (finished / "report.html").read_text()
    assert html.count("<img ") == len(re.findall(rf"\]\({FILES_FOLDER}/", markdown))


def _old_save_run(result, run_dir, class_names, **test_set):
    """save_run as it was: none of the NumPy files the report's new figures read."""
    paths = fake_runs.fake_save_run(result, run_dir, class_names)
    for name in ("predictions_test", "misclassified_test", "kernels_first"):
        Path(paths.pop(name)).unlink()
    return paths


def _garbled_save_run(result, run_dir, class_names, **test_set):
    """save_run whose NumPy files are not NumPy files."""
    paths = fake_runs.fake_save_run(result, run_dir, class_names)
    for name in ("misclassified_test", "kernels_first"):
        Path(paths[name]).write_bytes(b"not numpy")
    return paths


def test_runs_saved_before_the_new_files_are_reported_without_those_figures(tmp_path):
    report = build(_controlled_study(tmp_path, repeats=2, save_run=_old_save_run))
    markdown = report.markdown()
    assert "kept no misclassified test images" in markdown
    assert "kept no copy of its first conv layer's kernels" in markdown
    assert "best-kernels.png" not in markdown and "best-misclassified.png" not in markdown
    assert "## Per-class accuracy of each experiment's best run" in markdown  # from metrics


def test_unreadable_new_files_are_reported_as_such(tmp_path):
    markdown = build(_controlled_study(tmp_path, repeats=1, save_run=_garbled_save_run)).markdown()
    assert "`misclassified_test.npz` of run" in markdown and "is unreadable" in markdown
    assert "has an unreadable copy of its first conv layer's kernels" in markdown


# --- the Python API ---------------------------------------------------------------------------


def test_build_returns_a_report_a_notebook_shows_inline(finished):
    report = build(finished)
    assert isinstance(report, Report)
    fragment = report._repr_html_()
    assert fragment.startswith('<div class="cnnlab-report">') and "<html" not in fragment
    assert ".cnnlab-report table {" in fragment  # its style is scoped to the fragment
    assert fragment.count("<img ") == report.html().count("<img ") >= 13
    assert "## Hand-made and learned kernels: the seed's part 1 meets part 2" in report.markdown()


def test_results_frame_needs_pandas(finished, monkeypatch):
    with Store.open(finished) as store:
        records = store.runs()
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if it were not installed
    with pytest.raises(CnnlabError, match=r"^results_frame needs pandas: pip install pandas$"):
        tables.results_frame(records)


def test_results_frame_is_one_row_per_run(finished):
    pytest.importorskip("pandas")
    with Store.open(finished) as store:
        records = store.runs()
    frame = tables.results_frame(records)
    assert list(frame.index) == [r.id for r in records]
    assert {"status", "experiments", "train_size", "l1", "test_accuracy"} <= set(frame.columns)
    done = frame[frame.status == "done"]
    assert done.test_accuracy.between(0, 1).all()
    assert frame.loc[records[0].id, "seed"] == records[0].seed


# --- variants: an ablation held against its first variant ----------------------------------------

ABLATION_TOML = """
[study]
name = "ablation"
repeats = 3

[defaults]
train_size = 5000
epochs = 4

[experiments.parts]
title = "Parts"
l1 = 0.5

[[experiments.parts.variants]]
name = "full recipe"

[[experiments.parts.variants]]
name = "without one part"
l1 = 0.7

[[experiments.parts.variants]]
name = "much worse"
train_size = 10000
"""
ABLATION = {  # test accuracy per variant and seed
    "full recipe": [0.40, 0.41, 0.39],
    "without one part": [0.40, 0.42, 0.38],
    "much worse": [0.30, 0.31, 0.29],
}


def _ablation_fit(config, data, **options):
    result = fake_runs.fake_fit(config, data, **options)
    variant = {0.5: "full recipe", 0.7: "without one part"}[config.l1]
    if config.train_size == 10000:
        variant = "much worse"
    metrics = {**result.metrics, "test_accuracy": ABLATION[variant][config.seed]}
    return dataclasses.replace(result, metrics=metrics)


def test_variants_are_each_held_against_the_first(tmp_path):
    path = tmp_path / "ablation.toml"
    path.write_text(ABLATION_TOML)
    with fake_studies.fake_training(_ablation_fit):
        outcome = runner.run_study(
            path,
            out=tmp_path / "out",
            data=fake_runs.zeros_cifar(),
            execution=fake_studies.IN_PROCESS,
        )
    written = write_report(outcome.study_dir, explain=False)
    markdown = written["md"].read_text()
    assert re.search(
        r"\| without one part \| [^|]+ \| 0\.400 \[0\.350, 0\.450\] \(3\) \|", markdown
    )
    full, without, worse = (ABLATION[name] for name in ABLATION)
    omnibus = scipy_stats.f_oneway(full, without, worse)
    assert (
        f"**Parts**: the points' test accuracies differ (one-way ANOVA F test; statistic"
        f" {omnibus.statistic:.3g}, df 2, 6, p = {omnibus.pvalue:.2g}" in markdown
    )
    assert (
        "Dunnett against the baseline, simultaneous over 2 (baseline **variant=full recipe**,"
        " the experiment's first variant)" in markdown
    )
    # the report's quasi-Monte Carlo seed (stats.DUNNETT_SEED): its p is the same on every build
    dunnett = scipy_stats.dunnett(without, worse, control=full, random_state=0)
    interval = dunnett.confidence_interval(0.95)
    for place, (name, verdict) in enumerate(
        (("without one part", "not established"), ("much worse", "**established**"))
    ):
        values = ABLATION[name]
        row = (
            f"| full recipe → {name} | {verdict} |"
            f" {np.mean(values) - np.mean(full):+.3f} [{interval.low[place]:+.3f},"
            f" {interval.high[place]:+.3f}] | {dunnett.pvalue[place]:.2g} | baseline |"
        )
        assert row in markdown, row
    assert "neighbours" not in markdown  # variants have no order
    figure = outcome.study_dir / FILES_FOLDER / "parts-variants.png"
    assert figure.is_file() and f"{FILES_FOLDER}/parts-variants.png" in markdown
    with Image.open(figure) as image:
        assert image.size[0] > 400


def test_a_collapsed_variant_does_not_squash_the_others():
    from cnnlab import plots

    accuracy = [(0.86, 0.002), (0.10, 0.0), (0.85, 0.003), (0.84, 0.001)]
    figure = plots.variants_figure(list("abcd"), accuracy, [(1.0, 0.9, 1.1)] * 4, "t")
    dots = figure.axes[0]
    left, right = dots.get_xlim()
    assert 0.8 < left < 0.84 and 0.86 < right < 0.9  # fitted to the three that trained
    assert any(text.get_text() == "0.100" for text in dots.texts)  # the collapsed one, named
