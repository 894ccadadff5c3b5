"""`cnnlab convolve` end to end, and the image side (imaging.py) it stands on."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.conv import convolve, imaging, kernels


def write_png(path, pixels) -> None:
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)


def read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def run(argv, capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def photo(tmp_path):
    """A 20 x 30 RGB image with a bright square: edges in every channel, differently."""
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    pixels[..., 0] = 40
    pixels[5:15, 8:22] = (250, 120, 10)
    path = tmp_path / "photo.png"
    write_png(path, pixels)
    return path


# --- the command --------------------------------------------------------------------------------


def test_samples_with_the_reports_kernels(tmp_path, capsys):
    out = tmp_path / "out"
    chosen = ["--kernel", "laplacian8", "--kernel", "laplacian4-boost"]
    code, stdout, _ = run(["convolve", "--sample", *chosen, "--out", str(out)], capsys)
    assert code == 0
    expected = {
        f"{stem}_{name}.png"
        for stem in ("sample-shapes", "sample-mosaic")
        for name in ("laplacian8", "laplacian4-boost", "figure")
    }
    assert {path.name for path in out.iterdir()} == expected
    assert len(stdout.splitlines()) == 6
    # The written pixels are the red channel's convolution, clipped like cv2.imwrite.
    red = imaging.draw_shapes()[..., 0].astype(np.float64)
    laplacian = convolve.convolve2d(red, kernels.KERNELS["laplacian8"].array(), "same")
    expected_pixels = np.clip(np.rint(laplacian), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(read_png(out / "sample-shapes_laplacian8.png"), expected_pixels)
    figure = read_png(out / "sample-shapes_figure.png")
    assert figure.shape[1] > 3 * figure.shape[0] / 2  # three panels side by side


def test_through_a_subprocess(tmp_path):
    options = ["--kernel", "sobel-x", "--kernel", "[[1,0],[0,-1]]", "--scale", "abs"]
    done = subprocess.run(
        [sys.executable, "-m", "cnnlab", "convolve", "--sample", *options, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "sample-mosaic_kernel2.png").is_file()
    assert read_png(tmp_path / "sample-mosaic_sobel-x.png").max() == 255  # abs keeps both signs


def test_all_channels_give_rgb_and_gray_gives_luma(photo, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["convolve", str(photo), "--kernel", "identity", "--out", str(out)]
    assert run([*argv, "--channel", "all"], capsys)[0] == 0
    np.testing.assert_array_equal(read_png(out / "photo_identity.png"), read_png(photo))
    assert run([*argv, "--channel", "gray"], capsys)[0] == 0
    gray = read_png(out / "photo_identity.png")
    assert gray.ndim == 2
    assert gray[10, 10] == round(0.299 * 250 + 0.587 * 120 + 0.114 * 10)


def test_valid_mode_correlate_and_a_kernel_file(photo, tmp_path, capsys):
    kernel_file = tmp_path / "diff.npy"
    np.save(kernel_file, np.array([[1.0, -1.0]]))
    out = tmp_path / "out"
    argv = ["convolve", str(photo), "--kernel", str(kernel_file), "--mode", "valid"]
    code, _, _ = run([*argv, "--correlate", "--scale", "stretch", "--out", str(out)], capsys)
    assert code == 0
    pixels = read_png(out / "photo_diff.png")
    assert pixels.shape == (20, 29)
    assert (pixels.min(), pixels.max()) == (0, 255)  # stretched to the full range


def test_duplicate_kernels_get_distinct_files(tmp_path, capsys):
    argv = ["convolve", "--sample", "--kernel", "box", "--kernel", "box:3", "--out", str(tmp_path)]
    assert run(argv, capsys)[0] == 0
    assert (tmp_path / "sample-shapes_box3.png").is_file()
    assert (tmp_path / "sample-shapes_box3-2.png").is_file()


# --- bad input: one line, exit 2, no files ------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("text-as-png", "is not an image"),
        ("missing", "does not exist"),
        ("directory", "is a directory"),
        ("empty-array", "non-empty H x W"),
        ("1d-array", "non-empty H x W"),
        ("nan-literal", "NaN or inf"),
        ("not-a-matrix", "not a numeric matrix"),
        ("unknown-name", "known kernels: identity, laplacian8"),
        ("larger-than-image", "larger than the image"),
        ("no-input", "at least one IMAGE"),
    ],
)
def test_bad_input(case, message, photo, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    images, kernel = [str(photo)], "laplacian8"
    if case == "text-as-png":
        (bad / "notes.png").write_text("not a picture")
        images.append(str(bad / "notes.png"))
    elif case == "missing":
        images.append(str(bad / "nowhere.png"))
    elif case == "directory":
        images.append(str(bad))
    elif case == "empty-array":
        np.save(bad / "empty.npy", np.zeros((0, 3)))
        images.append(str(bad / "empty.npy"))
    elif case == "1d-array":
        np.save(bad / "line.npy", np.arange(5.0))
        images.append(str(bad / "line.npy"))
    elif case == "nan-literal":
        kernel = "[[1, NaN]]"
    elif case == "not-a-matrix":
        kernel = "[[1, 2], [3]]"
    elif case == "unknown-name":
        kernel = "blur"
    elif case == "larger-than-image":
        kernel = "gaussian:25"
    elif case == "no-input":
        images = []
    out = tmp_path / "out"
    # A good first kernel, the bad case second: still nothing may be written.
    argv = ["convolve", *images, "--kernel", "sharpen", "--kernel", kernel, "--out", str(out)]
    code, stdout, stderr = run([*argv, "--mode", "valid"], capsys)
    assert code == 2
    assert stderr.startswith("cnnlab: error: ") and message in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert stdout == ""


def test_out_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("")
    code, _, stderr = run(["convolve", "--sample", "--kernel", "box", "--out", str(target)], capsys)
    assert code == 2 and "exists and is not a folder" in stderr


# --- imaging ------------------------------------------------------------------------------------


def test_to_uint8_rules():
    values = np.array([-300.0, -1.4, 0.5, 1.5, 254.6, 999.0])
    np.testing.assert_array_equal(imaging.to_uint8(values, "clip"), [0, 0, 0, 2, 255, 255])
    np.testing.assert_array_equal(imaging.to_uint8(values, "abs"), [255, 1, 0, 2, 255, 255])
    stretched = imaging.to_uint8(values, "stretch")
    assert (stretched[0], stretched[-1]) == (0, 255)
    assert np.all(np.diff(stretched.astype(int)) >= 0)
    np.testing.assert_array_equal(imaging.to_uint8(np.full(3, 7.0), "stretch"), [0, 0, 0])


def test_select_channel(photo):
    image = imaging.read_image(photo)
    assert image.dtype == np.float64 and image.shape == (20, 30, 3)
    assert imaging.select_channel(image, "green")[10, 10] == 120
    assert imaging.select_channel(image, "gray")[10, 10] == pytest.approx(
        0.299 * 250 + 0.587 * 120 + 0.114 * 10
    )
    assert imaging.select_channel(image, "all").shape == (20, 30, 3)


def test_read_image_applies_exif_rotation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.new("RGB", (30, 20), (200, 10, 10)).save(tmp_path / "phone.jpg", exif=exif)
    assert imaging.read_image(tmp_path / "phone.jpg").shape == (30, 20, 3)


def test_samples_are_deterministic_with_hard_edges_and_many_tiles():
    shapes, mosaic = imaging.draw_shapes(), imaging.draw_mosaic()
    assert shapes.shape == mosaic.shape == (*imaging.SAMPLE_SIZE, 3)
    np.testing.assert_array_equal(mosaic, imaging.draw_mosaic())
    # Hard edges: neighbouring pixels either agree or jump (no anti-aliased ramps).
    steps = np.abs(np.diff(shapes.astype(int), axis=1)).max(axis=2)
    assert np.mean((steps > 0) & (steps < 20)) < 0.002
    assert len(np.unique(shapes.reshape(-1, 3), axis=0)) < 20
    assert len(np.unique(mosaic.reshape(-1, 3), axis=0)) > 150  # every tessera its own shade
