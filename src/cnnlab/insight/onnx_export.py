"""`cnnlab export-model`: a run's trained net as an ONNX file (for Netron and ONNX Runtime).

torch.onnx's dynamo exporter (the TorchScript one is deprecated in torch 2.9+) needs onnxscript;
the file is checked against PyTorch with ONNX Runtime before it is kept. The graph takes float32
images (batch, channels, height, width) with pixels scaled to [0, 1], as cnnlab trains, and
returns the class probabilities (the Keras model's softmax output), for any batch size.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab import atomic
from cnnlab.errors import CnnlabError

OPSET = 18
CHECK_IMAGES = 8  # random images the exported graph must agree with PyTorch on
TOLERANCE = 1e-4  # largest difference of a probability between ONNX Runtime and PyTorch


class _Probabilities(nn.Module):
    """The net with its final softmax, which cnnlab folds into the loss while training."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(images), dim=1)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's progress prints and registry warnings (torchvision ops) stay off screen."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch._dynamo", "torch.export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def onnx_bytes(
    model: nn.Module, input_shape: tuple[int, int, int], class_names: Sequence[str] = ()
) -> bytes:
    """The model (logits out) as a serialised ONNX model that outputs probabilities."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter imports it; say so up front)
    except ImportError:
        raise CnnlabError(
            "ONNX export needs onnxscript and onnxruntime: pip install 'cnnlab[onnx]'"
        ) from None
    height, width, channels = input_shape
    wrapped = _Probabilities(model).eval()
    example = torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(0))
    with _quiet():
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    proto = program.model_proto
    metadata = {
        "producer": "cnnlab export-model",
        "input": f"float32 images (batch, {channels}, {height}, {width}), pixels / 255",
        "output": "class probabilities (batch, classes)",
        "class_names": ",".join(class_names),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def check_round_trip(model: nn.Module, data: bytes, images: np.ndarray) -> float:
    """The largest difference between ONNX Runtime's probabilities and PyTorch's on float NCHW
    `images`; raises where it exceeds TOLERANCE."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    images = np.ascontiguousarray(images, dtype=np.float32)
    (probabilities,) = session.run(None, {"images": images})
    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.from_numpy(images)), dim=1).numpy()
    difference = float(np.max(np.abs(probabilities - expected)))
    if not difference <= TOLERANCE:
        raise CnnlabError(
            f"the ONNX graph's probabilities differ from PyTorch's by {difference:.2e}"
            f" (more than {TOLERANCE:g}); nothing was written"
        )
    return difference


def export_model(
    run_dir: str | os.PathLike[str], onnx_path: str | os.PathLike[str], *, force: bool = False
) -> tuple[Path, float]:
    """Write a run folder's net as ONNX at `onnx_path` (atomically; an existing file only with
    `force`); returns the path and the round trip's largest difference on random images."""
    from cnnlab.training.runfolder import load_run

    target = Path(onnx_path)
    atomic.check_file_target(onnx_path, "--onnx")  # probed before the export's seconds
    if target.exists() and not force:
        raise CnnlabError(f"{target}: exists; pass --force to overwrite it")
    run = load_run(run_dir)
    shape = tuple(run.model.input_shape)
    names = [str(name) for name in run.metrics.get("class_names") or []]
    data = onnx_bytes(run.model, shape, names)
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(CHECK_IMAGES, shape[2], shape[0], shape[1], generator=generator)
    difference = check_round_trip(run.model, data, images.numpy())
    atomic.write_bytes(target, data)
    return target, difference
