"""What cnnlab writes, what it reads back, what it draws, and options that cannot apply.

Each case: one line on stderr and exit code 2 (or the command's work, done quietly), never a
traceback, a hang or a warning; nothing of a user's destroyed, nothing half-written left.
Folders, targets, tampered files, figures' numbers and class counts are generated here.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import resource
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fake_runs
import fake_studies
from cnnlab import atomic, config, plots
from cnnlab.cli import main
from cnnlab.config import RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.insight import explain, onnx_export
from cnnlab.training import loop, runfolder

SLOW_EXAMPLES = settings(
    max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


class Hangs(BaseException):
    """Raised into a command that waits on a FIFO: no `except OSError` of it catches this."""


@contextlib.contextmanager
def within(seconds: int) -> Iterator[None]:
    """Fail, instead of hanging the suite, where a command waits on a FIFO."""

    def give_up(*_: object) -> None:
        raise Hangs(f"still running after {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def refused(argv: list[str], capsys, expected: str = "") -> str:
    """Run the command in this process: exit 2, one line on stderr (containing `expected`)."""
    with within(30):
        code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("cnnlab: error: "), (code, err)
    assert expected in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A real one-epoch tiny run on scikit-learn's 8x8 digits, saved with its test set."""
    from cnnlab.data.datasets import load_dataset

    data = load_dataset("digits")
    run_config = RunConfig(arch="tiny", dataset="digits", train_size=200, epochs=1, seed=3)
    result = loop.fit(run_config, data, device="cpu")
    folder = tmp_path_factory.mktemp("digits") / "run"
    runfolder.save_run(
        result, folder, data.class_names, test_images=data.test_images, test_labels=data.test_labels
    )
    return folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished fake study: two points (l1 0 and 0.01) of two seeds."""
    root = tmp_path_factory.mktemp("study")
    study_file = root / "outputs.toml"
    study_file.write_text(
        fake_studies.tiny_study_toml("outputs", "{ l1 = [0.0, 0.01], seed = [0, 1] }")
    )
    with fake_studies.fake_training(fake_runs.fake_fit):
        fake_studies.study_records(
            study_file, root / "out", fake_runs.zeros_cifar(), fit=fake_runs.fake_fit
        )
    return root / "out"


def study_copy(finished: Path, folder: Path, metrics: dict | None = None, history=None) -> Path:
    """A copy of the study with `metrics` merged into every run's, or `history` as every run's."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(finished, folder)
    with sqlite3.connect(folder / "study.sqlite") as connection:
        for run_id, stored in connection.execute("SELECT id, metrics FROM runs").fetchall():
            merged = {**json.loads(stored), **(metrics or {})}
            connection.execute(
                "UPDATE runs SET metrics = ? WHERE id = ?", (json.dumps(merged), run_id)
            )
        if history is not None:
            connection.execute("UPDATE runs SET history = ?", (json.dumps(history),))
    return folder


# --- (1) outputs never destroy what cnnlab did not write ----------------------------------------

EXPLAIN_FILES = ["explain.html", "explain.json", "kernels_first.png", "image0_attributions.png"]
RUN_FILES = ["config.json", "metrics.json", "weights.pt", "history.png", "explain"]
# A user's names: anything but what the folder's kind writes.
USER_NAMES = st.text("abcxyz_-.0123456789ABC", min_size=1, max_size=10).filter(
    lambda name: (
        name not in (".", "..")
        and not name.startswith("image")
        and name != "explain"
        and name not in EXPLAIN_FILES + RUN_FILES
    )
)


@pytest.mark.parametrize(
    ("check", "own_files"),
    [(explain.check_out, EXPLAIN_FILES), (runfolder.check_target, RUN_FILES)],
    ids=["explain --out", "train --out"],
)
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    own=st.lists(st.integers(0, 4), max_size=4, unique=True),
    user=st.lists(USER_NAMES, max_size=3, unique=True),
    marked=st.booleans(),
    user_folder=st.booleans(),
)
def test_a_folder_is_replaced_only_when_cnnlab_wrote_every_entry(
    tmp_path_factory, check, own_files, own, user, marked, user_folder
):
    target = tmp_path_factory.mktemp("out") / "target"
    if marked:  # written whole by cnnlab: the marker lists its files
        with atomic.atomic_folder(target) as tmp:
            for index in own:
                (tmp / own_files[index % len(own_files)]).write_text("cnnlab's")
    else:
        target.mkdir()
        for index in own:
            (target / own_files[index % len(own_files)]).write_text("cnnlab's")
    for name in user:
        if user_folder:
            (target / name).mkdir()
            (target / name / "mine.txt").write_text("mine")
        else:
            (target / name).write_text("mine")
    before = sorted(os.listdir(target))
    if user:
        with pytest.raises(CnnlabError, match=r"not empty and not an? (explain|run) folder"):
            check(target)
        assert sorted(os.listdir(target)) == before  # refused before anything was touched
    else:
        check(target)


def test_explain_into_a_folder_with_a_users_files_refuses_and_keeps_them(
    digits_run, tmp_path, capsys
):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "explain.html").write_text("an old page")
    (out / "notes.txt").write_text("mine")
    refused(["explain", str(digits_run), "--out", str(out)], capsys, "not empty and not an explain")
    assert sorted(os.listdir(out)) == ["explain.html", "notes.txt"]
    assert main(["explain", str(digits_run), "--out", str(tmp_path / "new")]) == 0
    (tmp_path / "new" / "extra.txt").write_text("mine")  # cnnlab's folder, with a user's file
    refused(["explain", str(digits_run), "--out", str(tmp_path / "new")], capsys, "not empty")
    assert (tmp_path / "new" / "extra.txt").read_text() == "mine"


def test_the_reports_figures_folder_keeps_a_users_file(finished, tmp_path, capsys):
    study = study_copy(finished, tmp_path / "study")
    assert main(["report", str(study)]) == 0
    capsys.readouterr()
    (study / "report_files" / "my-notes.txt").write_text("mine")
    refused(["report", str(study)], capsys, "report_files: not empty")
    assert (study / "report_files" / "my-notes.txt").read_text() == "mine"


@pytest.mark.parametrize("out", ["", " ", ".", "..", "/"])
def test_an_out_naming_no_folder_is_one_line_and_leaves_nothing(
    digits_run, tmp_path, capsys, monkeypatch, out
):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    refused(["explain", str(digits_run), "--out", out], capsys, "--out")
    assert os.listdir(here) == [] and sorted(os.listdir(tmp_path)) == ["here"]


# Output targets that cannot be made, each a different error of the probe.
def _under_a_file(root: Path) -> str:
    (root / "file").write_text("mine")
    return str(root / "file" / "out")


def _through_a_fifo(root: Path) -> str:
    os.mkfifo(root / "pipe")
    return str(root / "pipe" / "out")


UNMAKEABLE = {
    "under a file": _under_a_file,
    "through a FIFO": _through_a_fifo,
    "in /proc": lambda root: "/proc/cnnlab-nowhere/out",
    "under /dev/null": lambda root: "/dev/null/out",
    "a name too long": lambda root: str(root / ("n" * 300) / "out"),
    "a path too long": lambda root: str(root / "/".join(["d" * 200] * 30)),
}


def _no_work(*_: object, **__: object) -> None:
    raise AssertionError("the work started before its output was probed")


@pytest.mark.parametrize("where", list(UNMAKEABLE))
@pytest.mark.parametrize("command", ["explain", "export-model", "train", "convolve", "export"])
def test_an_output_that_cannot_be_made_is_one_line_before_the_work(
    digits_run, finished, tmp_path, capsys, monkeypatch, where, command
):
    monkeypatch.setattr(onnx_export, "onnx_bytes", _no_work)
    monkeypatch.setattr(explain, "explain_image", _no_work)
    monkeypatch.setattr(loop, "fit", _no_work)
    target = UNMAKEABLE[where](tmp_path)
    argv = {
        "explain": ["explain", str(digits_run), "--out", target],
        "export-model": ["export-model", str(digits_run), "--onnx", target + ".onnx"],
        "train": [
            "train",
            "--dataset",
            "digits",
            "--arch",
            "tiny",
            "--epochs",
            "1",
            "--out",
            target,
        ],
        "convolve": ["convolve", "--sample", "--kernel", "laplacian8", "--out", target],
        "export": ["export", str(finished), "--tensorboard", target],
    }[command]
    if command == "export":
        pytest.importorskip("tensorboard")
    refused(argv, capsys)


def test_a_tensorboard_folder_that_cannot_be_made_is_refused_before_training(finished):
    pytest.importorskip("tensorboard")
    from cnnlab.tracking import export

    for target in ("/proc/cnnlab-x", "/proc/cnnlab-x/y", "/proc"):
        with pytest.raises(CnnlabError, match="cannot write there"):
            export.open_logger(f"tensorboard:{target}")


# --- (4) reading only regular files -------------------------------------------------------------

RUN_FOLDER_FILES = [
    "config.json",
    "history.json",
    "metrics.json",
    "weights.pt",
    "measurements.json",
]


def _replace(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to("/dev/null")


@SLOW_EXAMPLES
@given(
    name=st.sampled_from([*RUN_FOLDER_FILES, "misclassified_test.npz"]),
    kind=st.sampled_from(["fifo", "folder", "device"]),
    command=st.sampled_from(["explain", "export-model"]),
)
def test_a_run_folders_file_that_is_not_a_regular_file_is_one_line(
    digits_run, tmp_path_factory, capsys, name, kind, command
):
    if command == "export-model" and name == "misclassified_test.npz":
        return  # export-model does not read it
    run = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("explain"))
    _replace(run / name, kind)
    out = (
        ["--out", str(run.parent / "x")]
        if command == "explain"
        else ["--onnx", str(run.parent / "m.onnx")]
    )
    refused([command, str(run), *out], capsys, name)


@pytest.mark.parametrize("kind", ["fifo", "folder", "device"])
def test_an_image_that_is_not_a_regular_file_is_one_line(digits_run, tmp_path, capsys, kind):
    image = tmp_path / "image.png"
    _replace(image, kind)
    refused(["explain", str(digits_run), "--image", str(image)], capsys, "image.png")
    image.unlink() if kind != "folder" else image.rmdir()
    _replace(image, kind)
    refused(
        ["convolve", str(image), "--kernel", "laplacian8", "--out", str(tmp_path / "o")], capsys
    )


def test_a_regular_file_over_its_limit_is_refused_unread(tmp_path):
    big = tmp_path / "big.json"
    with big.open("wb") as file:
        file.truncate(runfolder.MAX_JSON_BYTES + 1)  # sparse: no disk, no memory
    with pytest.raises(CnnlabError, match="larger than"):
        atomic.read_regular(big, runfolder.MAX_JSON_BYTES, "a run folder")


# --- (5) every artifact read back is validated --------------------------------------------------


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _tampered(kept: dict[str, np.ndarray], how: str, amount: int) -> bytes:
    """misclassified_test.npz as `save_run` wrote it, tampered with one way."""
    images, index, true, predicted = (kept[key] for key in ("images", "index", "true", "predicted"))
    count = len(index)
    changes = {
        "not a zip": lambda: b"PK\x03\x04" + bytes(amount % 200),
        "an .npy": lambda: _npy(images),
        "1-D images": lambda: _npz(
            images=images.reshape(-1), index=index, true=true, predicted=predicted
        ),
        "2-D images": lambda: _npz(
            images=images[:, :, :, 0].reshape(count, -1),
            index=index,
            true=true,
            predicted=predicted,
        ),
        "float images": lambda: _npz(
            images=images.astype(np.float32), index=index, true=true, predicted=predicted
        ),
        "a short index": lambda: _npz(
            images=images, index=index[: amount % count], true=true, predicted=predicted
        ),
        "a label too large": lambda: _npz(
            images=images, index=index, true=true + 10 + amount, predicted=predicted
        ),
        "a negative label": lambda: _npz(
            images=images, index=index, true=true - 11 - amount, predicted=predicted
        ),
        "a predicted label too large": lambda: _npz(
            images=images, index=index, true=true, predicted=predicted + 10 + amount
        ),
        "a negative index": lambda: _npz(
            images=images, index=index - 2000 - amount, true=true, predicted=predicted
        ),
        "float labels": lambda: _npz(
            images=images, index=index, true=true + 0.5, predicted=predicted
        ),
        "no labels": lambda: _npz(images=images, index=index),
        "other images' size": lambda: _npz(
            images=np.zeros((count, 9, 9, 1), np.uint8), index=index, true=true, predicted=predicted
        ),
        "a pickle": lambda: _npz(
            images=np.array([object()] * count, dtype=object),
            index=index,
            true=true,
            predicted=predicted,
        ),
    }
    return changes[how]()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


TAMPERINGS = [
    "not a zip",
    "an .npy",
    "1-D images",
    "2-D images",
    "float images",
    "a short index",
    "a label too large",
    "a negative label",
    "a predicted label too large",
    "a negative index",
    "float labels",
    "no labels",
    "other images' size",
    "a pickle",
]


@SLOW_EXAMPLES
@given(how=st.sampled_from(TAMPERINGS), amount=st.integers(1, 10_000))
def test_a_tampered_misclassified_sample_is_one_line_in_explain(
    digits_run, tmp_path_factory, capsys, how, amount
):
    run = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("explain"))
    with np.load(run / "misclassified_test.npz") as kept:
        arrays = {key: kept[key] for key in kept.files}
    (run / "misclassified_test.npz").write_bytes(_tampered(arrays, how, amount))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refused(["explain", str(run), "--out", str(run.parent / "x")], capsys, "misclassified_test")
    assert not (run.parent / "x").exists()


# Numbers a store can hold, as JSON writes them.
NUMBERS = st.sampled_from([1e308, -1e308, math.inf, -math.inf, math.nan, 5e-324, 0.0, 0.5, 1.0])


def _quietly_drawn(figure) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        return plots.png_bytes(figure)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {key: NUMBERS for key in ("loss", "accuracy", "val_loss", "val_accuracy")}
        ),
        min_size=1,
        max_size=4,
    )
)
def test_a_history_of_any_numbers_draws_without_an_error_or_a_warning(rows):
    history = [{"epoch": epoch, **row} for epoch, row in enumerate(rows, 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = plots.history_figure(history, "hostile")
    assert _quietly_drawn(figure).startswith(b"\x89PNG")


DRAW_CONFUSION = """
import sys, warnings
import numpy as np
from matplotlib.text import Text
from cnnlab import plots
warnings.simplefilter("error")  # any warning fails
classes = int(sys.argv[1])
counts = np.random.default_rng(classes).integers(0, 1000, (classes, classes)).tolist()
figure = plots.confusion_matrix_figure(counts, [f"class {i}" for i in range(classes)], "title")
print(len(figure.findobj(Text)), len(plots.png_bytes(figure)))
"""


@settings(max_examples=3, deadline=None)
@given(classes=st.integers(1, 1000))
@example(classes=300)
@example(classes=1000)
def test_a_confusion_matrix_of_up_to_1000_classes_is_drawn_in_bounded_memory(classes):
    def limit() -> None:  # what torch's import needs is not spent here: matplotlib alone
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    done = subprocess.run(
        [sys.executable, "-c", DRAW_CONFUSION, str(classes)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    artists, png = map(int, done.stdout.split())
    # One image, not an artist per cell: the artists stay bounded whatever the class count.
    assert artists <= 2_000 and png > 0


@pytest.mark.parametrize("value", [1e308, -1e308, math.nan, math.inf])
def test_a_report_on_a_store_of_any_numbers_is_written_quietly(finished, tmp_path, capsys, value):
    history = [
        {"epoch": epoch, "loss": value, "accuracy": value, "val_loss": value, "val_accuracy": value}
        for epoch in (1, 2)
    ]
    metrics = {"test_accuracy": value, "train_accuracy": value, "fit_seconds": value}
    study = study_copy(finished, tmp_path / "study", metrics, history)
    code = main(["report", str(study)])
    err = capsys.readouterr().err
    assert code == 0 and err == "", err


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height grey pixels (its data is one empty row)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


# (width, height) with more pixels than an image may have (1024 x 1024).
TOO_MANY_PIXELS = st.integers(1, 1 << 20).flatmap(
    lambda width: st.tuples(st.just(width), st.integers((1 << 20) // width + 1, 1 << 24))
)


@SLOW_EXAMPLES
@given(size=TOO_MANY_PIXELS)
@example(size=(10_000, 10_000))  # over Pillow's warning limit (89 M pixels)
@example(size=(20_000, 20_000))  # over its error limit
@example(size=(1025, 1024))
def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(
    digits_run, tmp_path_factory, capsys, size
):
    image = tmp_path_factory.mktemp("bomb") / "bomb.png"
    image.write_bytes(_png_declaring(*size))
    line = refused(["explain", str(digits_run), "--image", str(image)], capsys, "bomb.png")
    assert "1024x1024" in line


# --- compare ------------------------------------------------------------------------------------


def test_compare_with_a_nan_accuracy_calls_p_improve_undefined(finished, tmp_path, capsys):
    study = study_copy(finished, tmp_path / "study", {"test_accuracy": math.nan})
    assert main(["compare", "l1=0.0", "l1=0.01", "--study", str(study)]) == 0
    out = capsys.readouterr().out
    assert "undefined" in out and "0.00" not in out


def test_compare_at_points_whose_runs_hold_no_metrics(finished, tmp_path, capsys):
    study = study_copy(finished, tmp_path / "study")
    with sqlite3.connect(study / "study.sqlite") as connection:
        connection.execute("UPDATE runs SET metrics = '{}'")
    code = main(["compare", "l1=0.0", "l1=0.01", "--study", str(study)])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == "" and "no test" in captured.out


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=JSON_VALUES, name=st.sampled_from(["metrics.json", "config.json"]))
def test_compare_of_run_folders_holding_any_json_shows_them_or_refuses(
    digits_run, tmp_path_factory, capsys, value, name
):
    run = tmp_path_factory.mktemp("run") / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("explain", "*.png", "*.np*"))
    (run / name).write_text(json.dumps(value))
    code = main(["compare", str(run), str(digits_run)])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
    assert (code == 0 and err == "") or len(err.strip().splitlines()) == 1, err
    if not isinstance(value, dict):
        assert code == 2 and name in err


# --- (6) options that cannot apply are refused --------------------------------------------------

FIXED_SIZE = [name for name, shape in config.DATASET_SHAPES.items() if shape is not None]


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    dataset=st.sampled_from(FIXED_SIZE),
    size=st.integers(1, 1024).map(str)
    | st.tuples(st.integers(1, 64), st.integers(1, 64)).map(lambda hw: f"{hw[0]}x{hw[1]}"),
)
def test_image_size_on_a_fixed_size_dataset_is_refused_by_train_and_summary(
    capsys, monkeypatch, dataset, size
):
    monkeypatch.setattr(loop, "fit", _no_work)
    refused(
        ["train", "--dataset", dataset, "--image-size", size, "--epochs", "1"],
        capsys,
        "--image-size",
    )
    refused(["summary", "seed", "--dataset", dataset, "--image-size", size], capsys, "--image-size")


@pytest.mark.parametrize("dataset", FIXED_SIZE)
@pytest.mark.parametrize("resample", ["nearest", "bilinear", "bicubic", "lanczos"])
def test_summary_refuses_resample_where_nothing_is_resampled(capsys, dataset, resample):
    refused(["summary", "seed", "--dataset", dataset, "--resample", resample], capsys, "--resample")
