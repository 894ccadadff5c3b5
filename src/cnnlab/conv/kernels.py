"""Kernels by name, as literals or from files: what `cnnlab convolve --kernel K` accepts.

The catalogue holds the seed report's two kernels (`laplacian8`, `laplacian4-boost`) and the
classic ones; `box:SIZE` and `gaussian:SIZE:SIGMA` are parametric; a literal is a JSON or Python
matrix; a file is `.npy` (kh x kw, or kh x kw x C) or whitespace-separated text. Every size is
bounded before anything is allocated.
"""

from __future__ import annotations

import ast
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab import atomic
from cnnlab.errors import CnnlabError

# Kernels from a name, a literal or a file stay at most this wide: far past any filter a picture
# needs, and a box:100000 would be 80 GB.
MAX_KERNEL_SIDE = 1025
MAX_LITERAL_CHARACTERS = 1 << 20
MAX_KERNEL_TEXT_BYTES = 64 << 20


def box(size: int = 3) -> np.ndarray:
    """The size x size mean filter (blur)."""
    _check_size(size, "box")
    return np.full((size, size), 1.0 / (size * size))


def gaussian(size: int = 5, sigma: float | None = None) -> np.ndarray:
    """The size x size Gaussian blur, normalised to sum 1; sigma defaults to OpenCV's rule."""
    _check_size(size, "gaussian")
    if sigma is None:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8  # cv2.getGaussianKernel's default
    if not (math.isfinite(sigma) and sigma > 0):
        raise CnnlabError(f"gaussian sigma must be a positive number, not {sigma}")
    offsets = np.arange(size) - (size - 1) / 2
    profile = np.exp(-0.5 * (offsets / sigma) ** 2)
    profile /= profile.sum()
    return np.outer(profile, profile)


def _check_size(size: int, name: str) -> None:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise CnnlabError(f"{name} size must be an integer >= 1, not {size!r}")
    if size > MAX_KERNEL_SIDE:
        raise CnnlabError(f"{name} size {size}: at most {MAX_KERNEL_SIDE}")


@dataclass(frozen=True)
class NamedKernel:
    """A kernel in the catalogue: its matrix (as a convolution kernel) and what it does."""

    matrix: tuple[tuple[float, ...], ...]
    description: str

    def array(self) -> np.ndarray:
        return np.array(self.matrix, dtype=np.float64)


KERNELS: dict[str, NamedKernel] = {
    "identity": NamedKernel(((0, 0, 0), (0, 1, 0), (0, 0, 0)), "leaves the image unchanged"),
    "laplacian8": NamedKernel(
        ((-1, -1, -1), (-1, 8, -1), (-1, -1, -1)),
        "the report's first kernel: 8-neighbour Laplacian (negated), sums to 0, an edge/outline "
        "detector; flat regions become 0",
    ),
    "laplacian4": NamedKernel(
        ((0, -1, 0), (-1, 4, -1), (0, -1, 0)),
        "4-neighbour Laplacian (negated), sums to 0: edges without the diagonals",
    ),
    "laplacian4-boost": NamedKernel(
        ((0, -1, 0), (-1, 8, -1), (0, -1, 0)),
        "the report's second kernel: 4 x the image plus its 4-neighbour Laplacian edges (sums to "
        "4, a high-boost filter); bright regions saturate when clipped",
    ),
    "sharpen": NamedKernel(
        ((0, -1, 0), (-1, 5, -1), (0, -1, 0)),
        "the image plus its 4-neighbour Laplacian edges (sums to 1)",
    ),
    "sobel-x": NamedKernel(
        ((1, 0, -1), (2, 0, -2), (1, 0, -1)),
        "Sobel horizontal gradient: positive where brightness grows to the right (convolution)",
    ),
    "sobel-y": NamedKernel(
        ((1, 2, 1), (0, 0, 0), (-1, -2, -1)),
        "Sobel vertical gradient: positive where brightness grows downwards (convolution)",
    ),
    "emboss": NamedKernel(
        ((-2, -1, 0), (-1, 1, 1), (0, 1, 2)),
        "relief lit from the top left (sums to 1)",
    ),
}
_PARAMETRIC = {
    "box": "box[:SIZE] mean filter, SIZE default 3 (e.g. box:5)",
    "gaussian": "gaussian[:SIZE[:SIGMA]] Gaussian blur, default 5 (e.g. gaussian:7:1.5)",
}


def kernel_names() -> list[str]:
    """Every name `parse_kernel` accepts, the parametric ones with their syntax."""
    return [*KERNELS, "box[:SIZE]", "gaussian[:SIZE[:SIGMA]]"]


def parse_kernel(spec: str) -> tuple[str, np.ndarray]:
    """(short name, float64 kernel) from a name, a numeric literal, or a .npy/.txt file."""
    text = spec.strip()
    if text.startswith(("[", "(")):
        return "literal", _parse_literal(text)
    lowered = text.lower()
    if lowered in KERNELS:
        return lowered, KERNELS[lowered].array()
    family, _, parameters = lowered.partition(":")
    if family in _PARAMETRIC:
        return _parametric_kernel(family, parameters, spec)
    path = Path(text)
    if path.suffix.lower() in (".npy", ".txt"):
        return path.stem, _load_kernel_file(path)
    raise CnnlabError(
        f"unknown kernel {spec!r}; known kernels: {', '.join(kernel_names())}; or give a literal "
        "like '[[0,-1,0],[-1,8,-1],[0,-1,0]]' or a .npy/.txt file"
    )


def _parametric_kernel(family: str, parameters: str, spec: str) -> tuple[str, np.ndarray]:
    fields = [field for field in parameters.split(":") if field] if parameters else []
    limit = 2 if family == "gaussian" else 1
    try:
        if len(fields) > limit:
            raise ValueError
        size = int(fields[0]) if fields else (5 if family == "gaussian" else 3)
        sigma = float(fields[1]) if len(fields) > 1 else None
    except ValueError:
        raise CnnlabError(f"cannot read kernel {spec!r}; expected {_PARAMETRIC[family]}") from None
    if family == "box":
        return f"box{size}", box(size)
    kernel = gaussian(size, sigma)
    name = f"gaussian{size}" if sigma is None else f"gaussian{size}-{sigma:g}"
    return name, kernel


def check_npy_size(path: Path, max_items: int, what: str) -> None:
    """Refuse a .npy file whose header declares more than `max_items` or more than it holds
    (and anything but a regular file: a FIFO would never end)."""
    if not path.exists():
        raise CnnlabError(f"{what} {path} does not exist")
    largest = max_items * 16 + (1 << 16)  # complex128 values after a header
    try:
        with atomic.open_regular(path, largest, f"a {what}") as handle:
            version = np.lib.format.read_magic(handle)
            header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = header(handle)
            offset = handle.tell()
    except FileNotFoundError:
        raise CnnlabError(f"{what} {path} does not exist") from None
    except (OSError, ValueError, SyntaxError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "bad header"
        raise CnnlabError(f"cannot read {what} {path}: {first}") from None
    items = math.prod(shape)
    if items > max_items:
        raise CnnlabError(f"{what} {path} declares {shape}: more than {max_items:,} values")
    if offset + items * dtype.itemsize > path.stat().st_size:
        raise CnnlabError(f"{what} {path} declares {shape} but the file is shorter (truncated)")


def _parse_literal(text: str) -> np.ndarray:
    if len(text) > MAX_LITERAL_CHARACTERS:
        raise CnnlabError(
            f"kernel literal of {len(text):,} characters; at most {MAX_LITERAL_CHARACTERS:,}"
            " (use a .npy or .txt file)"
        )
    try:
        value = json.loads(text)
    except RecursionError:
        raise CnnlabError("kernel literal nested too deeply; expected a matrix") from None
    except ValueError:
        try:
            value = ast.literal_eval(text)  # also accepts Python spellings; never eval()
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise CnnlabError(
                f"cannot read kernel literal {text!r}; expected a matrix like [[0,-1,0],[-1,8,-1]]"
            ) from None
    rows = value if isinstance(value, list | tuple) else None
    if (
        not rows
        or not all(isinstance(row, list | tuple) and row for row in rows)
        or len({len(row) for row in rows}) != 1
        or not all(
            isinstance(entry, int | float) and not isinstance(entry, bool)
            for row in rows
            for entry in row
        )
    ):
        raise CnnlabError(
            f"kernel literal {text!r} is not a numeric matrix; expected equal-length rows of "
            "numbers like [[0,-1,0],[-1,8,-1],[0,-1,0]]"
        )
    kernel = np.array(rows, dtype=np.float64)
    if not np.isfinite(kernel).all():
        raise CnnlabError(f"kernel literal {text!r} contains NaN or inf")
    return kernel


def _load_kernel_file(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            check_npy_size(path, MAX_KERNEL_SIDE**2 * 4, "kernel file")
            kernel = np.load(path, allow_pickle=False)
        else:
            text = atomic.read_regular(path, MAX_KERNEL_TEXT_BYTES, "a kernel file of text")
            kernel = np.loadtxt(io.BytesIO(text), ndmin=2, dtype=np.float64)
    except FileNotFoundError:
        raise CnnlabError(f"kernel file {path} does not exist") from None
    except (OSError, ValueError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CnnlabError(f"cannot read kernel file {path}: {first_line}") from None
    if kernel.dtype.kind not in "biuf":
        raise CnnlabError(f"kernel file {path} holds {kernel.dtype}, not real numbers")
    kernel = kernel.astype(np.float64)
    if kernel.ndim not in (2, 3) or kernel.size == 0:
        raise CnnlabError(
            f"kernel file {path} holds a {kernel.shape} array; expected kh x kw or kh x kw x C"
        )
    if not np.isfinite(kernel).all():
        raise CnnlabError(f"kernel file {path} contains NaN or inf")
    return kernel
