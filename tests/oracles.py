"""Oracles: the statistics the reports are held to, computed by their definitions."""

from __future__ import annotations


def holm_by_definition(p_values: list[float]) -> list[float]:
    """Holm's adjusted p by its definition: max over j <= i of (m - j + 1) p_(j), capped at 1
    (the oracle the reports' corrected verdicts are held to)."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    ranked = [min(1.0, (len(p_values) - rank) * p_values[i]) for rank, i in enumerate(order)]
    adjusted = [0.0] * len(p_values)
    for rank, index in enumerate(order):
        adjusted[index] = max(ranked[: rank + 1])
    return adjusted
