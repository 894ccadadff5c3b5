"""What a study's best runs learned, for the report: per-class results, mistakes, kernels.

Per-class accuracy and the most-confused class pairs come from the stored confusion matrices; the
misclassified grid and the first layer's kernels from the NumPy files a run folder keeps
(`runfolder.save_run`), so nothing here needs torch or the data. The kernels meet the seed
report's hand-made ones on the same sample images (`cnnlab convolve --sample`).
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path

import numpy as np

from cnnlab import plots
from cnnlab.conv import convolve, imaging
from cnnlab.conv.kernels import parse_kernel
from cnnlab.errors import CnnlabError
from cnnlab.insight.explain_files import REPORTED
from cnnlab.report.document import Document, Image, literal
from cnnlab.report.tables import point_label
from cnnlab.store import FINISHED, RunRecord, best_runs
from cnnlab.study.studyfile import Study
from cnnlab.training import artifacts

CONFUSED_PAIRS = 3  # most-confused class pairs listed per experiment's best run
HAND_KERNELS = ("laplacian8", "laplacian4-boost")  # the seed report's two kernels (part 1)
SAMPLE_REDUCTION = 2  # the drawn samples are averaged down by this factor before filtering


def per_class_accuracy(matrix: list[list[int]]) -> list[float]:
    """Each true class's share of correct predictions (rows: true class, columns: predicted)."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1)
    return [float(c / t) if t else math.nan for c, t in zip(np.diag(counts), totals, strict=True)]


def confused_pairs(matrix: list[list[int]], count: int) -> list[tuple[int, int, int, int]]:
    """The `count` class pairs most often mixed up: (class a, class b, a→b, b→a), most first."""
    counts = np.asarray(matrix, dtype=np.int64)
    pairs = [
        (int(counts[a, b] + counts[b, a]), a, b)
        for a, b in itertools.combinations(range(len(counts)), 2)
    ]
    pairs = sorted((p for p in pairs if p[0] > 0), key=lambda p: (-p[0], p[1], p[2]))[:count]
    return [(a, b, int(counts[a, b]), int(counts[b, a])) for _, a, b in pairs]


def _test_matrix(record: RunRecord) -> list[list[int]] | None:
    matrix = (record.metrics.get("confusion_matrix") or {}).get("test")
    return matrix if matrix and len(matrix) == len(matrix[0]) else None


def per_class_section(
    document: Document, study: Study, records: list[RunRecord], class_names: list[str]
) -> None:
    """Per-class test accuracy and the most-confused pairs of each experiment's best run."""
    best_runs = []
    for experiment in study.experiments:
        mine = [
            r
            for r in records
            if experiment.name in r.experiments
            and r.status in FINISHED
            and isinstance(r.metrics.get("test_accuracy"), int | float)
            and _test_matrix(r) is not None
        ]
        if mine:
            best_runs.append((experiment, max(mine, key=lambda r: r.metrics["test_accuracy"])))
    if not best_runs:
        return
    document.heading("Per-class accuracy of each experiment's best run")
    size = len(_test_matrix(best_runs[0][1]))
    names = class_names if len(class_names) == size else [str(i) for i in range(size)]
    names = [literal(name) for name in names]  # names from data are plain text
    document.paragraph(
        "For each experiment, its run with the best test accuracy: the share of each class's test"
        " images it labels correctly, and the class pairs it mixes up most (confusions counted"
        " both ways)."
    )
    headers = ["class"]
    columns = []
    for experiment, record in best_runs:
        headers.append(f"{experiment.title} (`{record.id[:8]}`)")
        accuracies = per_class_accuracy(_test_matrix(record))
        columns.append(accuracies if len(accuracies) == size else [math.nan] * size)
    rows = [
        [name, *("–" if math.isnan(c[i]) else f"{c[i]:.3f}" for c in columns)]
        for i, name in enumerate(names)
    ]
    document.table(headers, rows)
    items = []
    for experiment, record in best_runs:
        matrix = _test_matrix(record)
        if len(matrix) != size:
            continue
        pairs = [
            f"{names[a]} ↔ {names[b]} {ab + ba} ({names[a]}→{names[b]} {ab},"
            f" {names[b]}→{names[a]} {ba})"
            for a, b, ab, ba in confused_pairs(matrix, CONFUSED_PAIRS)
        ]
        where = point_label(record.experiments[experiment.name])
        items.append(
            f"**{experiment.title}**, run `{record.id}` ({where}, seed {record.seed}, test accuracy"
            f" {record.metrics['test_accuracy']:.3f}): " + ("; ".join(pairs) or "no confusions")
        )
    document.bullets(items)


# --- the best run -----------------------------------------------------------------------------


def _run_file(study_dir: Path, record: RunRecord, name: str) -> Path | None:
    """A file the run's folder listed under artifact `name` (or with that file name)."""
    for key, relative in record.artifacts.items():
        path = study_dir / relative
        if (key == Path(name).stem or Path(relative).name == name) and path.is_file():
            return path
    return None


def _load_misclassified(path: Path) -> dict[str, np.ndarray] | None:
    """misclassified_test.npz as arrays, or None when it is not what `save_run` writes."""
    try:
        return artifacts.read_misclassified(path)
    except CnnlabError:
        return None


def _load_kernels(path: Path) -> np.ndarray | None:
    """kernels_first.npy (filters x in x kh x kw), or None when it is not that."""
    try:
        return artifacts.read_kernels(path)
    except CnnlabError:
        return None


def best_run_section(
    document: Document,
    finished: list[RunRecord],
    class_names: list[str],
    notes: list[str],
    study_dir: Path,
) -> RunRecord:
    best = max(finished, key=lambda r: r.metrics["test_accuracy"])
    metrics = best.metrics
    document.heading("Best run and the baseline")
    where = "; ".join(f"{name}: {point_label(f)}" for name, f in best.experiments.items())
    document.paragraph(
        f"The best test accuracy, {metrics['test_accuracy']:.3f}, is run `{best.id}` ({where},"
        f" seed {best.seed}; train accuracy {metrics.get('train_accuracy', math.nan):.3f})."
    )
    baseline = metrics.get("baseline_accuracy")
    if isinstance(baseline, int | float):
        predicted = metrics.get("baseline_class", "?")
        if isinstance(predicted, int) and 0 <= predicted < len(class_names):
            predicted = class_names[predicted]
        document.paragraph(
            f"Most-frequent-class baseline (always predict the training set's most frequent class,"
            f" {literal(predicted)}): test accuracy **{baseline:.3f}** (report: 0.10)."
        )
        notes.append(
            f"The best run's test accuracy, {metrics['test_accuracy']:.3f}, is"
            f" {metrics['test_accuracy'] - baseline:+.3f} from the most-frequent-class baseline"
            f" (one run, the best of {len(finished)}: a selection, not a test; the experiments'"
            " observations say which points learned)."
        )
    matrix = (metrics.get("confusion_matrix") or {}).get("test")
    if matrix:
        names = class_names or [str(i) for i in range(len(matrix))]
        figure = plots.confusion_matrix_figure(matrix, names, f"Test set, run {best.id}")
        document.image(
            Image(
                "best-confusion-test.png",
                plots.png_bytes(figure),
                "Confusion matrix of the best run",
            )
        )
    _misclassified(document, best, class_names, study_dir)
    return best


def _misclassified(
    document: Document, best: RunRecord, class_names: list[str], study_dir: Path
) -> None:
    path = _run_file(study_dir, best, "misclassified_test.npz")
    if path is None:
        document.paragraph(
            f"Run `{best.id}` kept no misclassified test images (its folder was written before"
            " cnnlab saved them, or without the test images), so there is no grid of its"
            " mistakes here."
        )
        return
    arrays = _load_misclassified(path)
    if arrays is None:
        document.paragraph(f"`{path.name}` of run `{best.id}` is unreadable: no grid of mistakes.")
        return
    if not len(arrays["index"]):
        document.paragraph(f"Run `{best.id}` misclassified no test image.")
        return

    def name(label: int) -> str:
        return class_names[label] if 0 <= label < len(class_names) else str(label)

    figure = plots.misclassified_figure(
        list(arrays["images"]),
        [name(int(label)) for label in arrays["true"]],
        [name(int(label)) for label in arrays["predicted"]],
        f"Misclassified test images, run {best.id}",
    )
    document.image(
        Image(
            "best-misclassified.png",
            plots.png_bytes(figure),
            f"{len(arrays['index'])} misclassified test images of the best run, taken from each"
            " true class in turn: true class above, predicted class below",
        )
    )


# --- part 1 meets part 2 ------------------------------------------------------------------------


def layer_responses(image: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """What a first conv layer computes before its bias and activation, with `cnnlab.conv.convolve`.

    `image` is H x W x C (the net sees pixels / 255), `kernels` filters x C x kh x kw; per filter,
    the 'same' cross-correlation of each input channel with its slice, summed over the channels.
    """
    return np.stack(
        [
            sum(
                convolve.correlate2d(image[:, :, channel], kernel[channel], mode="same")
                for channel in range(image.shape[2])
            )
            for kernel in kernels
        ]
    )


def sample_images() -> dict[str, np.ndarray]:
    """`cnnlab convolve --sample`'s two drawn images, averaged down by SAMPLE_REDUCTION.

    Reduced so that a figure panel shows the filtered image pixel for pixel: drawn at full size
    a 3x3 kernel's one-pixel response lines would be thinned away by the figure's resampling.
    """
    reduced = {}
    for name, draw in imaging.SAMPLES.items():
        image = draw().astype(np.float64)
        height, width = (size // SAMPLE_REDUCTION for size in image.shape[:2])
        image = image[: height * SAMPLE_REDUCTION, : width * SAMPLE_REDUCTION]
        blocks = image.reshape(height, SAMPLE_REDUCTION, width, SAMPLE_REDUCTION, -1)
        reduced[name] = blocks.mean(axis=(1, 3))
    return reduced


def kernel_section(document: Document, best: RunRecord, study_dir: Path) -> None:
    document.heading("Hand-made and learned kernels: the seed's part 1 meets part 2")
    path = _run_file(study_dir, best, "kernels_first.npy")
    kernels = None if path is None else _load_kernels(path)
    if kernels is None:
        reason = "kept no" if path is None else "has an unreadable"
        document.paragraph(
            f"The best run `{best.id}` {reason} copy of its first conv layer's kernels"
            " (`kernels_first.npy`, written by cnnlab since it saves them), so its learned"
            " kernels cannot be drawn here."
        )
        return
    if kernels.shape[1] != 3:
        document.paragraph(
            f"The best run's first conv layer takes {kernels.shape[1]} channels, not RGB:"
            " its kernels are not drawn."
        )
        return
    filters, _, kernel_height, kernel_width = kernels.shape
    document.paragraph(
        f"The first conv layer of the best run `{best.id}` holds {filters} kernels of"
        f" {kernel_height}×{kernel_width}×3 weights. Each is drawn as a picture (its weights"
        " stretched to 0..1 per kernel, red, green and blue as the input channels they weigh),"
        " then channel by channel on one shared scale (red: positive, blue: negative)."
    )
    figure = plots.kernels_figure(kernels, f"First-layer kernels, run {best.id}")
    document.image(
        Image("best-kernels.png", plots.png_bytes(figure), "The best run's first-layer kernels")
    )
    hand = [parse_kernel(name) for name in HAND_KERNELS]
    height, width = (size // SAMPLE_REDUCTION for size in imaging.SAMPLE_SIZE)
    document.paragraph(
        "Below, the seed report's two hand-made kernels and these learned ones on the two images"
        f" `cnnlab convolve --sample` draws, averaged down {SAMPLE_REDUCTION}×{SAMPLE_REDUCTION}"
        f" to {width}×{height} pixels, so that each panel shows its response pixel for pixel"
        " (still four to five times CIFAR-10's 32×32, so the shapes stay recognisable). The"
        " hand-made kernels filter the red channel, as the seed did; each learned kernel filters"
        " all three channels of the image scaled to 0..1, as the network sees it, with"
        " `cnnlab.conv.convolve.correlate2d` ('same', summed over the channels): the layer's output"
        " before its bias and ReLU. Every response is signed: white is 0, red positive, blue"
        " negative, each panel scaled to its own 99.5th percentile of |value|. The small square"
        " in each learned panel is its kernel, Σ the sum of its weights: a kernel whose weights"
        " sum to about 0, like `laplacian8`, answers edges only; one far from 0 answers"
        " brightness and colour as well."
    )
    pictures = [plots.kernel_picture(kernel) for kernel in kernels]
    for name, image in sample_images().items():
        red = imaging.select_channel(image, "red")
        hand_panels = [
            (kernel_name, kernel, convolve.correlate2d(red, kernel, mode="same"))
            for kernel_name, kernel in hand
        ]
        responses = layer_responses(image / 255.0, kernels)
        learned = [
            (f"kernel {index + 1} (Σ {kernel.sum():+.2f})", picture, response)
            for index, (kernel, picture, response) in enumerate(
                zip(kernels, pictures, responses, strict=True)
            )
        ]
        figure = plots.responses_figure(
            np.clip(np.rint(image), 0, 255).astype(np.uint8),
            hand_panels,
            learned,
            f"{name}: hand-made and learned kernels",
        )
        document.image(
            Image(
                f"kernels-{name}.png",
                plots.png_bytes(figure),
                f"`{name}`: the seed's two kernels (top) and the best run's first-layer kernels",
            )
        )


# What each of explain's REPORTED pictures shows, in its order.
_REPORTED_CAPTIONS = (
    "feature maps of the drawn shapes",
    "feature maps of the drawn mosaic",
    "attributions on a misclassified test image",
)


def inside_section(document: Document, study: Study, records: list[RunRecord], study_dir: Path):
    """Each experiment's best run from inside: feature maps and Grad-CAM on test images it got
    wrong, as `cnnlab explain` drew them after the study (RUN_DIR/explain)."""
    best = best_runs(records)
    if not best:
        return
    document.heading("Inside the best runs")
    document.paragraph(
        "Each experiment's best run from inside (`cnnlab explain`): the feature maps of every"
        " conv layer on the two drawn sample images of the convolution part (fitted to the net's"
        " input), and, on a test image it got wrong, where the net looked for the true and the"
        " predicted class (Grad-CAM on the last conv layer, with Captum, and gradient saliency)."
    )
    missing = []
    for experiment in (*study.experiments, *study.searches):  # a search: its best run too
        record = best.get(experiment.name)
        if record is None:
            continue
        folder = study_dir / "runs" / record.id / "explain"
        pictures = [folder / name for name in REPORTED]
        if not all(picture.is_file() for picture in pictures):
            missing.append(f"{experiment.title} (`{record.id[:8]}`)")
            continue
        for picture, what in zip(pictures, _REPORTED_CAPTIONS, strict=True):
            caption = f"{experiment.title}: best run `{record.id[:8]}`, {what}"
            name = f"inside_{record.id[:8]}_{picture.name}"
            document.image(Image(name, picture.read_bytes(), caption))
    if missing and not can_explain():
        document.paragraph(
            f"Not explained: {', '.join(missing)}. Grad-CAM needs Captum, which is not"
            " installed: `pip install 'cnnlab[explain]'`, then `cnnlab report` draws them."
        )
    elif missing:
        document.paragraph(
            "Not explained (no kept misclassified images, or `cnnlab explain` has not run on"
            f" them): {', '.join(missing)}."
        )


def can_explain() -> bool:
    """Whether the explain extra (Captum, for Grad-CAM) is installed (found, not imported)."""
    try:
        return importlib.util.find_spec("captum") is not None
    except (ImportError, ValueError):  # a broken install
        return False
