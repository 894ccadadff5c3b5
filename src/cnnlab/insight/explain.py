"""`cnnlab explain`: a trained run's feature maps, first-layer kernels and attributions, as PNGs
and one self-contained HTML page.

The images come from files (`--image`), the run's test set (`--test-index`), or by default the
misclassified test images the run folder keeps. The output folder is written whole or not at all
(`atomic.atomic_folder`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab import atomic, plots
from cnnlab.errors import CnnlabError
from cnnlab.insight import figures
from cnnlab.insight.attribution import (
    ImageInsight,
    class_count,
    conv_layers,
    explain_image,
    named_layer,
)
from cnnlab.insight.explain_files import PAGE, REPORTED

DEFAULT_IMAGES = 4  # misclassified test images explained when none are named


@dataclass
class ExplainedImage:
    """One image explained: where it came from, its true class if known, what the net did."""

    source: str  # "test image 7", or the file's path
    image: np.ndarray  # uint8 height x width x channels
    label: int | None
    insight: ImageInsight


@dataclass
class Explanation:
    """What `explain` wrote: the folder, its HTML page and PNGs, and the explained images."""

    out_dir: Path
    page: Path
    pngs: list[Path]
    images: list[ExplainedImage]


def read_image(path: str | os.PathLike[str], shape: tuple[int, int, int]) -> np.ndarray:
    """An image file as uint8 (height, width, channels) for a net taking `shape` images; its
    size is checked from its header, before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    from cnnlab.data.image_folders import (
        MAX_IMAGE_FILE_BYTES,
        MAX_IMAGE_PIXELS,
        MAX_IMAGE_SIDE,
        image_warnings_as_errors,
    )

    height, width, channels = shape
    content = atomic.read_regular(path, MAX_IMAGE_FILE_BYTES, "an image file cnnlab reads")
    try:
        with image_warnings_as_errors(), Image.open(io.BytesIO(content)) as opened:
            if opened.size[0] * opened.size[1] > MAX_IMAGE_PIXELS:
                raise CnnlabError(
                    f"{path}: a {opened.size[0]}x{opened.size[1]} image; images may have at most"
                    f" {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels"
                )
            picture = opened.convert("L" if channels == 1 else "RGB")
    except CnnlabError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise CnnlabError(
            f"{path}: declares more pixels than Pillow decodes safely; images may have at most"
            f" {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels"
        ) from None
    except (OSError, UnidentifiedImageError, ValueError, EOFError) as error:
        reason = getattr(error, "strerror", None) or "not an image Pillow can read"
        raise CnnlabError(f"{path}: cannot read it as an image ({reason})") from None
    if picture.size != (width, height):
        raise CnnlabError(
            f"{path}: a {picture.size[0]}x{picture.size[1]} image (width x height); the run's net"
            f" takes {width}x{height} images: resize it first"
        )
    array = np.asarray(picture, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def drawn_samples(shape: tuple[int, int, int]) -> list[tuple[str, np.ndarray, None]]:
    """`cnnlab convolve --sample`'s two drawn images fitted to a net taking `shape` images: the
    centre cropped to the net's aspect, then area-averaged down (grey for a grey net)."""
    from PIL import Image

    from cnnlab.conv import imaging

    height, width, channels = shape
    samples = []
    for name, draw in imaging.SAMPLES.items():
        drawn = draw()
        rows, columns = drawn.shape[:2]
        keep_rows = min(rows, round(columns * height / width))
        keep_columns = min(columns, round(rows * width / height))
        top, left = (rows - keep_rows) // 2, (columns - keep_columns) // 2
        picture = Image.fromarray(drawn[top : top + keep_rows, left : left + keep_columns])
        picture = picture.convert("L" if channels == 1 else "RGB")
        array = np.asarray(picture.resize((width, height), Image.Resampling.BOX), np.uint8)
        image = array[:, :, None] if array.ndim == 2 else array
        samples.append((f"{name} (drawn, shown at {width}x{height})", image, None))
    return samples


def _test_images(
    run: Any, indices: Sequence[int], data: Any, image_size: Any, resample: str
) -> list[tuple[str, np.ndarray, int | None]]:
    from cnnlab.data.datasets import Dataset, load_dataset

    if isinstance(data, Dataset):
        dataset = data
    else:
        options = {} if image_size is None else {"image_size": image_size, "resample": resample}
        dataset = load_dataset(run.config.dataset, data, **options)
    count = len(dataset.test_labels)
    shape = tuple(dataset.test_images.shape[1:])
    if shape != tuple(run.model.input_shape):
        raise CnnlabError(
            f"{dataset.source} holds {'x'.join(map(str, shape))} images; the run's net takes"
            f" {'x'.join(map(str, run.model.input_shape))} (pass the dataset it was trained on)"
        )
    chosen = []
    for index in indices:
        if not 0 <= index < count:
            raise CnnlabError(
                f"test index {index}: out of range; the test set holds {count:,} images"
                f" (0 to {count - 1})"
            )
        label = int(dataset.test_labels[index])
        chosen.append((f"test image {index}", dataset.test_images[index], label))
    return chosen


def _kept_misclassified(
    run_dir: Path, run: Any, count: int = DEFAULT_IMAGES
) -> list[tuple[str, np.ndarray, int | None]]:
    from cnnlab.training.artifacts import read_misclassified

    path = run_dir / "misclassified_test.npz"
    if not path.exists():
        raise CnnlabError(
            f"{run_dir}: keeps no misclassified test images; name images with --image PATH or"
            " --test-index N"
        )
    kept = read_misclassified(path, class_count(run.model))
    images, index, true = kept["images"], kept["index"], kept["true"]
    if len(images) == 0:
        raise CnnlabError(
            f"{run_dir}: kept no misclassified test images (it got every one right); name"
            " images with --image PATH or --test-index N"
        )
    if tuple(images.shape[1:]) != tuple(run.model.input_shape):
        raise CnnlabError(
            f"{path}: holds {'x'.join(map(str, images.shape[1:]))} images; the run's net takes"
            f" {'x'.join(map(str, run.model.input_shape))}"
        )
    return [
        (f"test image {int(index[i])}", images[i], int(true[i]))
        for i in range(min(count, len(images)))
    ]


# Replaced whole only where cnnlab wrote it (its files, before it kept a marker).
EXPLAIN_FOLDER = atomic.FolderKind(
    "an explain folder",
    legacy=(
        PAGE,
        "explain.json",
        "kernels_first.png",
        "image*_feature_maps.png",
        "image*_attributions.png",
    ),
)


def check_out(out: str | os.PathLike[str]) -> None:
    """`out` can be (re)written as an explain folder: new, empty, or one cnnlab wrote."""
    atomic.check_folder_replaceable(out, "--out", EXPLAIN_FOLDER)


def _class_name(names: Sequence[str], index: int | None) -> str:
    """A class's name for a figure's title (a '$' in it starts no formula)."""
    if index is None:
        return "unknown"
    return plots.plain(names[index]) if 0 <= index < len(names) else str(index)


def _pictures(item: ExplainedImage, number: int, names: Sequence[str]) -> dict[str, bytes]:
    insight = item.insight
    true, predicted = _class_name(names, item.label), _class_name(names, insight.predicted)
    title = f"{item.source}: true {true}, predicted {predicted}"
    classes = dict.fromkeys([c for c in (item.label, insight.predicted) if c is not None])
    panels = []
    for cls in classes:
        role = "true" if cls == item.label else "predicted"
        if cls == item.label == insight.predicted:
            role = "true = predicted"
        if cls in insight.grad_cam:
            panels.append((f"Grad-CAM {role}\n{_class_name(names, cls)}", insight.grad_cam[cls]))
        panels.append((f"saliency {role}\n{_class_name(names, cls)}", insight.saliency[cls]))
    return {
        f"image{number}_feature_maps.png": plots.png_bytes(
            figures.feature_maps_figure(insight.feature_maps, f"feature maps, {title}")
        ),
        f"image{number}_attributions.png": plots.png_bytes(
            figures.attributions_figure(item.image, panels, title)
        ),
    }


def _page(title: str, pictures: dict[str, bytes], notes: Sequence[str]) -> str:
    """One HTML page with every picture inlined as base64 PNG (no other file needed)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:72em;margin:1em auto}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(f"<p>{html.escape(note)}</p>" for note in notes),
    ]
    for name, data in pictures.items():
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def explain(
    run_dir: str | os.PathLike[str],
    *,
    images: Sequence[str | os.PathLike[str]] = (),
    test_indices: Sequence[int] = (),
    data: Any = None,
    out: str | os.PathLike[str] | None = None,
    image_size: int | Sequence[int] | None = None,
    resample: str = "bilinear",
    kept: int = DEFAULT_IMAGES,
    samples: bool = False,
    layer: str | None = None,
) -> Explanation:
    """Explain a run folder's net on image files and/or test images (by index; `data` is the
    dataset or its source), by default on the misclassified test images it keeps; writes PNGs
    and explain.html into `out` (default: RUN_DIR/explain); `image_size` and `resample` load
    an image-folder dataset of mixed sizes, as `load_dataset`; `kept`: how many kept images.
    `samples` puts the two drawn sample images (`drawn_samples`) first; `layer` names the layer
    Grad-CAM reads (default: the last conv layer)."""
    from cnnlab.training.runfolder import load_run

    run_dir = Path(run_dir)
    out_dir = Path(out) if out is not None else run_dir / "explain"
    check_out(out if out is not None else out_dir)
    run = load_run(run_dir)
    if layer is not None:
        named_layer(run.model, layer)  # a name that is no layer: one line, before any work
    shape = tuple(run.model.input_shape)
    chosen = [(str(path), read_image(path, shape), None) for path in images]
    if test_indices:
        chosen += _test_images(run, test_indices, data, image_size, resample)
    if not chosen:
        chosen = _kept_misclassified(run_dir, run, kept)
    if samples:
        chosen = [*drawn_samples(shape), *chosen]
    names = list(run.metrics.get("class_names") or [])
    explained = [
        ExplainedImage(source, image, label, explain_image(run.model, image, known, layer))
        for source, image, label in chosen
        for known in [() if label is None else (label,)]
    ]
    pictures: dict[str, bytes] = {}
    with plots.quiet():  # any number (a NaN probability) makes a figure, not a warning
        for number, item in enumerate(explained):
            pictures.update(_pictures(item, number, names))
        pictures.update(_kernel_picture(run.model))
    notes = [
        f"Run {run_dir}: {run.config.arch} on {run.config.dataset}.",
        f"Grad-CAM (Captum, ReLU'd) on {explained[0].insight.grad_cam_layer or 'no conv layer'};"
        " saliency is |d logit / d pixel|, the largest over the channels.",
    ]
    summary = [
        {
            "source": item.source,
            "true": item.label,
            "predicted": item.insight.predicted,
            "probabilities": [round(float(p), 6) for p in item.insight.probabilities],
        }
        for item in explained
    ]
    with atomic.atomic_folder(out_dir, "--out", EXPLAIN_FOLDER) as tmp:
        for name, data_bytes in pictures.items():
            (tmp / name).write_bytes(data_bytes)
        (tmp / "explain.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (tmp / PAGE).write_text(_page(f"Inside {run_dir.name}", pictures, notes), encoding="utf-8")
    return Explanation(out_dir, out_dir / PAGE, [out_dir / name for name in pictures], explained)


def _kernel_picture(model: Any) -> dict[str, bytes]:
    """The first conv layer's kernels as kernels_first.png (nothing for a net without convs)."""
    first = conv_layers(model)[:1]
    if not first:
        return {}
    kernels = first[0][1].weight.detach().float().cpu().numpy()
    figure = plots.kernels_figure(kernels, f"first conv layer's {len(kernels)} kernels")
    return {"kernels_first.png": plots.png_bytes(figure)}


def explain_best_runs(study_dir: str | os.PathLike[str], images: int = 2) -> list[Path]:
    """Explain each experiment's best finished run (on the two drawn sample images, then the
    misclassified test images its folder keeps) into RUN_DIR/explain, for the study's report;
    runs that cannot be explained are skipped (the report says so), runs explained before are
    kept as they are (a run folder does not change once written). Returns the explained
    folders."""
    from cnnlab.store import Store, best_runs

    study_dir = Path(study_dir)
    with Store.open(study_dir, create=False) as store:
        best = best_runs(store.runs())
    written = []
    for record in {record.id: record for record in best.values()}.values():
        run_dir = study_dir / "runs" / record.id
        if all((run_dir / "explain" / name).is_file() for name in (PAGE, *REPORTED)):
            written.append(run_dir / "explain")  # explained by an earlier run of the study
            continue
        try:
            explained = explain(run_dir, out=run_dir / "explain", kept=images, samples=True)
        except CnnlabError:
            continue
        written.append(explained.out_dir)
    return written
