"""Shared fixtures: an isolated cache, tiny synthetic CIFAR-like data, the shared archive."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cnnlab.data.datasets import CLASS_NAMES, Dataset


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test reads or writes the user's cache."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tiny_cifar() -> Dataset:
    """20 train and 10 test images per class, with a class-dependent colour so nets can learn."""
    rng = np.random.default_rng(0)

    def split(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(10), per_class)
        images = rng.integers(0, 64, size=(labels.size, 32, 32, 3), dtype=np.uint8)
        # One channel per image (chosen by its label) brightened by a label-dependent amount.
        brightness = (labels * 19).astype(np.uint8)[:, None, None]
        images[np.arange(labels.size), :, :, labels % 3] += brightness
        return images, labels.astype(np.int64)

    train_images, train_labels = split(20)
    test_images, test_labels = split(10)
    return Dataset(train_images, train_labels, test_images, test_labels, CLASS_NAMES, "synthetic")


def shared_archive() -> Path | None:
    """The workplace's JPEG copy of CIFAR-10, if this machine has it."""
    candidates = [os.environ.get("CNNLAB_DATA", "")]
    candidates.append(str(Path(__file__).parents[2] / "shared/datasets/cifar10-jpeg.tar.gz"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def shared_archive_path() -> Path:
    """The shared archive: missing it fails under CI (which promises it), skips elsewhere."""
    path = shared_archive()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI sets CNNLAB_DATA but the shared CIFAR-10 archive is not there")
        pytest.skip("the shared CIFAR-10 archive is not on this machine")
    return path


# --- what `scripts/run-tests --fast` leaves out ---------------------------------------------
# Whole modules, by why they are slow.
SLOW_MODULES = {
    "test_ray.py": "a real Ray cluster on 127.0.0.1",
    "test_keras.py": "the real Keras, building and training its models",
    "test_keras_optim.py": "the real Keras's optimizers",
    "test_study_cli.py": "whole studies through the command, killed and resumed",
    "test_progress.py": "the command in a subprocess, under a pty",
    "test_workers.py": "spawned worker processes",
    "test_scipy_conv.py": "SciPy's own test suite (its large-array case alone takes 15 s)",
    "test_hostile_store.py": "a report written for each of 70 hand-edited stores",
    "test_findings.py": "whole reports of controlled studies, one per finding",
    "test_mechanisms.py": "whole reports of measured studies, and the browser",
    "test_pipeline.py": "whole studies through the library and the command, with their reports",
}
# Single tests: subprocesses, real data, whole studies trained.
SLOW_TESTS = {
    "test_study.py::test_kill_9_at_several_points_loses_at_most_the_run_in_progress",
    "test_study.py::test_failed_and_diverged_runs_are_recorded_and_the_study_goes_on",
    "test_study.py::test_a_write_that_fails_marks_the_run_failed_and_exits_2",
    "test_streams.py::test_a_study_records_the_runs_the_streams_report",
    "test_group_net.py::test_a_study_trained_in_groups_records_what_lone_runs_record",
    "test_hostile_input.py::test_train_into_a_place_that_cannot_hold_a_run_folder",
    "test_hostile_input.py::test_a_full_disk_while_writing_a_run_folder_leaves_nothing",
    "test_hostile_input.py::test_weights_that_hold_code_are_never_run",
    "test_hostile_data.py::test_the_cli_refuses_hostile_input_in_one_line",
    "test_train.py::test_cli_train_then_evaluate",
    "test_architecture.py::test_text_commands_load_no_torch",
    "test_architecture.py::test_every_execution_path_records_what_a_lone_fit_records",
    "test_export.py::test_the_command_logs_a_study_live_and_exports_the_same",
    "test_api.py::test_the_readme_snippet_runs",
    "test_hostile_input.py::test_an_output_that_cannot_be_written_is_refused_before_the_work",
    "test_study_data.py::test_a_custom_net_trains_on_cifar100_from_a_study_file",
    "test_study_data.py::test_a_custom_net_trains_on_an_image_folder_of_three_classes",
    "test_hostile_tracking.py::test_an_endpoint_that_does_not_answer_is_one_line_within_the_timeout",
    "test_search.py::test_kill_9_during_a_search_resumes_to_the_trials_of_an_uninterrupted_one",
    "test_search.py::test_the_report_shows_the_best_trial_its_retraining_and_the_figures",
    "test_measure.py::test_a_studys_store_lists_each_runs_measurements_and_its_report_shows_them",
    "test_calibration.py::test_an_a_a_study_of_normal_noise_claims_a_difference_at_most_at_its_level",
    "test_calibration.py::test_real_runs_of_one_configuration_under_six_names_establish_no_difference",
    "test_calibration.py::test_real_planted_label_noise_is_found_as_a_drop",
    "test_curves.py::test_the_intervals_cover_a_planted_curve_at_about_their_rate",
    "test_report.py::test_the_markdown_puts_the_reports_numbers_beside_ours",
    "test_report.py::test_build_returns_a_report_a_notebook_shows_inline",
    "test_report.py::test_the_report_command_rewrites_both_files",
    "test_report.py::test_an_ordered_grid_asks_its_trend_first_then_tukeys_pairs",
    "test_report.py::test_without_a_point_at_the_defaults_the_first_point_is_the_baseline",
    "test_report.py::test_variants_are_each_held_against_the_first",
    "test_report.py::test_a_single_repeat_makes_no_claim_of_difference_or_cause",
    "test_explain.py::test_a_studys_report_shows_its_best_runs_from_inside",
    "test_module_nets.py::test_the_example_study_runs_in_workers_resumes_and_reports",
    "test_report.py::test_a_two_point_experiment_asks_its_one_difference",
    "test_report.py::test_the_per_class_table_shows_each_experiments_best_run",
    "test_report.py::test_runs_saved_before_the_new_files_are_reported_without_those_figures",
    "test_calibration.py::test_a_planted_drop_of_three_spreads_is_found_with_its_sign",
    "test_hostile_outputs.py::test_the_reports_figures_folder_keeps_a_users_file",
    "test_hostile_outputs.py::test_a_history_of_any_numbers_draws_without_an_error_or_a_warning",
    "test_hostile_outputs.py::test_a_confusion_matrix_of_up_to_1000_classes_is_drawn_in_bounded_memory",
    "test_hostile_outputs.py::test_a_report_on_a_store_of_any_numbers_is_written_quietly",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow tests (and every browser test) `slow`; a listed test must exist."""
    found = set()
    for item in items:
        module = item.path.name
        name = f"{module}::{item.originalname}"
        if module in SLOW_MODULES or name in SLOW_TESTS or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.slow)
        found.add(name)
    collected = {item.path.name for item in items}
    missing = {name for name in SLOW_TESTS if name.split("::")[0] in collected} - found
    if missing:
        raise pytest.UsageError(f"conftest.SLOW_TESTS names tests that do not exist: {missing}")
