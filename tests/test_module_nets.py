"""A PyTorch user's own net from an installed package: found, checked, trained, saved, studied."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import module_net_site
from cnnlab import cli
from cnnlab.config import RunConfig, run_id
from cnnlab.data.datasets import load_dataset
from cnnlab.errors import CnnlabError
from cnnlab.nn import architectures, module_nets
from cnnlab.report import cost
from cnnlab.store import RunRecord, Status, Store
from cnnlab.training import loop, runfolder

TINY = {"dataset": "digits", "train_size": 300, "epochs": 2, "batch_size": 64}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return module_net_site.make_site(tmp_path_factory.mktemp("site"))


@pytest.fixture
def installed(site, monkeypatch):
    """The example package and the bad factories, installed in this process."""
    for path in module_net_site.import_paths(site):
        monkeypatch.syspath_prepend(path)
    architectures.module_architectures.cache_clear()
    module_nets._CHECKED.clear()
    yield site
    architectures.module_architectures.cache_clear()
    module_nets._CHECKED.clear()


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny_factory(input_shape, num_classes, *, width: int = 2):
    """A conv and a linear layer: a factory defined in the caller's own code."""
    height, image_width, channels = input_shape
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, width, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(width * height * image_width, num_classes),
    )


def senet(**fields) -> RunConfig:
    own = {k: fields.pop(k) for k in list(fields) if k not in RunConfig.__dataclass_fields__}
    return RunConfig(arch="senet", arch_fields=own or None, **{**TINY, **fields})


def test_spec_nets_keep_their_run_ids():
    # Computed on main before module nets existed: the new fields' defaults hash to nothing.
    assert run_id(RunConfig()) == "9e7e65453739"
    assert run_id(RunConfig(arch="seed-deep", train_size=50000, l1=1e-4, seed=2)) == "af4ca309503a"
    config = RunConfig(dataset="digits", arch="tiny-modern", flip=True, epochs=3)
    assert run_id(config) == "650c8e738637"


def test_installed_nets_are_found_with_their_package_and_fields(installed):
    found = architectures.module_architectures()["senet"]
    assert (found.package, found.version, found.target) == (
        "cnnlab-senet",
        "0.1.0",
        "cnnlab_senet.nets:build",
    )
    fields = architectures.factory_fields("senet")
    assert {name: spec.default for name, spec in fields.items()} == {
        "width": 16,
        "depth": 2,
        "pool": "stride",
        "se_ratio": 4,
        "dropout": 0.1,
    }
    assert architectures.check_field("senet", "dropout", 0) == 0.0  # an int where a float goes
    assert "senet" in architectures.known_names()


def test_a_module_net_run_repeats_itself_and_leaves_torch_global_generator(installed, digits):
    state = torch.get_rng_state()
    first = loop.fit(senet(width=4, seed=3), digits, device="cpu")
    assert torch.equal(torch.get_rng_state(), state)
    second = loop.fit(senet(width=4, seed=3), digits, device="cpu")
    other = loop.fit(senet(width=4, seed=4), digits, device="cpu")
    assert first.history == [
        {**row, "seconds": first.history[index]["seconds"]}
        for index, row in enumerate(second.history)
    ]
    assert all(torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    assert not all(torch.equal(first.state_dict[k], other.state_dict[k]) for k in first.state_dict)
    assert first.metrics["parameters"] == sum(v.numel() for v in first.state_dict.values())
    readings = first.measurements
    assert "net.blocks.0.1" in readings["activations"]  # the first ReLU, found by its type
    assert readings["weights"]["net.head"]["kind"] == "dense"
    assert readings["gradients"][0]["layers"]


def test_fit_takes_a_factory_straight_from_python(digits):
    config = RunConfig(arch="mine", arch_fields={"width": 3}, **TINY)
    result = loop.fit(config, digits, device="cpu", factory=tiny_factory)
    assert result.state_dict["net.0.weight"].shape == (3, 1, 3, 3)
    # Its forward FLOPs are measured (no specs to count them from); the report's cost uses them.
    net = tiny_factory((8, 8, 1), 10, width=3)
    assert result.metrics["forward_flops"] == module_nets.flop_count(net, (8, 8, 1)) > 0
    record = RunRecord(
        "r",
        Status.DONE,
        dataclasses.asdict(config),
        0,
        result.metrics,
        result.history,
        {},
        "",
        1,
        None,
        0.0,
        None,
        None,
    )
    trained = int(config.train_size * (1 - config.validation_split)) * config.epochs
    assert cost.training_flops([record]) == 3.0 * result.metrics["forward_flops"] * trained
    with pytest.raises(CnnlabError, match="unknown architecture 'mine'"):
        loop.fit(config, digits, device="cpu")  # the factory was for that call only
    with pytest.raises(CnnlabError, match="arch 'seed' names a known architecture"):
        loop.fit(RunConfig(**TINY), digits, device="cpu", factory=tiny_factory)


def test_l1_and_l2_weigh_the_linear_weights_only(installed):
    model = module_nets.build_module_net(senet(width=4, l1=0.01, l2=0.5), (8, 8, 1), 10)
    head = model.net.head.weight
    expected = 0.01 * head.abs().sum() + 0.5 * head.square().sum()
    assert torch.allclose(model.penalty(), expected)
    assert module_nets.build_module_net(senet(width=4), (8, 8, 1), 10).penalty() is None


def test_a_run_folder_rebuilds_its_net_from_the_factory(installed, digits, tmp_path):
    result = loop.fit(senet(width=4, depth=1, pool="max"), digits, device="cpu")
    runfolder.save_run(result, tmp_path / "run", digits.class_names)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["arch_fields"] == {"width": 4, "depth": 1, "pool": "max"}
    assert saved["layers"] is None
    run = runfolder.load_run(tmp_path / "run")
    assert run.config == result.config
    weights = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    assert all(torch.equal(run.model.state_dict()[k], v) for k, v in weights.items())
    scores = runfolder.evaluate_run(run, digits, "cpu")
    assert scores["test"][1].accuracy == result.metrics["test_accuracy"]


def _train(capsys, *arguments: str) -> tuple[int, str]:
    code = cli.main(["train", "--dataset", "digits", "--epochs", "1", *arguments])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--arch", "nonesuch"], "unknown architecture 'nonesuch'; known: seed,"),
        (["--arch", "raises"], "(bad-nets 0.1): the factory raised RuntimeError: out of ideas"),
        (["--arch", "not_module"], "(bad-nets 0.1): the factory returned a str, not a torch"),
        (["--arch", "wrong_classes"], "outputs shape (2, 11) for a batch of 2 images; expected"),
        (["--arch", "gone"], "(bad-nets 0.1): cannot import bad_nets_gone:build: ModuleNotFound"),
        (["--arch", "no_default"], "(bad-nets 0.1): the factory's field 'width' needs a default"),
        (["--arch", "no_linear", "--l1", "0.1"], "l1: weighs the Linear layers' weights, and"),
        (
            ["--arch", "senet", "--arch-field", "widht=4"],
            "--arch-field widht: architecture 'senet' (cnnlab-senet 0.1.0) declares no field",
        ),
        (
            ["--arch", "senet", "--arch-field", "width=wide"],
            "(cnnlab-senet 0.1.0) takes int for 'width' (its default is 16), got str 'wide'",
        ),
    ],
)
def test_each_bad_input_is_one_line_and_exit_2_before_training(
    installed, capsys, tmp_path, arguments, expected
):
    code, error = _train(capsys, *arguments, "--out", str(tmp_path / "run"))
    assert code == cli.EXIT_USER_ERROR
    assert len(error.strip().splitlines()) == 1 and expected in error, error
    assert not (tmp_path / "run").exists()


STUDY = """
[study]
name = "senet-tiny"
repeats = 2

[defaults]
dataset = "digits"
arch = "senet"
width = 4
train_size = 300
epochs = 2
batch_size = 64

[experiments.pooling]
grid = {{ pool = ["stride", "max"] }}

[experiments.depth]
grid = {{ depth = [1, 2] }}
{extra}
"""


def _study_file(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "senet.toml"
    path.write_text(STUDY.format(extra=extra))
    return path


def test_a_study_puts_the_factorys_fields_in_its_grid(installed, tmp_path):
    from cnnlab.study.runner import StudyRun

    plan = StudyRun(_study_file(tmp_path), out=tmp_path / "out").plan()
    assert len(plan) == 2 * 3  # (stride, max) and (depth 1, depth 2): depth 2 is stride
    fields = sorted(json.dumps(run.config.arch_fields, sort_keys=True) for run in plan)
    assert fields[0] == '{"depth": 1, "width": 4}'
    assert {run.config.arch_package for run in plan} == {"cnnlab-senet"}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[experiments.wide]\ngrid = { widht = [8] }", "unknown key; valid keys:"),
        ('[experiments.wide]\narch = "senet"\nwidth = "wide"', "expected an integer, got str"),
        ('[experiments.other]\narch = "raises"', "the factory raised RuntimeError"),
        ('[experiments.other]\narch = "seed"\ndataset = "digits"', "seed is not a module net"),
    ],
)
def test_a_study_with_a_bad_net_stops_in_one_line_before_training(
    installed, tmp_path, extra, expected
):
    from cnnlab.study.runner import StudyRun

    with pytest.raises(CnnlabError) as caught:
        StudyRun(_study_file(tmp_path, extra), out=tmp_path / "out").run()
    message = str(caught.value)
    assert expected in message and len(message.splitlines()) == 1, message
    assert str(tmp_path / "senet.toml") in message
    assert not (tmp_path / "out").exists()


# --- the example's study, end to end through the command --------------------------------------


def _cnnlab(site: Path, *arguments: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *arguments],
        capture_output=True,
        text=True,
        timeout=600,
        env=module_net_site.environment(site),
        **options,
    )


def test_the_example_study_runs_in_workers_resumes_and_reports(site, tmp_path):
    study = _study_file(tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cnnlab", "study", str(study), "--workers", "2"]
    child = subprocess.Popen(
        [*command, "--out", str(out)],
        env=module_net_site.environment(site),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        done = _statuses(out).count("done")
        if done >= 2:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    assert _statuses(out).count("done") < 6, "the study ended before it was killed"
    resumed = _cnnlab(site, "study", str(study), "--workers", "2", "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    clean = _cnnlab(site, "study", str(study), "--workers", "2", "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    with Store.open(out) as store, Store.open(tmp_path / "clean") as other:
        runs, expected = {r.id: r for r in store.runs()}, {r.id: r for r in other.runs()}
    assert sorted(runs) == sorted(expected) and len(runs) == 6
    for run_id_, run in runs.items():
        assert run.status == "done", run.reason
        weights = torch.load(out / run.artifacts["weights"], weights_only=True)
        reference = torch.load(
            tmp_path / "clean" / expected[run_id_].artifacts["weights"], weights_only=True
        )
        assert all(torch.equal(weights[k], reference[k]) for k in reference), run_id_
    report = (out / "report.md").read_text()
    assert "pooling" in report and "depth" in report and "95%" in report
    best = out / next(iter(runs.values())).artifacts["weights"]
    explained = _cnnlab(site, "explain", str(best.parent), "--out", str(tmp_path / "explain"))
    assert explained.returncode == 0, explained.stderr
    page = (tmp_path / "explain" / "explain.html").read_text()
    assert "Grad-CAM" in page and "net.blocks" in page  # on the last image-shaped Conv2d
    first_block = ["--layer", "blocks.0", "--out", str(tmp_path / "first")]  # the net's own name
    explained = _cnnlab(site, "explain", str(best.parent), *first_block)
    assert explained.returncode == 0, explained.stderr
    assert "on blocks.0;" in (tmp_path / "first" / "explain.html").read_text()
    onnx = str(tmp_path / "senet.onnx")
    exported = _cnnlab(site, "export-model", str(best.parent), "--onnx", onnx)
    assert exported.returncode == 0 and (tmp_path / "senet.onnx").stat().st_size > 0
    summary = _cnnlab(site, "summary", "senet", "--dataset", "digits", "--arch-field", "width=4")
    assert summary.returncode == 0, summary.stderr
    assert "FLOPs per image" in summary.stdout and "Receptive field of" in summary.stdout
    archs = _cnnlab(site, "archs")
    assert "module net from cnnlab-senet 0.1.0" in archs.stdout


def _statuses(out: Path) -> list[str]:
    import sqlite3

    database = out / "study.sqlite"
    if not database.exists():
        return []
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            return [row[0] for row in connection.execute("SELECT status FROM runs")]
    except sqlite3.Error:
        return []
