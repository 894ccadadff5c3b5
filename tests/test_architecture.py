"""The shape of the code: imports form a DAG, text commands load no torch, paths record alike."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import study_fakes
from cnnlab import batched, execute, runfolder, train
from cnnlab.config import RunConfig
from cnnlab.metrics import HISTORY_KEYS

PACKAGE = Path(__file__).parents[1] / "src" / "cnnlab"


def imports_of(path: Path, package: Path = PACKAGE) -> set[str]:
    """The cnnlab modules a source file imports, at any depth (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("cnnlab.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "cnnlab":
                found |= {f"cnnlab.{alias.name}" for alias in node.names}
            elif node.module.startswith("cnnlab."):
                found.add(node.module)
    return {name for name in found if (package / f"{name.split('.')[1]}.py").exists()}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    return {
        f"cnnlab.{path.stem}": imports_of(path, package) - {f"cnnlab.{path.stem}"}
        for path in package.glob("*.py")
        if path.stem != "__init__"
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node], _ = "done", stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 15 and "cnnlab.train" in graph["cnnlab.batched"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    # The check itself can fail: an import tucked into a function is still an edge.
    (tmp_path / "a.py").write_text("def later():\n    from cnnlab import b\n")
    (tmp_path / "b.py").write_text("from cnnlab.c import thing\n")
    (tmp_path / "c.py").write_text("import cnnlab.a\n")
    graph = import_graph(tmp_path)
    assert graph == {"cnnlab.a": {"cnnlab.b"}, "cnnlab.b": {"cnnlab.c"}, "cnnlab.c": {"cnnlab.a"}}
    assert find_cycle(graph) == ["cnnlab.a", "cnnlab.b", "cnnlab.c", "cnnlab.a"]


def test_text_commands_load_no_torch(tmp_path):
    path = tmp_path / "mini.toml"
    path.write_text(study_fakes.STUDY_TOML)
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runfolder, "save_run", study_fakes.fake_save_run)
        study_fakes.study_records(path, out, study_fakes.zeros_cifar(), fit=study_fakes.fake_fit)
    script = f"""
import sys
from cnnlab.cli import main
from cnnlab.store import Store
with Store.open({str(out)!r}, create=False) as store:
    first, second = [record.id for record in store.runs()][:2]
assert main(["results", {str(out)!r}, "--format", "csv"]) == 0
assert main(["compare", "--study", {str(out)!r}, first, second]) == 0
assert main(["report", {str(out)!r}]) == 0
assert main(["archs"]) == 0 and main(["summary", "strong-l"]) == 0
assert main(["study", {str(path)!r}, "--dry-run"]) == 0
import cnnlab, cnnlab.conv, cnnlab.studyfile, cnnlab.config, cnnlab.layers, cnnlab.summary
loaded = sorted(name for name in sys.modules if name == "torch" or name.startswith("torch."))
print("torch modules:", loaded)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "torch modules: []" in done.stdout


TINY = RunConfig(arch="tiny", train_size=100, epochs=2, batch_size=32)


def test_every_execution_path_records_what_a_lone_fit_records(tiny_cifar, monkeypatch):
    configs = [dataclasses.replace(TINY, seed=seed) for seed in (0, 1)]
    lone = train.fit(configs[0], tiny_cifar, device="cpu")
    history_keys, metric_keys = set(lone.history[0]), set(lone.metrics)
    assert history_keys == set(HISTORY_KEYS)
    paths = {
        "grouped": batched.fit_group(configs, tiny_cifar, device="cpu"),
        "in this process": execute.train_all(configs, tiny_cifar, device="cpu", workers=1),
        "worker processes": execute.train_all(configs, tiny_cifar, device="cpu", workers=2),
    }
    monkeypatch.setattr(
        execute,
        "plan_in_process",
        lambda configs, target, workers: (batched.plan_groups(configs, 8), 2),
    )
    paths["groups on streams"] = execute.train_all(configs, tiny_cifar, device="cpu", workers=1)
    for path, results in paths.items():
        for result in results:
            assert not isinstance(result, str), f"{path}: {result}"
            assert result.status == "done", path
            assert {key for row in result.history for key in row} == history_keys, path
            assert set(result.metrics) == metric_keys, path
        assert results[0].metrics["test_accuracy"] == pytest.approx(
            lone.metrics["test_accuracy"], abs=0.02
        ), path
