"""Two-dimensional convolution written by hand in NumPy: the seed study's part 1, done right.

Three implementations of one definition:

* `correlate2d_loop` / `convolve2d_loop`: plain Python loops over every output pixel and every
  kernel tap, written to be read. The tests hold the fast paths to it.
* the direct method: one vectorised 1-D `np.correlate` per kernel row over the flattened padded
  image (no Python loop over pixels), or two 1-D passes when the kernel is separable.
* the FFT method: `numpy.fft.rfft2` on smooth (2·3·5·7·11) sizes, for large kernels.

`method="auto"` picks the cheaper of the two fast methods from a cost model measured on this
project's development machine (see `_DIRECT_NS_PER_TAP` and friends).

Conventions (all identical to `scipy.signal.convolve2d` / `correlate2d`):

* Convolution flips the kernel, correlation does not: ``convolve2d(x, k) == correlate2d(x,
  k[::-1, ::-1])`` in "full" and "valid" mode. The seed report's loop computed a correlation.
* The kernel's centre is the entry at ``((kh - 1) // 2, (kw - 1) // 2)`` of the kernel *as
  written*, for both functions: in "same" mode that entry multiplies the output pixel's own input
  pixel. For odd sizes this is the middle; for even sizes it is the upper-left of the middle four.
  (`scipy.ndimage` puts an even kernel's centre at ``k // 2`` instead, one further down-right.)
* mode "full" is (H + kh - 1) x (W + kw - 1), "same" is H x W, "valid" is (H - kh + 1) x
  (W - kw + 1), all before the stride.
* stride s keeps outputs 0, s, 2s, ... of the stride-1 result along each axis, which is what
  `torch.nn.functional.conv2d(..., stride=s)` computes with the matching padding.
* boundary, i.e. what lies outside the image (a b c d are the first pixels of a row):

  ========== ================ ===================== ==================== ================
  cnnlab     looks like        numpy.pad mode        scipy.signal         scipy.ndimage
  ========== ================ ===================== ==================== ================
  fill       v v v | a b c d   constant (fillvalue)  fill                 constant (cval)
  reflect    d c b | a b c d   reflect               (none)               mirror
  symmetric  c b a | a b c d   symmetric             symm                 reflect
  wrap       (end) | a b c d   wrap                  wrap                 grid-wrap / wrap
  ========== ================ ===================== ==================== ================

Images are 2-D (H x W) or H x W x C. A 2-D kernel filters each channel of an H x W x C image
separately (the result is H' x W' x C); a kh x kw x C kernel is applied to all channels and
summed over them, like one filter of a convolutional layer (the result is 2-D). Results are
float64.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError

MODES = ("same", "valid", "full")
BOUNDARIES = ("fill", "reflect", "symmetric", "wrap")
METHODS = ("auto", "direct", "fft")

_NUMPY_PAD_MODE = {"reflect": "reflect", "symmetric": "symmetric", "wrap": "wrap"}

# NumPy's `np.correlate` runs kernels of up to 11 taps through an unrolled, vectorised loop
# (`small_correlate`); longer ones fall back to one dot product per output, ~3x slower per tap.
# Measured per tap: 0.19 ns up to 10 taps, 0.26 ns at 11, ~0.6 ns from 12 on; so long kernel rows
# are split into balanced chunks of at most 10 taps.
_CORRELATE_CHUNK = 10
# Rows are processed in blocks of about this many samples (256 KiB of float64, inside L2):
# 3 x 3 on 1024 x 1024 takes ~3.9 ms blocked and ~6.5 ms unblocked.
_BLOCK_SAMPLES = 32_768

# Cost model for method="auto", fitted to timings of both methods on 64^2 .. 1024^2 float64 images
# and 3 x 3 .. 31 x 31 kernels on a 2-core AMD EPYC (Zen 4) with NumPy 2.4:
_DIRECT_NS_PER_TAP = 0.19  # one kernel tap over one (padded-width) sample, np.correlate
_DIRECT_NS_PER_CHUNK = 0.45  # adding one chunk's correlation into the block, per sample
_DIRECT_NS_PER_VERTICAL_TAP = 0.45  # one tap of a separable kernel's vertical pass, per sample
_DIRECT_NS_PER_CALL = 3_000.0  # one np.correlate call on a block (Python and allocation)
_DIRECT_OVERHEAD_NS = 20_000.0  # validation, padding
_FFT_NS_PER_POINT_LOG2 = 0.43  # one rfft2 or irfft2 over N1 x N2 points, per N1 N2 log2(N1 N2)
_FFT_OVERHEAD_NS = 60_000.0  # planning, padding, slicing
# Measured crossover for dense kernels: on 1024^2 between 9 x 9 (direct 21 ms, FFT 30 ms) and
# 11 x 11 (32 ms, 31 ms); on 256^2 and 64^2 near 9 x 9. A separable 31 x 31 Gaussian stays
# direct on 1024^2 (22 ms against 29 ms by FFT).


# --- the readable reference ---------------------------------------------------------------------


def _source_index(index: int, size: int, boundary: str) -> int | None:
    """Which input index stands at `index` (possibly outside 0..size-1); None means fill."""
    if 0 <= index < size:
        return index
    if boundary == "fill":
        return None
    if boundary == "wrap":
        return index % size
    if boundary == "symmetric":  # c b a | a b c | c b a: the period is 2 * size
        index %= 2 * size
        return index if index < size else 2 * size - 1 - index
    # reflect, d c b | a b c d | c b a: the edge pixel is not repeated, the period is 2 * size - 2
    if size == 1:
        return 0
    index %= 2 * size - 2
    return index if index < size else 2 * size - 2 - index


def correlate2d_loop(
    image: np.ndarray,
    kernel: np.ndarray,
    mode: str = "same",
    boundary: str = "fill",
    fillvalue: float = 0.0,
    stride: int = 1,
) -> np.ndarray:
    """Cross-correlation with plain loops, pixel by pixel: the teaching reference (slow)."""
    image, kernel = _check_arguments(image, kernel, mode, boundary, fillvalue, stride)
    if image.ndim == 3:
        return _per_channel(correlate2d_loop, image, kernel, mode, boundary, fillvalue, stride)
    return _slide(image, kernel, mode, boundary, fillvalue, stride, flipped=False)


def convolve2d_loop(
    image: np.ndarray,
    kernel: np.ndarray,
    mode: str = "same",
    boundary: str = "fill",
    fillvalue: float = 0.0,
    stride: int = 1,
) -> np.ndarray:
    """Convolution with plain loops: flip the kernel, then slide it (the teaching reference)."""
    image, kernel = _check_arguments(image, kernel, mode, boundary, fillvalue, stride)
    if image.ndim == 3:
        return _per_channel(convolve2d_loop, image, kernel, mode, boundary, fillvalue, stride)
    return _slide(image, kernel[::-1, ::-1], mode, boundary, fillvalue, stride, flipped=True)


def _slide(
    image: np.ndarray,
    kernel: np.ndarray,
    mode: str,
    boundary: str,
    fillvalue: float,
    stride: int,
    flipped: bool,
) -> np.ndarray:
    """Slide `kernel` over a 2-D `image`: each output is a sum of kernel x pixels underneath."""
    height, width = image.shape
    kernel_height, kernel_width = kernel.shape
    # How far the kernel's top-left tap lies above / left of the output pixel's own input pixel.
    # A flipped even-sized kernel has its centre one step further down / right.
    top, _ = _padding(kernel_height, mode, flipped)
    left, _ = _padding(kernel_width, mode, flipped)
    out_height, out_width = _output_size(image.shape, kernel.shape, mode, stride)
    out = np.zeros((out_height, out_width))
    for out_row in range(out_height):
        for out_col in range(out_width):
            total = 0.0
            for i in range(kernel_height):
                for j in range(kernel_width):
                    row = _source_index(out_row * stride + i - top, height, boundary)
                    col = _source_index(out_col * stride + j - left, width, boundary)
                    pixel = fillvalue if row is None or col is None else image[row, col]
                    total += kernel[i, j] * pixel
            out[out_row, out_col] = total
    return out


# --- the fast public functions ------------------------------------------------------------------


def correlate2d(
    image: np.ndarray,
    kernel: np.ndarray,
    mode: str = "same",
    boundary: str = "fill",
    fillvalue: float = 0.0,
    stride: int = 1,
    method: str = "auto",
) -> np.ndarray:
    """Cross-correlation (kernel not flipped), matching scipy.signal.correlate2d, fast."""
    return _filter(image, kernel, mode, boundary, fillvalue, stride, method, flip=False)


def convolve2d(
    image: np.ndarray,
    kernel: np.ndarray,
    mode: str = "same",
    boundary: str = "fill",
    fillvalue: float = 0.0,
    stride: int = 1,
    method: str = "auto",
) -> np.ndarray:
    """Convolution (kernel flipped), matching scipy.signal.convolve2d, fast."""
    return _filter(image, kernel, mode, boundary, fillvalue, stride, method, flip=True)


def choose_method(image_shape: tuple[int, ...], kernel: np.ndarray, mode: str = "same") -> str:
    """The method "auto" uses for these shapes: "direct" or "fft", by the measured cost model."""
    kernel = np.asarray(kernel, dtype=np.float64)
    channels = image_shape[2] if len(image_shape) == 3 else 1
    out_height, out_width = _output_size(image_shape, kernel.shape, mode, 1)
    padded_height = out_height + kernel.shape[0] - 1
    padded_width = out_width + kernel.shape[1] - 1
    samples = out_height * padded_width
    blocks = -(-out_height // max(1, _BLOCK_SAMPLES // padded_width))
    if kernel.ndim == 2 and _separable(kernel) is not None:
        per_sample = _DIRECT_NS_PER_VERTICAL_TAP * kernel.shape[0] + _row_cost(kernel[0])
        calls = len(_chunk_bounds(kernel.shape[1]))
        direct_ns = channels * (samples * per_sample + blocks * calls * _DIRECT_NS_PER_CALL)
    else:
        # A 2-D kernel runs once per channel; a 3-D one has one 2-D slice per channel.
        slices = [kernel] * channels if kernel.ndim == 2 else np.moveaxis(kernel, 2, 0)
        rows = [row for piece in slices for row in piece if row.any()]
        calls = sum(len(_chunk_bounds(row.size)) for row in rows)
        direct_ns = samples * sum(_row_cost(row) for row in rows)
        direct_ns += blocks * calls * _DIRECT_NS_PER_CALL
    direct_ns += _DIRECT_OVERHEAD_NS
    grid = _next_fast_length(padded_height) * _next_fast_length(padded_width)
    transforms = 2 * channels + 1  # forward per channel, the kernel's, inverse per channel
    fft_ns = _FFT_NS_PER_POINT_LOG2 * grid * math.log2(max(grid, 2)) * transforms
    fft_ns += _FFT_OVERHEAD_NS
    return "direct" if direct_ns <= fft_ns else "fft"


def _row_cost(taps: np.ndarray) -> float:
    """Nanoseconds per sample of the direct method for one kernel row."""
    nonzero = np.count_nonzero(taps)
    if nonzero == 0:
        return 0.0
    chunks = math.ceil(taps.size / _CORRELATE_CHUNK)
    return _DIRECT_NS_PER_TAP * nonzero + _DIRECT_NS_PER_CHUNK * chunks


# --- implementation -----------------------------------------------------------------------------


def _filter(
    image: np.ndarray,
    kernel: np.ndarray,
    mode: str,
    boundary: str,
    fillvalue: float,
    stride: int,
    method: str,
    flip: bool,
) -> np.ndarray:
    image, kernel = _check_arguments(image, kernel, mode, boundary, fillvalue, stride)
    if method not in METHODS:
        raise CnnlabError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if flip:
        kernel = kernel[::-1, ::-1]
    if method == "auto":
        method = choose_method(image.shape, kernel, mode)
        if method == "fft" and not np.isfinite(image).all():
            method = "direct"  # an FFT would smear one NaN or inf over the whole result
    elif method == "fft" and not np.isfinite(image).all():
        raise CnnlabError("method 'fft' needs a finite image; it contains NaN or inf")
    pads = [
        _padding(size, mode, flipped=flip)
        for size in kernel.shape[:2]  # (before, after) per axis
    ]
    # One extra row at the bottom lets the direct method read every kernel row as one flat
    # stretch of memory; what it holds only reaches output columns that are thrown away.
    pad_width = [(pads[0][0], pads[0][1] + 1), pads[1]] + [(0, 0)] * (image.ndim - 2)
    if boundary == "fill":
        padded = np.pad(image, pad_width, mode="constant", constant_values=fillvalue)
    else:
        padded = np.pad(image, pad_width, mode=_NUMPY_PAD_MODE[boundary])
    if image.ndim == 3:
        padded = np.ascontiguousarray(np.moveaxis(padded, 2, 0))  # channels first: C x Hp x Wp
    else:
        padded = padded[np.newaxis]
    if method == "fft":
        result = _fft_valid(padded, kernel, stride)
    else:
        result = _direct_valid(padded, kernel, stride)
    if image.ndim == 3 and kernel.ndim == 2:
        return np.ascontiguousarray(np.moveaxis(result, 0, 2))
    return result[0]


def _direct_valid(padded: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """Valid correlation of each C x (Hp + 1) x Wp channel; a 3-D kernel sums over channels."""
    if kernel.ndim == 2:
        results = [_direct_valid_2d(channel, kernel, stride) for channel in padded]
        return results[0][np.newaxis] if len(results) == 1 else np.stack(results)
    total = _direct_valid_2d(padded[0], kernel[:, :, 0], stride)
    for channel in range(1, padded.shape[0]):
        total += _direct_valid_2d(padded[channel], kernel[:, :, channel], stride)
    return total[np.newaxis]


def _direct_valid_2d(padded: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """Valid correlation of one (Hp + 1) x Wp array (last row is slack) with a 2-D kernel.

    Flattened, image row r starts at r * Wp, so one 1-D correlation of a kernel row over a
    stretch of the flat array handles many image rows at once; positions past Wp - kw in each
    row mix two image rows and are dropped at the end. Rows go in blocks small enough to stay in
    the CPU's L2 cache. Output row r depends only on padded rows >= r, so each finished block is
    written over `padded` itself (which is overwritten): no second image-sized allocation.
    """
    kernel_height, kernel_width = kernel.shape
    rows_with_slack, padded_width = padded.shape
    out_height = (rows_with_slack - 1 - kernel_height) // stride + 1
    out_width = (padded_width - kernel_width) // stride + 1
    flat = padded.reshape(-1)
    factors = _separable(kernel)
    block_rows = max(1, _BLOCK_SAMPLES // padded_width)
    scratch = np.empty(block_rows * padded_width)
    stretch_buffer = np.zeros(block_rows * padded_width + kernel_width - 1)
    for first_row in range(0, out_height, block_rows):
        rows = min(block_rows, out_height - first_row)
        samples = rows * padded_width
        block = scratch[:samples]
        stretch = stretch_buffer[: samples + kernel_width - 1]
        if factors is not None:
            column, row_taps = factors
            vertical = stretch[:samples].reshape(rows, padded_width)
            for i, weight in enumerate(column):
                top = first_row * stride + i
                source = padded[top : top + (rows - 1) * stride + 1 : stride]
                if i == 0:
                    np.multiply(source, weight, out=vertical)
                elif weight != 0.0:
                    vertical += source * weight
            _correlate_into(block, stretch, row_taps, accumulate=False)
        else:
            accumulate = False
            for i in range(kernel_height):
                if not kernel[i].any():
                    continue
                top = first_row * stride + i
                if stride == 1:
                    stretch = flat[top * padded_width : (top + rows) * padded_width + kernel_width]
                else:
                    stretch[:samples].reshape(rows, padded_width)[:] = padded[
                        top : top + (rows - 1) * stride + 1 : stride
                    ]
                _correlate_into(block, stretch, kernel[i], accumulate)
                accumulate = True
            if not accumulate:
                block[:] = 0.0
        flat[first_row * padded_width : first_row * padded_width + samples] = block
    return padded[:out_height, : (out_width - 1) * stride + 1 : stride]


def _correlate_into(block: np.ndarray, stretch: np.ndarray, taps: np.ndarray, accumulate: bool):
    """Set or add the 1-D valid correlation of `stretch` with `taps` into `block`, in chunks."""
    for start, stop in _chunk_bounds(taps.size):
        chunk = taps[start:stop]
        if not chunk.any():
            continue
        part = np.correlate(stretch[start : start + block.size + chunk.size - 1], chunk, "valid")
        if accumulate:
            block += part
        else:
            block[:] = part
            accumulate = True
    if not accumulate:
        block[:] = 0.0


def _chunk_bounds(size: int) -> list[tuple[int, int]]:
    """Balanced (start, stop) pieces of a kernel row, none longer than _CORRELATE_CHUNK taps."""
    chunks = -(-size // _CORRELATE_CHUNK)
    bounds = [round(size * index / chunks) for index in range(chunks + 1)]
    return list(itertools.pairwise(bounds))


def _fft_valid(padded: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
    """Valid correlation by FFT of each channel; a 3-D kernel sums over channels."""
    kernel_height, kernel_width = kernel.shape[:2]
    padded = padded[:, :-1]  # the FFT needs no slack row
    _, padded_height, padded_width = padded.shape
    # A circular convolution of length N >= Hp leaves every valid output untouched by wrap-around.
    shape = (_next_fast_length(padded_height), _next_fast_length(padded_width))
    spectrum = np.fft.rfft2(padded, s=shape)
    # Correlation is convolution with the flipped kernel.
    flipped = kernel[::-1, ::-1]
    if kernel.ndim == 2:
        spectrum *= np.fft.rfft2(flipped, s=shape)
    else:
        kernel_spectrum = np.fft.rfft2(np.moveaxis(flipped, 2, 0), s=shape)
        spectrum = (spectrum * kernel_spectrum).sum(axis=0, keepdims=True)
    full = np.fft.irfft2(spectrum, s=shape)
    out_height = (padded_height - kernel_height) // stride + 1
    out_width = (padded_width - kernel_width) // stride + 1
    rows = slice(kernel_height - 1, kernel_height - 1 + (out_height - 1) * stride + 1, stride)
    cols = slice(kernel_width - 1, kernel_width - 1 + (out_width - 1) * stride + 1, stride)
    return np.ascontiguousarray(full[:, rows, cols])


def _separable(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(column, row) with outer(column, row) == kernel to rounding, or None if rank > 1."""
    if kernel.ndim != 2 or min(kernel.shape) == 1 or not kernel.any():
        return None
    i, j = np.unravel_index(np.argmax(np.abs(kernel)), kernel.shape)
    column = kernel[:, j] / kernel[i, j]
    row = kernel[i, :]
    error = np.abs(np.outer(column, row) - kernel).max()
    # A few ulps of the largest tap: far below the 1e-10 relative the tests demand.
    if error > 4 * np.finfo(np.float64).eps * abs(kernel[i, j]):
        return None
    return column, row


def _next_fast_length(size: int) -> int:
    """The smallest n >= size whose prime factors are 2, 3, 5, 7, 11 (fast for pocketfft)."""
    candidate = size
    while True:
        remainder = candidate
        for prime in (2, 3, 5, 7, 11):
            while remainder % prime == 0:
                remainder //= prime
        if remainder == 1:
            return candidate
        candidate += 1


def _padding(kernel_size: int, mode: str, flipped: bool) -> tuple[int, int]:
    """(before, after) padding so a valid correlation gives the `mode` output (scipy's offsets)."""
    if mode == "valid":
        return 0, 0
    if mode == "full":
        return kernel_size - 1, kernel_size - 1
    # same: the centre tap (kernel_size - 1) // 2 of the kernel as written meets the output
    # pixel's own input pixel; flipping moves that tap to kernel_size // 2.
    before = kernel_size // 2 if flipped else (kernel_size - 1) // 2
    return before, kernel_size - 1 - before


def _output_size(
    image_shape: tuple[int, ...], kernel_shape: tuple[int, ...], mode: str, stride: int
) -> tuple[int, int]:
    sizes = []
    for image_size, kernel_size in zip(image_shape[:2], kernel_shape[:2], strict=True):
        before, after = _padding(kernel_size, mode, flipped=False)
        full = image_size + before + after - kernel_size + 1
        sizes.append((full - 1) // stride + 1)
    return sizes[0], sizes[1]


def _per_channel(
    function: Callable[..., np.ndarray],
    image: np.ndarray,
    kernel: np.ndarray,
    mode: str,
    boundary: str,
    fillvalue: float,
    stride: int,
) -> np.ndarray:
    """Apply a 2-D `function` per channel; a 3-D kernel is summed over channels."""
    channels = image.shape[2]
    if kernel.ndim == 3:
        results = [
            function(image[:, :, c], kernel[:, :, c], mode, boundary, fillvalue, stride)
            for c in range(channels)
        ]
        return np.sum(results, axis=0)
    results = [
        function(image[:, :, c], kernel, mode, boundary, fillvalue, stride) for c in range(channels)
    ]
    return np.stack(results, axis=2)


def _as_real_array(values: object, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise CnnlabError(f"the {what} must hold real numbers, not {array.dtype}")
    return array.astype(np.float64, copy=False)


def _check_arguments(
    image: np.ndarray,
    kernel: np.ndarray,
    mode: str,
    boundary: str,
    fillvalue: float,
    stride: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 image and kernel, or a one-line CnnlabError."""
    image = _as_real_array(image, "image")
    kernel = _as_real_array(kernel, "kernel")
    if mode not in MODES:
        raise CnnlabError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if boundary not in BOUNDARIES:
        raise CnnlabError(f"unknown boundary {boundary!r}; choose one of {', '.join(BOUNDARIES)}")
    if image.ndim not in (2, 3):
        raise CnnlabError(
            f"the image must be 2-D (H x W) or 3-D (H x W x C), not {image.ndim}-D {image.shape}"
        )
    if image.size == 0:
        raise CnnlabError(f"the image is empty (shape {image.shape})")
    if kernel.ndim not in (2, 3) or kernel.size == 0:
        raise CnnlabError(
            f"the kernel must be a non-empty 2-D (kh x kw) or kh x kw x C array, not {kernel.shape}"
        )
    if kernel.ndim == 3 and (image.ndim != 3 or kernel.shape[2] != image.shape[2]):
        raise CnnlabError(
            f"a kh x kw x C kernel {kernel.shape} needs an H x W x C image with the same C, "
            f"not {image.shape}"
        )
    if not np.isfinite(kernel).all():
        raise CnnlabError("the kernel contains NaN or inf")
    if not math.isfinite(float(fillvalue)):
        raise CnnlabError(f"fillvalue must be finite, not {fillvalue}")
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 1:
        raise CnnlabError(f"stride must be an integer >= 1, not {stride!r}")
    if mode == "valid" and (kernel.shape[0] > image.shape[0] or kernel.shape[1] > image.shape[1]):
        raise CnnlabError(
            f"the kernel ({kernel.shape[0]} x {kernel.shape[1]}) is larger than the image "
            f"({image.shape[0]} x {image.shape[1]}) in valid mode; use mode same or full"
        )
    return image, kernel


# --- named kernels ------------------------------------------------------------------------------


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


def describe_kernels() -> list[tuple[str, str]]:
    """(name, description) of every catalogue kernel, for help texts."""
    listed = [(name, kernel.description) for name, kernel in KERNELS.items()]
    return listed + list(_PARAMETRIC.items())


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


def _parse_literal(text: str) -> np.ndarray:
    try:
        value = json.loads(text)
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
            kernel = np.load(path, allow_pickle=False)
        else:
            kernel = np.loadtxt(path, ndmin=2, dtype=np.float64)
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
