"""Where a run trains and in what arithmetic: the device, its math modes, images moved there.

Also the two process-wide rules that make CUDA work in several threads safe (docs/cuda.md):
`GATE`, held shared by every thread's CUDA work and exclusively by a graph capture, and
`STREAMS`, which hands each holder a stream no other holder has.
"""

from __future__ import annotations

import contextlib
import os
import threading
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


@contextlib.contextmanager
def deterministic_cuda_math() -> Iterator[None]:
    """Deterministic kernels, no TF32, no autotuner while CUDA trains; restored afterwards."""
    backends = torch.backends
    saved = (
        backends.cuda.matmul.allow_tf32,
        backends.cudnn.allow_tf32,
        backends.cudnn.benchmark,
        backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    # cuBLAS is deterministic only with a fixed workspace; read when its handles are created.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = False
    backends.cudnn.benchmark, backends.cudnn.deterministic = False, True
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        (
            backends.cuda.matmul.allow_tf32,
            backends.cudnn.allow_tf32,
            backends.cudnn.benchmark,
            backends.cudnn.deterministic,
        ) = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])


def cuda_math(deterministic: bool) -> contextlib.AbstractContextManager:
    """The math a CUDA run trains in: the `deterministic` run field's, else the fast one."""
    return deterministic_cuda_math() if deterministic else fast_cuda_math()


class DeviceGate:
    """A reader/writer gate: CUDA work holds it shared, a graph capture holds it alone.

    A capture is spoiled by what other threads do meanwhile (cuDNN's autotuner synchronises
    the device; so do copies to the host), so every thread's CUDA work runs inside `shared()`
    and a capture inside `exclusive()`, which waits until every other holder has reached
    `pause()` (or left). A waiting capture goes first: new shared holders wait behind it.
    A thread's own shared hold is set aside while it captures, and taken back after.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0  # shared holds, counting each thread once
        self._writing = False
        self._writers_waiting = 0
        self._depth = threading.local()  # this thread's nesting of shared()

    def capturing(self) -> bool:
        """Whether some thread holds the gate alone now."""
        with self._condition:
            return self._writing

    def holds_shared(self) -> bool:
        """Whether the calling thread is inside `shared()`."""
        return getattr(self._depth, "value", 0) > 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the gate beside other threads' CUDA work, not beside a capture."""
        depth = getattr(self._depth, "value", 0)
        if depth == 0:
            self._acquire_shared()
        self._depth.value = depth + 1
        try:
            yield
        finally:
            self._depth.value = depth
            if depth == 0:
                self._release_shared()

    def pause(self) -> None:
        """Let a waiting capture run (a thread's shared hold, released and taken again)."""
        if self.holds_shared():
            self._release_shared()
            self._acquire_shared()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the gate alone: no other thread is inside `shared()` until it is released."""
        held = self.holds_shared()
        if held:
            self._release_shared()
        with self._condition:
            self._writers_waiting += 1
            self._condition.wait_for(lambda: not self._writing and self._readers == 0)
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()
            if held:
                self._acquire_shared()

    def _acquire_shared(self) -> None:
        with self._condition:
            self._condition.wait_for(lambda: not self._writing and not self._writers_waiting)
            self._readers += 1

    def _release_shared(self) -> None:
        with self._condition:
            self._readers -= 1
            self._condition.notify_all()


class StreamRegistry:
    """CUDA streams handed out so that no two live holders ever share one.

    `torch.cuda.Stream()` does not create a stream: it hands out one of a small pool (32 per
    device and priority) in rotation, so past 32 draws a "new" stream is one another thread may
    still be using. The registry draws until it gets one that no holder has.
    """

    DRAWS = 64  # twice PyTorch's pool: if none of these is free, none will be

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[tuple[str, int]] = set()

    def live(self) -> set[tuple[str, int]]:
        """(device, stream handle) of every stream held now."""
        with self._lock:
            return set(self._live)

    @contextlib.contextmanager
    def dedicated(self, device: torch.device) -> Iterator[torch.cuda.Stream]:
        """A stream on `device` that no other holder has, until the block ends."""
        with self._lock:
            for _ in range(self.DRAWS):
                stream = torch.cuda.Stream(device=device)
                key = (str(stream.device), stream.cuda_stream)
                if key not in self._live:
                    break
            else:
                raise RuntimeError(
                    f"no free CUDA stream on {device}: {len(self._live)} are in use"
                    " (train fewer groups at once: --workers)"
                )
            self._live.add(key)
        try:
            yield stream
        finally:
            with self._lock:
                self._live.discard(key)


# Process-wide: the threads of cnnlab.execution.threads and every capture share them.
GATE = DeviceGate()
STREAMS = StreamRegistry()


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The forward pass's compute type: float32, or opt-in bfloat16 mixed precision.

    Parameters, gradients and Adam's state stay float32 either way; bfloat16 only changes the
    arithmetic inside convolutions and matrix products (the loss is computed in float32).
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
