"""The shape of the code: imports form a DAG, text commands load no torch, paths record alike."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import fake_runs
import fake_studies
from cnnlab.config import RunConfig
from cnnlab.execution import execute
from cnnlab.training import group_net, group_plan, loop
from cnnlab.training.metrics import HISTORY_KEYS

PACKAGE = Path(__file__).parents[1] / "src" / "cnnlab"
# The concerns, each a subpackage; the floors at the top (config, errors, atomic, store, plots,
# machine) are modules of `cnnlab` itself.
SUBPACKAGES = (
    "conv",
    "data",
    "nn",
    "training",
    "execution",
    "study",
    "report",
    "tracking",
    "insight",
    "pipeline",
    "cli",
)
# The execution backends are siblings: none may import another (they share planning, transport).
BACKENDS = ("cnnlab.execution.processes", "cnnlab.execution.threads", "cnnlab.execution.ray_tasks")
# What may never load torch, by module: the text commands and the conv package depend on it.
TORCH_FREE = (
    "cnnlab.config",
    "cnnlab.store",
    "cnnlab.insight.explain_files",
    "cnnlab.conv.convolve",
    "cnnlab.conv.fast",
    "cnnlab.conv.kernels",
    "cnnlab.nn.specs",
    "cnnlab.nn.shapes",
    "cnnlab.nn.architectures",
    "cnnlab.nn.summary",
    "cnnlab.nn.facts",
    "cnnlab.training.group_plan",
    "cnnlab.execution.planning",
    "cnnlab.study.studyfile",
    "cnnlab.study.searchfile",
    "cnnlab.report.mechanisms",
    "cnnlab.study.search",
    "cnnlab.study.plan",
    "cnnlab.study.pruning",
    "cnnlab.report.search",
    "cnnlab.study.progress",
    "cnnlab.study.callbacks",
    "cnnlab.study.folder",
    "cnnlab.study.trials",
    "cnnlab.report.tables",
    "cnnlab.report.stats",
    "cnnlab.tracking.endpoints",
    "cnnlab.execution.reaper",
)


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """The dotted name of a source file under `package` (a package's `__init__` is the package)."""
    parts = ["cnnlab", *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str], name: str = "") -> set[str]:
    """The modules of `modules` a source file imports, at any depth (inside functions too).

    `from cnnlab.pkg import name` is an edge to `cnnlab.pkg.name` where that is a module, else
    to the package `cnnlab.pkg`. A module's own parent packages are no edge: Python has run
    their `__init__` before the module's first line.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found |= submodules or {node.module}
            if len(submodules) < len(node.names):
                found.add(node.module)
    parents = {name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)}
    return (found & modules) - parents - {name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Every module of the package (subpackages included) -> the package's modules it imports."""
    paths = {module_name(path, package): path for path in package.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules, name) for name, path in paths.items()}


def package_of(module: str) -> str:
    """The concern a module belongs to: its subpackage, or `cnnlab` for the top floors."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or parts[-1] in SUBPACKAGES else "cnnlab"


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Imports between concerns; the top floors (`cnnlab`) are below every subpackage."""
    packages: dict[str, set[str]] = {}
    for source, targets in graph.items():
        edges = packages.setdefault(package_of(source), set())
        edges |= {package_of(target) for target in targets}
    return {
        package: edges - {package, "cnnlab"} if package != "cnnlab" else set()
        for package, edges in packages.items()
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


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_tree_is_the_concerns():
    found = {path.parent.name for path in PACKAGE.rglob("__init__.py")} - {"cnnlab"}
    assert found == set(SUBPACKAGES)
    top = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert top == {"atomic", "config", "errors", "machine", "plots", "store"}


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "cnnlab.training.loop" in graph["cnnlab.training.group_net"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_concerns_import_each_other_without_a_cycle():
    packages = package_graph(import_graph())
    assert "cnnlab.training" in packages["cnnlab.execution"]
    assert find_cycle(packages) is None, " -> ".join(find_cycle(packages) or [])


def test_no_backend_imports_a_sibling_and_execution_knows_no_study():
    graph = import_graph()
    for backend in BACKENDS:
        assert not reaches(graph, backend) & (set(BACKENDS) - {backend}), backend
    execution = [name for name in graph if name.startswith("cnnlab.execution")]
    assert execution and all(
        package_of(target) not in ("cnnlab.study", "cnnlab.report", "cnnlab.tracking")
        for name in execution
        for target in graph[name]
    )


def test_the_study_knows_no_tracker_and_the_pipeline_sits_on_top():
    # The trackers are study callbacks: they import the protocol; the study never imports them.
    packages = package_graph(import_graph())
    assert "cnnlab.study" in packages["cnnlab.tracking"]
    assert "cnnlab.tracking" not in packages["cnnlab.study"]
    assert packages["cnnlab.pipeline"] >= {"cnnlab.study", "cnnlab.report"}
    assert {name for name, edges in packages.items() if "cnnlab.pipeline" in edges} == {
        "cnnlab.cli"
    }


def test_torch_free_modules_import_no_torch_loading_module():
    # Statically: nothing they reach imports torch (the subprocess test below checks it live).
    graph = import_graph()
    for name in TORCH_FREE:
        for module in {name} | reaches(graph, name):
            path = PACKAGE.joinpath(*module.split(".")[1:])
            path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            tree = ast.parse(path.read_text(encoding="utf-8"))
            top_level = [
                node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)
            ]
            names = {
                alias.name
                for node in top_level
                if isinstance(node, ast.Import)
                for alias in node.names
            }
            names |= {
                node.module
                for node in top_level
                if isinstance(node, ast.ImportFrom) and node.module
            }
            assert not any(n == "torch" or n.startswith("torch.") for n in names), (name, module)


def plant(root: Path, files: dict[str, str]) -> Path:
    """A package `cnnlab` under `root` with these files (relative paths -> source)."""
    for relative, source in files.items():
        path = root / "cnnlab" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root / "cnnlab"


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    # The check itself can fail: an import tucked into a function is still an edge.
    package = plant(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "def later():\n    from cnnlab import b\n",
            "b.py": "from cnnlab.c import thing\n",
            "c.py": "import cnnlab.a\n",
        },
    )
    graph = import_graph(package)
    assert graph["cnnlab.a"] == {"cnnlab.b"} and graph["cnnlab.c"] == {"cnnlab.a"}
    assert find_cycle(graph) == ["cnnlab.a", "cnnlab.b", "cnnlab.c", "cnnlab.a"]


def test_a_cycle_planted_in_a_subpackage_is_found(tmp_path):
    # A module deep in a subpackage, and a cycle between concerns that no module cycle shows.
    package = plant(
        tmp_path,
        {
            "__init__.py": "",
            "config.py": "",
            "nn/__init__.py": "",
            "nn/specs.py": "from cnnlab.training.loop import fit\n",
            "training/__init__.py": "",
            "training/loop.py": "def fit():\n    from cnnlab.training import device\n",
            "training/device.py": "from cnnlab.nn import specs\n",
            "study/__init__.py": "",
            "study/runner.py": "from cnnlab.report import tables\n",
            "report/__init__.py": "",
            "report/tables.py": "from cnnlab.config import x\n",
            "report/build.py": "from cnnlab.study.runner import run\n",
        },
    )
    graph = import_graph(package)
    cycle = find_cycle(graph)
    assert cycle == [
        "cnnlab.nn.specs",
        "cnnlab.training.loop",
        "cnnlab.training.device",
        "cnnlab.nn.specs",
    ]
    packages = package_graph(graph)
    assert packages["cnnlab.report"] == {"cnnlab.study"}
    assert packages["cnnlab.study"] == {"cnnlab.report"}
    assert find_cycle(packages) is not None


def test_text_commands_load_no_torch(tmp_path):
    path = tmp_path / "mini.toml"
    path.write_text(fake_studies.STUDY_TOML)
    out = tmp_path / "out"
    with fake_studies.fake_training(fake_runs.fake_fit):
        fake_studies.study_records(path, out, fake_runs.zeros_cifar(), fit=fake_runs.fake_fit)
    script = f"""
import sys
from cnnlab.cli import main
from cnnlab.store import Store
with Store.open({str(out)!r}, create=False) as store:
    first, second = [record.id for record in store.runs()][:2]
assert main(["results", {str(out)!r}, "--format", "csv"]) == 0
assert main(["compare", "--study", {str(out)!r}, first, second]) == 0
assert main(["report", {str(out)!r}, "--no-explain"]) == 0
assert main(["archs"]) == 0 and main(["summary", "strong-l"]) == 0
assert main(["study", {str(path)!r}, "--dry-run"]) == 0
import cnnlab, cnnlab.conv, cnnlab.study.studyfile, cnnlab.config
import cnnlab.nn.specs, cnnlab.nn.summary, cnnlab.execution.planning, cnnlab.study.progress
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
    lone = loop.fit(configs[0], tiny_cifar, device="cpu")
    history_keys, metric_keys = set(lone.history[0]), set(lone.metrics)
    assert history_keys == set(HISTORY_KEYS)
    paths = {
        "grouped": group_net.fit_group(configs, tiny_cifar, device="cpu"),
        "in this process": execute.train_all(configs, tiny_cifar, device="cpu", workers=1),
        "worker processes": execute.train_all(configs, tiny_cifar, device="cpu", workers=2),
    }
    monkeypatch.setattr(
        execute,
        "plan_in_process",
        lambda configs, target, workers: (group_plan.plan_groups(configs, 8), 2),
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


def test_cuda_streams_and_graphs_are_made_in_one_place_each():
    # `torch.cuda.Stream()` hands out pooled streams: only `device.STREAMS` may draw them, so no
    # two holders share one; graphs are captured only under `device.GATE` (docs/cuda.md).
    allowed = {
        "torch.cuda.Stream(": {"cnnlab.training.device"},
        "torch.cuda.graph(": {"cnnlab.training.group_net"},
    }
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for call, owners in allowed.items():
            if call in text:
                assert module_name(path) in owners, f"{module_name(path)} calls {call}"
