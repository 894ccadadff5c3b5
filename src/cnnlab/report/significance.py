"""Is a difference real? Each experiment's design analysis (`design.py`) as the report shows it:
the model, its primary question, the pairwise table with simultaneous intervals, and the
comparisons.csv rows.
"""

from __future__ import annotations

import math
from typing import Any

from cnnlab.report import stats
from cnnlab.report.claims import Claim, show_p
from cnnlab.report.design import QUANTITY, Analysis, Pair
from cnnlab.report.document import Document
from cnnlab.report.points import Point, point_name, stat_of
from cnnlab.report.stats import ALPHA
from cnnlab.report.tables import FIELD_LABELS, show_value


def model_note(analysis: Analysis) -> str:
    """How the experiment's runs are modelled, in one sentence."""
    model, count = analysis.model, len(analysis.points)
    spread = (
        ""
        if analysis.spread_p is None
        else f" (Bartlett's p = {show_p(analysis.spread_p)} that the spreads differ)"
    )
    if model.equal_variances:
        return (
            f"One model of the experiment's runs: test accuracy at {count} points, the run-to-run"
            f" variance pooled over them ({model.error_df} df, pooled std"
            f" {math.sqrt(model.pooled_variance):.4f}){spread}."
        )
    return (
        f"The points' spreads clearly differ{spread}, so each keeps its own: Welch-type tests"
        " with Welch–Satterthwaite degrees of freedom."
    )


def _verdict(analysis: Analysis, pair: Pair) -> str:
    if not pair.estimate.tested:
        return "identical: no test"
    if not pair.gated:
        return "not opened" if pair.estimate.p < ALPHA else "not established"
    if not pair.established:
        return "not established"
    return (
        "**established** (no spread)" if math.isinf(pair.estimate.statistic) else "**established**"
    )


def significance_section(document: Document, analysis: Analysis, claims: list[Claim]) -> None:
    """The experiment's question, then its pairwise answers, from its design analysis."""
    if len(analysis.points) < 2 or len(analysis.measured) < 2:
        return
    if analysis.model is None:
        document.paragraph(next(c.sentence for c in claims if c.kind == "untestable"))
        return
    primary = next(c for c in claims if c.kind == analysis.primary.kind)
    document.paragraph(
        model_note(analysis) + " **The experiment's question first.** " + primary.sentence
    )
    if len(analysis.points) == 2:
        return
    baseline = point_name(analysis.experiment, analysis.points[analysis.baseline])
    document.paragraph(
        f"**Then where:** {analysis.pair_method} (baseline **{baseline}**, {analysis.why}),"
        " opened only if the question above is established (serial gatekeeping). Each interval"
        " is simultaneous at 95% and agrees with its verdict; Hedges' g and P(improve) (the"
        " share of seed pairs the later point wins) describe the runs, untested."
    )
    name = _namer(analysis)
    rows = []
    for pair in analysis.pairs:
        first, second = analysis.points[pair.first], analysis.points[pair.second]
        estimate = pair.estimate
        a, b = (stat_of(p.records, QUANTITY).values for p in (first, second))
        effect = stats.hedges_g(a, b) if len(a) > 1 and len(b) > 1 else math.nan
        rows.append(
            [
                f"{name(first)} → {name(second)}",
                _verdict(analysis, pair),
                f"{estimate.estimate:+.3f} [{estimate.low:+.3f}, {estimate.high:+.3f}]",
                show_p(estimate.p),
                ", ".join(pair.roles),
                "–" if math.isnan(effect) else f"{effect:.2f}",
                f"{stats.probability_of_improvement(a, b):.2f}",
            ]
        )
    heading = _heading(analysis)
    document.table(
        [heading, "verdict", "difference [simultaneous 95%]", "adjusted p", "against",
         "Hedges' g", "P(improve)"],
        rows,
    )  # fmt: skip


def _heading(analysis: Analysis) -> str:
    grid = analysis.experiment.grid
    if len(grid) == 1:
        (field,) = grid
        return FIELD_LABELS.get(field, field)
    return "comparison"


def _namer(analysis: Analysis):
    grid = analysis.experiment.grid
    if len(grid) == 1:
        (field,) = grid
        return lambda point: show_value(point.values[field])
    return lambda point: point_name(analysis.experiment, point)


COMPARISON_FIELDS = (
    "experiment", "question", "first", "second", "against", "first_runs", "second_runs",
    "first_mean", "second_mean", "difference", "difference_low", "difference_high", "interval",
    "method", "statistic", "df", "p", "adjusted_p", "adjustment", "hedges_g", "p_improvement",
    "verdict",
)  # fmt: skip


def comparison_rows(analysis: Analysis, primaries: int) -> list[dict[str, Any]]:
    """The experiment's primary question and its pairs as comparisons.csv rows."""
    if analysis.model is None:
        return []
    experiment, primary, rows = analysis.experiment, analysis.primary, []

    def number(value: float | None) -> float | None:
        return None if value is None or not math.isfinite(value) else float(value)

    def points(first: Point, second: Point) -> dict[str, Any]:
        a, b = (stat_of(p.records, QUANTITY) for p in (first, second))
        both = a.n > 1 and b.n > 1
        return {
            "first": point_name(experiment, first),
            "second": point_name(experiment, second),
            "first_runs": a.n,
            "second_runs": b.n,
            "first_mean": number(a.mean),
            "second_mean": number(b.mean),
            "hedges_g": number(stats.hedges_g(a.values, b.values)) if both else None,
            "p_improvement": stats.probability_of_improvement(a.values, b.values),
        }

    estimate = primary.estimate
    row = {
        "experiment": experiment.name,
        "question": primary.kind,
        "method": primary.method,
        "statistic": number(primary.statistic),
        "df": primary.df,
        "p": number(primary.p),
        "adjusted_p": number(primary.adjusted),
        "adjustment": f"Holm over {primaries} primary questions",
        "verdict": "established" if primary.established else "not established",
    }
    if estimate is not None:
        row |= {
            "difference": number(estimate.estimate),
            "difference_low": number(estimate.low),
            "difference_high": number(estimate.high),
            "interval": "95%",
        }
    if primary.kind == "difference":
        row |= points(*analysis.points) | {"against": "the experiment's question"}
    rows.append(row)
    for pair in analysis.pairs if len(analysis.points) > 2 else ():
        estimate = pair.estimate
        rows.append(
            {
                "experiment": experiment.name,
                "question": "pair",
                **points(analysis.points[pair.first], analysis.points[pair.second]),
                "against": ", ".join(pair.roles),
                "difference": number(estimate.estimate),
                "difference_low": number(estimate.low),
                "difference_high": number(estimate.high),
                "interval": "simultaneous 95%",
                "method": analysis.pair_method,
                "statistic": number(estimate.statistic),
                "df": None if math.isnan(estimate.df) else f"{estimate.df:g}",
                "adjusted_p": number(estimate.p),
                "adjustment": analysis.pair_method
                + ("" if pair.gated else "; not opened: the question is not established"),
                "verdict": _verdict(analysis, pair).replace("**", ""),
            }
        )
    return [{field: row.get(field) for field in COMPARISON_FIELDS} for row in rows]
