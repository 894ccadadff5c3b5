"""Two-dimensional convolution written by hand in NumPy: the seed study's part 1, done right.

`convolve2d` and `correlate2d` are drop-in replacements for `scipy.signal.convolve2d` /
`correlate2d`, and SciPy's own tests hold them to it (tests/test_scipy_conv.py):

* the same signature and defaults: ``(in1, in2, mode="full", boundary="fill", fillvalue=0)``,
  and SciPy's boundary names ("fill" or "pad", "symm" or "symmetric", "wrap" or "circular");
* the result dtype is SciPy's, ``numpy.promote_types(in1.dtype, in2.dtype)``: float32 stays
  float32, complex stays complex, and integer results are exact sums wrapped to their type like
  SciPy's C loop (uint8 wraps around at 256); bool, float16 and object inputs are refused;
* `correlate2d` conjugates its second input; in "valid" mode the inputs are swapped when the
  second is at least as large in every dimension (a correlation's result is then reversed);
* empty inputs give what SciPy gives, NaN and inf propagate as in SciPy (0 x NaN is NaN, so a NaN
  reaches every output whose window covers it, zero taps included);
* bad input raises the exception type SciPy raises (ValueError, or TypeError for unhashable
  modes and non-numeric fill values), as one line.

Beyond SciPy, as keyword-only arguments: ``method`` ("auto", "direct", "fft") and ``stride``;
and one more boundary, "reflect" (numpy's). `convolve_channels` / `correlate_channels` take
H x W x C images as well.

Three implementations of one definition:

* `correlate2d_loop` / `convolve2d_loop`: plain Python loops over every output pixel and every
  kernel tap, written to be read. The tests hold the fast paths to it.
* the direct method: one vectorised 1-D `np.correlate` per kernel row over the flattened padded
  image (no Python loop over pixels), or two 1-D passes when the kernel is separable.
* the FFT method: `numpy.fft.rfft2` on smooth (2·3·5·7·11) sizes, for large kernels.

`method="auto"` picks the cheaper of the two fast methods from a cost model measured on this
project's development machine (see `_DIRECT_NS_PER_TAP` and friends). Floating inputs are
computed in float64 (longdouble for longdouble), complex ones as four real correlations. Three
rules keep every method's result SciPy's:

* integer inputs always take the direct method without the separable shortcut, in float64 while
  every partial sum is provably an exact integer there (max |value| x sum |kernel| < 2**52),
  else in wrapping int64 arithmetic: integer results are exact whatever ``method`` says;
* the shortcuts that drop 0 x value terms (skipping zero taps, separable kernels, the FFT, which
  would also smear one NaN over the whole result) are only taken when every value is finite;
  otherwise the direct method multiplies every tap, whatever ``method`` says;
* arithmetic warnings are silenced, as SciPy's C code raises none.

Conventions (all identical to `scipy.signal.convolve2d` / `correlate2d`):

* Convolution flips the kernel, correlation does not: ``convolve2d(x, k) == correlate2d(x,
  k[::-1, ::-1])`` for real inputs in "full" and "valid" mode. The seed report's loop computed a
  correlation.
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
  fill       v v v | a b c d   constant (fillvalue)  fill, pad            constant (cval)
  reflect    d c b | a b c d   reflect               (none)               mirror
  symmetric  c b a | a b c d   symmetric             symm, symmetric      reflect
  wrap       (end) | a b c d   wrap                  wrap, circular       grid-wrap / wrap
  ========== ================ ===================== ==================== ================

`convolve_channels` / `correlate_channels` take 2-D (H x W) or H x W x C images: a 2-D kernel
filters each channel separately (the result is H' x W' x C); a kh x kw x C kernel is applied to
all channels and summed over them, like one filter of a convolutional layer (the result is 2-D).
"""

from __future__ import annotations

import ast
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError

MODES = ("same", "valid", "full")
# cnnlab's four boundaries; BOUNDARY_ALIASES maps every accepted name to one of them.
BOUNDARIES = ("fill", "reflect", "symmetric", "wrap")
# SciPy's names (scipy.signal._signaltools._boundarydict, less its "reflect", which the dict lists
# but SciPy's C code refuses), plus cnnlab's "reflect" (numpy's: the edge pixel not repeated).
BOUNDARY_ALIASES = {
    "fill": "fill",
    "pad": "fill",
    "symm": "symmetric",
    "symmetric": "symmetric",
    "wrap": "wrap",
    "circular": "wrap",
    "reflect": "reflect",
}
METHODS = ("auto", "direct", "fft")
# Kernels from a name, a literal or a file (what `parse_kernel` reads) stay at most this wide:
# far past any filter a picture needs, and a box:100000 would be 80 GB.
MAX_KERNEL_SIDE = 1025
MAX_LITERAL_CHARACTERS = 1 << 20
MAX_KERNEL_TEXT_BYTES = 64 << 20

_MODE_CODES = {"valid": 0, "same": 1, "full": 2}  # a dict, so an unhashable mode is a TypeError
_NUMPY_PAD_MODE = {"reflect": "reflect", "symmetric": "symmetric", "wrap": "wrap"}
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


# --- the public functions -----------------------------------------------------------------------


def convolve2d(
    in1: object,
    in2: object,
    mode: str = "full",
    boundary: str = "fill",
    fillvalue: object = 0,
    *,
    method: str = "auto",
    stride: int = 1,
) -> np.ndarray:
    """Convolution (kernel flipped) with scipy.signal.convolve2d's signature and results, fast."""
    problem = _prepare(in1, in2, mode, boundary, fillvalue, stride, True, "convolve2d", False)
    return _compute(problem, _checked_method(method))


def correlate2d(
    in1: object,
    in2: object,
    mode: str = "full",
    boundary: str = "fill",
    fillvalue: object = 0,
    *,
    method: str = "auto",
    stride: int = 1,
) -> np.ndarray:
    """Cross-correlation with scipy.signal.correlate2d's signature and results, fast."""
    problem = _prepare(in1, in2, mode, boundary, fillvalue, stride, False, "correlate2d", False)
    return _compute(problem, _checked_method(method))


def convolve_channels(
    image: object,
    kernel: object,
    mode: str = "full",
    boundary: str = "fill",
    fillvalue: object = 0,
    *,
    method: str = "auto",
    stride: int = 1,
) -> np.ndarray:
    """`convolve2d` of an H x W or H x W x C image, per channel or summed over a 3-D kernel."""
    problem = _prepare(image, kernel, mode, boundary, fillvalue, stride, True, "convolve", True)
    return _compute(problem, _checked_method(method))


def correlate_channels(
    image: object,
    kernel: object,
    mode: str = "full",
    boundary: str = "fill",
    fillvalue: object = 0,
    *,
    method: str = "auto",
    stride: int = 1,
) -> np.ndarray:
    """`correlate2d` of an H x W or H x W x C image, per channel or summed over a 3-D kernel."""
    problem = _prepare(image, kernel, mode, boundary, fillvalue, stride, False, "correlate", True)
    return _compute(problem, _checked_method(method))


def choose_method(image_shape: tuple[int, ...], kernel: object, mode: str = "full") -> str:
    """The method "auto" uses for finite floating inputs: "direct" or "fft", by the cost model."""
    kernel = np.asarray(kernel)
    kernel = np.abs(kernel) if kernel.dtype.kind == "c" else kernel.astype(np.float64, copy=False)
    channels = image_shape[2] if len(image_shape) == 3 else 1
    out_height, out_width = _output_size(image_shape, kernel.shape, mode, 1)
    padded_height = out_height + kernel.shape[0] - 1
    padded_width = out_width + kernel.shape[1] - 1
    samples = out_height * padded_width
    blocks = -(-out_height // max(1, _BLOCK_SAMPLES // max(padded_width, 1)))
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


# --- the readable reference ---------------------------------------------------------------------


def correlate2d_loop(
    in1: object,
    in2: object,
    mode: str = "full",
    boundary: str = "fill",
    fillvalue: object = 0,
    *,
    stride: int = 1,
) -> np.ndarray:
    """Cross-correlation with plain loops, pixel by pixel: the teaching reference (slow)."""
    problem = _prepare(in1, in2, mode, boundary, fillvalue, stride, False, "correlate2d", False)
    return _slide(problem)


def convolve2d_loop(
    in1: object,
    in2: object,
    mode: str = "full",
    boundary: str = "fill",
    fillvalue: object = 0,
    *,
    stride: int = 1,
) -> np.ndarray:
    """Convolution with plain loops: flip the kernel, then slide it (the teaching reference)."""
    problem = _prepare(in1, in2, mode, boundary, fillvalue, stride, True, "convolve2d", False)
    return _slide(problem)


def _slide(problem: _Problem) -> np.ndarray:
    """Slide the taps over the image: each output is the sum of every tap x the pixel under it."""
    image, taps, stride = problem.image, problem.taps, problem.stride
    height, width = image.shape
    kernel_height, kernel_width = taps.shape
    # How far the kernel's top-left tap lies above / left of the output pixel's own input pixel.
    # A flipped even-sized kernel has its centre one step further down / right.
    top, _ = _padding(kernel_height, problem.mode, problem.flipped)
    left, _ = _padding(kernel_width, problem.mode, problem.flipped)
    out_height, out_width = _output_shape(problem)
    # Integer sums are kept exact as Python ints and wrapped to the result type at the end;
    # floating ones are computed in float64 (long double for long double inputs).
    integer = problem.dtype.kind in "iu"
    work = object if integer else _work_type(problem.dtype)
    image, taps = image.astype(work), taps.astype(work)
    fill = int(problem.fill) if integer else work(problem.fill)
    out = np.zeros((out_height, out_width), dtype=work)
    with np.errstate(over="ignore", invalid="ignore"):
        for out_row in range(out_height):
            for out_col in range(out_width):
                total = 0
                for i in range(kernel_height):
                    for j in range(kernel_width):
                        row = _source_index(out_row * stride + i - top, height, problem.boundary)
                        col = _source_index(out_col * stride + j - left, width, problem.boundary)
                        pixel = fill if row is None or col is None else image[row, col]
                        total += taps[i, j] * pixel
                out[out_row, out_col] = total
    if integer:  # two's complement: the low bits of the exact sum, as SciPy's C loop keeps them
        low_bits = [value % 2**64 for value in out.flat]
        return np.array(low_bits, dtype=np.uint64).reshape(out.shape).astype(problem.dtype)
    return out.astype(problem.dtype)


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


# --- arguments: SciPy's rules -------------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    """Validated arguments: correlate `taps` over `image`, both already in the result dtype."""

    image: np.ndarray  # H x W, or H x W x C for the channel functions
    taps: np.ndarray  # kh x kw [x C]: the correlation kernel (flipped for a convolution)
    mode: str
    boundary: str  # one of BOUNDARIES
    fill: np.generic  # the fillvalue in the result dtype (zero unless boundary is fill)
    stride: int
    flipped: bool  # a convolution: "same" mode centres the flipped kernel at k // 2
    dtype: np.dtype  # the result's


def _prepare(
    in1: object,
    in2: object,
    mode: str,
    boundary: str,
    fillvalue: object,
    stride: int,
    flip: bool,
    name: str,
    channels: bool,
) -> _Problem:
    """Check the arguments in SciPy's order, with its exception types; apply its swap and conj."""
    first, second = np.asarray(in1), np.asarray(in2)
    swapped = False
    if channels:
        _check_channel_shapes(first, second, mode)
    else:
        if not first.ndim == second.ndim == 2:
            raise CnnlabError(
                f"{name} inputs must both be 2-D arrays, not {first.ndim}-D and {second.ndim}-D"
            )
        swapped = _inputs_swap_needed(mode, first.shape, second.shape)
        if swapped:
            first, second = second, first
    try:
        _MODE_CODES[mode]
    except KeyError:
        raise CnnlabError(
            f"unknown mode {mode!r}; acceptable mode flags are 'valid', 'same', or 'full'"
        ) from None
    try:
        boundary = BOUNDARY_ALIASES[boundary]
    except KeyError:
        raise CnnlabError(
            f"unknown boundary {boundary!r}; acceptable boundary flags are 'fill' (or 'pad'), "
            "'circular' (or 'wrap'), 'symmetric' (or 'symm'), and cnnlab's 'reflect'"
        ) from None
    if not flip and second.dtype.kind in "MmUSV":  # SciPy conjugates it here, and numpy refuses
        raise TypeError(f"cannot conjugate non-numeric dtype {second.dtype}")
    dtype = np.promote_types(first.dtype, second.dtype)
    fill = _fill_as(fillvalue, dtype) if boundary == "fill" else None
    if not (dtype.kind in "iuc" or (dtype.kind == "f" and dtype.itemsize >= 4)):
        raise CnnlabError(f"{name} not available for this type: {dtype}")
    if fill is None:
        fill = np.zeros((), dtype)[()]
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 1:
        raise CnnlabError(f"stride must be an integer >= 1, not {stride!r}")
    image = first.astype(dtype, copy=False)
    kernel = second.astype(dtype, copy=False)
    if dtype.kind == "c" and not flip:
        kernel = kernel.conj()
    if flip:
        taps = kernel[::-1, ::-1]
    elif swapped:
        # SciPy correlates the swapped inputs and reverses the result; correlating both reversed
        # is the same sum, and lets a stride count from the first output.
        image, taps = image[::-1, ::-1], kernel[::-1, ::-1]
    else:
        taps = kernel
    return _Problem(image, taps, mode, boundary, fill, int(stride), flip, dtype)


def _inputs_swap_needed(mode: str, shape1: tuple[int, ...], shape2: tuple[int, ...]) -> bool:
    """True when "valid" mode must swap the inputs (SciPy's rule); an error if neither fits."""
    if mode != "valid":
        return False
    first_fits = all(a >= b for a, b in zip(shape1, shape2, strict=True))
    second_fits = all(b >= a for a, b in zip(shape1, shape2, strict=True))
    if not (first_fits or second_fits):
        raise CnnlabError(
            f"for 'valid' mode, one input must be at least as large as the other in every "
            f"dimension, not {shape1} and {shape2}"
        )
    return not first_fits


def _check_channel_shapes(image: np.ndarray, kernel: np.ndarray, mode: object) -> None:
    if image.ndim not in (2, 3):
        raise CnnlabError(
            f"the image must be 2-D (H x W) or 3-D (H x W x C), not {image.ndim}-D {image.shape}"
        )
    if kernel.ndim not in (2, 3):
        raise CnnlabError(f"the kernel must be 2-D (kh x kw) or kh x kw x C, not {kernel.shape}")
    if kernel.ndim == 3 and (image.ndim != 3 or kernel.shape[2] != image.shape[2]):
        raise CnnlabError(
            f"a kh x kw x C kernel {kernel.shape} needs an H x W x C image with the same C, "
            f"not {image.shape}"
        )
    if mode == "valid" and (kernel.shape[0] > image.shape[0] or kernel.shape[1] > image.shape[1]):
        raise CnnlabError(
            f"the kernel ({kernel.shape[0]} x {kernel.shape[1]}) is larger than the image "
            f"({image.shape[0]} x {image.shape[1]}) in valid mode; use mode same or full"
        )


def _fill_as(fillvalue: object, dtype: np.dtype) -> np.generic:
    """The fillvalue in `dtype`, converted and refused the way SciPy's C code does it."""
    try:
        fill = _from_object(fillvalue, dtype)
    except (TypeError, ValueError, OverflowError):
        # SciPy retries through complex128: what cannot become a number raises its own error,
        # a number that cannot become `dtype` directly (1j for floats, -1 for uint8) is refused.
        _from_object(fillvalue, np.dtype(np.complex128))
        raise CnnlabError(
            f"could not cast `fillvalue` directly to the output type {dtype} (it was first "
            f"converted to complex): {fillvalue!r}"
        ) from None
    if fill.size != 1:
        if fill.size == 0:
            raise CnnlabError("`fillvalue` cannot be an empty array.")
        raise CnnlabError(
            f"`fillvalue` must be scalar or an array with one element, not shape {fill.shape}"
        )
    return fill.reshape(())[()]


def _from_object(value: object, dtype: np.dtype) -> np.ndarray:
    """numpy's PyArray_FromObject: Python numbers convert by value, arrays only by safe casts."""
    if isinstance(value, np.ndarray) and not np.can_cast(value.dtype, dtype, "safe"):
        raise TypeError(f"cannot cast {value.dtype} to {dtype} safely")
    with np.errstate(over="ignore"):  # 1e300 in float32 is inf, silently, as in SciPy
        return np.array(value, dtype=dtype)


def _checked_method(method: str) -> str:
    if method not in METHODS:
        raise CnnlabError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def _work_type(dtype: np.dtype) -> type[np.generic]:
    """What floating and complex inputs are computed in: 64-bit floats, or long double ones."""
    if dtype.kind == "c":
        return np.complex128 if dtype.itemsize <= 16 else np.clongdouble
    return np.float64 if dtype.itemsize <= 8 else np.longdouble


# --- the fast paths -----------------------------------------------------------------------------


def _compute(problem: _Problem, method: str) -> np.ndarray:
    """The result of a validated problem: integer, floating or complex, by `method`."""
    shape = _output_shape(problem)
    if 0 in shape or problem.taps.size == 0:  # an empty sum is 0, whatever the fill
        return np.zeros(shape, problem.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        if problem.dtype.kind in "iu":
            return _integer(problem)
        work = np.dtype(_work_type(problem.dtype)(0).real.dtype)  # float64 or longdouble
        if problem.dtype.kind == "f":
            taps = problem.taps.astype(work, copy=False)
            result = _real(problem, problem.image, taps, problem.fill, method)
            return _cast(result, problem.dtype)
        return _complex(problem, shape, work, method)


def _output_shape(problem: _Problem) -> tuple[int, ...]:
    """The result's shape; an error where SciPy's C code would divide by zero and crash."""
    image_shape = problem.image.shape
    height, width = _output_size(image_shape, problem.taps.shape, problem.mode, problem.stride)
    shape = (height, width)
    if problem.image.ndim == 3 and problem.taps.ndim == 2:
        shape += (image_shape[2],)
    if 0 in image_shape[:2] and 0 not in shape and problem.boundary != "fill":
        raise CnnlabError(
            f"an empty {image_shape[0]} x {image_shape[1]} image cannot be extended with "
            f"boundary {problem.boundary!r}; use boundary 'fill'"
        )
    return shape


def _integer(problem: _Problem) -> np.ndarray:
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


def _complex(problem: _Problem, shape: tuple[int, ...], work: np.dtype, method: str) -> np.ndarray:
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
    problem: _Problem,
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
    pads = [_padding(size, mode, flipped=problem.flipped) for size in taps.shape[:2]]
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
        return np.pad(image.astype(dtype, copy=False), pad_width, mode=_NUMPY_PAD_MODE[boundary])
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
    return any(_separable(piece) is not None for piece in slices)


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
    factors = _separable(kernel) if use_separable else None
    block_rows = max(1, _BLOCK_SAMPLES // padded_width)
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
    for start, stop in _chunk_bounds(taps.size):
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
    if error > 4 * np.finfo(kernel.dtype).eps * abs(kernel[i, j]):
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
    """Output height and width after the stride; negative sizes are SciPy's ValueError."""
    sizes = []
    for image_size, kernel_size in zip(image_shape[:2], kernel_shape[:2], strict=True):
        before, after = _padding(kernel_size, mode, flipped=False)
        full = image_size + before + after - kernel_size + 1
        if full < 0:
            raise CnnlabError(
                f"negative dimensions are not allowed: a {image_shape[:2]} input and a "
                f"{kernel_shape[:2]} kernel in {mode} mode"
            )
        sizes.append((full - 1) // stride + 1 if full else 0)
    return sizes[0], sizes[1]


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


def check_npy_size(path: Path, max_items: int, what: str) -> None:
    """Refuse a .npy file whose header declares more than `max_items` or more than it holds."""
    try:
        with path.open("rb") as handle:
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
            if path.stat().st_size > MAX_KERNEL_TEXT_BYTES:
                raise CnnlabError(
                    f"kernel file {path}: larger than {MAX_KERNEL_TEXT_BYTES:,} bytes of text"
                )
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
