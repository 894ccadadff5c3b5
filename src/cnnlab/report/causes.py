"""The report's claims about causes: what measurements.json and the layer specs say beside each
experiment's result. A dense kernel that collapsed (its L2 norm below a share of the first
point's) and a sparser kernel (Hoyer's scale-free measure), each by a one-sided Welch test against
its named minimum; dead units and gradient norms that differ, by an ANOVA and a named minimum;
and the layer specs' facts beside the measured fit times, stated without a verdict.
"""

from __future__ import annotations

import math
import statistics

from cnnlab.nn import facts
from cnnlab.report import stats
from cnnlab.report.claims import (
    ALPHA,
    Claim,
    mean,
    measured_claim,
    show_p,
    strength,
    tested_family,
    title,
)
from cnnlab.report.readings import (
    MeasuredPoint,
    dense_kernel,
    metric_of,
    net_facts,
    spatial_field,
)

# --- mechanisms: measurements.json ---------------------------------------------------------------

KERNEL_COLLAPSE = 0.01  # a dense kernel whose L2 norm shrank below this share has collapsed
DEAD_DIFFERENCE = 0.05  # dead-unit shares must differ by at least this much (and by a test)
GRADIENT_RATIO = 2.0  # final gradient norms must differ at least this many times (and by a test)


def _kernel_values(point: MeasuredPoint, key: str) -> list[float]:
    kernels = [dense_kernel(r) for r in point.readings]
    values = [k.get(key) for k in kernels if k is not None]
    return [float(v) for v in values if isinstance(v, int | float) and math.isfinite(v)]


def hoyer_values(point: MeasuredPoint) -> list[float]:
    """Hoyer's sparsity of each run's dense kernel, from its stored L1 and L2 norms and size."""
    values = []
    for kernel in (dense_kernel(r) for r in point.readings):
        if kernel is None or not all(
            isinstance(kernel.get(k), int | float) for k in ("l1", "l2", "count")
        ):
            continue
        value = stats.hoyer(kernel["l1"], kernel["l2"], int(kernel["count"]))
        if math.isfinite(value):
            values.append(value)
    return values


def _two_sample(experiment, key, kind, first, second, a, b, quantity, words, side) -> Claim:
    """Welch's one-sided comparison of two points' measurements, `side` = (margin, below): is
    mean(b) - mean(a) below (or above) the margin? Raw p; the family adjusts it."""
    statement, otherwise = words
    claim = Claim(
        f"{experiment.name}/{kind}/{key}", kind, experiment.name, experiment.title,
        statement, otherwise, quantity, "measurements.json",
        [{"point": first.label, "n": len(a), "mean": mean(a)},
         {"point": second.label, "n": len(b), "mean": mean(b)}],
    )  # fmt: skip
    if len(a) < 2 or len(b) < 2:
        claim.otherwise = otherwise.split(" (")[0] + " (one run per point: not testable)."
        return claim
    margin, below = side
    claim.test = "Welch's one-sided t-test" + (f" against {margin:.3g}" if margin else "")
    claim.p = stats.welch_one_sided(a, b, margin, below=below)
    claim.effect = statistics.fmean(b) - statistics.fmean(a)
    claim.interval, claim.interval_kind = stats.difference_interval(a, b), "95% Welch"
    return claim


def l1_claims(experiment, points: list[MeasuredPoint]) -> list[Claim]:
    """Against the experiment's first point: a dense kernel that collapsed (its L2 norm below
    KERNEL_COLLAPSE of the first's, on the log scale by Welch), and, where it did not, whether
    it grew sparser by Hoyer's scale-free measure (Welch, Holm over the points)."""
    shown = [p for p in points if _kernel_values(p, "l2")]
    if len(shown) < 2:
        return []
    first, *others = shown
    norms = _kernel_values(first, "l2")
    sparse_first = hoyer_values(first)
    collapses, sparsity = [], []
    for index, point in enumerate(others, 1):
        l2 = _kernel_values(point, "l2")
        ratio = mean(l2) / mean(norms) if mean(norms) > 0 else math.nan
        logs = [[math.log(v) for v in s if v > 0] for s in (norms, l2)]
        shrink = f"its L2 norm {mean(l2):.3g} against {mean(norms):.3g} ({ratio:.2g}×)"
        collapse = _two_sample(
            experiment, index, "kernel-collapse", first, point, *logs,
            "log L2 norm of the dense kernel",
            (f"{title(experiment)}: at {point.label} the dense kernel collapsed: {shrink}, below"
             f" {KERNEL_COLLAPSE:g}× {first.label}'s (Welch's one-sided t-test on log norms)",
             f"{title(experiment)}: at {point.label} the dense kernel is not shown to collapse"
             f" below {KERNEL_COLLAPSE:g}× {first.label}'s: {shrink} (Welch's one-sided t-test"
             " on log norms)"),
            (math.log(KERNEL_COLLAPSE), True),
        )  # fmt: skip
        collapse.effect = ratio  # the named minimum is a ratio of norms
        collapses.append(collapse)
        hoyer = hoyer_values(point)
        change = f"Hoyer sparsity {mean(sparse_first):.3f} → {mean(hoyer):.3f}"
        sparsity.append(
            _two_sample(
                experiment, index, "sparsity", first, point, sparse_first, hoyer,
                "Hoyer sparsity of the dense kernel",
                (f"{title(experiment)}: {point.label} makes the dense kernel sparser than"
                 f" {first.label}: {change} (Welch's one-sided t-test)",
                 f"{title(experiment)}: the dense kernel at {point.label} is not shown to be"
                 f" sparser than at {first.label}: {change} (Welch's one-sided t-test)"),
                (0.0, False),
            )
        )  # fmt: skip
    tested_family(collapses)
    for claim in collapses:
        claim.minimum_effect = KERNEL_COLLAPSE
    for claim, collapse, point in zip(sparsity, collapses, others, strict=True):
        if collapse.established:  # a collapsed kernel's sparsity means nothing
            claim.p, claim.test = None, None
            claim.otherwise = (
                f"{title(experiment)}: the dense kernel at {point.label} collapsed, so its Hoyer"
                f" sparsity ({claim.samples[1]['mean']:.3f}) is not read as sparsity."
            )
    tested_family(sparsity)
    for claim in (*collapses, *sparsity):
        claim.statement += _p_note(claim)
        claim.otherwise += "" if claim.otherwise.endswith(".") else _p_note(claim)
    return [*collapses, *sparsity]


def _p_note(claim: Claim) -> str:
    if claim.adjusted is None:
        return "."
    if claim.adjustment == "one test":
        return f", p = {show_p(claim.adjusted)}."
    return f", Holm p = {show_p(claim.adjusted)} ({claim.adjustment})."


def units_claims(experiment, points: list[MeasuredPoint], dead, gradients) -> list[Claim]:
    """Do dead units or final gradient norms differ between the points? A one-way ANOVA over
    the runs' values (gradients on the log scale), each against its named minimum effect."""
    claims = []
    for key, values, minimum, words in (
        ("dead-units", dead, DEAD_DIFFERENCE, "the largest share of dead units in any layer"),
        ("gradients", gradients, GRADIENT_RATIO, "the final gradient norm (penalty included)"),
    ):
        samples = [(p, v) for p, v in zip(points, values, strict=True) if v]
        if len(samples) < 2:
            continue
        means = [(mean(v), p.label) for p, v in samples]
        (low, low_at), (high, high_at) = min(means), max(means)
        effect = high - low if key == "dead-units" else (high / low if low > 0 else math.inf)
        shown = f"{high:.3g} at {high_at} against {low:.3g} at {low_at}"
        claim = Claim(
            f"{experiment.name}/{key}", key, experiment.name, experiment.title,
            f"{title(experiment)}: {words} differs between the points: {shown}",
            f"{title(experiment)}: {words} is not shown to differ between the points ({shown})",
            words, "measurements.json",
            [{"point": p.label, "n": len(v), "mean": mean(v)} for p, v in samples],
            effect=effect, minimum_effect=minimum,
        )  # fmt: skip
        if all(len(v) > 1 for _, v in samples):
            data = [v if key == "dead-units" else [math.log(max(x, 1e-300)) for x in v]
                    for _, v in samples]  # fmt: skip
            claim.test = "one-way ANOVA" + ("" if key == "dead-units" else " on log norms")
            claim.p = stats.anova_p(data)
            claim.adjusted, claim.adjustment = claim.p, "one test"
            claim.established = claim.p < ALPHA and effect >= minimum
            claim.strength = strength(claim.p) if claim.established else 0.0
            claim.statement += f" ({claim.test}, p = {show_p(claim.p)})."
            claim.otherwise += (
                f"; {claim.test}, p = {show_p(claim.p)}, named minimum"
                f" {'difference' if key == 'dead-units' else 'ratio'} {minimum:g}."
            )
        else:
            claim.otherwise += "; one run per point: not testable."
        claims.append(claim)
    return claims


def layer_claims(experiment, points: list[MeasuredPoint]) -> list[Claim]:
    """What the nets' layer specs say beside their measured fit times: facts, no verdict."""
    nets = [
        (p, next((f for f in map(net_facts, p.records) if f is not None), None)) for p in points
    ]
    nets = [(point, net) for point, net in nets if net is not None]
    if experiment.kind == "pooling" and len(nets) >= 2:
        (base, base_net), *others = nets
        return [_pooling_fact(experiment, base, base_net, p, net) for p, net in others]
    if experiment.kind == "depth":
        return [_depth_fact(experiment, point, net) for point, net in nets]
    return []


def _pooling_fact(experiment, base, base_net, point, net) -> Claim:
    parameters, macs = sum(f.parameters for f in net), facts.total_macs(net)
    base_parameters, base_macs = sum(f.parameters for f in base_net), facts.total_macs(base_net)
    field, base_field = spatial_field(net)[1], spatial_field(base_net)[1]
    sentence = (
        f"{title(experiment)}: {point.label} has {parameters - base_parameters:+,} parameters"
        f" against {base.label} ({parameters:,} and {base_parameters:,}),"
        f" {macs / max(base_macs, 1):.2f}× its multiply-accumulates per image ({macs:,} and"
        f" {base_macs:,}) and a last spatial layer that sees {field} input pixels against"
        f" {base_field} (layer specs)"
    )
    seconds, base_seconds = metric_of(point, "fit_seconds"), metric_of(base, "fit_seconds")
    if seconds[2] and base_seconds[2]:
        sentence += (
            f"; its measured fit time was {seconds[0] / base_seconds[0]:.2f}× as long"
            f" ({seconds[0]:.1f} s and {base_seconds[0]:.1f} s, means of {seconds[2]} and"
            f" {base_seconds[2]} runs; measured, not tested)"
        )
    key = f"layer-facts/{point.label}"
    quantity = "parameters, MACs, fit seconds"
    return measured_claim(experiment, key, sentence + ".", quantity, "layer specs", "layer-facts")


def _depth_fact(experiment, point, net) -> Claim:
    total = sum(f.parameters for f in net)
    heaviest = max(net, key=lambda f: f.parameters)
    name, field = spatial_field(net)
    sentence = (
        f"{title(experiment)}: of {point.label}'s {total:,} parameters, {heaviest.name} holds"
        f" {heaviest.parameters:,} ({heaviest.parameters / max(total, 1):.0%}); its last spatial"
        f" layer ({name}) sees {field} input pixels (layer specs)."
    )
    key = f"layer-facts/{point.label}"
    quantity = "parameters, receptive field"
    return measured_claim(experiment, key, sentence, quantity, "layer specs", "layer-facts")
