"""The Keras-style summary of layer specs: rows, counts and the printed table, without torch."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from cnnlab.nn.architectures import ARCHITECTURES, get_architecture
from cnnlab.nn.facts import layer_facts, total_activation_bytes, total_macs
from cnnlab.nn.shapes import forward_flops, parse_layers
from cnnlab.nn.specs import Dropout, Flatten, GlobalAvgPool
from cnnlab.nn.summary import architecture_summary, format_summary


def test_the_summary_loads_no_torch():
    script = """
import sys
from cnnlab.nn import architectures
from cnnlab.nn import summary
print(summary.architecture_summary(architectures.get_architecture("strong-s"))[1] > 0)
print([name for name in sys.modules if name.startswith("torch")])
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "[]"]


def test_seed_summary_matches_the_report_table():
    rows, _ = architecture_summary(get_architecture("seed"))
    assert [(row.name, row.output_shape, row.parameters) for row in rows] == [
        ("conv2d", (32, 32, 16), 448),
        ("conv2d_1", (16, 16, 16), 2320),
        ("conv2d_2", (16, 16, 32), 4640),
        ("conv2d_3", (8, 8, 32), 9248),
        ("dropout", (8, 8, 32), 0),
        ("flatten", (2048,), 0),
        ("dense", (10,), 20490),
    ]
    text = format_summary("seed", get_architecture("seed"))
    assert "Total params: 37,146" in text and "(None, 16, 16, 16)" in text


def test_tiny_modern_summary_is_kerass():
    """Keras's counts: two batch norms' moving statistics are the 16 non-trainable parameters
    (tests/test_keras.py holds the rows and totals to Keras's)."""
    text = format_summary("tiny-modern", get_architecture("tiny-modern"))
    header = text.splitlines()[2]
    assert header.split() == ["Layer", "(type)", "Output", "Shape", "Param", "#", "Connected", "to"]
    assert "input_layer (InputLayer)" in text
    assert "add (Add)" in text and "activation_1[0][0], activation[0][0]" in text
    assert text.endswith("Total params: 710\nTrainable params: 694\nNon-trainable params: 16")


# --- per-layer facts: MACs, activation memory, receptive field (cnnlab.nn.facts) -------------

# Hand-computed: after a window k with stride s, field += (k - 1)·jump and jump *= s; a conv's
# MACs are out_h·out_w·filters·k·k·in_channels, a dense layer's inputs·units.
SEED_HAND = {
    "seed": [
        ("conv2d", 32 * 32 * 16 * 3 * 3 * 3, (3, 3), (1, 1)),
        ("conv2d_1", 16 * 16 * 16 * 3 * 3 * 16, (5, 5), (2, 2)),
        ("conv2d_2", 16 * 16 * 32 * 3 * 3 * 16, (9, 9), (2, 2)),
        ("conv2d_3", 8 * 8 * 32 * 3 * 3 * 32, (13, 13), (4, 4)),
        ("dropout", 0, (13, 13), (4, 4)),
        ("flatten", 0, None, None),
        ("dense", 2048 * 10, None, None),
    ],
    "seed-maxpool": [
        ("conv2d", 32 * 32 * 16 * 3 * 3 * 3, (3, 3), (1, 1)),
        ("conv2d_1", 32 * 32 * 16 * 3 * 3 * 16, (5, 5), (1, 1)),
        ("conv2d_2", 32 * 32 * 32 * 3 * 3 * 16, (7, 7), (1, 1)),
        ("conv2d_3", 32 * 32 * 32 * 3 * 3 * 32, (9, 9), (1, 1)),
        ("max_pooling2d", 0, (10, 10), (2, 2)),
        ("dropout", 0, (10, 10), (2, 2)),
        ("flatten", 0, None, None),
        ("dense", 8192 * 10, None, None),
    ],
    "seed-deep": [
        ("conv2d", 32 * 32 * 8 * 3 * 3 * 3, (3, 3), (1, 1)),
        ("conv2d_1", 16 * 16 * 8 * 2 * 2 * 8, (4, 4), (2, 2)),
        ("conv2d_2", 16 * 16 * 16 * 3 * 3 * 8, (8, 8), (2, 2)),
        ("conv2d_3", 8 * 8 * 16 * 3 * 3 * 16, (12, 12), (4, 4)),
        ("conv2d_4", 8 * 8 * 32 * 3 * 3 * 16, (20, 20), (4, 4)),
        ("conv2d_5", 4 * 4 * 32 * 3 * 3 * 32, (28, 28), (8, 8)),
        ("dropout", 0, (28, 28), (8, 8)),
        ("flatten", 0, None, None),
        ("dense", 512 * 10, None, None),
    ],
}


@pytest.mark.parametrize("arch", sorted(SEED_HAND))
def test_seed_nets_facts_match_hand_computations(arch):
    facts = layer_facts(get_architecture(arch))
    found = [(f.name, f.macs, f.receptive_field, f.jump) for f in facts]
    assert found == SEED_HAND[arch]
    rows, total = architecture_summary(get_architecture(arch))
    assert [(f.name, f.output_shape, f.parameters) for f in facts] == [
        (row.name, row.output_shape, row.parameters) for row in rows
    ]
    assert sum(f.parameters for f in facts) == total
    assert all(f.activation_bytes == 4 * math.prod(f.output_shape) for f in facts)


def test_the_pooling_experiments_numbers():
    """The seed report's (c): max-pool has 61,440 more parameters and sees a smaller field."""
    strided, pooled = (
        layer_facts(get_architecture("seed")),
        layer_facts(ARCHITECTURES["seed-maxpool"]),
    )
    assert sum(f.parameters for f in pooled) - sum(f.parameters for f in strided) == 61_440
    assert total_macs(strided) == 2_822_144 and total_macs(pooled) == 17_039_360
    assert total_activation_bytes(strided) == 4 * (16384 + 4096 + 8192 + 2048 * 3 + 10)
    assert strided[4].receptive_field == (13, 13) and pooled[5].receptive_field == (10, 10)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_macs_are_half_the_flops_the_planner_counts(arch):
    layers = parse_layers(get_architecture(arch))
    assert 2 * total_macs(layer_facts(layers)) == forward_flops(layers)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_facts_agree_with_torchinfo(arch):
    """torchinfo's Mult-Adds of a conv or dense module are its kernel's plus one add per bias
    value and output position; its output sizes are ours, channels first."""
    torchinfo = pytest.importorskip("torchinfo")
    from cnnlab.nn.modules import KerasConv2d, KerasDense, build_model

    model = build_model(arch)
    stats = torchinfo.summary(model, input_size=(1, 3, 32, 32), verbose=0, depth=20)
    theirs = [
        info for info in stats.summary_list if isinstance(info.module, KerasConv2d | KerasDense)
    ]
    ours = [f for f in layer_facts(model.specs, model.input_shape) if f.kind in ("Conv2D", "Dense")]
    assert len(theirs) == len(ours) > 0
    for info, fact in zip(theirs, ours, strict=True):
        out = fact.output_shape
        assert tuple(info.output_size[1:]) == (out[2], out[0], out[1]) if len(out) == 3 else out
        bias_adds = math.prod(out) if info.module.bias is not None else 0
        assert info.macs == fact.macs + bias_adds, fact.name
        assert info.num_params == fact.parameters, fact.name


@pytest.mark.parametrize("arch", ["seed", "seed-deep", "tiny-modern"])
def test_receptive_field_is_where_the_gradient_reaches(arch):
    """The input pixels that move a central unit of the last image-shaped layer, found by
    autograd on positive weights and inputs (every relu open), span the computed field."""
    import torch

    from cnnlab.nn.modules import ConvNet

    layers = parse_layers(get_architecture(arch))
    image_layers = [spec for spec in layers if not isinstance(spec, Flatten | GlobalAvgPool)]
    image_layers = image_layers[
        : next(i for i, s in enumerate(image_layers) if isinstance(s, Dropout))
    ]
    shape = (96, 96, 3)  # large enough that the central unit's field touches no border
    net = ConvNet(image_layers, shape).eval()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.fill_(0.05)
    images = torch.ones(1, 3, 96, 96, requires_grad=True)
    output = net(images)
    output[0, 0, output.shape[2] // 2, output.shape[3] // 2].backward()
    rows, columns = (images.grad[0].abs().sum(0) > 0).nonzero().T
    reached = (int(rows.max() - rows.min() + 1), int(columns.max() - columns.min() + 1))
    assert reached == layer_facts(image_layers, shape)[-1].receptive_field


def test_detail_summary_shows_fields_and_macs_and_the_plain_one_is_unchanged():
    plain = format_summary("seed-maxpool", get_architecture("seed-maxpool"))
    detail = format_summary("seed-maxpool", get_architecture("seed-maxpool"), detail=True)
    assert "Receptive field" not in plain and "MACs" not in plain
    header = detail.splitlines()[2].split()
    assert header[-5:] == ["Act.", "memory", "Receptive", "field", "Jump"]
    pool_row = next(line for line in detail.splitlines() if line.startswith("max_pooling2d"))
    assert pool_row.split()[-3:] == ["KiB", "10x10", "2x2"]
    dense_row = next(line for line in detail.splitlines() if line.startswith("dense"))
    assert dense_row.split()[-2:] == ["all", "-"] and "81,920" in dense_row
    assert "Multiply-accumulates per image: 17,039,360" in detail
    assert detail.splitlines()[: len(plain.splitlines())][-3:] == plain.splitlines()[-3:]


def test_the_cli_summary_detail(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "cnnlab", "summary", "seed", "--detail"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "13x13" in done.stdout and "589,824" in done.stdout


def test_the_python_summary_of_a_built_model():
    import cnnlab

    model = cnnlab.build_model("seed-deep")
    text = cnnlab.summary(model)
    assert "Total params: 22,994" in text and "28x28" in text
    assert cnnlab.summary("seed-deep", detail=False).endswith("Non-trainable params: 0")
    grey = cnnlab.summary(cnnlab.build_model("seed", (28, 28, 1)))
    assert "(None, 28, 28, 16)" in grey and f"{28 * 28 * 16 * 9:,}" in grey
    assert cnnlab.layer_facts is layer_facts
