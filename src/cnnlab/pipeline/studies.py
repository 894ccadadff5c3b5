"""`cnnlab study` as one call: train the study, explain its best runs, write its report.

`cnnlab study` is this call plus printing; from Python, `study_and_report` (or `run_study`
then `write_report`, which explains too) gives the same report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cnnlab.report.report import Report, build, check_target, explain_best_runs
from cnnlab.study.callbacks import Callback
from cnnlab.study.runner import StudyOutcome, StudyRun


@dataclass
class StudyAndReport:
    """What the main job did: the study's outcome, and its report (written)."""

    outcome: StudyOutcome
    report: Report
    paths: dict  # what the report wrote: md, html, csv... -> path

    @property
    def advice(self) -> list[str]:
        """Too few seeds to tell a difference apart: how many would do (the report's advice)."""
        return self.report.advice


def study_and_report(
    study: StudyRun, callbacks: Iterable[Callback] = (), *, explain: bool = True
) -> StudyAndReport:
    """Run `study` (`StudyRun.run`), explain each experiment's best run (unless `explain` is
    False; skipped without the explain extra), then build and write the report."""
    check_target(study.study_dir)  # before the study trains
    outcome = study.run(callbacks)
    if explain:
        explain_best_runs(outcome.study_dir)
    report = build(outcome.study_dir)
    return StudyAndReport(outcome, report, report.write())
