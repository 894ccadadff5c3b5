"""A study is checked against the data it trains on: custom nets for any dataset's shape and
classes, and options the data cannot honour refused at plan time (the dry run says the same)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.cli import main
from cnnlab.config import Execution
from cnnlab.data.datasets import CIFAR100_COARSE_NAMES, CIFAR100_FINE_NAMES
from cnnlab.errors import CnnlabError
from cnnlab.report.report import write_report
from cnnlab.store import load_results
from cnnlab.study import runner
from test_data import planes

SMALL_NET = """
[architectures.small]
layers = [
  {{ type = "conv", filters = 4, kernel = 3, stride = 2, padding = "same", activation = "relu" }},
  {{ type = "flatten" }},
  {{ type = "dense", units = {units}, activation = "softmax" }},
]
"""


def study_text(dataset: str, units: int, *, train_size: int, extra: str = "") -> str:
    return f"""
[study]
name = "custom"
repeats = 1

[defaults]
dataset = "{dataset}"
arch = "small"
epochs = 1
batch_size = 32
train_size = {train_size}
{extra}
{SMALL_NET.format(units=units)}
[experiments.only]
grid = {{ seed = [0] }}
"""


def write_cifar100(root: Path) -> Path:
    """cifar-100-python with 3 training and 1 test image per fine class."""
    rng = np.random.default_rng(3)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, per_class in (("train", 3), ("test", 1)):
        fine = np.repeat(np.arange(100), per_class)
        record = {
            b"filenames": [b"x.png"] * fine.size,
            b"batch_label": split.encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine % 20).tolist(),
            b"data": planes(rng.integers(0, 256, (fine.size, 32, 32, 3), dtype=np.uint8)),
        }
        (folder / split).write_bytes(pickle.dumps(record, protocol=2))
    names = {
        b"fine_label_names": [name.encode() for name in CIFAR100_FINE_NAMES],
        b"coarse_label_names": [name.encode() for name in CIFAR100_COARSE_NAMES],
    }
    (folder / "meta").write_bytes(pickle.dumps(names, protocol=2))
    return folder


def write_three_classes(root: Path) -> Path:
    """train/ and test/ folders of 16x16 grayscale images in three classes."""
    rng = np.random.default_rng(4)
    for split, count in (("train", 12), ("test", 4)):
        for name in ("circle", "square", "star"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (16, 16), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{index}.png")
    return root


def run(tmp_path: Path, text: str, data: Path) -> runner.StudyOutcome:
    path = tmp_path / "custom.toml"
    path.write_text(text)
    return runner.run_study(path, out=tmp_path / "out", data=data, execution=Execution(workers=1))


def test_a_custom_net_trains_on_cifar100_from_a_study_file(tmp_path):
    outcome = run(
        tmp_path, study_text("cifar100", 100, train_size=300), write_cifar100(tmp_path / "data")
    )
    (record,) = load_results(outcome.study_dir)
    assert record.status == "done" and 0 <= record.metrics["test_accuracy"] <= 1


def test_a_custom_net_trains_on_an_image_folder_of_three_classes(tmp_path):
    outcome = run(
        tmp_path, study_text("images", 3, train_size=36), write_three_classes(tmp_path / "data")
    )
    (record,) = load_results(outcome.study_dir)
    assert record.status == "done" and record.metrics["parameters"] == 40 + 4 * 8 * 8 * 3 + 3
    written = write_report(outcome.study_dir)
    assert "circle" in written["md"].read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("dataset", "units", "extra", "message"),
    [
        ("cifar100", 10, "", r"custom\.toml:\d+: .*small on cifar100 .*needs 100 units"),
        ("mnist", 10, "crop_padding = 40", r"custom\.toml:\d+: .*crop_padding.*0 to 27"),
        ("digits", 10, "cutout = 9", r"custom\.toml:\d+: .*cutout.*0 to 8 for 8x8"),
    ],
)
def test_the_dry_run_refuses_what_the_run_would_at_the_line(
    tmp_path, capsys, dataset, units, extra, message
):
    path = tmp_path / "custom.toml"
    path.write_text(study_text(dataset, units, train_size=100, extra=extra))
    assert main(["study", str(path), "--dry-run"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error
    assert re.search(message, error), error


def test_a_folder_net_that_does_not_fit_is_refused_before_the_store_exists(tmp_path):
    data = write_three_classes(tmp_path / "data")
    with pytest.raises(CnnlabError, match=r"custom\.toml:\d+: .*needs 3 units"):
        run(tmp_path, study_text("images", 10, train_size=36), data)
    assert not (tmp_path / "out").exists()


def test_a_net_with_nothing_to_train_is_refused_where_it_is_defined(tmp_path, capsys):
    text = study_text("digits", 10, train_size=100)
    text = re.sub(r'\{ type = "conv".*\n', "", text)
    text = text.replace('activation = "softmax" }', 'activation = "softmax", trainable = false }')
    path = tmp_path / "frozen.toml"
    path.write_text(text)
    assert main(["study", str(path), "--dry-run"]) == 2
    assert "nothing to train" in capsys.readouterr().err
