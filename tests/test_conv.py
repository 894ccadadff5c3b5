"""convolve.py against scipy.signal, scipy.ndimage and torch, and against its loops.

SciPy's own test suite runs against convolve.py in test_scipy_conv.py; here hypothesis draws random
shapes, dtypes, modes and boundaries and holds every method to scipy.signal's results, dtypes,
NaN propagation and exceptions.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage, signal

from cnnlab.conv import convolve, fast, kernels
from cnnlab.errors import CnnlabError

SETTINGS = settings(max_examples=100, deadline=None)
SCIPY_BOUNDARIES = ("fill", "pad", "symm", "symmetric", "wrap", "circular")
NDIMAGE_MODE = {
    "fill": "constant",
    "reflect": "mirror",
    "symmetric": "reflect",
    "wrap": "grid-wrap",
}
PAIRS = [(convolve.convolve2d, signal.convolve2d), (convolve.correlate2d, signal.correlate2d)]
INTEGER_DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64"]


def assert_close(actual: np.ndarray, expected: np.ndarray, image, kernel, rtol=1e-10) -> None:
    """`rtol` relative to the largest possible output, sum |kernel| x max |image|; NaN where NaN."""
    finite_image = np.abs(np.nan_to_num(image, posinf=0, neginf=0))
    finite_kernel = np.abs(np.nan_to_num(kernel, posinf=0, neginf=0))
    scale = max(finite_kernel.sum() * max(finite_image.max(initial=0), 1.0), 1.0)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def scipy_or_error(function, *args, **options):
    """SciPy's result, or the exception it raised."""
    try:
        return function(*args, **options)
    except (ValueError, TypeError) as error:
        return error


@st.composite
def problems(draw, max_image: int = 9, max_kernel: int = 6, channels: bool = False):
    """A random image and kernel (sometimes separable, sometimes sparse) of small shapes."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    height, width = draw(st.integers(1, max_image)), draw(st.integers(1, max_image))
    kernel_shape = (draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel)))
    image_shape = (height, width, draw(st.integers(1, 3))) if channels else (height, width)
    image = rng.standard_normal(image_shape) * 10.0 ** draw(st.integers(-3, 3))
    kind = draw(st.sampled_from(["dense", "separable", "sparse", "integer"]))
    if kind == "separable":
        kernel = np.outer(
            rng.standard_normal(kernel_shape[0]), rng.standard_normal(kernel_shape[1])
        )
    elif kind == "integer":
        kernel = rng.integers(-3, 4, kernel_shape).astype(np.float64)
    else:
        kernel = rng.standard_normal(kernel_shape)
        if kind == "sparse":
            kernel[rng.random(kernel_shape) < 0.6] = 0.0
    return image, kernel


def fits_valid(image, kernel) -> bool:
    return kernel.shape[0] <= image.shape[0] and kernel.shape[1] <= image.shape[1]


# --- against scipy ------------------------------------------------------------------------------


@SETTINGS
@given(
    problem=problems(),
    mode=st.sampled_from(convolve.MODES),
    boundary=st.sampled_from(SCIPY_BOUNDARIES),
    method=st.sampled_from(convolve.METHODS),
    fillvalue=st.sampled_from([0.0, 1.5]),
    swap=st.booleans(),
)
def test_matches_scipy_signal(problem, mode, boundary, method, fillvalue, swap):
    """Every method, every SciPy boundary name, "valid" with a larger second input swapped."""
    image, kernel = problem[::-1] if swap else problem
    for ours, theirs in PAIRS:
        expected = scipy_or_error(theirs, image, kernel, mode, boundary, fillvalue)
        if isinstance(expected, Exception):  # "valid" with neither input the larger
            with pytest.raises(type(expected)):
                ours(image, kernel, mode, boundary, fillvalue, method=method)
            continue
        actual = ours(image, kernel, mode, boundary, fillvalue, method=method)
        assert actual.dtype == expected.dtype
        assert_close(actual, expected, image, kernel)


def test_signature_and_defaults_are_scipys():
    for ours, theirs in PAIRS:
        scipy_parameters = list(inspect.signature(theirs).parameters.values())
        our_parameters = list(inspect.signature(ours).parameters.values())
        assert [(p.name, p.default, p.kind) for p in scipy_parameters] == [
            (p.name, p.default, p.kind) for p in our_parameters[: len(scipy_parameters)]
        ]
        extras = our_parameters[len(scipy_parameters) :]
        assert {p.name for p in extras} == {"method", "stride"}
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extras)
    image, kernel = np.arange(12.0).reshape(3, 4), np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(
        convolve.convolve2d(in2=kernel, in1=image), signal.convolve2d(image, kernel)
    )
    assert convolve.correlate2d(image, kernel).shape == (4, 5)  # "full" by default


@SETTINGS
@given(
    problem=problems(),
    boundary=st.sampled_from(convolve.BOUNDARIES),
    method=st.sampled_from(["direct", "fft"]),
)
def test_same_mode_matches_scipy_ndimage_for_every_boundary(problem, boundary, method):
    image, kernel = problem
    # ndimage centres an even kernel at k // 2; scipy.signal (and cnnlab) at (k - 1) // 2.
    origin = [-(1 - size % 2) for size in kernel.shape]
    expected = ndimage.correlate(
        image, kernel, mode=NDIMAGE_MODE[boundary], cval=2.0, origin=origin
    )
    actual = convolve.correlate2d(image, kernel, "same", boundary, fillvalue=2.0, method=method)
    assert_close(actual, expected, image, kernel)


@SETTINGS
@given(
    problem=problems(max_image=12),
    mode=st.sampled_from(convolve.MODES),
    stride=st.integers(1, 4),
    method=st.sampled_from(["direct", "fft"]),
)
def test_stride_matches_torch_conv2d(problem, mode, stride, method):
    image, kernel = problem
    if mode == "valid" and not fits_valid(image, kernel):
        return
    before = [fast.padding(size, mode, flipped=False)[0] for size in kernel.shape]
    after = [
        size - 1 - b if mode == "same" else b for size, b in zip(kernel.shape, before, strict=True)
    ]
    padded = F.pad(torch.from_numpy(image)[None, None], (before[1], after[1], before[0], after[0]))
    # torch.nn.functional.conv2d computes a cross-correlation.
    expected = F.conv2d(padded, torch.from_numpy(kernel)[None, None], stride=stride)[0, 0].numpy()
    actual = convolve.correlate2d(image, kernel, mode, stride=stride, method=method)
    assert_close(actual, expected, image, kernel)


@SETTINGS
@given(problem=problems(channels=True), stride=st.integers(1, 3), summed=st.booleans())
def test_channels_match_torch_conv2d(problem, stride, summed):
    image, kernel = problem
    channels = image.shape[2]
    torch_image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, 2, 0)))[None]
    pads = [fast.padding(size, "same", flipped=False) for size in kernel.shape]
    torch_image = F.pad(torch_image, (*pads[1], *pads[0]))
    if summed:  # one kh x kw x C filter, summed over channels: one output map
        kernel = np.stack([kernel * (c + 1) for c in range(channels)], axis=2)
        weight = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, 2, 0)))[None]
        expected = F.conv2d(torch_image, weight, stride=stride)[0, 0].numpy()
    else:  # the same 2-D kernel on every channel: a depthwise convolution
        weight = torch.from_numpy(kernel)[None, None].repeat(channels, 1, 1, 1)
        result = F.conv2d(torch_image, weight, stride=stride, groups=channels)[0].numpy()
        expected = np.moveaxis(result, 0, 2)
    for method in ("direct", "fft"):
        actual = convolve.correlate_channels(image, kernel, "same", stride=stride, method=method)
        assert_close(actual, expected, image, kernel)


def test_channels_of_a_2d_image_are_convolve2d():
    rng = np.random.default_rng(4)
    image, kernel = rng.standard_normal((9, 7)), rng.standard_normal((3, 4))
    for mode in convolve.MODES:
        np.testing.assert_array_equal(
            convolve.convolve_channels(image, kernel, mode),
            convolve.convolve2d(image, kernel, mode),
        )
    per_channel = convolve.convolve_channels(np.stack([image, 2 * image], axis=2), kernel, "same")
    assert_close(per_channel[:, :, 1], 2 * signal.convolve2d(image, kernel, "same"), image, kernel)


# --- dtypes: SciPy's, exact for integers --------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dtypes=st.tuples(st.sampled_from(INTEGER_DTYPES), st.sampled_from(INTEGER_DTYPES)),
    shapes=st.tuples(
        st.integers(1, 20), st.integers(1, 20), st.integers(1, 12), st.integers(1, 12)
    ),
    mode=st.sampled_from(convolve.MODES),
    boundary=st.sampled_from(["fill", "symm", "wrap"]),
    full_range=st.booleans(),
)
def test_integers_are_exact_through_every_method(seed, dtypes, shapes, mode, boundary, full_range):
    """Integer results equal SciPy's bit for bit (wrap-around included), whatever the method."""
    rng = np.random.default_rng(seed)

    def draw(dtype, shape):
        info = np.iinfo(dtype)
        low, high = (info.min, info.max) if full_range else (max(info.min, -9), min(info.max, 9))
        return rng.integers(low, high, shape, dtype=dtype, endpoint=True)

    image, kernel = draw(dtypes[0], shapes[:2]), draw(dtypes[1], shapes[2:])
    fillvalue = 3
    for ours, theirs in PAIRS:
        expected = scipy_or_error(theirs, image, kernel, mode, boundary, fillvalue)
        if isinstance(expected, Exception):
            continue  # shapes that fit neither way in "valid" mode: test_matches_scipy_signal
        for method in convolve.METHODS:
            actual = ours(image, kernel, mode, boundary, fillvalue, method=method)
            assert actual.dtype == expected.dtype
            if expected.dtype.kind == "f":  # uint64 with a signed type: float64, as in SciPy
                assert_close(actual, expected, image.astype(float), kernel.astype(float))
            else:
                np.testing.assert_array_equal(actual, expected)


def test_the_issues_integer_example_is_exact():
    """A 15x15 integer kernel on a 40x40 image: "auto" would pick the FFT for floats."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (40, 40))
    kernel = rng.integers(-9, 10, (15, 15))
    assert convolve.choose_method(image.shape, kernel, "same") == "fft"
    for method in convolve.METHODS:
        result = convolve.convolve2d(image, kernel, "same", method=method)
        assert result.dtype == np.int64
        np.testing.assert_array_equal(result, signal.convolve2d(image, kernel, "same"))


def test_uint8_wraps_around_like_scipy():
    image = np.full((3, 3), 200, np.uint8)
    result = convolve.convolve2d(image, np.ones((2, 2), np.uint8))
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result[1:3, 1:3], np.full((2, 2), (4 * 200) % 256))
    np.testing.assert_array_equal(result, signal.convolve2d(image, np.ones((2, 2), np.uint8)))


@pytest.mark.parametrize(
    "dtypes",
    [
        ("float32", "float32"),
        ("float32", "int16"),
        ("float32", "int32"),
        ("uint8", "float32"),
        ("float64", "float32"),
        ("longdouble", "float64"),
        ("int8", "uint8"),
        ("uint64", "int64"),
        ("complex64", "float32"),
        ("complex64", "float64"),
        ("complex128", "int64"),
        ("clongdouble", "float64"),
    ],
)
def test_result_dtype_is_scipys(dtypes):
    rng = np.random.default_rng(6)
    image = rng.integers(0, 100, (6, 5)).astype(dtypes[0])
    kernel = rng.integers(-5, 5, (3, 2)).astype(dtypes[1])
    for ours, theirs in PAIRS:
        expected = theirs(image, kernel, "same", fillvalue=1)
        for method in convolve.METHODS:
            actual = ours(image, kernel, "same", fillvalue=1, method=method)
            assert actual.dtype == expected.dtype
            np.testing.assert_allclose(actual, expected, rtol=1e-6)
    loop = convolve.convolve2d_loop(image, kernel, "same", fillvalue=1)
    assert loop.dtype == signal.convolve2d(image, kernel, "same").dtype


@pytest.mark.parametrize("dtype", ["bool", "float16", "object", "datetime64[s]", "U1"])
def test_types_scipy_refuses_are_refused(dtype):
    image = np.ones((2, 2)).astype(dtype) if dtype != "U1" else np.array([["a", "b"]])
    for ours, theirs in PAIRS:
        expected = scipy_or_error(theirs, image, image)
        assert isinstance(expected, ValueError | TypeError)  # TypeError: correlate2d's conj
        with pytest.raises(type(expected)):
            ours(image, image)


@settings(max_examples=50, deadline=None)
@given(
    problem=problems(),
    mode=st.sampled_from(convolve.MODES),
    boundary=st.sampled_from(["fill", "symm", "wrap"]),
    single=st.booleans(),
    imaginary_image=st.booleans(),
)
def test_complex_inputs_match_scipy(problem, mode, boundary, single, imaginary_image):
    image, kernel = problem
    rng = np.random.default_rng(int(abs(image).sum() * 1000) % 2**32)
    kernel = kernel + 1j * rng.standard_normal(kernel.shape)
    if imaginary_image:
        image = image - 2j * image[::-1, ::-1]
    dtype = np.complex64 if single else np.complex128
    image, kernel = image.astype(dtype), kernel.astype(dtype)
    fillvalue = 0.5 - 1j
    for ours, theirs in PAIRS:
        expected = scipy_or_error(theirs, image, kernel, mode, boundary, fillvalue)
        if isinstance(expected, Exception):
            continue
        for method in convolve.METHODS:
            actual = ours(image, kernel, mode, boundary, fillvalue, method=method)
            assert actual.dtype == expected.dtype
            # SciPy sums complex64 in single precision; cnnlab in double, then rounds.
            assert_close(actual, expected, np.abs(image), np.abs(kernel), 1e-5 if single else 1e-10)


# --- NaN and inf: SciPy's 0 x NaN = NaN on every path -------------------------------------------

KERNELS_WITH_ZEROS = {
    # A separable kernel takes two 1-D passes when every value is finite.
    "separable": np.outer([1.0, 0.0, 2.0], [0.5, 0.0, -1.0]),
    # Zero rows and zero chunks of a long row are skipped when every value is finite.
    "zero row": np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [4.0, -5.0, 6.0]]),
    "zero run": np.array([[1.0] + [0.0] * 12 + [2.0], [3.0] * 7 + [0.0] * 7]),
    # Large enough for "auto" to pick the FFT on finite values.
    "large": np.where(np.arange(17 * 17).reshape(17, 17) % 5, 1.0, 0.0) + np.eye(17),
}


@pytest.mark.parametrize("kernel_name", list(KERNELS_WITH_ZEROS))
@pytest.mark.parametrize("mode", convolve.MODES)
def test_nan_and_inf_spread_like_scipy_on_every_path(kernel_name, mode):
    kernel = KERNELS_WITH_ZEROS[kernel_name]
    if kernel_name == "separable":
        assert fast.separable(kernel) is not None
    if kernel_name == "large":
        assert convolve.choose_method((40, 40), kernel, mode) == "fft"
    rng = np.random.default_rng(7)
    image = rng.standard_normal((40, 40))
    image[0, 0] = image[5, 9] = np.nan  # a corner: in "valid" mode only one tap ever meets it
    image[20, 3], image[30, 33] = np.inf, -np.inf
    for ours, theirs in PAIRS:
        expected = theirs(image, kernel, mode)
        assert np.isnan(expected).any()
        for method in convolve.METHODS:
            actual = ours(image, kernel, mode, method=method)
            np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
            np.testing.assert_array_equal(np.isposinf(actual), np.isposinf(expected))
            assert_close(actual, expected, image, kernel)


@pytest.mark.parametrize(
    ("kernel", "fillvalue"),
    [
        ([[1.0, np.nan], [0.0, 2.0]], 0.0),
        ([[np.inf, 0.0, 1.0]], 0.0),
        ([[1.0, 0.0], [2.0, 3.0]], np.nan),
        ([[1.0, 0.0], [2.0, 3.0]], np.inf),
    ],
)
def test_nan_in_the_kernel_or_the_fill_value(kernel, fillvalue):
    image = np.arange(30.0).reshape(5, 6)
    for ours, theirs in PAIRS:
        for mode in convolve.MODES:
            expected = theirs(image, kernel, mode, fillvalue=fillvalue)
            for method in convolve.METHODS:
                actual = ours(image, kernel, mode, fillvalue=fillvalue, method=method)
                np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
                np.testing.assert_array_equal(actual, expected)


def test_a_nan_stays_local():
    image = np.ones((40, 40))
    image[5, 5] = np.nan
    result = convolve.convolve2d(image, np.ones((21, 21)), "same", method="fft")
    assert np.isnan(result[5, 5]) and np.isfinite(result[35, 35])


# --- empty inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_shape", "kernel_shape"),
    [
        ((0, 3), (2, 2)),
        ((3, 0), (2, 2)),
        ((0, 0), (0, 0)),
        ((3, 3), (0, 2)),
        ((3, 3), (0, 0)),
        ((0, 3), (0, 3)),
        ((1, 1), (0, 0)),
        ((0, 2), (1, 1)),
        ((2, 2), (3, 0)),
    ],
)
@pytest.mark.parametrize("mode", convolve.MODES)
def test_empty_inputs_like_scipy(image_shape, kernel_shape, mode):
    image, kernel = np.ones(image_shape, np.int16), np.full(kernel_shape, 2.0)
    for ours, theirs in PAIRS:
        expected = scipy_or_error(theirs, image, kernel, mode, fillvalue=3)
        if isinstance(expected, Exception):
            with pytest.raises(type(expected)):
                ours(image, kernel, mode, fillvalue=3)
            continue
        for method in convolve.METHODS:
            actual = ours(image, kernel, mode, fillvalue=3, method=method)
            assert actual.dtype == expected.dtype
            np.testing.assert_array_equal(actual, expected)
        loop = (
            convolve.convolve2d_loop if ours is convolve.convolve2d else convolve.correlate2d_loop
        )
        np.testing.assert_array_equal(loop(image, kernel, mode, fillvalue=3), expected)


def test_an_empty_image_cannot_be_wrapped():
    """SciPy divides by zero there (the process dies); cnnlab raises a ValueError."""
    for function in (convolve.convolve2d, convolve.correlate2d_loop):
        with pytest.raises(ValueError, match="cannot be extended"):
            function(np.ones((0, 3)), np.ones((2, 2)), "full", "wrap")
    assert convolve.convolve2d(np.ones((0, 3)), np.ones((2, 2)), "same", "wrap").shape == (0, 3)


# --- the loop reference -------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    problem=problems(max_image=6, max_kernel=4),
    mode=st.sampled_from(convolve.MODES),
    boundary=st.sampled_from(convolve.BOUNDARIES),
    stride=st.integers(1, 3),
    flip=st.booleans(),
    swap=st.booleans(),
    dtype=st.sampled_from(["float64", "float32", "complex128", "int16", "uint8"]),
)
def test_loop_reference_agrees_with_fast_paths(problem, mode, boundary, stride, flip, swap, dtype):
    image, kernel = problem[::-1] if swap else problem
    if dtype.startswith("complex"):
        image = image + 1j * image.T[: image.shape[0], : image.shape[1]].sum()
        kernel = kernel - 0.5j * kernel
    elif dtype in ("int16", "uint8"):
        image, kernel = np.rint(image * 10), np.rint(kernel * 10)
    image, kernel = image.astype(dtype), kernel.astype(dtype)
    loop, fast = (
        (convolve.convolve2d_loop, convolve.convolve2d)
        if flip
        else (convolve.correlate2d_loop, convolve.correlate2d)
    )
    options = {"mode": mode, "boundary": boundary, "fillvalue": 2, "stride": stride}
    try:
        expected = loop(image, kernel, **options)
    except ValueError:  # "valid" with neither input the larger
        with pytest.raises(ValueError):
            fast(image, kernel, **options)
        return
    for method in convolve.METHODS:
        actual = fast(image, kernel, method=method, **options)
        assert actual.dtype == expected.dtype
        if expected.dtype.kind in "iu":
            np.testing.assert_array_equal(actual, expected)
        else:
            assert_close(actual, expected, np.abs(image), np.abs(kernel), 1e-5)


def test_loop_reference_matches_scipy_on_the_reports_kernel():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (7, 9)).astype(np.float64)
    kernel = kernels.KERNELS["laplacian8"].array()
    for mode in convolve.MODES:
        np.testing.assert_allclose(
            convolve.correlate2d_loop(image, kernel, mode), signal.correlate2d(image, kernel, mode)
        )


# --- conventions --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_even_and_odd_kernels_centre_at_k_minus_1_over_2(size):
    """A unit tap at the documented centre leaves the image unchanged in same mode, both ways."""
    image = np.arange(42.0).reshape(6, 7)
    delta = np.zeros((size, size))
    delta[(size - 1) // 2, (size - 1) // 2] = 1.0
    np.testing.assert_array_equal(convolve.correlate2d(image, delta, "same"), image)
    np.testing.assert_array_equal(convolve.convolve2d(image, delta, "same"), image)
    np.testing.assert_array_equal(signal.convolve2d(image, delta, "same"), image)


def test_convolution_flips_and_correlation_does_not():
    image = np.zeros((5, 5))
    image[2, 2] = 1.0
    kernel = np.arange(9.0).reshape(3, 3)
    # An impulse's convolution draws the kernel; its correlation draws the kernel rotated 180°.
    np.testing.assert_array_equal(convolve.convolve2d(image, kernel, "same")[1:4, 1:4], kernel)
    np.testing.assert_array_equal(
        convolve.correlate2d(image, kernel, "same")[1:4, 1:4], kernel[::-1, ::-1]
    )


def test_correlation_conjugates_the_second_input():
    image = np.array([[1.0 + 2.0j]])
    np.testing.assert_array_equal(convolve.correlate2d(image, [[1j]]), [[(1.0 + 2.0j) * -1j]])
    np.testing.assert_array_equal(convolve.convolve2d(image, [[1j]]), [[(1.0 + 2.0j) * 1j]])


def test_sobel_x_is_positive_where_brightness_grows_to_the_right():
    ramp = np.tile(np.arange(8.0), (6, 1))
    inner = convolve.convolve2d(ramp, kernels.KERNELS["sobel-x"].array(), "valid")
    np.testing.assert_array_equal(inner, np.full((4, 6), 8.0))


def test_every_scipy_boundary_name_is_accepted():
    image, kernel = np.arange(20.0).reshape(4, 5), np.arange(6.0).reshape(2, 3)
    for name, canonical in convolve.BOUNDARY_ALIASES.items():
        assert canonical in convolve.BOUNDARIES
        if name != "reflect":  # cnnlab's own; SciPy refuses it
            np.testing.assert_array_equal(
                convolve.convolve2d(image, kernel, "same", name),
                signal.convolve2d(image, kernel, "same", name),
            )


def test_fft_and_direct_agree_on_a_large_kernel_and_a_separable_one():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (70, 90))
    for kernel in (rng.standard_normal((17, 13)), kernels.gaussian(15, 2.5)):
        direct = convolve.convolve2d(image, kernel, "same", method="direct")
        fft = convolve.convolve2d(image, kernel, "same", method="fft")
        assert_close(direct, fft, image, kernel)
        assert_close(direct, signal.convolve2d(image, kernel, "same"), image, kernel)


def test_auto_picks_direct_for_small_kernels_and_fft_for_large_dense_ones():
    rng = np.random.default_rng(2)
    assert convolve.choose_method((1024, 1024), rng.standard_normal((3, 3)), "same") == "direct"
    assert convolve.choose_method((1024, 1024), rng.standard_normal((31, 31)), "same") == "fft"
    assert convolve.choose_method((256, 256), rng.standard_normal((15, 15)), "same") == "fft"
    # A separable Gaussian costs 2k taps per pixel, not k^2: direct stays cheaper.
    assert convolve.choose_method((1024, 1024), kernels.gaussian(31, 5.0), "same") == "direct"


def test_next_fast_length():
    assert [fast.next_fast_length(n) for n in (1, 7, 13, 1054, 1031)] == [1, 7, 14, 1056, 1050]


def test_conv_needs_neither_torch_nor_scipy():
    code = "import sys, cnnlab.conv.convolve; print(sorted({'torch', 'scipy'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- bad input: SciPy's exception types ---------------------------------------------------------


BAD_CALLS = [
    ((3, 4), {}),
    (([3], [4]), {}),
    (([[[3]]], [[[4]]]), {}),
    ((np.ones((2, 3)), np.ones((3, 2))), {"mode": "valid"}),
    ((np.ones((0, 0)), np.ones((0, 0))), {}),
    ((np.ones((2, 2)), np.ones((2, 2))), {"mode": "middle"}),
    ((np.ones((2, 2)), np.ones((2, 2))), {"mode": None}),
    ((np.ones((2, 2)), np.ones((2, 2))), {"mode": ["full"]}),
    ((np.ones((2, 2)), np.ones((2, 2))), {"boundary": "mirror"}),
    ((np.ones((2, 2)), np.ones((2, 2))), {"boundary": ["fill"]}),
    ((np.ones((2, 2)), np.ones((2, 2))), {"fillvalue": 1j}),
    ((np.ones((2, 2)), np.ones((2, 2))), {"fillvalue": [1, 2]}),
    ((np.ones((2, 2)), np.ones((2, 2))), {"fillvalue": []}),
    ((np.ones((2, 2)), np.ones((2, 2))), {"fillvalue": "a"}),
    ((np.ones((2, 2)), np.ones((2, 2))), {"fillvalue": object()}),
    ((np.ones((2, 2), np.float32), np.ones((2, 2), np.float32)), {"fillvalue": np.array(1.5)}),
    ((np.ones((2, 2), np.uint8), np.ones((2, 2), np.uint8)), {"fillvalue": -1}),
    ((np.ones((2, 2), np.int64), np.ones((2, 2), np.int64)), {"fillvalue": np.nan}),
    (([[1, 2], [3]], [[1]]), {}),
    ((np.ones((2, 2), bool), np.ones((2, 2), bool)), {"fillvalue": []}),
]


@pytest.mark.parametrize(("arguments", "options"), BAD_CALLS)
@pytest.mark.filterwarnings("ignore:Casting complex values:numpy.exceptions.ComplexWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")
def test_bad_input_raises_what_scipy_raises(arguments, options):
    for ours, theirs in PAIRS:
        expected = scipy_or_error(theirs, *arguments, **options)
        assert isinstance(expected, Exception), "SciPy accepted it"
        kind = ValueError if isinstance(expected, ValueError) else TypeError
        assert isinstance(expected, kind)
        for function in (ours, convolve.convolve2d_loop):
            with pytest.raises(kind) as error:
                function(*arguments, **options)
            assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("image", "kernel", "options", "message"),
    [
        (np.zeros(5), np.ones((3, 3)), {}, "2-D"),
        (np.zeros((2, 2, 2, 2)), np.ones((3, 3)), {}, "2-D"),
        (np.zeros((5, 5)), np.ones(3), {}, "kernel must be"),
        (np.zeros((5, 5)), np.ones((3, 3, 2)), {}, "same C"),
        (np.zeros((5, 5, 3)), np.ones((3, 3, 2)), {}, "same C"),
        (np.zeros((4, 6, 1)), np.ones((5, 3)), {"mode": "valid"}, "larger than the image"),
        (np.zeros((5, 5)), np.ones((3, 3)), {"stride": 0}, "stride"),
        (np.zeros((5, 5)), np.ones((3, 3)), {"stride": 1.5}, "stride"),
        (np.zeros((5, 5)), np.ones((3, 3)), {"mode": "middle"}, "unknown mode"),
        (np.zeros((5, 5)), np.ones((3, 3)), {"boundary": "mirror"}, "unknown boundary"),
        (np.zeros((5, 5)), np.ones((3, 3)), {"method": "winograd"}, "unknown method"),
        (np.zeros((5, 5)), np.ones((3, 3)), {"fillvalue": 1j}, "could not cast `fillvalue`"),
        (np.array([["a"]]), np.ones((1, 1)), {}, "not available for this type"),
    ],
)
def test_channel_functions_and_cnnlab_options_fail_in_one_clear_line(
    image, kernel, options, message
):
    for function in (convolve.convolve_channels, convolve.correlate_channels):
        with pytest.raises(CnnlabError, match=message) as error:
            function(image, kernel, **options)
        assert "\n" not in str(error.value)


# --- named kernels and parsing ------------------------------------------------------------------


def test_the_reports_kernels_have_honest_names():
    assert kernels.parse_kernel("laplacian8")[1].sum() == 0  # an edge detector: flat areas -> 0
    assert kernels.parse_kernel("laplacian4-boost")[1].sum() == 4  # 4 x image + edges
    np.testing.assert_array_equal(
        kernels.parse_kernel("laplacian4-boost")[1],
        4 * kernels.parse_kernel("identity")[1] + kernels.parse_kernel("laplacian4")[1],
    )


@pytest.mark.parametrize(
    ("spec", "name", "shape", "total"),
    [
        ("box", "box3", (3, 3), 1.0),
        ("box:5", "box5", (5, 5), 1.0),
        ("gaussian", "gaussian5", (5, 5), 1.0),
        ("Gaussian:7:1.5", "gaussian7-1.5", (7, 7), 1.0),
        ("sharpen", "sharpen", (3, 3), 1.0),
        ("emboss", "emboss", (3, 3), 1.0),
        ("sobel-y", "sobel-y", (3, 3), 0.0),
        ("[[0,-1,0],[-1,8,-1],[0,-1,0]]", "literal", (3, 3), 4.0),
        ("[[1, 2.5]]", "literal", (1, 2), 3.5),
        ("((1, 2), (3, 4))", "literal", (2, 2), 10.0),
    ],
)
def test_parse_kernel(spec, name, shape, total):
    parsed_name, kernel = kernels.parse_kernel(spec)
    assert (parsed_name, kernel.shape) == (name, shape)
    assert kernel.sum() == pytest.approx(total)


def test_gaussian_is_normalised_symmetric_and_separable():
    kernel = kernels.gaussian(7, 1.5)
    assert kernel.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(kernel, kernel.T)
    assert fast.separable(kernel) is not None


def test_kernel_files(tmp_path):
    kernel = np.arange(6.0).reshape(2, 3)
    np.save(tmp_path / "mine.npy", kernel)
    np.savetxt(tmp_path / "yours.txt", kernel)
    assert kernels.parse_kernel(str(tmp_path / "mine.npy"))[0] == "mine"
    np.testing.assert_array_equal(kernels.parse_kernel(str(tmp_path / "mine.npy"))[1], kernel)
    np.testing.assert_array_equal(kernels.parse_kernel(str(tmp_path / "yours.txt"))[1], kernel)
    (tmp_path / "bad.txt").write_text("1 2\n3\n")
    with pytest.raises(CnnlabError, match="cannot read kernel file"):
        kernels.parse_kernel(str(tmp_path / "bad.txt"))
    with pytest.raises(CnnlabError, match="does not exist"):
        kernels.parse_kernel(str(tmp_path / "missing.npy"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("[[1, 2], [3]]", "not a numeric matrix"),
        ("[[1, 'a']]", "not a numeric matrix"),
        ("[[[1]]]", "not a numeric matrix"),
        ("[1, 2, 3]", "not a numeric matrix"),
        ("[]", "not a numeric matrix"),
        ("[[true, 1]]", "not a numeric matrix"),
        ("[[1, NaN]]", "NaN or inf"),
        ("[[1, 2]", "cannot read kernel literal"),
        ("[__import__('os').getcwd()]", "cannot read kernel literal"),
        ("blur", "known kernels: identity, laplacian8"),
        ("box:x", "expected box"),
        ("gaussian:5:0", "sigma must be a positive"),
        ("box:0", "size must be an integer"),
    ],
)
def test_bad_kernel_specs(spec, message):
    with pytest.raises(CnnlabError, match=message) as error:
        kernels.parse_kernel(spec)
    assert "\n" not in str(error.value)
