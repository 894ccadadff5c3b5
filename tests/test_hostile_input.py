"""Bad input everywhere but the data readers (tests/test_hostile_data.py has those).

Each case: one line on stderr, exit code 2, no traceback, bounded memory, nothing left behind.
Study files, kernels, images and run folders are generated here, field by field.
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fake_runs
import fake_studies
from cnnlab import config
from cnnlab.errors import CnnlabError
from cnnlab.study.plan import plan_runs
from cnnlab.study.studyfile import load_study
from cnnlab.training import runfolder

MEMORY_LIMIT = 3 << 30  # address space for a command: torch's import needs about 1.5 GiB


def cnnlab(*arguments: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The real command in a child process under a memory limit."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
        input=stdin,
    )


def assert_one_line_refusal(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: "), done.stderr
    assert expected in lines[0], lines[0]


# --- study files, field by field ---------------------------------------------------------------

STUDY = fake_studies.STUDY_TOML
BAD_VALUES = {
    "a string": '"x"',
    "NaN": "nan",
    "infinity": "inf",
    "minus infinity": "-inf",
    "huge": "9223372036854775807",
    "negative": "-1",
    "empty string": '""',
    "nested list": "[[1]]",
    "table": "{ a = 1 }",
    "boolean": "true",
}


def with_default(name: str, value: str) -> str:
    """The fake study with `name = value` in its [defaults] (in place of its own value)."""
    before, rest = STUDY.split("[defaults]\n", 1)
    table, after = rest.split("\n[", 1)
    kept = [line for line in table.splitlines() if not line.startswith(f"{name} =")]
    return before + "[defaults]\n" + "\n".join([f"{name} = {value}", *kept]) + "\n[" + after


@pytest.mark.parametrize("field", config.SETTABLE)
def test_every_run_field_refuses_every_bad_value_at_its_line(tmp_path, field):
    path = tmp_path / "bad.toml"
    refused = 0
    for value in BAD_VALUES.values():
        path.write_text(with_default(field, value))
        try:
            plan_runs(load_study(path))
        except CnnlabError as error:
            message = str(error)
            assert "\n" not in message
            if f"defaults.{field}:" in message:
                assert message.startswith(f"{path}:"), message  # with its line
                refused += 1
    # Every field takes one type and a range: most of these values must be refused by it.
    assert refused >= len(BAD_VALUES) - 3, field


CASES = [
    (with_default("l1", "nan"), "defaults.l1: must be a finite number"),
    (with_default("learning_rate", "inf"), "defaults.learning_rate: must be a positive finite"),
    (with_default("seed", "9223372036854775807"), "seed: must be between"),
    (STUDY.replace("repeats = 2", "repeats = 1000000000"), "study.repeats: must be between"),
    (
        STUDY.replace(
            "[experiments.sizes]",
            "[experiments.A]\ngrid = { l1 = [0.5] }\n[experiments.a]\ngrid = { l1 = [0.25] }\n"
            "[experiments.sizes]",
        ),
        "only by case",
    ),
    (STUDY.replace("test_accuracy = 0.50", "test_accuracy = nan"), "expected a finite number"),
    (
        STUDY  # a net whose weights alone would be 72 TB
        + '\n[architectures.huge]\nlayers = [{ type = "conv", filters = 2000000000, kernel = 3 },'
        ' { type = "flatten" }, { type = "dense", units = 10, activation = "softmax" }]\n',
        "architectures.huge.layers: does not build: huge on cifar10 (32x32x3 images, 10 classes):"
        " layers: the net holds 18,056,000,000,010 weights; at most 134,217,728 are allowed",
    ),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_bad_study_files_through_the_command(tmp_path, text, expected):
    assert text != STUDY
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for arguments in (["--dry-run"], ["--out", str(tmp_path / "out")]):
        done = cnnlab("study", str(path), *arguments, cwd=tmp_path)
        assert_one_line_refusal(done, expected)
    assert not (tmp_path / "out").exists()


def test_a_study_file_that_is_not_utf8_or_too_deep_or_asks_too_much(tmp_path):
    cases = {
        "latin1.toml": (
            STUDY.replace('name = "mini"', 'name = "mini"  # café').encode("latin-1"),
            "not UTF-8 text",
        ),
        "deep.toml": (b"a = " + b"[" * 100_000, "not valid TOML"),
        "huge.toml": (b"# " + b"x" * (2 << 20), "larger than"),
    }
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert_one_line_refusal(cnnlab("study", name, "--dry-run", cwd=tmp_path), expected)
    (tmp_path / "mini.toml").write_text(STUDY)
    done = cnnlab("study", "mini.toml", "--dry-run", "--repeats", "1000000000", cwd=tmp_path)
    assert_one_line_refusal(done, "--repeats 1000000000: must be between 1 and 1000")
    wide = STUDY.replace("[0, 0.0001, 1]", str([0, 0.0001, 1, *(i / 1000 for i in range(2, 900))]))
    (tmp_path / "wide.toml").write_text(wide.replace("repeats = 2", "repeats = 1000"))
    assert_one_line_refusal(cnnlab("study", "wide.toml", "--dry-run", cwd=tmp_path), "at most")


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_study_files_raise_only_one_line_errors(tmp_path, data):
    lines = STUDY.splitlines()
    edits = data.draw(st.integers(1, 4))
    for _ in range(edits):
        index = data.draw(st.integers(0, len(lines) - 1))
        kind = data.draw(st.sampled_from(["drop", "duplicate", "replace value", "garble"]))
        if kind == "drop":
            del lines[index]
        elif kind == "duplicate":
            lines.insert(index, lines[index])
        elif kind == "replace value" and "=" in lines[index]:
            key = lines[index].split("=", 1)[0]
            value = data.draw(st.sampled_from([*BAD_VALUES.values(), "0", "1e309", "[]", "''"]))
            lines[index] = f"{key}= {value}"
        else:
            text = data.draw(st.text(max_size=12))
            position = data.draw(st.integers(0, len(lines[index])))
            lines[index] = lines[index][:position] + text + lines[index][position:]
        if not lines:
            lines = [""]
    path = tmp_path / "mutated.toml"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogateescape")
    try:
        plan_runs(load_study(path))
    except CnnlabError as error:
        assert "\n" not in str(error)


# --- kernels and images -------------------------------------------------------------------------


def test_bad_kernels_and_images_are_one_line_and_write_nothing(tmp_path):
    np.lib.format.write_array_header_1_0(
        (tmp_path / "declares.npy").open("wb"),
        {"descr": "<f8", "fortran_order": False, "shape": (100_000, 100_000)},
    )
    with (tmp_path / "declares-image.npy").open("wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|u1", "fortran_order": False, "shape": (13_000, 13_000, 3)}
        )
        handle.write(b"\0" * 100)
    from PIL import Image

    Image.new("L", (5000, 5000)).save(tmp_path / "large.png")
    cases = [
        (["--sample", "--kernel", "box:100000"], "box size 100000: at most 1025"),
        (["--sample", "--kernel", "gaussian:99999"], "at most 1025"),
        (["--sample", "--kernel", "[" * 100_000], "nested too deeply"),
        (["--sample", "--kernel", "declares.npy"], "more than"),
        (["declares-image.npy", "--kernel", "sobel-x"], "more than"),
        (["large.png", "--kernel", "sobel-x"], "more than 16,777,216 pixels"),
    ]
    for arguments, expected in cases:
        done = cnnlab("convolve", *arguments, "--out", "out", cwd=tmp_path)
        assert_one_line_refusal(done, expected)
        assert not (tmp_path / "out").exists()


# --- run folders ------------------------------------------------------------------------------


class _Payload:
    """Unpickling this would create a file: proof that something ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A real (tiny) run folder to break in copies."""
    from cnnlab.config import RunConfig
    from cnnlab.training import loop

    folder = tmp_path_factory.mktemp("run") / "run"
    data = fake_runs.zeros_cifar(train_count=100)
    result = loop.fit(RunConfig(arch="tiny", train_size=100, epochs=1), data, device="cpu")
    runfolder.save_run(result, folder, data.class_names)
    return folder


def broken_copy(run_folder: Path, tmp_path: Path, name: str, content: bytes) -> Path:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_folder, copy)
    (copy / name).write_bytes(content)
    return copy


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("weights.pt", b"", "not a plain state_dict of tensors; it will not be loaded"),
        ("weights.pt", b"\x80\x04K\x01.", "not a plain state_dict"),
        ("config.json", b"[1, 2]", "config.json: expected an object, got list"),
        ("config.json", b'{"arch": "tiny", "epochs": NaN}', "epochs: expected an integer"),
        ("config.json", b"[" * 100_000, "not valid JSON"),
        ("config.json", b"\xff\xfe", "not valid JSON"),
        ("history.json", b'{"a": 1}', "history.json: expected a list"),
    ],
)
def test_broken_run_folders_are_refused_in_one_line(run_folder, tmp_path, name, content, expected):
    copy = broken_copy(run_folder, tmp_path, name, content)
    with pytest.raises(CnnlabError, match=expected.replace("(", r"\(")):
        runfolder.load_run(copy)


def test_weights_that_hold_code_are_never_run(run_folder, tmp_path):
    marker = tmp_path / "ran"
    buffer = pickle.dumps({"layers.0.weight": _Payload(str(marker))})
    copy = broken_copy(run_folder, tmp_path, "weights.pt", b"")
    torch.save({"x": torch.zeros(1)}, copy / "weights.pt")  # a real zip container...
    (copy / "weights.pt").write_bytes(buffer)  # ...then a plain malicious pickle
    done = cnnlab("evaluate", str(copy), cwd=tmp_path)
    assert_one_line_refusal(done, "it will not be loaded")
    assert not marker.exists()
    listed = broken_copy(run_folder, tmp_path / "b", "weights.pt", b"")
    torch.save([torch.zeros(1)], listed / "weights.pt")
    done = cnnlab("evaluate", str(listed), cwd=tmp_path)
    assert_one_line_refusal(done, "holds a list, not a state_dict")


# --- output places and pipes --------------------------------------------------------------------


def test_results_into_a_closed_pipe_end_quietly(tmp_path, monkeypatch):
    path = tmp_path / "mini.toml"
    path.write_text(STUDY)
    monkeypatch.setattr(runfolder, "_save_files", fake_runs.fake_save_run)
    data = fake_runs.zeros_cifar()
    fake_studies.study_records(path, tmp_path / "out", data, fit=fake_runs.fake_fit)
    reader = subprocess.Popen(
        f"{sys.executable} -m cnnlab results {tmp_path / 'out'} --format csv | head -1",
        shell=True,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    out, err = reader.communicate(timeout=120)
    assert out.startswith("id,status") and len(out.splitlines()) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_train_into_a_place_that_cannot_hold_a_run_folder(tmp_path, tiny_folder_path):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    common = ["train", "--arch", "tiny", "--train-size", "100", "--epochs", "1"]
    for out, expected in (
        ("file/run", "is not a folder"),
        ("file", "exists and is not a folder"),
        ("other", "not empty and not a run folder"),
    ):
        done = cnnlab(*common, "--data", str(tiny_folder_path), "--out", out, cwd=tmp_path)
        assert_one_line_refusal(done, expected)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_a_full_disk_while_writing_a_run_folder_leaves_nothing(tmp_path, tiny_folder_path):
    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    command = [sys.executable, "-m", "cnnlab", "train", "--arch", "tiny", "--train-size", "100"]
    command += ["--epochs", "1", "--data", str(tiny_folder_path), "--out", "run"]
    env = {**os.environ, "CNNLAB_CACHE": str(tmp_path / "cache")}
    # The cache is written first and needs more: fill it without the limit.
    subprocess.run(
        [*command[:3], "data", "info", "--data", str(tiny_folder_path)],
        env=env,
        capture_output=True,
        check=True,
        cwd=tmp_path,
    )
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small_files,
    )
    assert_one_line_refusal(done, "")
    assert "File too large" in done.stderr or "No space" in done.stderr, done.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache"]  # no run, no temporary


@pytest.fixture
def tiny_folder_path(tmp_path_factory) -> Path:
    """A PNG image folder of 10 train and 5 test images per class."""
    from PIL import Image

    from cnnlab.data.datasets import CLASS_NAMES

    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("test", 5)):
        for name in CLASS_NAMES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        # /proc is a folder that root may "write" by its permissions, and cannot.
        (["train", "--arch", "tiny", "--train-size", "100", "--epochs", "1"], "cannot write there"),
        (["convolve", "--sample", "--kernel", "laplacian8"], "cannot write there"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_the_work(
    tmp_path, tiny_folder_path, command, expected
):
    extra = ["--data", str(tiny_folder_path)] if command[0] == "train" else []
    done = cnnlab(*command, *extra, "--out", "/proc/cnnlab-out", cwd=tmp_path)
    assert_one_line_refusal(done, expected)
    assert "epoch" not in done.stdout  # refused before training, not after
    (tmp_path / "file").write_text("mine")
    done = cnnlab(*command, *extra, "--out", "file/out", cwd=tmp_path)
    assert_one_line_refusal(done, "file is not a folder")
    assert (tmp_path / "file").read_text() == "mine"
