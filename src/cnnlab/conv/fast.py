"""The fast paths of `cnnlab.conv.convolve`: exact integers, complex by parts, direct and FFT.

`conv` validates the arguments with SciPy's rules into a `Problem`; `compute` gives its result.
The direct method runs one vectorised `np.correlate` per kernel row over the flattened padded
image in cache-sized blocks (two 1-D passes for separable kernels); the FFT method uses
`numpy.fft` on 2·3·5·7·11-smooth sizes; `row_cost` and the constants below are the cost model
that `conv.choose_method` applies.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from cnnlab.errors import CnnlabError

# Integer inputs are computed in float64 while max |value| x sum |kernel| stays below this: every
# product and partial sum is then an integer below 2**53, so exact (the factor 2 covers the
# rounding of the bound itself).
_EXACT_FLOAT_BOUND = 2.0**52

# NumPy's `np.correlate` runs kernels of up to 11 taps through an unrolled, vectorised loop
# (`small_correlate`); longer ones fall back to one dot product per output, ~3x slower per tap.
# Measured per tap: 0.19 ns up to 10 taps, 0.26 ns at 11, ~0.6 ns from 12 on; so long kernel rows
# are split into balanced chunks of at most 10 taps.
_CORRELATE_CHUNK = 10
# Rows are processed in blocks of about this many samples (256 KiB of float64, inside L2):
# 3 x 3 on 1024 x 1024 takes ~3.9 ms blocked and ~6.5 ms unblocked.
BLOCK_SAMPLES = 32_768

# Cost model for method="auto", fitted to timings of both methods on 64^2 .. 1024^2 float64 images
# and 3 x 3 .. 31 x 31 kernels on a 2-core AMD EPYC (Zen 4) with NumPy 2.4:
DIRECT_NS_PER_TAP = 0.19  # one kernel tap over one (padded-width) sample, np.correlate
_DIRECT_NS_PER_CHUNK = 0.45  # adding one chunk's correlation into the block, per sample
DIRECT_NS_PER_VERTICAL_TAP = 0.45  # one tap of a separable kernel's vertical pass, per sample
DIRECT_NS_PER_CALL = 3_000.0  # one np.correlate call on a block (Python and allocation)
DIRECT_OVERHEAD_NS = 20_000.0  # validation, padding
FFT_NS_PER_POINT_LOG2 = 0.43  # one rfft2 or irfft2 over N1 x N2 points, per N1 N2 log2(N1 N2)
FFT_OVERHEAD_NS = 60_000.0  # planning, padding, slicing
# Measured crossover for dense kernels: on 1024^2 between 9 x 9 (direct 21 ms, FFT 30 ms) and
# 11 x 11 (32 ms, 31 ms); on 256^2 and 64^2 near 9 x 9. A separable 31 x 31 Gaussian stays
# direct on 1024^2 (22 ms against 29 ms by FFT).


NUMPY_PAD_MODE = {"reflect": "reflect", "symmetric": "symmetric", "wrap": "wrap"}


@dataclass(frozen=True)
class Problem:
    """Validated arguments: correlate `taps` over `image`, both already in the result dtype."""

    image: np.ndarray  # H x W, or H x W x C for the channel functions
    taps: np.ndarray  # kh x kw [x C]: the correlation kernel (flipped for a convolution)
    mode: str
    boundary: str  # one of BOUNDARIES
    fill: np.generic  # the fillvalue in the result dtype (zero unless boundary is fill)
    stride: int
    flipped: bool  # a convolution: "same" mode centres the flipped kernel at k // 2
    dtype: np.dtype  # the result's


def work_type(dtype: np.dtype) -> type[np.generic]:
    """What floating and complex inputs are computed in: 64-bit floats, or long double ones."""
    if dtype.kind == "c":
        return np.complex128 if dtype.itemsize <= 16 else np.clongdouble
    return np.float64 if dtype.itemsize <= 8 else np.longdouble


def choose_method(image_shape: tuple[int, ...], kernel: object, mode: str = "full") -> str:
    """The method "auto" uses for finite floating inputs: "direct" or "fft", by the cost model."""
    kernel = np.asarray(kernel)
    kernel = np.abs(kernel) if kernel.dtype.kind == "c" else kernel.astype(np.float64, copy=False)
    channels = image_shape[2] if len(image_shape) == 3 else 1
    out_height, out_width = output_size(image_shape, kernel.shape, mode, 1)
    padded_height = out_height + kernel.shape[0] - 1
    padded_width = out_width + kernel.shape[1] - 1
    samples = out_height * padded_width
    blocks = -(-out_height // max(1, BLOCK_SAMPLES // max(padded_width, 1)))
    if kernel.ndim == 2 and separable(kernel) is not None:
        per_sample = DIRECT_NS_PER_VERTICAL_TAP * kernel.shape[0] + row_cost(kernel[0])
        calls = len(chunk_bounds(kernel.shape[1]))
        direct_ns = channels * (samples * per_sample + blocks * calls * DIRECT_NS_PER_CALL)
    else:
        # A 2-D kernel runs once per channel; a 3-D one has one 2-D slice per channel.
        slices = [kernel] * channels if kernel.ndim == 2 else np.moveaxis(kernel, 2, 0)
        rows = [row for piece in slices for row in piece if row.any()]
        calls = sum(len(chunk_bounds(row.size)) for row in rows)
        direct_ns = samples * sum(row_cost(row) for row in rows)
        direct_ns += blocks * calls * DIRECT_NS_PER_CALL
    direct_ns += DIRECT_OVERHEAD_NS
    grid = next_fast_length(padded_height) * next_fast_length(padded_width)
    transforms = 2 * channels + 1  # forward per channel, the kernel's, inverse per channel
    fft_ns = FFT_NS_PER_POINT_LOG2 * grid * math.log2(max(grid, 2)) * transforms
    fft_ns += FFT_OVERHEAD_NS
    return "direct" if direct_ns <= fft_ns else "fft"


def row_cost(taps: np.ndarray) -> float:
    """Nanoseconds per sample of the direct method for one kernel row."""
    nonzero = np.count_nonzero(taps)
    if nonzero == 0:
        return 0.0
    chunks = math.ceil(taps.size / _CORRELATE_CHUNK)
    return DIRECT_NS_PER_TAP * nonzero + _DIRECT_NS_PER_CHUNK * chunks


def compute(problem: Problem, method: str) -> np.ndarray:
    """The result of a validated problem: integer, floating or complex, by `method`."""
    shape = output_shape(problem)
    if 0 in shape or problem.taps.size == 0:  # an empty sum is 0, whatever the fill
        return np.zeros(shape, problem.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        if problem.dtype.kind in "iu":
            return _integer(problem)
        work = np.dtype(work_type(problem.dtype)(0).real.dtype)  # float64 or longdouble
        if problem.dtype.kind == "f":
            taps = problem.taps.astype(work, copy=False)
            result = _real(problem, problem.image, taps, problem.fill, method)
            return _cast(result, problem.dtype)
        return _complex(problem, shape, work, method)


def output_shape(problem: Problem) -> tuple[int, ...]:
    """The result's shape; an error where SciPy's C code would divide by zero and crash."""
    image_shape = problem.image.shape
    height, width = output_size(image_shape, problem.taps.shape, problem.mode, problem.stride)
    shape = (height, width)
    if problem.image.ndim == 3 and problem.taps.ndim == 2:
        shape += (image_shape[2],)
    if 0 in image_shape[:2] and 0 not in shape and problem.boundary != "fill":
        raise CnnlabError(
            f"an empty {image_shape[0]} x {image_shape[1]} image cannot be extended with "
            f"boundary {problem.boundary!r}; use boundary 'fill'"
        )
    return shape


def _integer(problem: Problem) -> np.ndarray:
    """Exact integer results, wrapped to the result type like SciPy's C arithmetic."""
    image, taps = problem.image, problem.taps
    largest = abs(int(problem.fill))
    if image.size:
        largest = max(largest, int(image.max()), -int(image.min()))
    taps_sum = float(np.abs(taps.astype(np.float64)).sum())
    if largest * taps_sum < _EXACT_FLOAT_BOUND:
        taps64 = taps.astype(np.float64)
        exact = _real(problem, image, taps64, float(problem.fill), "direct", exact=True)
        result = _cast(exact, np.dtype(np.int64))
    else:
        # int64 arithmetic wraps modulo 2**64, and so agrees with every narrower type's wrapping.
        fill = np.array(problem.fill).astype(np.int64)[()]
        taps64 = taps.astype(np.int64)
        result = _real(problem, image, taps64, fill, "direct", exact=True)
    if problem.dtype.itemsize == 8:  # int64 as it is, uint64 as the same bits
        return result.view(problem.dtype)
    return _cast(result, problem.dtype)


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`values` in `dtype` (integers wrap): assigning into a new array, which for a strided view
    is over ten times faster than `astype`."""
    if values.dtype == dtype:
        return values
    result = np.empty(values.shape, dtype)
    result[...] = values
    return result


def _complex(problem: Problem, shape: tuple[int, ...], work: np.dtype, method: str) -> np.ndarray:
    """(a + ib) x (c + id) = (ac - bd) + i(ad + bc): four real correlations, zero parts skipped."""
    image, taps, fill = problem.image, problem.taps, problem.fill
    image_parts = (image.real, image.imag)  # cast to `work` while padding
    taps_parts = (taps.real.astype(work), taps.imag.astype(work))
    fill_parts = (work.type(fill.real), work.type(fill.imag))
    # A zero part adds nothing only when everything is finite (0 x NaN is NaN).
    finite = _all_finite(image) and _all_finite(taps) and bool(np.isfinite(fill))
    real, imag = np.zeros(shape, work), np.zeros(shape, work)
    terms = [(0, 0, real, 1), (1, 1, real, -1), (0, 1, imag, 1), (1, 0, imag, 1)]
    for image_part, taps_part, target, sign in terms:
        x, h, f = image_parts[image_part], taps_parts[taps_part], fill_parts[image_part]
        if finite and (not h.any() or (not x.any() and f == 0)):
            continue
        part = _real(problem, x, h, f, method)
        if sign > 0:
            target += part
        else:
            target -= part
    result = np.empty(shape, problem.dtype)
    result.real, result.imag = real, imag
    return result


def _all_finite(values: np.ndarray) -> bool:
    """No NaN or inf: a finite sum proves it (an overflowing sum only costs the shortcuts)."""
    if values.dtype.kind in "iu":
        return True
    total = np.sum(values)
    return bool(np.isfinite(total))


def _real(
    problem: Problem,
    image: np.ndarray,
    taps: np.ndarray,
    fill: object,
    method: str,
    exact: bool = False,
) -> np.ndarray:
    """Correlate real `taps` over a real `image` in the taps' dtype (float64, longdouble, int64).

    `exact` (integer inputs): the direct method, zero taps skipped, no separable shortcut.
    """
    mode, boundary, stride = problem.mode, problem.boundary, problem.stride
    if exact:
        method, skip_zeros, use_separable = "direct", True, False
    else:
        taps_finite = bool(np.isfinite(taps).all())
        if method == "auto":
            method = choose_method(image.shape, taps, mode) if taps_finite else "direct"
        skip_zeros = use_separable = True
        shortcuts = method == "fft" or not taps.all() or _any_separable(taps)
        if shortcuts and not (
            taps_finite and (boundary != "fill" or math.isfinite(fill)) and _all_finite(image)
        ):
            # Multiply every tap with every value, as SciPy does, so NaN and inf spread the same.
            method, skip_zeros, use_separable = "direct", False, False
    pads = [padding(size, mode, flipped=problem.flipped) for size in taps.shape[:2]]
    # One extra row at the bottom lets the direct method read every kernel row as one flat
    # stretch of memory; what it holds only reaches output columns that are thrown away.
    pad_width = [(pads[0][0], pads[0][1] + 1), pads[1]] + [(0, 0)] * (image.ndim - 2)
    padded = _pad(image, pad_width, boundary, fill, taps.dtype)
    if image.ndim == 3:
        padded = np.ascontiguousarray(np.moveaxis(padded, 2, 0))  # channels first: C x Hp x Wp
    else:
        padded = padded[np.newaxis]
    if method == "fft":
        result = _fft_valid(padded, taps, stride)
    else:
        result = _direct_valid(padded, taps, stride, skip_zeros, use_separable)
    if image.ndim == 3 and taps.ndim == 2:
        return np.ascontiguousarray(np.moveaxis(result, 0, 2))
    return result[0]


def _pad(
    image: np.ndarray,
    pad_width: list[tuple[int, int]],
    boundary: str,
    fill: object,
    dtype: np.dtype,
) -> np.ndarray:
    """`image` padded per `boundary`, cast to `dtype` on the way (no converted copy first)."""
    if boundary != "fill":
        return np.pad(image.astype(dtype, copy=False), pad_width, mode=NUMPY_PAD_MODE[boundary])
    sizes = zip(image.shape, pad_width, strict=True)
    shape = tuple(size + before + after for size, (before, after) in sizes)
    top, left = pad_width[0][0], pad_width[1][0]
    height, width = image.shape[:2]
    padded = np.empty(shape, dtype)
    padded[:top] = fill
    padded[top + height :] = fill
    padded[top : top + height, :left] = fill
    padded[top : top + height, left + width :] = fill
    padded[top : top + height, left : left + width] = image
    return padded


def _any_separable(taps: np.ndarray) -> bool:
    slices = [taps] if taps.ndim == 2 else list(np.moveaxis(taps, 2, 0))
    return any(separable(piece) is not None for piece in slices)


def _direct_valid(
    padded: np.ndarray, kernel: np.ndarray, stride: int, skip_zeros: bool, use_separable: bool
) -> np.ndarray:
    """Valid correlation of each C x (Hp + 1) x Wp channel; a 3-D kernel sums over channels."""
    shortcuts = (skip_zeros, use_separable)
    if kernel.ndim == 2:
        results = [_direct_valid_2d(channel, kernel, stride, *shortcuts) for channel in padded]
        return results[0][np.newaxis] if len(results) == 1 else np.stack(results)
    total = _direct_valid_2d(padded[0], kernel[:, :, 0], stride, *shortcuts)
    for channel in range(1, padded.shape[0]):
        total += _direct_valid_2d(padded[channel], kernel[:, :, channel], stride, *shortcuts)
    return total[np.newaxis]


def _direct_valid_2d(
    padded: np.ndarray, kernel: np.ndarray, stride: int, skip_zeros: bool, use_separable: bool
) -> np.ndarray:
    """Valid correlation of one (Hp + 1) x Wp array (last row is slack) with a 2-D kernel.

    Flattened, image row r starts at r * Wp, so one 1-D correlation of a kernel row over a
    stretch of the flat array handles many image rows at once; positions past Wp - kw in each
    row mix two image rows and are dropped at the end. Rows go in blocks small enough to stay in
    the CPU's L2 cache. Output row r depends only on padded rows >= r, so each finished block is
    written over `padded` itself (which is overwritten): no second image-sized allocation.
    `skip_zeros` skips zero taps and rows, `use_separable` runs a rank-1 kernel as two passes:
    both drop 0 x value terms, so they are only asked for when every value is finite.
    """
    kernel_height, kernel_width = kernel.shape
    rows_with_slack, padded_width = padded.shape
    out_height = (rows_with_slack - 1 - kernel_height) // stride + 1
    out_width = (padded_width - kernel_width) // stride + 1
    flat = padded.reshape(-1)
    factors = separable(kernel) if use_separable else None
    block_rows = max(1, BLOCK_SAMPLES // padded_width)
    scratch = np.empty(block_rows * padded_width, dtype=padded.dtype)
    stretch_buffer = np.zeros(block_rows * padded_width + kernel_width - 1, dtype=padded.dtype)
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
            _correlate_into(block, stretch, row_taps, accumulate=False, skip_zeros=True)
        else:
            accumulate = False
            for i in range(kernel_height):
                if skip_zeros and not kernel[i].any():
                    continue
                top = first_row * stride + i
                if stride == 1:
                    stretch = flat[top * padded_width : (top + rows) * padded_width + kernel_width]
                else:
                    stretch[:samples].reshape(rows, padded_width)[:] = padded[
                        top : top + (rows - 1) * stride + 1 : stride
                    ]
                _correlate_into(block, stretch, kernel[i], accumulate, skip_zeros)
                accumulate = True
            if not accumulate:
                block[:] = 0
        flat[first_row * padded_width : first_row * padded_width + samples] = block
    return padded[:out_height, : (out_width - 1) * stride + 1 : stride]


def _correlate_into(
    block: np.ndarray, stretch: np.ndarray, taps: np.ndarray, accumulate: bool, skip_zeros: bool
) -> None:
    """Set or add the 1-D valid correlation of `stretch` with `taps` into `block`, in chunks."""
    for start, stop in chunk_bounds(taps.size):
        chunk = taps[start:stop]
        if skip_zeros and not chunk.any():
            continue
        part = np.correlate(stretch[start : start + block.size + chunk.size - 1], chunk, "valid")
        if accumulate:
            block += part
        else:
            block[:] = part
            accumulate = True
    if not accumulate:
        block[:] = 0


def chunk_bounds(size: int) -> list[tuple[int, int]]:
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
    shape = (next_fast_length(padded_height), next_fast_length(padded_width))
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


def separable(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(column, row) with outer(column, row) == kernel to rounding, or None if rank > 1."""
    if kernel.ndim != 2 or min(kernel.shape) == 1 or not kernel.any():
        return None
    i, j = np.unravel_index(np.argmax(np.abs(kernel)), kernel.shape)
    column = kernel[:, j] / kernel[i, j]
    row = kernel[i, :]
    error = np.abs(np.outer(column, row) - kernel).max()
    # A few ulps of the largest tap: far below the 1e-10 relative the tests demand.
    if error > 4 * np.finfo(kernel.dtype).eps * abs(kernel[i, j]):
        return None
    return column, row


def next_fast_length(size: int) -> int:
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


def padding(kernel_size: int, mode: str, flipped: bool) -> tuple[int, int]:
    """(before, after) padding so a valid correlation gives the `mode` output (scipy's offsets)."""
    if mode == "valid":
        return 0, 0
    if mode == "full":
        return kernel_size - 1, kernel_size - 1
    # same: the centre tap (kernel_size - 1) // 2 of the kernel as written meets the output
    # pixel's own input pixel; flipping moves that tap to kernel_size // 2.
    before = kernel_size // 2 if flipped else (kernel_size - 1) // 2
    return before, kernel_size - 1 - before


def output_size(
    image_shape: tuple[int, ...], kernel_shape: tuple[int, ...], mode: str, stride: int
) -> tuple[int, int]:
    """Output height and width after the stride; negative sizes are SciPy's ValueError."""
    sizes = []
    for image_size, kernel_size in zip(image_shape[:2], kernel_shape[:2], strict=True):
        before, after = padding(kernel_size, mode, flipped=False)
        full = image_size + before + after - kernel_size + 1
        if full < 0:
            raise CnnlabError(
                f"negative dimensions are not allowed: a {image_shape[:2]} input and a "
                f"{kernel_shape[:2]} kernel in {mode} mode"
            )
        sizes.append((full - 1) // stride + 1 if full else 0)
    return sizes[0], sizes[1]
