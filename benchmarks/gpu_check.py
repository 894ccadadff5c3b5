"""The first thing to run on a GPU: cnnlab's CUDA path checked and timed, in at most 6 minutes.

    python benchmarks/gpu_check.py [--data PATH] [--out gpu_check.json] [--dry-run]

Steps (each in a fresh process of its own, so one capture failure cannot hide another, killed
at its budget, so the whole check ends within `TOTAL_BUDGET_SECONDS` by construction):

  setup  pip-install what is missing (cnnlab from this checkout; airbench, optional, without
         its dependencies so torch is never replaced), load CIFAR-10 once (fills the cache)
  a      a 3-member seed group, CUDA graphs against eager steps, TF32 off (the deterministic
         mode): weights compared
  b      the seed study at 2 epochs in the default mode (groups side by side in threads):
         capture failures and failed runs counted
  c      the same, one group at a time (--workers 1)
  d      the seed study at full length (20 epochs): wall time, and each run's test accuracy
         beside the CPU's from benchmarks/README.md
  e      the strong recipe (strong-l, 10 epochs, batch 1,024) over 3 seeds: accuracy, seconds
  f      airbench94 on the same images, if the airbench package could be installed

It prints one table and writes JSON; a step that cannot run says why in its row and the others
go on. `--dry-run` (on any machine) plans every step, checks its inputs, prints the table of
what it would run and exits 1 if an input is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED_STUDY = ROOT / "studies" / "seed.toml"
STRONG_STUDY = ROOT / "studies" / "strong.toml"
README = ROOT / "benchmarks" / "README.md"
STRONG_EXPERIMENT = "large-1024"
STRONG_SEEDS = 3
SHORT_EPOCHS = 2
DEVICE = "cuda"  # what every step trains on (the tests run the steps on the CPU)
# Seconds each step may take on an H100, start-up of its process and data from the cache
# included; setup's covers its pip installs and the first decoding of the images. An H100
# should train the seed study's 11 runs in about 10 s: the budgets leave room for a slower
# first GPU, not for a broken path, which ends at its budget.
BUDGETS = {"setup": 70, "a": 30, "b": 35, "c": 35, "d": 60, "e": 75, "f": 50}
TOTAL_BUDGET_SECONDS = 360
TITLES = {
    "setup": "install what is missing, load CIFAR-10",
    "a": "3-member seed group: graphs against eager, deterministic",
    "b": f"seed study, {SHORT_EPOCHS} epochs, groups side by side",
    "c": f"seed study, {SHORT_EPOCHS} epochs, one group at a time",
    "d": "seed study, full length",
    "e": f"strong-l x 10, batch 1,024, {STRONG_SEEDS} seeds",
    "f": "airbench94 on the same images",
}
assert sum(BUDGETS.values()) <= TOTAL_BUDGET_SECONDS


# --- inputs -----------------------------------------------------------------------------------


def cpu_accuracies() -> dict[tuple[str, int, float], float]:
    """(arch, train_size, l1) -> cnnlab's CPU test accuracy, from the README's seed-study table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## The seed study", 1)[-1] if "## The seed study" in text else ""
    row = re.compile(r"^(seed[\w-]*) n=(\d+) l1=([\d.e-]+)\s+[\d.]+\s+([\d.]+)", re.M)
    return {
        (arch, int(size), float(l1)): float(accuracy)
        for arch, size, l1, accuracy in row.findall(section.split("\n## ", 1)[0])
    }


def seed_configs(epochs: int | None = None) -> list:
    """The seed study's first repeat (11 runs), at `epochs` if given."""
    import dataclasses

    from cnnlab.study.runner import plan_runs
    from cnnlab.study.studyfile import load_study

    configs = [run.config for run in plan_runs(load_study(SEED_STUDY), repeats=1)]
    if epochs is not None:
        configs = [dataclasses.replace(config, epochs=epochs) for config in configs]
    return configs


def strong_configs() -> list:
    """The strong study's batch-1,024 experiment over `STRONG_SEEDS` seeds."""
    from cnnlab.study.runner import plan_runs
    from cnnlab.study.studyfile import load_study

    runs = plan_runs(load_study(STRONG_STUDY), repeats=STRONG_SEEDS)
    return [run.config for run in runs if STRONG_EXPERIMENT in run.experiments]


def data_source(data: str | None) -> str:
    """Where CIFAR-10 will come from: a path, or the download cnnlab makes."""
    value = data or os.environ.get("CNNLAB_DATA")
    if value:
        if not Path(value).exists():
            raise FileNotFoundError(f"data {value}: no such file or folder")
        return value
    return "download (no --data and no CNNLAB_DATA)"


def plan_checks(data: str | None) -> dict[str, str]:
    """Each step's inputs checked without a GPU: step -> what it will run on (raises if not)."""
    from cnnlab.config import check_config
    from cnnlab.execution import planning

    checks = {"setup": f"data: {data_source(data)}"}
    configs = seed_configs(SHORT_EPOCHS)
    groups = planning.schedule(configs, "cuda")
    threads = planning.stream_count(len(groups))
    checks["a"] = f"{configs[0].arch} n={configs[0].train_size}, seeds 0-2"
    checks["b"] = f"{len(configs)} runs in {len(groups)} groups, {threads} threads"
    checks["c"] = f"{len(configs)} runs in {len(groups)} groups, 1 thread"
    full = seed_configs()
    reference = cpu_accuracies()
    missing = [c for c in full if (c.arch, c.train_size, c.l1) not in reference]
    if missing:
        raise ValueError(
            f"{README}: no CPU accuracy for {len(missing)} seed-study run(s), e.g."
            f" {missing[0].arch} n={missing[0].train_size} l1={missing[0].l1}"
        )
    checks["d"] = f"{len(full)} runs x {full[0].epochs} epochs, {len(reference)} CPU accuracies"
    strong = strong_configs()
    if len(strong) != STRONG_SEEDS or any(c.batch_size != 1024 for c in strong):
        raise ValueError(f"{STRONG_STUDY}: [experiments.{STRONG_EXPERIMENT}] is not batch 1,024")
    for config in strong:
        check_config(config)
    checks["e"] = f"{strong[0].arch} x {strong[0].epochs}, batch {strong[0].batch_size}"
    have = importlib.util.find_spec("airbench") is not None
    checks["f"] = "airbench installed" if have else "airbench: pip install --no-deps airbench"
    return checks


# --- the steps (each runs in a process of its own: `--step NAME`) -----------------------------


def load(data: str | None):
    from cnnlab.data.datasets import load_cifar10

    return load_cifar10(data)


def step_setup(data: str | None) -> dict:
    import torch

    dataset = load(data)
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else None,
        "train_images": len(dataset.train_labels),
        "airbench": importlib.util.find_spec("airbench") is not None,
    }


def step_a(data: str | None) -> dict:
    import dataclasses

    from cnnlab.training import group_net

    # The deterministic mode: TF32 and the autotuner off, so both sides run the same kernels.
    base = dataclasses.replace(seed_configs(3)[0], deterministic=True)
    configs = [dataclasses.replace(base, seed=seed) for seed in range(3)]
    dataset = load(data)
    results = {}
    for graphed in (True, False):
        started = time.perf_counter()
        trained = group_net.fit_group(configs, dataset, device=DEVICE, cuda_graph=graphed)
        results[graphed] = (trained, time.perf_counter() - started)
    differences = [
        float((g.state_dict[name] - e.state_dict[name]).abs().max())
        for g, e in zip(results[True][0], results[False][0], strict=True)
        for name in e.state_dict
    ]
    return {
        "max_weight_difference": max(differences),
        "close": max(differences) <= 1e-5,
        "captured": not group_net.CAPTURE_FAILED.is_set(),
        "graph_seconds": results[True][1],
        "eager_seconds": results[False][1],
    }


def study(configs: list, data: str | None, workers: int | None) -> dict:
    """Train `configs` as `cnnlab study` does; wall time, failures, accuracies per run."""
    import warnings

    from cnnlab.execution import execute
    from cnnlab.execution.events import ENDED

    dataset = load(data)
    outcomes: dict[int, object] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.perf_counter()
        execution = execute.execute(configs, dataset, device=DEVICE, workers=workers)
        for event in execution:
            if event.kind in ENDED:
                outcomes[event.index] = event.payload
        wall = time.perf_counter() - started
    failures = [str(w.message) for w in caught if "capture failed" in str(w.message)]
    failed = {i: p for i, p in outcomes.items() if isinstance(p, str)}
    return {
        "how": execution.how,
        "wall_seconds": wall,
        "capture_failures": len(failures),
        "first_capture_failure": failures[0] if failures else None,
        "failed_runs": len(failed) + len(configs) - len(outcomes),
        "first_failure": next(iter(failed.values()), None),
        "test_accuracy": {
            f"{c.arch} n={c.train_size} l1={c.l1}": outcomes[i].metrics["test_accuracy"]
            for i, c in enumerate(configs)
            if i in outcomes and not isinstance(outcomes[i], str)
        },
    }


def step_b(data: str | None) -> dict:
    return study(seed_configs(SHORT_EPOCHS), data, None)


def step_c(data: str | None) -> dict:
    return study(seed_configs(SHORT_EPOCHS), data, 1)


def step_d(data: str | None) -> dict:
    measured = study(seed_configs(), data, None)
    reference = {f"{a} n={n} l1={l1}": v for (a, n, l1), v in cpu_accuracies().items()}
    measured["cpu_test_accuracy"] = reference
    return measured


def step_e(data: str | None) -> dict:
    from cnnlab.training import loop

    dataset = load(data)
    rows = []
    for config in strong_configs():
        result = loop.fit(config, dataset, device=DEVICE)
        rows.append(
            {
                "seed": config.seed,
                "status": result.status,
                "test_accuracy": result.metrics["test_accuracy"],
                "fit_seconds": result.metrics["fit_seconds"],
            }
        )
    accuracies = [row["test_accuracy"] for row in rows]
    return {
        "runs": rows,
        "mean_test_accuracy": sum(accuracies) / len(accuracies),
        "mean_fit_seconds": sum(row["fit_seconds"] for row in rows) / len(rows),
    }


def step_f(data: str | None) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from recipe_speed import airbench_point

    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        point = airbench_point(load(data), torch.device(DEVICE))
    if point is None:
        raise RuntimeError("the airbench package is not importable")
    return point


STEPS: dict[str, Callable[[str | None], dict]] = {
    "setup": step_setup,
    "a": step_a,
    "b": step_b,
    "c": step_c,
    "d": step_d,
    "e": step_e,
    "f": step_f,
}


# --- the driver -------------------------------------------------------------------------------


def pip_install(*arguments: str, until: float) -> str | None:
    """`pip install` in this interpreter, stopped at `until` (monotonic); None, or why not."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", *arguments]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=left(until))
    except subprocess.TimeoutExpired:
        return "stopped at setup's budget"
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"pip exited {done.returncode}"


def left(until: float) -> float:
    """Seconds to `until` (monotonic), at least one."""
    return max(1.0, until - time.monotonic())


def install_missing(cuda: bool | None, until: float) -> list[str]:
    """cnnlab (this checkout) if missing; with a GPU (`cuda`) airbench too. What failed."""
    problems = []
    if cuda is None and importlib.util.find_spec("cnnlab") is None:
        # For cnnlab's dependencies (the steps run this checkout's code from src/ either way);
        # torch is kept where it is installed: pip leaves a satisfying version alone.
        problem = pip_install("-e", str(ROOT), until=until)
        if problem:
            problems.append(f"pip install -e {ROOT}: {problem} (the steps use src/ as it is)")
    if cuda and importlib.util.find_spec("airbench") is None:
        # --no-deps: airbench's requirements could replace the CUDA build of torch.
        problem = pip_install("--no-deps", "airbench", until=until)
        if problem:
            problems.append(f"pip install airbench: {problem} (step f is skipped)")
    importlib.invalidate_caches()
    return problems


def run_step(name: str, data: str | None, budget: float | None = None) -> dict:
    """One step in a process of its own, killed at its budget (seconds; default its own)."""
    budget = budget or BUDGETS[name]
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        command = [sys.executable, __file__, "--step", name, "--result", str(result)]
        command += ["--data", data] if data else []
        # This checkout's code, installed or not (a machine without a network cannot pip).
        paths = [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=budget, env=environment
            )
        except subprocess.TimeoutExpired:
            return {"status": f"stopped at its budget of {BUDGETS[name]} s"}
        seconds = round(time.perf_counter() - started, 1)
        if done.returncode != 0 or not result.exists():
            lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
            return {"status": "failed", "error": lines[-1], "seconds": seconds}
        return {"status": "done", "seconds": seconds, **json.loads(result.read_text())}


def summary(name: str, row: dict) -> str:
    """The table's last column for a step's result."""
    if row.get("status") != "done":
        return row.get("error") or row.get("plan") or row.get("status", "")
    if name == "setup":
        where = row["device"] or "no CUDA device"
        return f"{where}, torch {row['torch']}, CUDA {row['cuda']}"
    if name == "a":
        return f"max |graph - eager| {row['max_weight_difference']:.2e}, captured {row['captured']}"
    if name == "d":
        pairs = [
            (accuracy, row["cpu_test_accuracy"][run])
            for run, accuracy in row["test_accuracy"].items()
            if run in row["cpu_test_accuracy"]
        ]
        gap = sum(abs(gpu - cpu) for gpu, cpu in pairs) / max(len(pairs), 1)
        return (
            f"wall {row['wall_seconds']:.1f} s (target 10), failed runs {row['failed_runs']},"
            f" mean |GPU - CPU| test accuracy {gap:.3f} over {len(pairs)} runs"
        )
    if name in ("b", "c"):
        return (
            f"wall {row['wall_seconds']:.1f} s, capture failures {row['capture_failures']},"
            f" failed runs {row['failed_runs']}"
        )
    if name == "e":
        return f"test {row['mean_test_accuracy']:.4f}, fit {row['mean_fit_seconds']:.2f} s"
    return f"test {row['accuracy']:.4f}, {row['seconds']:.2f} s"


def print_table(rows: dict[str, dict], heading: str) -> None:
    print(heading)
    print(f"{'step':<6}{'budget s':>9}  {'what':<56}  result")
    for name, row in rows.items():
        print(f"{name:<6}{BUDGETS[name]:>9}  {TITLES[name]:<56}  {summary(name, row)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="CIFAR-10 archive or folder (default: $CNNLAB_DATA)")
    parser.add_argument("--out", default="gpu_check.json", help="where the JSON goes")
    parser.add_argument("--dry-run", action="store_true", help="plan and check, train nothing")
    parser.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:  # a step's own process
        Path(args.result).write_text(json.dumps(STEPS[args.step](args.data)))
        return 0
    machine = f"{platform.node()}, {platform.processor() or platform.machine()}"
    heading = f"gpu_check {time.strftime('%Y-%m-%d %H:%M')} on {machine}"
    if args.dry_run:
        return dry_run(args, heading)
    setup_ends = time.monotonic() + BUDGETS["setup"]
    problems = install_missing(None, setup_ends)
    rows = {"setup": run_step("setup", args.data, left(setup_ends))}
    cuda = rows["setup"].get("device") is not None
    problems += install_missing(cuda, setup_ends)
    rows["setup"]["problems"] = problems
    if cuda:
        rows["setup"]["airbench"] = importlib.util.find_spec("airbench") is not None
    for name in ("a", "b", "c", "d", "e", "f"):
        if rows["setup"].get("status") != "done":
            rows[name] = {"status": "skipped: setup did not finish"}
        elif not cuda:
            rows[name] = {"status": "skipped: no CUDA device"}
        elif name == "f" and not rows["setup"].get("airbench"):
            rows[name] = {"status": "skipped: airbench could not be installed"}
        else:
            rows[name] = run_step(name, args.data)
    print_table(rows, heading)
    for problem in problems:
        print(f"could not: {problem}")
    Path(args.out).write_text(json.dumps({"heading": heading, "steps": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


def dry_run(args: argparse.Namespace, heading: str) -> int:
    """Plan every step and check its inputs; the table of what would run, and the JSON."""
    if importlib.util.find_spec("cnnlab") is None:
        sys.path.insert(0, str(ROOT / "src"))  # a fresh checkout: planning needs no install
    try:
        checks = plan_checks(args.data)
    except Exception as error:  # any missing input: one line that names it
        print(f"gpu_check --dry-run: {error}", file=sys.stderr)
        return 1
    rows = {name: {"status": "planned", "plan": checks[name]} for name in STEPS}
    print_table(rows, heading + " (dry run: nothing trained)")
    total = sum(BUDGETS.values())
    print(f"total budget {total} s of {TOTAL_BUDGET_SECONDS} s")
    plan = {"heading": heading, "dry_run": True, "budgets": BUDGETS, "steps": rows}
    Path(args.out).write_text(json.dumps(plan, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
