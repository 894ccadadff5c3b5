"""A study's claims gathered and shown: the findings that open the report (established claims,
strongest first, each linked to its section), what could not be established and how many seeds
would settle it, the observations per experiment, and claims.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.report import causes, datasize, stats
from cnnlab.report import claims as build
from cnnlab.report.claims import Claim
from cnnlab.report.curves import LearningCurve
from cnnlab.report.design import Analysis
from cnnlab.report.document import Document
from cnnlab.report.points import point_name, stat_of
from cnnlab.report.readings import (
    MeasuredPoint,
    final_gradient,
    measured_points,
    worst_dead_share,
)
from cnnlab.store import RunRecord
from cnnlab.study.studyfile import Study

MOST_FINDINGS = 8  # the report opens with at most this many established findings
# The order findings are shown in: the experiments' questions, then collapses, causes, pairs.
PRIORITY = (
    "trend", "omnibus", "difference", "collapse", "kernel-collapse", "over-fitting",
    "still-improving", "sparsity", "pair", "dead-units", "gradients",
)  # fmt: skip


@dataclass
class Claims:
    """Every claim of a report, in the order they were built, and the learning curves fitted."""

    items: list[Claim]
    curves: dict[str, LearningCurve | None] = field(default_factory=dict)  # experiment -> curve
    chance_level: float = 0.1  # the most-frequent-class test accuracy the runs recorded

    def of(self, experiment: str, *kinds: str) -> list[Claim]:
        """An experiment's claims (of `kinds`), moot ones left out."""
        return [
            c
            for c in self.items
            if c.experiment == experiment and not c.moot and (not kinds or c.kind in kinds)
        ]

    def findings(self) -> list[Claim]:
        shown = [c for c in self.items if c.established and c.kind in PRIORITY]
        return sorted(shown, key=lambda c: (PRIORITY.index(c.kind), -c.strength))

    def json(self) -> str:
        return json.dumps([c.as_json() for c in self.items], indent=2, ensure_ascii=False) + "\n"


def gather(
    study: Study,
    analyses: list[Analysis],
    primaries: int,
    records: list[RunRecord],
    study_dir: Path,
) -> Claims:
    """Every claim of the report: design, chance, over-fitting, mechanisms, measurements."""
    chance = build.chance_tests(analyses)
    slopes, said = build.slope_tests(analyses, chance, "val_data_loss"), set()
    improving = build.slope_tests(analyses, chance, "val_accuracy")
    improving_said: set = set()
    items: list[Claim] = []
    curves = {}
    for analysis in analyses:
        experiment = analysis.experiment
        items += build.design_claims(analysis, primaries)
        curves[experiment.name] = datasize.size_curve(analysis)
        items += datasize.curve_claims(analysis, curves[experiment.name])
        items += datasize.epoch_claims(analysis, improving, improving_said)
        point_claims = build.chance_claims(analysis, chance)
        items += point_claims
        learned = any(c.kind == "learned" and c.established for c in point_claims)
        items += build.overfitting_claims(analysis, slopes, said)
        points = measured_points(experiment, records, study_dir)
        items += causes.layer_claims(experiment, points)
        if learned:
            items += _mechanisms(experiment, points)
        items += _measured(analysis, learned)
    return Claims(items, curves, chance.level)


def _mechanisms(experiment, points: list[MeasuredPoint]) -> list[Claim]:
    found = causes.l1_claims(experiment, points) if experiment.kind == "l1" else []
    dead = [[v for v in map(worst_dead_share, p.readings) if v is not None] for p in points]
    gradients = [[v for v in map(final_gradient, p.readings) if v is not None] for p in points]
    return found + causes.units_claims(experiment, points, dead, gradients)


def _measured(analysis: Analysis, learned: bool) -> list[Claim]:
    """Sentences of measurement only: the seed report's numbers, a size grid's gaps, the
    pooling ratios."""
    return _agreement(analysis) + _costs(analysis, learned)


def _agreement(analysis: Analysis) -> list[Claim]:
    """How many points are within 0.03 of the seed report's test accuracy (single runs)."""
    experiment = analysis.experiment
    agree = [
        (stat_of(p.records, "test_accuracy").mean, p.reference["test_accuracy"])
        for p in analysis.measured
        if "test_accuracy" in p.reference
    ]
    if not agree:
        return []
    close = sum(abs(ours - theirs) <= 0.03 for ours, theirs in agree)
    sentence = (
        f"**{experiment.title}**: our mean test accuracy is within 0.03 of the report's at"
        f" {close} of {len(agree)} points (the report's are single runs; measured, not tested)."
    )
    return [build.measured_claim(experiment, "agreement", sentence, "test accuracy", "metrics")]


def _costs(analysis: Analysis, learned: bool) -> list[Claim]:
    experiment, measured = analysis.experiment, analysis.measured
    if experiment.kind == "size" and learned and len(measured) >= 2:
        first, last = measured[0], measured[-1]
        parts = []
        for point in (first, last):
            gap = [
                r.metrics["train_accuracy"] - r.metrics["test_accuracy"]
                for r in point.records
                if isinstance(r.metrics.get("train_accuracy"), int | float)
                and isinstance(r.metrics.get("test_accuracy"), int | float)
            ]
            parts.append(f"{point_name(experiment, point)} {stat_of_gap(gap)}")
        sentence = (
            f"**{experiment.title}**: the train−test accuracy gap (mean [95% t interval]) is "
            + " and ".join(parts)
            + " (metrics; measured, not tested)."
        )
        return [
            build.measured_claim(experiment, "gap", sentence, "train − test accuracy", "metrics")
        ]
    if experiment.kind == "pooling" and len(measured) == 2:
        strided, pooled = measured

        def mean(point, metric):
            return stat_of(point.records, metric).mean

        ratio_parameters = mean(pooled, "parameters") / max(mean(strided, "parameters"), 1)
        ratio_time = mean(pooled, "fit_seconds") / max(mean(strided, "fit_seconds"), 1e-9)
        sentence = (
            f"**{experiment.title}**: {point_name(experiment, pooled)} has {ratio_parameters:.2f}×"
            f" the parameters of {point_name(experiment, strided)} and took {ratio_time:.1f}× as"
            " long to fit (metrics; measured, not tested)."
        )
        return [
            build.measured_claim(experiment, "cost", sentence, "parameters, fit seconds", "metrics")
        ]
    return []


def stat_of_gap(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f} (1 run)" if values else "–"
    low, high = stats.mean_interval(values)
    return f"{sum(values) / len(values):.3f} [{low:.3f}, {high:.3f}] ({len(values)} runs)"


def anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def findings_section(document: Document, claims: Claims, advice: list[str]) -> None:
    """The report's opening: its established findings, then what it could not establish."""
    document.heading("Findings")
    found = claims.findings()
    if found:
        shown = found[:MOST_FINDINGS]
        strongest = f"; the strongest {len(shown)}" if len(found) > len(shown) else ""
        document.paragraph(
            f"{len(found)} established finding(s){strongest}, strongest first (claims.json holds"
            " every claim with its evidence):"
        )
        document.bullets([f"{c.statement} [→ {c.section}](#{anchor(c.section)})" for c in shown])
    else:
        document.paragraph("No claim of a difference, trend, collapse or cause is established.")
    unsettled = [
        c
        for c in claims.items
        if not c.established and not c.moot and c.kind in PRIORITY and c.kind != "pair" and c.test
    ]
    unsettled.sort(key=lambda c: PRIORITY.index(c.kind))  # the experiments' questions first
    untestable = [c for c in claims.items if c.kind == "untestable"]
    lines = [c.otherwise for c in untestable] + [c.otherwise for c in unsettled[:MOST_FINDINGS]]
    if len(unsettled) > MOST_FINDINGS:
        lines.append(f"… and {len(unsettled) - MOST_FINDINGS} more in claims.json.")
    lines += [f"Seeds: {line}." for line in advice]
    if lines:
        document.paragraph("**Not established** (the evidence is measured, but nothing follows):")
        document.bullets(lines)


def observations(analysis: Analysis, claims: Claims) -> list[str]:
    """One experiment's sentences, rendered from its claims: the established ones, the
    measurements, and why nothing follows where nothing does."""
    experiment = analysis.experiment
    mine = claims.of(experiment.name)
    lines = [c.sentence for c in mine if c.kind in ("untestable", "trend", "omnibus", "difference")]
    lines += [
        c.statement
        for c in mine
        if c.established and c.kind not in ("learned", "trend", "omnibus", "difference")
    ]
    learned = [c for c in claims.items if c.experiment == experiment.name and c.kind == "learned"]
    if not any(c.established for c in learned) and analysis.measured:
        means = sorted(stat_of(p.records, "test_accuracy").mean for p in analysis.measured)
        low, high = f"{means[0]:.3f}", f"{means[-1]:.3f}"
        spread = low if low == high else f"{low} to {high}"
        collapsed = [c for c in mine if c.kind == "collapse" and c.established]
        everywhere = len(collapsed) == len(analysis.measured)
        verdict = "nothing learned" if everywhere else "not shown to learn"
        if all(stat_of(p.records, "test_accuracy").n < 2 for p in analysis.measured):
            verdict = "one run per point, so whether it learned is not testable"
        lines.append(
            f"**{experiment.title}**: {verdict}: no point's test accuracy ({spread}) is shown"
            f" above {claims.chance_level + build.CHANCE_MARGIN:.2f}, the most-frequent-class"
            f" {claims.chance_level:.2f} plus the margin {build.CHANCE_MARGIN:g} (one-sided"
            " t-tests, Holm)."
        )
    lines += [c.sentence for c in mine if c.kind == "measured"]
    unsettled = [
        c
        for c in mine
        if c.test
        and not c.established
        and c.kind not in ("trend", "omnibus", "difference", "learned")
    ]
    if unsettled:
        lines.append(
            f"**{experiment.title}**: {len(unsettled)} further claim(s) tested and not"
            " established (listed with their evidence in the section above and in claims.json)."
        )
    return lines
