"""The report's mechanism sections: each claim beside the measurement or fact it rests on."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

import fake_runs
import fake_studies
from cnnlab.nn import facts
from cnnlab.nn.architectures import get_architecture
from cnnlab.report.report import build, write_report
from cnnlab.study import runner

DEPTH = """
[experiments.depth]
title = "Depth"
kind = "depth"
arch = "seed-deep"
"""


KERNEL_SIZE = 20480  # the seed's dense kernel: 2048 inputs x 10 classes


def _readings(config) -> dict:
    """Measurements that follow the config: L1 1 collapses the dense kernel (its L2 norm to a
    few thousandths of the others'), where a near-zero share relative to the largest weight
    would call it sparse; L1 0.0001 leaves it as L1 0 has it."""
    l1, seed = config.l1 or 0.0, config.seed
    collapsed = l1 >= 1
    dense = {
        "kind": "dense",
        "count": KERNEL_SIZE,
        # a collapsed kernel's L1 norm stays below √size · its L2 norm, as any vector's does
        "l1": (2.0 + 0.1 * seed) if collapsed else 400.0 / (1 + 100 * l1) + seed,
        "l2": (0.02 + 0.001 * seed) if collapsed else 5.0 + 0.1 * seed,
    }
    dense["small_fraction"] = min(0.9, 0.05 + 0.8 * collapsed) + 0.001 * seed
    dead = (0.6 if collapsed else 0.02) + 0.01 * seed
    return {
        "version": 1,
        "small_weight": 0.01,
        "weights": {"layers.0": {"kind": "conv", "l1": 10.0, "l2": 1.0}, "layers.6": dense},
        "activations": {
            "layers.0": {"dead_fraction": 0.0, "zero_fraction": 0.4},
            "layers.1": {"dead_fraction": dead, "zero_fraction": 0.5 + dead / 2},
        },
        "gradients": [
            {"epoch": 1, "global": 1.0, "layers": {"layers.0": 0.5}},
            {"epoch": 2, "global": 0.01 if l1 >= 1 else 0.5, "layers": {"layers.0": 0.25}},
        ],
        "seconds": 0.1,
    }


def _measured_fit(config, data, **options):
    result = fake_runs.fake_fit(config, data, **options)
    return dataclasses.replace(result, measurements=_readings(config))


def _learned_nothing_fit(config, data, **options):
    result = _measured_fit(config, data, **options)
    metrics = {**result.metrics, "test_accuracy": 0.1, "train_accuracy": 0.11}
    return dataclasses.replace(result, metrics=metrics)


def _save_with_measurements(result, run_dir, class_names, **test_set):
    """The fake save_run plus measurements.json, written and listed as `save_run` does."""
    paths = fake_runs.fake_save_run(result, run_dir, class_names, **test_set)
    if result.measurements:
        path = Path(run_dir) / "measurements.json"
        path.write_text(json.dumps(result.measurements))
        paths["measurements"] = str(path)
    return paths


def _study(folder: Path, fit, save=_save_with_measurements) -> str:
    return build(_study_dir(folder, fit, save)).markdown()


def _study_dir(folder: Path, fit, save=_save_with_measurements, repeats=None) -> Path:
    path = folder / "mini.toml"
    path.write_text(fake_studies.STUDY_TOML + DEPTH)
    with fake_studies.fake_training(fit, save):
        outcome = runner.run_study(
            path,
            out=folder / "out",
            data=fake_runs.zeros_cifar(),
            repeats=repeats,
            execution=fake_studies.IN_PROCESS,
        )
    write_report(outcome.study_dir, explain=False)
    return outcome.study_dir


@pytest.fixture(scope="module")
def measured_dir(tmp_path_factory) -> Path:
    return _study_dir(tmp_path_factory.mktemp("measured"), _measured_fit)


@pytest.fixture(scope="module")
def measured(measured_dir) -> str:
    return build(measured_dir).markdown()


def _section(markdown: str, title: str) -> str:
    """The mechanism subsection of experiment `title`."""
    inside = markdown.split("## Inside the nets: the mechanism beside the result", 1)[1]
    inside = inside.split("\n## ", 1)[0]
    return inside.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0]


def _hoyer(l1: float, l2: float) -> float:
    """Hoyer's sparsity by its definition (Hoyer 2004)."""
    root = math.sqrt(KERNEL_SIZE)
    return (root - l1 / l2) / (root - 1)


def test_l1_names_a_collapsed_kernel_and_reads_sparsity_scale_free(measured, measured_dir):
    section = _section(measured, "L1")
    # Seeds 0 and 1: L1 norms 400/(1+100·l1) + seed
    assert "| L1 weight=0 | " in section and "| 400 ± 0.707 (2) |" in section
    assert "| L1 weight=1 |" in section and "| 2.05 ± 0.0707 (2) |" in section
    zero = [_hoyer(400.0 + seed, 5.0 + 0.1 * seed) for seed in (0, 1)]
    assert f"| {statistics.fmean(zero):.3f} ± {statistics.stdev(zero):.3f} (2) |" in section
    # The relative near-zero share rose from 0.051 to 0.851, yet the kernel did not grow sparse:
    # it collapsed, and that is what the report says (Welch's t-test on the log L2 norms).
    logs = [[math.log(5.0 + 0.1 * s) for s in (0, 1)], [math.log(0.02 + 0.001 * s) for s in (0, 1)]]
    # one-sided, against the named minimum itself: log(L2 norm) shrank by more than log(0.01)
    shifted = [value - math.log(0.01) for value in logs[1]]
    welch = scipy_stats.ttest_ind(shifted, logs[0], equal_var=False, alternative="less")
    assert (
        "**L1**: at L1 weight=1 the dense kernel collapsed: its L2 norm 0.0205 against 5.05"
        " (0.0041×), below 0.01× L1 weight=0's (Welch's one-sided t-test on log norms)" in section
    )
    claims = {c["id"]: c for c in json.loads((measured_dir / "claims.json").read_text())}
    collapse = claims["l1/kernel-collapse/2"]
    assert collapse["established"] and collapse["p"] == pytest.approx(welch.pvalue, rel=1e-9)
    assert "the dense kernel at L1 weight=1 collapsed, so its Hoyer sparsity" in section
    assert "is not read as sparsity." in section
    assert not claims["l1/sparsity/1"]["established"]  # 0.0001 is as sparse as 0
    assert "sparse holds" not in section and "makes the dense kernel sparser" not in section
    assert "](report_files/l1-mechanism-l1.png)" in section


def test_pooling_puts_parameters_macs_and_receptive_fields_beside_the_fit_time(measured):
    section = _section(measured, "Pooling")
    seed, maxpool = (facts.layer_facts(get_architecture(name)) for name in ("seed", "seed-maxpool"))
    seed_macs, maxpool_macs = facts.total_macs(seed), facts.total_macs(maxpool)
    # The seed report: "the model with max-pooling has 61,440 more parameters". Receptive fields
    # by hand: four 3x3 convs, every second with stride 2: 3, 5, 9, 13; stride 1 and a 2x2
    # max-pool: 3, 5, 7, 9, 10.
    assert (
        "architecture=seed-maxpool has +61,440 parameters against architecture=seed (98,586 and"
        " 37,146)"
    ) in section
    assert f"| {seed_macs:,} | 13x13 (conv2d_3) |" in section
    assert f"| {maxpool_macs:,} | 10x10 (max_pooling2d) |" in section
    assert f"{maxpool_macs / seed_macs:.2f}× its multiply-accumulates" in section
    # fake fit times: 5 s and 20 s for 5,000 images.
    assert "its measured fit time was 4.00× as long (20.0 s and 5.0 s" in section


def test_size_shows_the_generalisation_gap_and_over_fitting_by_the_data_loss(measured):
    section = _section(measured, "Sizes")
    # fake: train = test + 0.13 - gain/2 with gain 0.05 at 10,000 images
    assert "| n=5,000 | 0.628 ± 0.003 (2) | 0.498 ± 0.003 (2) | 0.130 ± 0.000 (2) |" in section
    # Keras's val_loss rises (its penalty); the data loss falls: no over-fitting is claimed
    assert "over-fits" not in measured
    assert "the validation data loss is not shown to rise over the last epochs" in section
    assert "](report_files/sizes-mechanism-curves.png)" in section


def test_depth_lists_receptive_field_and_parameters_per_layer(measured):
    section = _section(measured, "Depth")
    layers = facts.layer_facts(get_architecture("seed-deep"))
    for fact in layers:
        assert f"| {fact.name} | " in section
    last_conv = [f for f in layers if f.kind == "Conv2D"][-1]
    assert f"| {facts.format_field(last_conv.receptive_field)} |" in section
    total = sum(f.parameters for f in layers)
    assert f"{total:,} parameters, conv2d_5 holds 9,248 (40%)" in section
    assert "| 0.025 ± 0.007 (2) |" in section  # layers.1's dead units, measured


def test_dead_units_and_gradients_differ_only_by_a_test_and_a_named_minimum(measured):
    l1 = _section(measured, "L1")
    worst = [[0.02 + 0.01 * s for s in (0, 1)]] * 2 + [[0.6 + 0.01 * s for s in (0, 1)]]
    anova = scipy_stats.f_oneway(*worst)
    assert (
        "**L1**: the largest share of dead units in any layer differs between the points: 0.605"
        f" at L1 weight=1 against 0.025 at L1 weight=0 (one-way ANOVA, p = {anova.pvalue:.2g})."
    ) in l1
    assert (
        "**L1**: the final gradient norm (penalty included) differs between the points: 0.5" in l1
    )
    sizes = _section(measured, "Sizes")
    assert "differs between the points" not in sizes
    assert "the largest share of dead units in any layer is not shown to differ" in sizes


def test_one_run_per_point_establishes_no_cause(tmp_path):
    folder = _study_dir(tmp_path, _measured_fit, repeats=1)
    claims = json.loads((folder / "claims.json").read_text())
    assert not [c["id"] for c in claims if c["established"]]
    markdown = (folder / "report.md").read_text()
    for phrase in ("differs between", "kernel collapsed", "sparser", "over-fits", "collapses"):
        assert phrase not in markdown, phrase


def test_a_study_that_learned_nothing_says_so_and_draws_no_cause(tmp_path):
    markdown = _study(tmp_path, _learned_nothing_fit)
    section = _section(markdown, "L1")
    assert "No point of this experiment is shown to learn" in section
    assert "kernel collapsed" not in section and "differs between" not in section
    assert "| 400 ± 0.707 (2) |" in section  # the measurements are still shown


def test_runs_without_measurements_are_counted_and_the_facts_still_shown(tmp_path):
    markdown = _study(tmp_path, fake_runs.fake_fit, save=fake_runs.fake_save_run)
    assert "kept no readable `measurements.json`" in markdown
    section = _section(markdown, "L1")
    assert "No run of this experiment kept measurements of its dense kernel." in section
    assert "+61,440 parameters" in _section(markdown, "Pooling")


@pytest.mark.browser
def test_the_mechanism_figures_decode_in_headless_chromium(measured_dir, tmp_path):
    from test_report import _render  # the report's own browser probe

    page = write_report(measured_dir)["html"]
    html = page.read_text()
    for caption in ("The dense kernel after training", "Learning curves: training"):
        assert re.search(rf'<img [^>]*alt="{caption}', html), caption
    result, console = _render(page, tmp_path / "profile")
    assert (result, console) == (f"{html.count('<img ')}:0", [])


def _noisy_dead_fit(config, data, **options):
    """Dead-unit shares 0.28 apart in the mean, but 0.25 apart between a point's two seeds."""
    result = _measured_fit(config, data, **options)
    readings = json.loads(json.dumps(result.measurements))
    dead = (0.30 if (config.l1 or 0) >= 1 else 0.02) + 0.25 * config.seed
    readings["activations"]["layers.1"]["dead_fraction"] = dead
    return dataclasses.replace(result, measurements=readings)


def test_a_difference_beyond_the_named_minimum_but_within_the_noise_is_not_claimed(tmp_path):
    folder = _study_dir(tmp_path, _noisy_dead_fit)
    claims = {c["id"]: c for c in json.loads((folder / "claims.json").read_text())}
    dead = claims["l1/dead-units"]
    worst = [[0.02, 0.27], [0.02, 0.27], [0.30, 0.55]]
    assert dead["effect"] == pytest.approx(0.28) and dead["minimum_effect"] == 0.05
    assert dead["p"] == pytest.approx(scipy_stats.f_oneway(*worst).pvalue)
    assert not dead["established"]
    assert "dead units in any layer is not shown to differ" in _section(
        (folder / "report.md").read_text(), "L1"
    )


def test_every_finding_and_mechanism_sentence_is_a_claim_of_claims_json(measured_dir):
    markdown = (measured_dir / "report.md").read_text()
    claims = json.loads((measured_dir / "claims.json").read_text(), parse_constant=pytest.fail)
    said = {c["sentence"] for c in claims} | {c["statement"] for c in claims}
    inside = markdown.split("## Inside the nets: the mechanism beside the result", 1)[1]
    inside = inside.split("\n## ", 1)[0]
    bullets = [line.removeprefix("- ") for line in inside.splitlines() if line.startswith("- ")]
    assert bullets and all(line in said for line in bullets)
    findings = markdown.split("## Findings\n", 1)[1].split("\n## ", 1)[0]
    found = [line.removeprefix("- ") for line in findings.splitlines() if line.startswith("- ")]
    found = [line.rsplit(" [→ ", 1)[0] for line in found if not line.startswith(("Seeds: ", "…"))]
    assert found and [line for line in found if line not in said] == []
    assert not any("Of its" in line for line in inside.splitlines() if not line.startswith("- "))


def _save_first_seeds_measurements(result, run_dir, class_names, **test_set):
    """save_run with measurements.json for seed 0 only: one measured run per point."""
    if result.config.seed != 0:
        result = dataclasses.replace(result, measurements={})
    return fake_runs.fake_save_run(result, run_dir, class_names, **test_set)


def test_one_measured_run_per_point_is_not_testable_however_far_apart(tmp_path):
    folder = _study_dir(tmp_path, _measured_fit, save=_save_first_seeds_measurements)
    claims = json.loads((folder / "claims.json").read_text())
    learned = [c for c in claims if c["kind"] == "learned" and c["established"]]
    assert learned  # two runs a point: the accuracies are tested
    mechanisms = [c for c in claims if c["kind"] in ("kernel-collapse", "sparsity", "dead-units")]
    assert mechanisms and not [c["id"] for c in mechanisms if c["established"]]
    assert all(c["p"] is None for c in mechanisms)
    assert "one run per point: not testable" in _section((folder / "report.md").read_text(), "L1")
