"""`cnnlab explain`: feature maps, first kernels, Grad-CAM and saliency of a trained run, held to
hand computations with torch's autograd, over every registered net (grayscale too), through the
CLI and the Python API, and bad input as one line with exit code 2."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import cnnlab
import fake_studies
from cnnlab import atomic
from cnnlab.cli import main
from cnnlab.config import RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.insight import attribution
from cnnlab.insight.explain import explain
from cnnlab.nn.architectures import ARCHITECTURES
from cnnlab.nn.facts import layer_facts
from cnnlab.nn.modules import build_model
from cnnlab.nn.shapes import parse_layers
from cnnlab.training import loop, runfolder

pytest.importorskip("captum")


def _run_folder(data, config: RunConfig, folder: Path) -> Path:
    result = loop.fit(config, data, device="cpu")
    runfolder.save_run(
        result,
        folder,
        data.class_names,
        test_images=data.test_images,
        test_labels=data.test_labels,
    )
    return folder


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory) -> tuple[Path, object]:
    """A real one-epoch seed run on tiny synthetic CIFAR, saved with its test set."""
    from conftest import tiny_cifar

    data = tiny_cifar.__wrapped__()
    config = RunConfig(arch="seed", train_size=200, epochs=1, seed=5)
    return _run_folder(data, config, tmp_path_factory.mktemp("rgb") / "run"), data


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A real one-epoch tiny run on scikit-learn's 8x8 grayscale digits."""
    from cnnlab.data.datasets import load_dataset

    data = load_dataset("digits")
    config = RunConfig(arch="tiny", dataset="digits", train_size=300, epochs=1, seed=2)
    return _run_folder(data, config, tmp_path_factory.mktemp("digits") / "run")


def _random_image(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --- the attributions against autograd -----------------------------------------------------


def test_grad_cam_is_the_gradient_weighted_sum_of_the_last_conv_maps():
    """Selvaraju et al.'s formula by hand: channel weights = the mean gradient of the class's
    logit over the map; ReLU of the weighted sum, upsampled bilinearly to the image."""
    model = build_model("seed", generator=torch.Generator().manual_seed(1)).eval()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    kept = {}
    handle = model.layers[3].register_forward_hook(lambda m, i, o: kept.update(maps=o))
    logits = model(image)
    handle.remove()
    for target in (0, 7):
        (gradient,) = torch.autograd.grad(logits[0, target], kept["maps"], retain_graph=True)
        weights = gradient.mean((2, 3), keepdim=True)
        cam = F.relu((weights * kept["maps"]).sum(1, keepdim=True))
        expected = F.interpolate(cam, (32, 32), mode="bilinear")[0, 0].detach().numpy()
        found = attribution.grad_cam(model, image, target)
        assert expected.max() > 0
        np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-7)
    assert attribution.grad_cam_target(model)[0] == "conv2d_3"


def test_saliency_is_the_largest_absolute_pixel_gradient():
    model = build_model("tiny-modern", generator=torch.Generator().manual_seed(3)).eval()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    pixels = image.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(pixels)[0, 5], pixels)
    expected = gradient[0].abs().amax(0).numpy()
    np.testing.assert_allclose(attribution.saliency(model, image, 5), expected, rtol=1e-5)


def test_feature_maps_are_each_conv_layers_output():
    model = build_model("seed-maxpool", generator=torch.Generator().manual_seed(5)).eval()
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    maps = attribution.feature_maps(model, image)
    assert [name for name, _ in maps] == ["conv2d", "conv2d_1", "conv2d_2", "conv2d_3"]
    with torch.no_grad():
        output = image
        for (_, found), layer in zip(maps, model.layers, strict=False):
            output = layer(output)
            np.testing.assert_allclose(found, output[0].numpy(), rtol=1e-6)


def test_the_grad_cam_layer_of_a_residual_net_is_its_last_block():
    model = build_model("tiny-modern")
    name, module = attribution.grad_cam_target(model)
    assert name == "add_1" and module is model.layers[5]


def _image_shapes():
    """Every registered net on colour and on grayscale images, where the vocabulary builds it."""
    cases = []
    for arch in sorted(ARCHITECTURES):
        for shape in ((32, 32, 3), (32, 32, 1)):
            try:
                parse_layers(ARCHITECTURES[arch], shape, 10)
            except CnnlabError:
                continue
            cases.append(pytest.param(arch, shape, id=f"{arch}-{shape[2]}ch"))
    return cases


def test_grayscale_is_refused_only_for_the_whitened_stems():
    built = {case.values for case in _image_shapes()}
    refused = {arch for arch in ARCHITECTURES if (arch, (32, 32, 1)) not in built}
    assert refused == {"strong-s", "strong-m", "strong-l"}  # 24 whitened filters > 2·2·2·1


@pytest.mark.parametrize(("arch", "shape"), _image_shapes())
def test_every_registered_net_is_explained(arch, shape):
    model = build_model(arch, shape, 10, generator=torch.Generator().manual_seed(0))
    insight = attribution.explain_image(model, _random_image(shape), [2])
    convs = [f for f in layer_facts(model.specs, shape) if f.kind == "Conv2D"]
    assert [name for name, _ in insight.feature_maps] == [f.name for f in convs]
    for (_, maps), fact in zip(insight.feature_maps, convs, strict=True):
        rows, columns, channels = fact.output_shape
        assert maps.shape == (channels, rows, columns) and np.isfinite(maps).all()
    assert set(insight.grad_cam) == set(insight.saliency) == {2, insight.predicted}
    for heat in (*insight.grad_cam.values(), *insight.saliency.values()):
        assert heat.shape == shape[:2] and np.isfinite(heat).all() and heat.min() >= 0
    assert any(heat.max() > 0 for heat in insight.saliency.values())
    assert abs(insight.probabilities.sum() - 1) < 1e-5


def test_a_net_without_a_conv_gets_saliency_but_no_grad_cam():
    layers = [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]
    model = build_model(layers, (8, 8, 1), 10)
    insight = attribution.explain_image(model, _random_image((8, 8, 1)), [1])
    assert insight.feature_maps == [] and insight.grad_cam == {}
    assert insight.grad_cam_layer is None and set(insight.saliency) == {1, insight.predicted}


# --- the folder it writes ------------------------------------------------------------------


def _decoded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r"base64,([A-Za-z0-9+/=]+)", page)]


@pytest.mark.browser
def test_the_explain_page_loads_in_headless_chromium_and_every_image_decodes(rgb_run, tmp_path):
    import test_report

    run_dir, data = rgb_run
    done = explain(run_dir, test_indices=[0, 9], data=data, out=tmp_path / "explained")
    images = len(re.findall(r"<img ", done.page.read_text(encoding="utf-8")))
    assert images == len(done.pngs) == 5  # kernels, then maps and attributions per image
    result, console = test_report._render(done.page, tmp_path / "profile")
    assert (result, console) == (f"{images}:0", [])


def test_explain_writes_pngs_and_one_self_contained_page(rgb_run, tmp_path):
    run_dir, data = rgb_run
    picture = tmp_path / "picture.png"
    Image.fromarray(data.test_images[3]).save(picture)
    done = cnnlab.explain(run_dir, images=[picture], test_indices=[0, 9], data=data)
    assert done.out_dir == run_dir / "explain" and done.page.is_file()
    names = sorted(path.name for path in done.pngs)
    assert names == sorted(
        ["kernels_first.png"]
        + [f"image{i}_{kind}.png" for i in range(3) for kind in ("feature_maps", "attributions")]
    )
    page = done.page.read_text(encoding="utf-8")
    assert 'src="data:image/png;base64,' in page and '<img src="image' not in page
    pngs = _decoded_pngs(page)
    assert pngs == [path.read_bytes() for path in done.pngs]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pngs)
    summary = json.loads((done.out_dir / "explain.json").read_text())
    assert [item["source"] for item in summary] == [str(picture), "test image 0", "test image 9"]
    assert [item["true"] for item in summary] == [None, int(data.test_labels[0]), 0]
    # A file's image and the same test image give the same answer.
    test_three = explain(run_dir, test_indices=[3], data=data, out=tmp_path / "three")
    assert done.images[0].insight.predicted == test_three.images[0].insight.predicted
    np.testing.assert_allclose(
        done.images[0].insight.saliency[done.images[0].insight.predicted],
        test_three.images[0].insight.saliency[done.images[0].insight.predicted],
    )


def test_without_images_it_explains_the_kept_misclassified_ones(rgb_run, tmp_path):
    run_dir, _ = rgb_run
    done = explain(run_dir, out=tmp_path / "out")
    kept = np.load(run_dir / "misclassified_test.npz")
    assert [item.source for item in done.images] == [
        f"test image {index}" for index in kept["index"][:4]
    ]
    assert all(item.label != item.insight.predicted for item in done.images)
    assert all(len(item.insight.grad_cam) == 2 for item in done.images)  # true and predicted


@pytest.mark.slow  # the command in a subprocess: torch and Captum imported afresh
def test_the_cli_explains_a_grayscale_run_by_test_index(digits_run, tmp_path):
    out = tmp_path / "explained"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnnlab",
            "explain",
            str(digits_run),
            "--test-index",
            "5",
            "--test-index",
            "17",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"explain: {out / 'explain.html'} (2 images, 5 PNGs)")
    with Image.open(out / "image0_attributions.png") as picture:
        assert picture.size[0] > 200
    # No temporary left: only the marker that says cnnlab wrote the folder whole.
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [atomic.MARKER]


# --- bad input: one line, exit 2, nothing written ------------------------------------------


def test_grad_cam_reads_the_layer_named(rgb_run, tmp_path, capsys):
    # The seed net's convs are conv2d to conv2d_3; Grad-CAM reads the last unless told.
    run_dir, data = rgb_run
    first = explain(run_dir, test_indices=[4], data=data, out=tmp_path / "first", layer="conv2d")
    last = explain(run_dir, test_indices=[4], data=data, out=tmp_path / "last")
    assert first.images[0].insight.grad_cam_layer == "conv2d"
    assert last.images[0].insight.grad_cam_layer == "conv2d_3"
    assert "on conv2d;" in first.page.read_text(encoding="utf-8")
    predicted = first.images[0].insight.predicted
    early, late = (
        first.images[0].insight.grad_cam[predicted],
        last.images[0].insight.grad_cam[predicted],
    )
    assert early.shape == late.shape == (32, 32) and not np.allclose(early, late)
    error = _cli_error(
        capsys, ["explain", str(run_dir), "--layer", "dense", "--out", str(tmp_path / "x")]
    )
    expected = "--layer 'dense': the net has no such layer; its conv layers: conv2d, conv2d_1,"
    assert f"{expected} conv2d_2, conv2d_3" in error
    assert not (tmp_path / "x").exists()


def _cli_error(capsys, arguments: list[str]) -> str:
    code = main(arguments)
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1, error
    return error


def test_bad_input_is_one_line_and_exit_2(rgb_run, tmp_path, capsys):
    run_dir, data = rgb_run
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    for name in ("config.json", "history.json", "metrics.json"):
        (no_weights / name).write_bytes((run_dir / name).read_bytes())
    assert "weights.pt: cannot read" in _cli_error(capsys, ["explain", str(no_weights)])
    assert not (no_weights / "explain").exists()

    small = tmp_path / "small.png"
    Image.new("RGB", (20, 16)).save(small)
    error = _cli_error(capsys, ["explain", str(run_dir), "--image", str(small)])
    assert "a 20x16 image" in error and "takes 32x32 images" in error
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    assert "cannot read it as an image" in _cli_error(
        capsys, ["explain", str(run_dir), "--image", str(not_an_image)]
    )

    with pytest.raises(CnnlabError, match=r"test index 100: out of range; the test set holds 100"):
        explain(run_dir, test_indices=[100], data=data, out=tmp_path / "x")
    with pytest.raises(CnnlabError, match=r"test index -1: out of range"):
        explain(run_dir, test_indices=[-1], data=data, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()

    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    assert "exists and is not a folder" in _cli_error(
        capsys, ["explain", str(run_dir), "--out", str(a_file)]
    )
    full = tmp_path / "full"
    full.mkdir()
    (full / "mine.txt").write_text("mine")
    assert "not empty and not an explain folder" in _cli_error(
        capsys, ["explain", str(run_dir), "--out", str(full)]
    )
    assert a_file.read_text() == "mine" and sorted(os.listdir(full)) == ["mine.txt"]
    assert "is not a folder" in _cli_error(
        capsys, ["explain", str(run_dir), "--out", str(a_file / "out")]
    )

    nothing_kept = tmp_path / "nothing_kept"
    shutil.copytree(run_dir, nothing_kept, ignore=shutil.ignore_patterns("explain"))
    (nothing_kept / "misclassified_test.npz").unlink()
    error = _cli_error(capsys, ["explain", str(nothing_kept)])
    assert "keeps no misclassified test images; name images with --image PATH" in error


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_out_is_one_line(rgb_run, tmp_path, capsys):
    run_dir, _ = rgb_run
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        error = _cli_error(capsys, ["explain", str(run_dir), "--out", str(locked / "out")])
    finally:
        locked.chmod(0o700)
    assert "cannot write there" in error


def test_an_out_no_one_can_write_is_one_line_even_for_root(rgb_run, capsys):
    run_dir, _ = rgb_run
    error = _cli_error(capsys, ["explain", str(run_dir), "--out", "/proc/cnnlab-explain"])
    assert "--out /proc/cnnlab-explain: cannot write there" in error


def test_a_test_index_out_of_range_through_the_cli(digits_run, capsys):
    error = _cli_error(capsys, ["explain", str(digits_run), "--test-index", "100000"])
    assert re.search(r"test index 100000: out of range; the test set holds [\d,]+ images", error)
    assert not (digits_run / "explain").exists()


def test_a_studys_report_shows_its_best_runs_from_inside(tiny_cifar, tmp_path):
    # The README's Python route: run_study, then write_report, which explains the best runs.
    import cnnlab

    study = tmp_path / "inside.toml"
    study.write_text(fake_studies.tiny_study_toml("inside", "{ l1 = [0.0, 0.01] }"))
    execution = cnnlab.Execution(workers=1)
    outcome = cnnlab.run_study(study, out=tmp_path / "out", data=tiny_cifar, execution=execution)
    markdown = cnnlab.write_report(outcome.study_dir)["md"].read_text()
    assert "Not explained" not in markdown and markdown.count("](report_files/inside_") == 3
    written = list((outcome.study_dir / "runs").glob("*/explain"))
    assert len(written) == 1 and (written[0] / "image2_attributions.png").is_file()
    sources = [item["source"] for item in json.loads((written[0] / "explain.json").read_text())]
    assert sources[:2] == [
        "sample-shapes (drawn, shown at 32x32)",
        "sample-mosaic (drawn, shown at 32x32)",
    ]
    assert sources[2].startswith("test image ")
    # Another report keeps what an earlier one explained, untouched.
    page = written[0] / "explain.html"
    before = page.stat().st_mtime_ns
    markdown = cnnlab.write_report(outcome.study_dir)["md"].read_text(encoding="utf-8")
    assert page.stat().st_mtime_ns == before
    section = markdown.split("## Inside the best runs", 1)[1].split("\n## ", 1)[0]
    assert section.count("![") == 3 and "Grad-CAM" in section
    for shown in ("feature maps of the drawn shapes", "feature maps of the drawn mosaic"):
        assert shown in section
    assert "attributions on a misclassified test image" in section


def test_the_drawn_samples_fit_any_net_s_input_grey_or_colour():
    from cnnlab.insight.explain import drawn_samples

    for shape in ((32, 32, 3), (28, 28, 1), (8, 8, 1), (40, 20, 3)):
        samples = drawn_samples(shape)
        assert [name.split(" ")[0] for name, _, _ in samples] == ["sample-shapes", "sample-mosaic"]
        for _, image, label in samples:
            assert image.shape == shape and image.dtype == np.uint8 and label is None
            assert image.std() > 10  # the drawing survives the reduction: not a flat image
