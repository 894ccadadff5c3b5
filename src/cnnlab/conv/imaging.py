"""The image side of `cnnlab convolve`: read images, pick channels, draw samples, write 8-bit PNGs.

Images are float64 arrays in 0..255 (H x W x 3, or H x W for single-channel .npy files), so a
kernel's output keeps its true range until `to_uint8` turns it into pixels, by an explicit rule.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from cnnlab import atomic
from cnnlab.atomic import atomic_path, check_folder_target
from cnnlab.conv import convolve, kernels
from cnnlab.errors import CnnlabError

CHANNELS = ("red", "green", "blue", "gray", "all")
SCALES = ("clip", "abs", "stretch")
# ITU-R BT.601 luma, the weights of Pillow's "L" mode and OpenCV's BGR2GRAY.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
SAMPLE_SIZE = (240, 320)  # height, width of the drawn samples
MAX_IMAGE_PIXELS = 4096 * 4096  # an RGB float64 copy is 400 MB, and each result as much again
MAX_IMAGE_FILE_BYTES = 256 << 20  # a PNG of that many pixels, barely compressed


# --- reading and channels -----------------------------------------------------------------------


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """A float64 image in 0..255: H x W x 3 from any Pillow format, H x W [x 3] from a .npy file."""
    path = Path(path)
    if not path.exists():
        raise CnnlabError(f"image {path} does not exist")
    if path.is_dir():
        raise CnnlabError(f"image {path} is a directory, not an image file")
    if path.suffix.lower() == ".npy":
        return _read_array(path)
    content = atomic.read_regular(path, MAX_IMAGE_FILE_BYTES, "an image file")
    try:
        with _bombs_refused(), Image.open(io.BytesIO(content)) as opened:
            _check_pixels(
                path, opened.size[0] * opened.size[1], f"{opened.size[0]}x{opened.size[1]}"
            )
            upright = ImageOps.exif_transpose(opened)  # phone photos store their rotation in EXIF
            rgb = np.asarray(upright.convert("RGB"), dtype=np.float64)
    except UnidentifiedImageError:
        raise CnnlabError(f"{path} is not an image Pillow can read (PNG, JPEG, ...)") from None
    except (
        OSError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as error:
        raise CnnlabError(f"cannot read image {path}: {_first_line(error)}") from None
    if rgb.size == 0:
        raise CnnlabError(f"image {path} has no pixels")
    return rgb


@contextlib.contextmanager
def _bombs_refused() -> Iterator[None]:
    """Pillow's decompression-bomb warning (printed, then the image decoded) as an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _check_pixels(path: Path, pixels: int, size: str) -> None:
    if pixels > MAX_IMAGE_PIXELS:
        raise CnnlabError(
            f"image {path} is {size}: more than {MAX_IMAGE_PIXELS:,} pixels (4096 x 4096)"
            " would not fit in memory with its results; scale it down first"
        )


def _read_array(path: Path) -> np.ndarray:
    kernels.check_npy_size(path, MAX_IMAGE_PIXELS * 3, "array")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CnnlabError(f"cannot read array {path}: {_first_line(error)}") from None
    if array.dtype.kind not in "biuf":
        raise CnnlabError(f"array {path} holds {array.dtype}, not real numbers")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.size == 0 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise CnnlabError(
            f"array {path} has shape {array.shape}; expected a non-empty H x W or H x W x 3 image"
        )
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise CnnlabError(f"array {path} contains NaN or inf")
    return array


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def select_channel(image: np.ndarray, channel: str) -> np.ndarray:
    """One channel (red/green/blue), ITU-R 601 luma (gray), or all three (H x W x 3)."""
    if channel not in CHANNELS:
        raise CnnlabError(f"unknown channel {channel!r}; choose one of {', '.join(CHANNELS)}")
    if image.ndim == 2:
        return image  # a single-channel image is its own red, green, blue and gray
    if channel == "all":
        return image
    if channel == "gray":
        return image[:, :, :3] @ np.array(LUMA_WEIGHTS)
    return image[:, :, ("red", "green", "blue").index(channel)]


# --- float -> 8 bit -----------------------------------------------------------------------------


def to_uint8(values: np.ndarray, scale: str) -> np.ndarray:
    """8-bit pixels from a float result: clip to 0..255, |value| clipped, or stretch min..max.

    "clip" is what the report's cv2.imwrite did (round, then saturate); it shows only positive
    responses. "abs" shows both signs of an edge as bright. "stretch" maps the minimum to 0 and the
    maximum to 255 over all channels together (a constant result becomes 0).
    """
    if scale not in SCALES:
        raise CnnlabError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if scale == "abs":
        values = np.abs(values)
    elif scale == "stretch":
        low, high = float(values.min()), float(values.max())
        span = high - low
        values = (values - low) * (255.0 / span) if span > 0 else np.zeros_like(values)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def write_png(path: str | os.PathLike[str], pixels: np.ndarray) -> None:
    """Write an H x W (gray) or H x W x 3 (RGB) uint8 array as a PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


# --- the drawn samples --------------------------------------------------------------------------


def draw_shapes(size: tuple[int, int] = SAMPLE_SIZE) -> np.ndarray:
    """A geometric scene with hard edges at many angles: sun, house, roof, tree, stripes, tiles."""
    height, width = size
    image = Image.new("RGB", (width, height), (150, 200, 235))
    draw = ImageDraw.Draw(image)

    def at(x: float, y: float) -> tuple[int, int]:  # fractions of the frame -> pixels
        return round(x * width), round(y * height)

    draw.rectangle([at(0, 0.72), at(1, 1)], fill=(90, 150, 70))  # meadow
    draw.ellipse([at(0.76, 0.07), at(0.92, 0.29)], fill=(250, 215, 60))  # sun
    draw.rectangle([at(0.14, 0.42), at(0.46, 0.80)], fill=(200, 70, 55))  # house
    draw.polygon([at(0.10, 0.43), at(0.30, 0.18), at(0.50, 0.43)], fill=(110, 60, 45))  # roof
    for column in range(2):  # windows
        left = 0.18 + column * 0.16
        draw.rectangle([at(left, 0.50), at(left + 0.08, 0.60)], fill=(240, 240, 210))
    draw.rectangle([at(0.26, 0.64), at(0.33, 0.80)], fill=(60, 40, 30))  # door
    draw.rectangle([at(0.64, 0.55), at(0.67, 0.80)], fill=(100, 70, 40))  # trunk
    draw.polygon([at(0.57, 0.60), at(0.655, 0.30), at(0.74, 0.60)], fill=(30, 100, 45))  # tree
    for stripe in range(6):  # a striped fence: many parallel edges
        left = 0.76 + stripe * 0.035
        draw.rectangle([at(left, 0.62), at(left + 0.017, 0.80)], fill=(245, 245, 245))
    for row in range(3):  # a checkerboard path: corners
        for column in range(8):
            if (row + column) % 2 == 0:
                top, left = 0.86 + row * 0.045, 0.05 + column * 0.045
                draw.rectangle([at(left, top), at(left + 0.045, top + 0.045)], fill=(40, 40, 40))
    draw.line([at(0.02, 0.10), at(0.40, 0.02)], fill=(255, 255, 255), width=3)  # a thin diagonal
    return np.asarray(image)


def draw_mosaic(size: tuple[int, int] = SAMPLE_SIZE, seed: int = 8) -> np.ndarray:
    """A mosaic-like tiling: irregular tesserae (Voronoi cells of a jittered grid) with grout."""
    height, width = size
    rng = np.random.default_rng(seed)
    cell = 14  # tessera size in pixels
    rows, columns = -(-height // cell) + 2, -(-width // cell) + 2
    grid_y, grid_x = np.mgrid[-1 : rows - 1, -1 : columns - 1]
    seeds_y = (grid_y + 0.5 + rng.uniform(-0.35, 0.35, grid_y.shape)) * cell
    seeds_x = (grid_x + 0.5 + rng.uniform(-0.35, 0.35, grid_x.shape)) * cell
    # For each pixel, the nearest and second-nearest seed among its 3 x 3 neighbouring cells.
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cell_y, cell_x = (y // cell).astype(int) + 1, (x // cell).astype(int) + 1
    distances, labels = [], []
    for offset_y in (-1, 0, 1):
        for offset_x in (-1, 0, 1):
            index_y = np.clip(cell_y + offset_y, 0, rows - 1)
            index_x = np.clip(cell_x + offset_x, 0, columns - 1)
            distances.append(np.hypot(seeds_y[index_y, index_x] - y, seeds_x[index_y, index_x] - x))
            labels.append(index_y * columns + index_x)
    distances, labels = np.array(distances), np.array(labels)
    order = np.argsort(distances, axis=0)
    nearest = np.take_along_axis(distances, order[:1], axis=0)[0]
    second = np.take_along_axis(distances, order[1:2], axis=0)[0]
    label = np.take_along_axis(labels, order[:1], axis=0)[0]
    # Colour each tessera by where its seed lies: rings of a medallion around the centre,
    # with a wave border, on a cream field.
    palette = np.array(
        [
            (232, 220, 190),  # cream
            (180, 70, 45),  # terracotta
            (215, 160, 60),  # ochre
            (60, 85, 120),  # slate blue
            (35, 35, 40),  # black
        ],
        dtype=np.float64,
    )
    centre_y, centre_x = height / 2, width / 2
    radius = np.hypot(seeds_y - centre_y, seeds_x - centre_x) / (0.46 * height)
    angle = np.arctan2(seeds_y - centre_y, seeds_x - centre_x)
    colour_index = np.zeros(seeds_y.shape, dtype=int)
    colour_index[radius < 1.0] = 3
    colour_index[radius < 0.8] = 2
    colour_index[(radius < 0.62) & (np.cos(6 * angle) > 0)] = 1
    colour_index[radius < 0.3] = 4
    border = np.minimum(seeds_y, height - seeds_y) < 1.6 * cell
    colour_index[border] = 1 + (np.floor(seeds_x[border] / (2 * cell)).astype(int) % 2)
    shade = rng.uniform(0.88, 1.08, seeds_y.shape)  # no two tesserae quite alike
    colours = palette[colour_index] * shade[..., None]
    image = colours.reshape(-1, 3)[label]
    grout = (second - nearest) < 2.2
    image[grout] = (95, 90, 85)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


SAMPLES = {"sample-shapes": draw_shapes, "sample-mosaic": draw_mosaic}


# --- the convolve command -----------------------------------------------------------------------


@dataclass(frozen=True)
class Filtered:
    """One kernel's result on one image: the float values and the 8-bit pixels written."""

    kernel_name: str
    kernel: np.ndarray
    values: np.ndarray
    pixels: np.ndarray


@dataclass(frozen=True)
class ImageResults:
    """Everything `cnnlab convolve` writes for one input image."""

    stem: str
    image: np.ndarray  # float64, 0..255, as read
    channel_image: np.ndarray  # the channel(s) the kernels saw
    results: list[Filtered]


def load_inputs(paths: Sequence[str], use_samples: bool) -> list[tuple[str, np.ndarray]]:
    """(unique stem, float image) for each path, then the two drawn samples if asked."""
    if not paths and not use_samples:
        raise CnnlabError("give at least one IMAGE, or --sample to use the two drawn samples")
    inputs = [(Path(path).stem, read_image(path)) for path in paths]
    if use_samples:
        inputs += [(name, draw().astype(np.float64)) for name, draw in SAMPLES.items()]
    stems = _unique([stem for stem, _ in inputs])
    return [(stem, image) for stem, (_, image) in zip(stems, inputs, strict=True)]


def parse_kernels(specs: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """(unique file-safe name, kernel) per --kernel; literals are named kernel1, kernel2, ..."""
    parsed = []
    for position, spec in enumerate(specs, start=1):
        name, kernel = kernels.parse_kernel(spec)
        parsed.append((f"kernel{position}" if name == "literal" else name, kernel))
    names = _unique([_file_safe(name) for name, _ in parsed])
    return [(name, kernel) for name, (_, kernel) in zip(names, parsed, strict=True)]


def filter_images(
    inputs: Sequence[tuple[str, np.ndarray]],
    kernels: Sequence[tuple[str, np.ndarray]],
    channel: str = "red",
    mode: str = "same",
    boundary: str = "fill",
    scale: str = "clip",
    correlate: bool = False,
) -> list[ImageResults]:
    """Apply every kernel to every input, in memory: any bad combination fails before writing.

    The images are filtered in float64 with every option explicit ("same" is this command's
    default, where conv's SciPy-compatible default is "full"): float results, never an 8-bit
    sum wrapping around, until `to_uint8` turns them into pixels by its explicit rule.
    """
    function = convolve.correlate_channels if correlate else convolve.convolve_channels
    everything = []
    for stem, image in inputs:
        channel_image = select_channel(image, channel)
        pixels = np.asarray(channel_image, dtype=np.float64)
        results = []
        for name, kernel in kernels:
            weights = np.asarray(kernel, dtype=np.float64)
            try:
                values = function(pixels, weights, mode=mode, boundary=boundary, fillvalue=0.0)
            except CnnlabError as error:
                raise CnnlabError(f"{stem}, kernel {name}: {error}") from None
            results.append(Filtered(name, kernel, values, to_uint8(values, scale)))
        everything.append(ImageResults(stem, image, channel_image, results))
    return everything


def write_results(
    everything: Sequence[ImageResults], out_dir: str | os.PathLike[str], caption: str
) -> list[Path]:
    """Write <stem>_<kernel>.png per result and <stem>_figure.png per image; return the paths."""
    from cnnlab.plots import convolution_figure, save_figure  # matplotlib only when writing

    out_dir = Path(out_dir)
    check_folder_target(out_dir, "--out")
    written = []
    for item in everything:
        for result in item.results:
            path = out_dir / f"{item.stem}_{result.kernel_name}.png"
            write_png(path, result.pixels)
            written.append(path)
        figure = convolution_figure(
            item.image.clip(0, 255).astype(np.uint8),
            [(result.kernel_name, result.kernel, result.pixels) for result in item.results],
            title=f"{item.stem}: {caption}",
        )
        path = out_dir / f"{item.stem}_figure.png"
        save_figure(figure, path)
        written.append(path)
    return written


def _file_safe(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return safe or "kernel"


def _unique(names: list[str]) -> list[str]:
    """The names with -2, -3, ... appended to repeats, so no output overwrites another."""
    used: set[str] = set()
    unique = []
    for name in names:
        candidate, count = name, 1
        while candidate in used:
            count += 1
            candidate = f"{name}-{count}"
        used.add(candidate)
        unique.append(candidate)
    return unique
