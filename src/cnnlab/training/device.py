"""Where a run trains and in what arithmetic: the device, its math modes, images moved there."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from cnnlab.errors import CnnlabError


def available_devices() -> list[str]:
    """Device names this machine can train on."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' (CUDA if present, else the CPU), 'cpu', 'cuda', 'cuda:N' or 'mps', checked."""
    name = str(name)
    available = available_devices()
    if name == "auto":
        return torch.device("cuda" if "cuda" in available else "cpu")
    if name not in available:
        raise CnnlabError(
            f"device {name!r} is not available here; available: {', '.join(available)}"
        )
    return torch.device(name)


def images_to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, C) -> a uint8 NCHW view on `device`, stored channels-last."""
    # The NHWC buffer permuted to NCHW is exactly PyTorch's channels-last layout, which the
    # CPU convolutions run fastest on (about 1.4x a contiguous NCHW copy, measured).
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:
        images = images.copy()  # cached arrays may be read-only maps; torch wants writable
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1], as the report scaled them."""
    return images.float().div_(255.0)


@contextlib.contextmanager
def fast_cuda_math() -> Iterator[None]:
    """TF32 matrix products and cuDNN's autotuner while CUDA trains; restored afterwards."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True  # fixed shapes: the tuned kernels are reused
    try:
        yield
    finally:
        (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.benchmark,
        ) = saved


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The forward pass's compute type: float32, or opt-in bfloat16 mixed precision.

    Parameters, gradients and Adam's state stay float32 either way; bfloat16 only changes the
    arithmetic inside convolutions and matrix products (the loss is computed in float32).
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
