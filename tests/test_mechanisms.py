"""The report's mechanism sections: each claim beside the measurement or fact it rests on."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

import study_fakes
from cnnlab.nn import facts
from cnnlab.nn.architectures import get_architecture
from cnnlab.report.report import build, write_report
from cnnlab.study import runner
from cnnlab.training import runfolder

DEPTH = """
[experiments.depth]
title = "Depth"
kind = "depth"
arch = "seed-deep"
"""


def _readings(config) -> dict:
    """Measurements that follow the config: more L1, a smaller and sparser dense kernel."""
    l1 = config.l1 or 0.0
    dense = {"kind": "dense", "l1": 400.0 / (1 + 100 * l1) + config.seed, "l2": 5.0}
    dense["small_fraction"] = min(0.9, 0.05 + 0.8 * (l1 >= 1)) + 0.001 * config.seed
    dead = 0.6 if l1 >= 1 else 0.02
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
    result = study_fakes.fake_fit(config, data, **options)
    return dataclasses.replace(result, measurements=_readings(config))


def _learned_nothing_fit(config, data, **options):
    result = _measured_fit(config, data, **options)
    metrics = {**result.metrics, "test_accuracy": 0.1, "train_accuracy": 0.11}
    return dataclasses.replace(result, metrics=metrics)


def _save_with_measurements(result, run_dir, class_names, **test_set):
    """The fake save_run plus measurements.json, written and listed as `save_run` does."""
    paths = study_fakes.fake_save_run(result, run_dir, class_names, **test_set)
    if result.measurements:
        path = Path(run_dir) / "measurements.json"
        path.write_text(json.dumps(result.measurements))
        paths["measurements"] = str(path)
    return paths


def _study(folder: Path, fit, save=_save_with_measurements) -> str:
    return build(_study_dir(folder, fit, save)).markdown()


def _study_dir(folder: Path, fit, save=_save_with_measurements) -> Path:
    path = folder / "mini.toml"
    path.write_text(study_fakes.STUDY_TOML + DEPTH)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runfolder, "save_run", save)
        outcome = runner.run_study(
            path, out=folder / "out", data=study_fakes.zeros_cifar(), fit=fit, echo=lambda _: None
        )
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


def test_l1_shows_the_dense_kernels_norm_and_sparsity_against_the_weight(measured):
    section = _section(measured, "L1")
    # Seeds 0 and 1: norms 400/(1+100·l1) + seed; near-zero shares 0.05 (0.85 from l1 = 1)
    # + seed/1000.
    assert "| L1 weight=0 | " in section and "| 400 ± 0.707 (2) |" in section
    assert "| L1 weight=1 |" in section and "| 4.46 ± 0.707 (2) |" in section
    assert (
        "From L1 weight=0 to L1 weight=1, the dense kernel's L1 norm went from 400 ± 0.707 (2) to"
        " 4.46 ± 0.707 (2) and its share of weights below 0.01 of the largest from 0.051 ± 0.001"
        " (2) to 0.851 ± 0.001 (2)"
    ) in section
    # l1 = 0.0001 keeps the share of l1 = 0 (0.051): the claim holds at 1 only.
    assert (
        "claim that L1 makes the dense kernel sparse holds only in part: the near-zero share rose"
        " beyond the runs' spread at L1 weight=1: 0.851, not at L1 weight=0.0001: 0.051, against"
        " 0.051 at L1 weight=0 (measurements.json)."
    ) in section
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


def test_size_shows_the_generalisation_gap_with_its_spread_and_the_curves(measured):
    section = _section(measured, "Sizes")
    # fake: train = test + 0.13 - gain/2 with gain 0.05 at 10,000 images.
    assert "went from 0.130 ± 0.000 (2) at n=5,000 to 0.105 ± 0.000 (2) at n=10,000" in section
    assert "](report_files/sizes-mechanism-curves.png)" in section


def test_depth_lists_receptive_field_and_parameters_per_layer(measured):
    section = _section(measured, "Depth")
    layers = facts.layer_facts(get_architecture("seed-deep"))
    for fact in layers:
        assert f"| {fact.name} | " in section
    last_conv = [f for f in layers if f.kind == "Conv2D"][-1]
    assert f"| {facts.format_field(last_conv.receptive_field)} |" in section
    total = sum(f.parameters for f in layers)
    assert f"Of its {total:,} parameters, conv2d_5 holds 9,248 (40%)" in section
    assert "| 0.020 ± 0.000 (2) |" in section  # layers.1's dead units, measured


def test_dead_units_and_gradients_are_named_only_where_they_differ(measured):
    l1 = _section(measured, "L1")
    assert (
        "Dead units differ: at L1 weight=1, 60.0% of conv2d_1's units are zero on every probe"
        " image, against at most 2.0% in any layer at L1 weight=0"
    ) in l1
    assert "Gradient norms differ" in l1 and "0.01 at L1 weight=1" in l1
    sizes = _section(measured, "Sizes")
    assert "Dead units differ" not in sizes and "Gradient norms differ" not in sizes


def test_a_study_that_learned_nothing_says_so_and_draws_no_cause(tmp_path):
    markdown = _study(tmp_path, _learned_nothing_fit)
    section = _section(markdown, "L1")
    assert "these runs learned nothing. No mechanism is read into these runs." in section
    assert "claim that L1" not in section and "Dead units differ" not in section
    assert "| 400 ± 0.707 (2) |" in section  # the measurements are still shown


def test_runs_without_measurements_are_counted_and_the_facts_still_shown(tmp_path):
    markdown = _study(tmp_path, study_fakes.fake_fit, save=study_fakes.fake_save_run)
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
