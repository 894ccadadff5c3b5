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
project's development machine (see `fast.DIRECT_NS_PER_TAP` and friends). Floating inputs are
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

import numpy as np

from cnnlab.conv import fast
from cnnlab.errors import CnnlabError

# The method "auto" picks (by the cost model in conv_fast), offered here beside the functions.
choose_method = fast.choose_method

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

_MODE_CODES = {"valid": 0, "same": 1, "full": 2}  # a dict, so an unhashable mode is a TypeError
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
    return fast.compute(problem, _checked_method(method))


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
    return fast.compute(problem, _checked_method(method))


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
    return fast.compute(problem, _checked_method(method))


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
    return fast.compute(problem, _checked_method(method))


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


def _slide(problem: fast.Problem) -> np.ndarray:
    """Slide the taps over the image: each output is the sum of every tap x the pixel under it."""
    image, taps, stride = problem.image, problem.taps, problem.stride
    height, width = image.shape
    kernel_height, kernel_width = taps.shape
    # How far the kernel's top-left tap lies above / left of the output pixel's own input pixel.
    # A flipped even-sized kernel has its centre one step further down / right.
    top, _ = fast.padding(kernel_height, problem.mode, problem.flipped)
    left, _ = fast.padding(kernel_width, problem.mode, problem.flipped)
    out_height, out_width = fast.output_shape(problem)
    # Integer sums are kept exact as Python ints and wrapped to the result type at the end;
    # floating ones are computed in float64 (long double for long double inputs).
    integer = problem.dtype.kind in "iu"
    work = object if integer else fast.work_type(problem.dtype)
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
) -> fast.Problem:
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
    return fast.Problem(image, taps, mode, boundary, fill, int(stride), flip, dtype)


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
