"""conv.py against scipy.signal, scipy.ndimage and torch in float64, and against its loops."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage, signal

from cnnlab import conv
from cnnlab.errors import CnnlabError

SETTINGS = settings(max_examples=100, deadline=None)
SCIPY_SIGNAL_BOUNDARY = {"fill": "fill", "symmetric": "symm", "wrap": "wrap"}
NDIMAGE_MODE = {
    "fill": "constant",
    "reflect": "mirror",
    "symmetric": "reflect",
    "wrap": "grid-wrap",
}


def assert_close(actual: np.ndarray, expected: np.ndarray, image, kernel) -> None:
    """1e-10 relative to the largest possible output, sum |kernel| x max |image|."""
    scale = max(np.abs(kernel).sum() * max(np.abs(image).max(), 1.0), 1.0)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-10 * scale)


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
    mode=st.sampled_from(conv.MODES),
    boundary=st.sampled_from(sorted(SCIPY_SIGNAL_BOUNDARY)),
    method=st.sampled_from(conv.METHODS),
    fillvalue=st.sampled_from([0.0, 1.5]),
)
def test_matches_scipy_signal(problem, mode, boundary, method, fillvalue):
    image, kernel = problem
    if mode == "valid" and not fits_valid(image, kernel):
        return
    options = {"boundary": SCIPY_SIGNAL_BOUNDARY[boundary], "fillvalue": fillvalue}
    expected_convolution = signal.convolve2d(image, kernel, mode, **options)
    expected_correlation = signal.correlate2d(image, kernel, mode, **options)
    ours = {"mode": mode, "boundary": boundary, "fillvalue": fillvalue, "method": method}
    assert_close(conv.convolve2d(image, kernel, **ours), expected_convolution, image, kernel)
    assert_close(conv.correlate2d(image, kernel, **ours), expected_correlation, image, kernel)


@SETTINGS
@given(
    problem=problems(),
    boundary=st.sampled_from(conv.BOUNDARIES),
    method=st.sampled_from(["direct", "fft"]),
)
def test_same_mode_matches_scipy_ndimage_for_every_boundary(problem, boundary, method):
    image, kernel = problem
    # ndimage centres an even kernel at k // 2; scipy.signal (and cnnlab) at (k - 1) // 2.
    origin = [-(1 - size % 2) for size in kernel.shape]
    expected = ndimage.correlate(
        image, kernel, mode=NDIMAGE_MODE[boundary], cval=2.0, origin=origin
    )
    actual = conv.correlate2d(image, kernel, "same", boundary, fillvalue=2.0, method=method)
    assert_close(actual, expected, image, kernel)


@SETTINGS
@given(
    problem=problems(max_image=12),
    mode=st.sampled_from(conv.MODES),
    stride=st.integers(1, 4),
    method=st.sampled_from(["direct", "fft"]),
)
def test_stride_matches_torch_conv2d(problem, mode, stride, method):
    image, kernel = problem
    if mode == "valid" and not fits_valid(image, kernel):
        return
    before = [conv._padding(size, mode, flipped=False)[0] for size in kernel.shape]
    after = [
        size - 1 - b if mode == "same" else b for size, b in zip(kernel.shape, before, strict=True)
    ]
    padded = F.pad(torch.from_numpy(image)[None, None], (before[1], after[1], before[0], after[0]))
    # torch.nn.functional.conv2d computes a cross-correlation.
    expected = F.conv2d(padded, torch.from_numpy(kernel)[None, None], stride=stride)[0, 0].numpy()
    actual = conv.correlate2d(image, kernel, mode, stride=stride, method=method)
    assert_close(actual, expected, image, kernel)


@SETTINGS
@given(problem=problems(channels=True), stride=st.integers(1, 3), summed=st.booleans())
def test_channels_match_torch_conv2d(problem, stride, summed):
    image, kernel = problem
    channels = image.shape[2]
    torch_image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, 2, 0)))[None]
    pads = [conv._padding(size, "same", flipped=False) for size in kernel.shape]
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
        actual = conv.correlate2d(image, kernel, "same", stride=stride, method=method)
        assert_close(actual, expected, image, kernel)


# --- the loop reference -------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    problem=problems(max_image=6, max_kernel=4, channels=True),
    mode=st.sampled_from(conv.MODES),
    boundary=st.sampled_from(conv.BOUNDARIES),
    stride=st.integers(1, 3),
    flip=st.booleans(),
)
def test_loop_reference_agrees_with_fast_paths(problem, mode, boundary, stride, flip):
    image, kernel = problem
    if mode == "valid" and not fits_valid(image, kernel):
        return
    loop, fast = (
        (conv.convolve2d_loop, conv.convolve2d)
        if flip
        else (conv.correlate2d_loop, conv.correlate2d)
    )
    options = {"mode": mode, "boundary": boundary, "fillvalue": -0.5, "stride": stride}
    expected = loop(image, kernel, **options)
    for method in conv.METHODS:
        assert_close(fast(image, kernel, method=method, **options), expected, image, kernel)


def test_loop_reference_matches_scipy_on_the_reports_kernel():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (7, 9)).astype(np.float64)
    kernel = conv.KERNELS["laplacian8"].array()
    np.testing.assert_allclose(
        conv.correlate2d_loop(image, kernel), signal.correlate2d(image, kernel, "same")
    )


# --- conventions --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_even_and_odd_kernels_centre_at_k_minus_1_over_2(size):
    """A unit tap at the documented centre leaves the image unchanged in same mode, both ways."""
    image = np.arange(42.0).reshape(6, 7)
    delta = np.zeros((size, size))
    delta[(size - 1) // 2, (size - 1) // 2] = 1.0
    np.testing.assert_array_equal(conv.correlate2d(image, delta), image)
    np.testing.assert_array_equal(conv.convolve2d(image, delta), image)
    np.testing.assert_array_equal(signal.convolve2d(image, delta, "same"), image)


def test_convolution_flips_and_correlation_does_not():
    image = np.zeros((5, 5))
    image[2, 2] = 1.0
    kernel = np.arange(9.0).reshape(3, 3)
    # An impulse's convolution draws the kernel; its correlation draws the kernel rotated 180°.
    np.testing.assert_array_equal(conv.convolve2d(image, kernel)[1:4, 1:4], kernel)
    np.testing.assert_array_equal(conv.correlate2d(image, kernel)[1:4, 1:4], kernel[::-1, ::-1])


def test_sobel_x_is_positive_where_brightness_grows_to_the_right():
    ramp = np.tile(np.arange(8.0), (6, 1))
    inner = conv.convolve2d(ramp, conv.KERNELS["sobel-x"].array(), "valid")
    np.testing.assert_array_equal(inner, np.full((4, 6), 8.0))


def test_fft_and_direct_agree_on_a_large_kernel_and_a_separable_one():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (70, 90))
    for kernel in (rng.standard_normal((17, 13)), conv.gaussian(15, 2.5)):
        direct = conv.convolve2d(image, kernel, method="direct")
        fft = conv.convolve2d(image, kernel, method="fft")
        assert_close(direct, fft, image, kernel)
        assert_close(direct, signal.convolve2d(image, kernel, "same"), image, kernel)


def test_auto_picks_direct_for_small_kernels_and_fft_for_large_dense_ones():
    rng = np.random.default_rng(2)
    assert conv.choose_method((1024, 1024), rng.standard_normal((3, 3))) == "direct"
    assert conv.choose_method((1024, 1024), rng.standard_normal((31, 31))) == "fft"
    assert conv.choose_method((256, 256), rng.standard_normal((15, 15))) == "fft"
    # A separable Gaussian costs 2k taps per pixel, not k^2: direct stays cheaper.
    assert conv.choose_method((1024, 1024), conv.gaussian(31, 5.0)) == "direct"


def test_nan_in_the_image_stays_local_with_auto_and_is_refused_by_fft():
    image = np.ones((40, 40))
    image[5, 5] = np.nan
    result = conv.convolve2d(image, np.ones((21, 21)))  # large enough that auto would pick fft
    assert np.isnan(result[5, 5]) and np.isfinite(result[35, 35])
    with pytest.raises(CnnlabError, match="NaN"):
        conv.convolve2d(image, np.ones((3, 3)), method="fft")


def test_integer_input_gives_float64():
    result = conv.convolve2d(np.arange(16, dtype=np.uint8).reshape(4, 4), [[-1, 1]])
    assert result.dtype == np.float64
    assert result.min() < 0  # no uint8 wrap-around


def test_next_fast_length():
    assert [conv._next_fast_length(n) for n in (1, 7, 13, 1054, 1031)] == [1, 7, 14, 1056, 1050]


def test_conv_needs_neither_torch_nor_scipy():
    code = "import sys, cnnlab.conv; print(sorted({'torch', 'scipy'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "kernel", "options", "message"),
    [
        (np.zeros((0, 4)), np.ones((3, 3)), {}, "empty"),
        (np.zeros(5), np.ones((3, 3)), {}, "2-D"),
        (np.zeros((2, 2, 2, 2)), np.ones((3, 3)), {}, "2-D"),
        (np.zeros((5, 5)), np.ones(3), {}, "kernel must be"),
        (np.zeros((5, 5)), np.zeros((0, 3)), {}, "kernel must be"),
        (np.zeros((5, 5)), [[1.0, np.nan]], {}, "NaN or inf"),
        (np.zeros((5, 5)), [[1.0, np.inf]], {}, "NaN or inf"),
        (np.zeros((5, 5)), np.ones((3, 3, 2)), {}, "same C"),
        (np.zeros((5, 5, 3)), np.ones((3, 3, 2)), {}, "same C"),
        (np.zeros((4, 6)), np.ones((5, 3)), {"mode": "valid"}, "larger than the image"),
        (np.zeros((5, 5)), np.ones((3, 3)), {"stride": 0}, "stride"),
        (np.zeros((5, 5)), np.ones((3, 3)), {"stride": 1.5}, "stride"),
        (np.zeros((5, 5)), np.ones((3, 3)), {"mode": "middle"}, "unknown mode"),
        (np.zeros((5, 5)), np.ones((3, 3)), {"boundary": "mirror"}, "unknown boundary"),
        (np.zeros((5, 5)), np.ones((3, 3)), {"method": "winograd"}, "unknown method"),
        (np.zeros((5, 5)), np.ones((3, 3)), {"fillvalue": np.nan}, "fillvalue"),
        (np.array([["a"]]), np.ones((1, 1)), {}, "real numbers"),
    ],
)
def test_bad_input_is_one_clear_error(image, kernel, options, message):
    functions = [conv.convolve2d, conv.correlate2d]
    if "method" not in options:
        functions.append(conv.correlate2d_loop)
    for function in functions:
        with pytest.raises(CnnlabError, match=message) as error:
            function(image, kernel, **options)
        assert "\n" not in str(error.value)


# --- named kernels and parsing ------------------------------------------------------------------


def test_the_reports_kernels_have_honest_names():
    assert conv.parse_kernel("laplacian8")[1].sum() == 0  # an edge detector: flat areas -> 0
    assert conv.parse_kernel("laplacian4-boost")[1].sum() == 4  # 4 x image + edges
    np.testing.assert_array_equal(
        conv.parse_kernel("laplacian4-boost")[1],
        4 * conv.parse_kernel("identity")[1] + conv.parse_kernel("laplacian4")[1],
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
    parsed_name, kernel = conv.parse_kernel(spec)
    assert (parsed_name, kernel.shape) == (name, shape)
    assert kernel.sum() == pytest.approx(total)


def test_gaussian_is_normalised_symmetric_and_separable():
    kernel = conv.gaussian(7, 1.5)
    assert kernel.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(kernel, kernel.T)
    assert conv._separable(kernel) is not None


def test_kernel_files(tmp_path):
    kernel = np.arange(6.0).reshape(2, 3)
    np.save(tmp_path / "mine.npy", kernel)
    np.savetxt(tmp_path / "yours.txt", kernel)
    assert conv.parse_kernel(str(tmp_path / "mine.npy"))[0] == "mine"
    np.testing.assert_array_equal(conv.parse_kernel(str(tmp_path / "mine.npy"))[1], kernel)
    np.testing.assert_array_equal(conv.parse_kernel(str(tmp_path / "yours.txt"))[1], kernel)
    (tmp_path / "bad.txt").write_text("1 2\n3\n")
    with pytest.raises(CnnlabError, match="cannot read kernel file"):
        conv.parse_kernel(str(tmp_path / "bad.txt"))
    with pytest.raises(CnnlabError, match="does not exist"):
        conv.parse_kernel(str(tmp_path / "missing.npy"))


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
        conv.parse_kernel(spec)
    assert "\n" not in str(error.value)
