"""Calibration of the report's claims on studies whose answer is known.

A pool of real runs is drawn into many small studies, each analysed by the report's own design
analysis and claims layer (`design`, `findings.gather`), exactly as a study folder would be:

- A/A: one configuration under several names. Any established difference between the names is
  a false claim; the share of studies with one is the false-claim rate (at most 5% is the aim).
- Planted harm: a grid of `label_noise` shares (a monotone harm of known sign). The share of
  studies that establish the drop, with the right sign, is the detection rate.
- One run per point: no claim may be established at all.

`benchmarks/calibration.py` trains the pools and prints the rates; the tests run a small one.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from cnnlab.report.claims import Claim, design_claims
from cnnlab.report.design import analyse, gatekeep
from cnnlab.report.findings import gather
from cnnlab.store import RunRecord
from cnnlab.study.studyfile import Study, load_study
from cnnlab.training.metrics import RunResult

DIFFERENCE_KINDS = ("trend", "omnibus", "difference", "pair")  # claims of a difference


@dataclass(frozen=True)
class Rate:
    """A share of studies with its exact (Clopper–Pearson) 95% interval."""

    hits: int
    studies: int

    @property
    def value(self) -> float:
        return self.hits / self.studies if self.studies else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        if not self.studies:
            return math.nan, math.nan
        result = scipy_stats.binomtest(self.hits, self.studies)
        low, high = result.proportion_ci(confidence_level=0.95, method="exact")
        return float(low), float(high)

    def show(self) -> str:
        low, high = self.interval
        return f"{self.value:.3f} [{low:.3f}, {high:.3f}] ({self.hits}/{self.studies})"


def record(result: RunResult, index: int, experiment: str, place: dict) -> RunRecord:
    """A finished run as the store gives it back, placed in `experiment` at `place`."""
    return RunRecord(
        id=f"run{index:05d}",
        status=result.status,
        config=dataclasses.asdict(result.config),
        seed=result.config.seed,
        metrics=result.metrics,
        history=result.history,
        artifacts={},
        reason="",
        attempts=1,
        fit_seconds=result.metrics.get("fit_seconds"),
        created_at=0.0,
        started_at=None,
        finished_at=None,
        experiments={experiment: place},
    )


def study_claims(study: Study, records: list[RunRecord]) -> list[Claim]:
    """The claims the report would make of `records` under `study` (no run folders needed)."""
    analyses = [analyse(study, experiment, records) for experiment in study.experiments]
    primaries = gatekeep(analyses)
    with tempfile.TemporaryDirectory() as folder:
        return gather(study, analyses, primaries, records, Path(folder)).items


def difference_claims(study: Study, records: list[RunRecord]) -> list[Claim]:
    """The report's claims of a difference between the points of `records` (its experiments'
    questions and their pairs: what an A/A or a planted study is judged by), alone."""
    analyses = [analyse(study, experiment, records) for experiment in study.experiments]
    primaries = gatekeep(analyses)
    return [claim for analysis in analyses for claim in design_claims(analysis, primaries)]


def _grid_study(name: str, field: str, values: Sequence[float]) -> Study:
    text = (
        f'[study]\nname = "{name}"\n\n[defaults]\ndataset = "digits"\n\n'
        f'[experiments.{name}]\ntitle = "{name}"\n'
        f"grid = {{ {field} = [{', '.join(repr(v) for v in values)}] }}\n"
    )
    return load_study(Path(f"{name}.toml"), text, check_architectures=False)


def _variants_study(name: str, count: int) -> Study:
    variants = "".join(
        f'\n[[experiments.{name}.variants]]\nname = "name {index}"\n' for index in range(count)
    )
    text = (
        f'[study]\nname = "{name}"\n\n[defaults]\ndataset = "digits"\n\n'
        f'[experiments.{name}]\ntitle = "{name}"\n{variants}'
    )
    return load_study(Path(f"{name}.toml"), text, check_architectures=False)


def a_a_rate(
    pool: Sequence[RunResult], names: int, seeds: int, studies: int, rng: np.random.Generator
) -> dict[str, Rate]:
    """False-claim rates over `studies` A/A studies of `names` × `seeds` runs drawn from one
    configuration's `pool`, as unordered variants and as an ordered grid."""
    designs = {
        "variants": (_variants_study("aa", names), "variant", [f"name {i}" for i in range(names)]),
        "ordered grid": (_grid_study("aa", "l1", range(1, names + 1)), "l1", range(1, names + 1)),
    }
    rates = {}
    for label, (study, field, values) in designs.items():
        false = 0
        for _ in range(studies):
            drawn = rng.choice(len(pool), size=names * seeds, replace=False)
            records = [
                record(pool[run], run, "aa", {field: values[position // seeds]})
                for position, run in enumerate(drawn)
            ]
            claims = difference_claims(study, records)
            false += any(c.established and c.kind in DIFFERENCE_KINDS for c in claims)
        rates[label] = Rate(false, studies)
    return rates


@dataclass(frozen=True)
class Detection:
    """How often a planted harm was established, with the right sign."""

    trend: Rate  # the grid's trend, established and falling
    steps: Rate  # neighbouring steps of at least `spreads` run-to-run stds, established, falling
    spreads: float


def planted_rate(
    pools: dict[float, Sequence[RunResult]],
    seeds: int,
    studies: int,
    rng: np.random.Generator,
    spreads: float = 3.0,
) -> Detection:
    """Detection over `studies` studies of `seeds` runs per `label_noise` share drawn from
    `pools` (share -> runs); a step counts where its planted drop, measured on the whole pools,
    is `spreads` run-to-run standard deviations or more."""
    shares = sorted(pools)
    study = _grid_study("planted", "label_noise", shares)
    accuracy = {q: [r.metrics["test_accuracy"] for r in pools[q]] for q in shares}
    spread = math.sqrt(np.mean([np.var(v, ddof=1) for v in accuracy.values()]))
    big = [
        index
        for index in range(1, len(shares))
        if np.mean(accuracy[shares[index - 1]]) - np.mean(accuracy[shares[index]])
        >= spreads * spread
    ]
    trend = steps = step_count = 0
    for _ in range(studies):
        records = []
        for share in shares:
            for run in rng.choice(len(pools[share]), size=seeds, replace=False):
                place = {"label_noise": share}
                records.append(record(pools[share][run], len(records), "planted", place))
        claims = {c.id: c for c in difference_claims(study, records)}
        primary = claims.get("planted/trend")
        trend += bool(primary and primary.established and primary.effect < 0)
        for index in big:
            pair = claims.get(f"planted/pair/{index - 1}-{index}")
            steps += bool(pair and pair.established and pair.effect < 0)
            step_count += 1
    return Detection(Rate(trend, studies), Rate(steps, step_count), spreads)


def single_run_rate(
    pools: dict[float, Sequence[RunResult]], studies: int, rng: np.random.Generator
) -> Rate:
    """Studies of one run per point (the planted grid) that establish any claim at all."""
    shares = sorted(pools)
    study = _grid_study("planted", "label_noise", shares)
    any_claim = 0
    for _ in range(studies):
        drawn = [pools[share][int(rng.integers(len(pools[share])))] for share in shares]
        records = [
            record(run, index, "planted", {"label_noise": share})
            for index, (run, share) in enumerate(zip(drawn, shares, strict=True))
        ]
        any_claim += any(c.established for c in study_claims(study, records))
    return Rate(any_claim, studies)
