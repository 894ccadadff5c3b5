"""`cnnlab export-model --onnx`: a trained run as ONNX whose probabilities ONNX Runtime computes as
PyTorch does on test images, every registered net exported, and never a file overwritten unasked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab.cli import main
from cnnlab.config import RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.insight.onnx_export import check_round_trip, onnx_bytes
from cnnlab.nn.architectures import ARCHITECTURES
from cnnlab.nn.modules import build_model
from cnnlab.training import loop, runfolder

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, object]:
    """A real one-epoch tiny-modern run (batch norm, residual blocks) on tiny synthetic CIFAR."""
    from conftest import tiny_cifar

    data = tiny_cifar.__wrapped__()
    result = loop.fit(RunConfig(arch="tiny-modern", train_size=200, epochs=1, seed=1), data)
    folder = tmp_path_factory.mktemp("onnx") / "run"
    runfolder.save_run(result, folder, data.class_names)
    return folder, data


def _probabilities(session, images: np.ndarray) -> np.ndarray:
    nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255
    return session.run(None, {"images": nchw})[0]


@pytest.mark.slow  # the command in a subprocess, with a dynamo export
def test_the_exported_run_agrees_with_pytorch_on_test_images(trained, tmp_path):
    folder, data = trained
    target = tmp_path / "model.onnx"
    done = subprocess.run(
        [sys.executable, "-m", "cnnlab", "export-model", str(folder), "--onnx", str(target)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"onnx: {target} (ONNX Runtime agrees with PyTorch to ")
    assert done.stderr == ""
    model = onnx.load(str(target))
    onnx.checker.check_model(model)
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert metadata["class_names"].split(",") == list(data.class_names)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    net = runfolder.load_run(folder).model.eval()
    for images in (data.test_images, data.test_images[:1]):  # any batch size
        found = _probabilities(session, images)
        with torch.no_grad():
            tensor = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).float() / 255
            expected = torch.softmax(net(tensor), 1).numpy()
        assert found.shape == (len(images), 10)
        np.testing.assert_allclose(found, expected, atol=2e-6)
    accuracy = float(
        np.mean(_probabilities(session, data.test_images).argmax(1) == data.test_labels)
    )
    assert accuracy == pytest.approx(runfolder.load_run(folder).metrics["test_accuracy"])


@pytest.mark.slow  # one dynamo export per net, seconds each
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_registered_net_round_trips(arch):
    model = build_model(arch, generator=torch.Generator().manual_seed(0)).eval()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)).numpy()
    assert check_round_trip(model, onnx_bytes(model, (32, 32, 3)), images) < 1e-5


def test_a_grayscale_net_round_trips():
    model = build_model("seed", (28, 28, 1), 10).eval()
    images = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    assert check_round_trip(model, onnx_bytes(model, (28, 28, 1)), images) < 1e-5


def test_the_check_fails_for_a_graph_of_other_weights():
    exported = build_model("tiny", generator=torch.Generator().manual_seed(0))
    other = build_model("tiny", generator=torch.Generator().manual_seed(1))
    images = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    with pytest.raises(CnnlabError, match="differ from PyTorch's"):
        check_round_trip(other, onnx_bytes(exported, (32, 32, 3)), images)


def _cli_error(capsys, arguments: list[str]) -> str:
    code = main(arguments)
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1, error
    return error


def test_an_existing_file_is_kept_unless_forced(trained, tmp_path, capsys):
    folder, _ = trained
    target = tmp_path / "model.onnx"
    target.write_bytes(b"mine")
    error = _cli_error(capsys, ["export-model", str(folder), "--onnx", str(target)])
    assert error == f"cnnlab: error: {target}: exists; pass --force to overwrite it\n"
    assert target.read_bytes() == b"mine"
    path, difference = cnnlab.export_model(folder, target, force=True)
    assert path == target and difference < 1e-5
    onnx.checker.check_model(onnx.load(str(target)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left


def test_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, capsys):
    folder, _ = trained
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    for name in ("config.json", "history.json", "metrics.json"):
        (no_weights / name).write_bytes((folder / name).read_bytes())
    target = tmp_path / "out" / "model.onnx"
    error = _cli_error(capsys, ["export-model", str(no_weights), "--onnx", str(target)])
    assert "weights.pt: cannot read" in error and not target.exists()
    assert "is a folder" in _cli_error(
        capsys, ["export-model", str(folder), "--onnx", str(tmp_path)]
    )
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    error = _cli_error(capsys, ["export-model", str(folder), "--onnx", str(a_file / "m.onnx")])
    assert "not a writable folder" in error
    with pytest.raises(SystemExit) as exit_:
        main(["export-model", str(folder)])
    assert exit_.value.code == 2 and "--onnx" in capsys.readouterr().err
