"""Layer specs: strict parsing, its one-line errors, the registry, a config's layers; no torch."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cnnlab.config import EVAL_BATCH_SIZE, RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.nn import shapes
from cnnlab.nn.architectures import get_architecture
from cnnlab.nn.shapes import parse_layers, resolve_layers
from cnnlab.nn.specs import ACTIVATIONS, Dense

HEAD = [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]


def test_the_layer_specs_load_no_torch():
    script = """
import sys
from cnnlab.nn import architectures
from cnnlab.nn import shapes
specs = shapes.parse_layers(architectures.get_architecture("tiny-modern"))
torch = [name for name in sys.modules if name.startswith("torch")]
print(shapes.forward_flops(specs) > 0, torch)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "[]"]


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(
        CnnlabError, match="known: seed, seed-deep, seed-maxpool, strong-l, strong-m"
    ):
        get_architecture("resnet")


def test_config_l1_overrides_every_dense_kernel():
    class Config:
        arch, layers, l1, l2 = "seed", None, 0.5, None

    (dense,) = [layer for layer in resolve_layers(Config) if isinstance(layer, Dense)]
    assert (dense.l1, dense.l2) == (0.5, 0.0)
    Config.l1 = None
    (dense,) = [layer for layer in resolve_layers(Config) if isinstance(layer, Dense)]
    assert dense.l1 == 1e-4


def test_net_size_counts_weights_and_every_layer_output():
    block = {"type": "residual", "layers": [{"type": "conv", "filters": 8, "kernel": 3}]}
    specs = [
        {"type": "conv", "filters": 4, "kernel": 3},  # 28·4 weights; 30x30x4 out
        {"type": "maxpool", "size": 2},  # 15x15x4
        {"type": "batchnorm"},  # 4·4 weights (moving statistics included)
        {**block, "layers": [{**block["layers"][0], "padding": "same"}]},  # 1x1 projection
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax"},
    ]
    block_weights = (36 + 1) * 8 + (4 + 1) * 8
    block_outputs = 15 * 15 * 8 * 3  # branch, projection, sum
    assert shapes.net_size(parse_layers(specs), (32, 32, 3)) == (
        28 * 4 + 16 + block_weights + (15 * 15 * 8 + 1) * 10,
        30 * 30 * 4 + 15 * 15 * 4 * 2 + block_outputs + 15 * 15 * 8 + 10,
        30 * 30 * 4,
    )


def test_memory_a_net_would_take_is_refused_before_it_is_built(monkeypatch):
    specs = parse_layers(get_architecture("seed"))
    weights, outputs, largest = shapes.net_size(specs, (32, 32, 3))
    monkeypatch.setattr(shapes, "MAX_WEIGHTS", weights)
    parse_layers(get_architecture("seed"))
    monkeypatch.setattr(shapes, "MAX_WEIGHTS", weights - 1)
    with pytest.raises(CnnlabError, match=f"the net holds {weights:,} weights; at most"):
        parse_layers(get_architecture("seed"))
    monkeypatch.undo()
    assert outputs > largest  # so a training batch of 1,000 needs more than an evaluation one
    monkeypatch.setattr(shapes, "MAX_BATCH_OUTPUTS", outputs * 1000)
    resolve_layers(RunConfig(batch_size=1000))
    with pytest.raises(CnnlabError, match=r"^seed on cifar10 .*: batch_size 1001: .* per batch"):
        resolve_layers(RunConfig(batch_size=1001))
    resolve_layers(RunConfig(batch_size=1001, train_size=1000))  # a batch is at most the subset
    monkeypatch.setattr(shapes, "MAX_BATCH_OUTPUTS", largest * EVAL_BATCH_SIZE - 1)
    with pytest.raises(CnnlabError, match=f"a layer outputs {largest:,} numbers per image"):
        resolve_layers(RunConfig(batch_size=1))


# --- parsing the new vocabulary ---------------------------------------------------------------

# A valid table of each new type (or of a type with new keys) and, per key, whether a value is
# valid: written out here, apart from specs.py's own rules.
VALID_TABLES = {
    "conv": {"type": "conv", "filters": 4, "kernel": 3, "padding": "same"},
    "dense": {"type": "dense", "units": 5},
    "batchnorm": {"type": "batchnorm"},
    "activation": {"type": "activation", "activation": "gelu"},
    "residual": {"type": "residual", "layers": [{"type": "batchnorm"}]},
}


def is_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool)


ACCEPTS = {
    ("conv", "use_bias"): lambda v: isinstance(v, bool),
    ("conv", "trainable"): lambda v: isinstance(v, bool),
    ("conv", "l1"): lambda v: is_number(v) and v >= 0,
    ("conv", "l2"): lambda v: is_number(v) and v >= 0,
    ("conv", "init"): lambda v: v in ("glorot_uniform", "he_normal", "he_uniform"),
    ("conv", "activation"): lambda v: v in ACTIVATIONS,
    ("dense", "use_bias"): lambda v: isinstance(v, bool),
    ("dense", "trainable"): lambda v: isinstance(v, bool),
    ("dense", "init"): lambda v: v in ("glorot_uniform", "he_normal", "he_uniform"),
    ("batchnorm", "momentum"): lambda v: is_number(v) and 0 <= v <= 1,
    ("batchnorm", "epsilon"): lambda v: is_number(v) and 0 < v < math.inf,
    ("batchnorm", "center"): lambda v: isinstance(v, bool),
    ("batchnorm", "scale"): lambda v: isinstance(v, bool),
    ("activation", "activation"): lambda v: v in ACTIVATIONS,
    ("residual", "activation"): lambda v: v in ACTIVATIONS,
    ("residual", "layers"): lambda v: False,  # no drawn value is a list of layer tables
    ("residual", "shortcut"): lambda v: v == [],  # an explicit identity
}
VALUES = st.one_of(
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["relu", "he_normal", "whiten", "softmax", "yes", "", "1e-3"]),
    st.lists(st.integers(-1, 2), max_size=3),
    st.none(),
)


@settings(max_examples=150, deadline=None)
@given(case=st.sampled_from(sorted(ACCEPTS)), value=VALUES, nested=st.booleans())
def test_a_bad_value_is_one_line_naming_the_layer_and_key(case, value, nested):
    kind, key = case
    assume(not ACCEPTS[case](value) and value != "softmax")  # softmax: a check of its own
    if kind == "dense":
        nested = False  # a dense layer never stands inside a block
    table = {**VALID_TABLES[kind], key: value}
    layers = [{"type": "batchnorm"}, table, *HEAD]
    where = f"layer 1 ({kind})"
    if nested:
        layers[1] = {"type": "residual", "layers": [table]}
        where = f"layer 1 (residual): layers: layer 0 ({kind})"
    with pytest.raises(CnnlabError) as error:
        parse_layers(layers)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(where), message
    assert f"{key}:" in message, message


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (
            [
                {"type": "conv", "filters": 4, "kernel": 2},
                {**VALID_TABLES["conv"], "init": "whiten"},
            ],
            r"layer 1 \(conv\): init: 'whiten' is only for the net's first layer",
        ),
        (
            [{"type": "residual", "layers": [{**VALID_TABLES["conv"], "init": "whiten"}]}],
            r"layers: layer 0 \(conv\): init: 'whiten' is only",
        ),
        (
            [{"type": "conv", "filters": 7, "kernel": 2, "init": "whiten"}],
            r"layer 0 \(conv\): filters: init 'whiten' needs an even count.*got 7",
        ),
        (
            [{"type": "conv", "filters": 26, "kernel": 2, "init": "whiten"}],
            r"filters: init 'whiten' allows at most 2·2·2·3 = 24.*got 26",
        ),
        (
            [{"type": "dense", "units": 4, "init": "whiten"}],
            r"layer 0 \(dense\): init: expected one of glorot_uniform, he_normal, he_uniform",
        ),
        (
            [{"type": "residual", "layers": [{"type": "flatten"}]}],
            r"layer 0 \(residual\): layers: layer 0 \(flatten\): not allowed inside a residual",
        ),
        (
            [{"type": "residual", "layers": [{"type": "globalavgpool"}]}],
            r"layers: layer 0 \(globalavgpool\): not allowed inside",
        ),
        (
            [{"type": "residual", "layers": [Dense(4)]}],
            r"layers: layer 0 \(dense\): not allowed inside",
        ),
        ([{"type": "residual", "layers": []}], r"layers: a residual block needs at least one"),
        (
            [{"type": "residual", "layers": {"type": "conv"}}],
            r"layer 0 \(residual\): layers: expected a list of layer tables",
        ),
        (
            [
                {
                    "type": "residual",
                    "layers": [{"type": "conv", "filters": 4, "kernel": 3, "padding": "same"}],
                    "shortcut": [{"type": "conv", "filters": 4, "kernel": 3}],
                }
            ],
            r"layer 0 \(residual\): shortcut: gives \(30, 30, 4\) but the layers give"
            r" \(32, 32, 4\)",
        ),
        (
            [{"type": "residual", "layers": [{"type": "conv", "filters": 4, "kernel": 3}]}],
            r"the layers map \(32, 32, 3\) to \(30, 30, 4\) and no 1x1 projection stride maps"
            r" 32x32 onto 30x30",
        ),
        (
            [{"type": "residual", "layers": [{"type": "conv", "filters": 4, "kernel": 33}]}],
            r"layer 0 \(residual\): layers: layer 0 \(conv\): Conv2D: window 33x33 is larger",
        ),
        (
            [
                {"type": "flatten"},
                {"type": "residual", "layers": [{"type": "batchnorm"}]},
            ],
            r"layer 1 \(residual\): a residual block needs an image input",
        ),
        (
            [{"type": "flatten"}, {"type": "globalmaxpool"}],
            r"layer 1 \(globalmaxpool\): GlobalMaxPooling2D needs an image input",
        ),
        (
            [{"type": "activation", "activation": "softmax"}],
            r"layer 0: softmax is only for the last layer",
        ),
        (
            [
                {
                    "type": "residual",
                    "layers": [{"type": "activation", "activation": "softmax"}],
                }
            ],
            r"layers: layer 0 \(activation\): softmax is only for the last layer",
        ),
        ([{"type": "activation"}], r"layer 0 \(activation\): missing key 'activation'"),
        ([{"type": "batchnorm", "axis": 1}], r"layer 0 \(batchnorm\): unknown key 'axis'"),
        ([{"type": "globalavgpool", "size": 2}], r"unknown key 'size'; valid keys: none besides"),
    ],
)
def test_invalid_modern_specs_are_one_line_naming_layer_and_key(layers, message):
    with pytest.raises(CnnlabError, match=message) as error:
        parse_layers([*layers, *HEAD])
    assert "\n" not in str(error.value)


def test_config_l1_override_keeps_the_dense_layers_other_keys():
    class Config:
        arch, l1, l2 = "inline", 0.5, None
        layers = (
            {"type": "globalavgpool"},
            {"type": "dense", "units": 10, "activation": "softmax", "use_bias": False},
        )

    dense = resolve_layers(Config)[-1]
    assert dense == Dense(10, "softmax", l1=0.5, use_bias=False)


# --- rescaling and a softmax activation at the end ----------------------------------------------


@pytest.mark.parametrize(
    ("last", "message"),
    [
        ({"type": "rescaling"}, "missing key 'scale'"),
        ({"type": "rescaling", "scale": float("nan")}, "scale: expected a finite number"),
        ({"type": "activation", "activation": "relu"}, "a classifier ends with a softmax"),
    ],
)
def test_bad_endings_and_rescalings_are_one_line(last, message):
    layers = [{"type": "flatten"}, {"type": "dense", "units": 10}, last]
    with pytest.raises(CnnlabError, match=message) as error:
        parse_layers(layers)
    assert "\n" not in str(error.value)


def test_a_softmax_activation_needs_one_feature_per_class():
    layers = [
        {"type": "flatten"},
        {"type": "dense", "units": 7},
        {"type": "activation", "activation": "softmax"},
    ]
    with pytest.raises(CnnlabError, match=r"layer 2: the softmax needs 10 features .*, got 7"):
        parse_layers(layers)
    early = [{"type": "activation", "activation": "softmax"}, *layers[:2], layers[2]]
    with pytest.raises(CnnlabError, match="softmax is only for the last layer"):
        parse_layers(early, num_classes=7)
