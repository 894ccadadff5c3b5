"""The registry of named architectures: each a tuple of layer specs, plain data (no torch).

The seed report's three nets, the strong recipe's three, and two small nets for tests. A study
file adds its own under [architectures.NAME]; `cnnlab archs` lists these with their parameters.
"""

from __future__ import annotations

from typing import Any

from cnnlab.errors import CnnlabError


def _conv(filters: int, kernel: int = 3, stride: int = 1) -> dict[str, Any]:
    return {
        "type": "conv",
        "filters": filters,
        "kernel": kernel,
        "stride": stride,
        "padding": "same",
        "activation": "relu",
    }


_HEAD = (
    {"type": "dropout", "rate": 0.5},
    {"type": "flatten"},
    {"type": "dense", "units": 10, "activation": "softmax", "l1": 1e-4},
)


def _strong_block(width: int) -> tuple[dict[str, Any], ...]:
    """conv, 2x2 max-pool, batch norm, gelu, conv, batch norm, gelu (airbench's block)."""
    conv = {"type": "conv", "filters": width, "kernel": 3, "padding": "same", "use_bias": False}
    # A fast-moving average (Keras's momentum 0.6): the statistics keep up with a run of a few
    # hundred steps; airbench's tiny epsilon: weight decay shrinks the convs, whose outputs'
    # variance can fall towards Keras's 1e-3; no gamma, since a scale before gelu adds nothing a
    # conv cannot learn.
    norm = {"type": "batchnorm", "momentum": 0.6, "epsilon": 1e-12, "scale": False}
    gelu = {"type": "activation", "activation": "gelu"}
    return (conv, {"type": "maxpool", "size": 2}, norm, gelu, conv, norm, gelu)


def _strong(widths: tuple[int, int, int]) -> tuple[dict[str, Any], ...]:
    """The strong recipe's net: a frozen patch-whitening stem, three blocks, scaled logits."""
    stem = {
        "type": "conv",
        "filters": 24,
        "kernel": 2,
        "padding": "valid",
        "init": "whiten",
        "trainable": False,
        "activation": "gelu",
    }
    return (
        stem,
        *(layer for width in widths for layer in _strong_block(width)),
        {"type": "globalmaxpool"},
        {"type": "dense", "units": 10, "use_bias": False},
        {"type": "rescaling", "scale": 1 / 9},  # a logit temperature the high learning rate needs
        {"type": "activation", "activation": "softmax"},
    )


ARCHITECTURES: dict[str, tuple[dict[str, Any], ...]] = {
    "seed": (_conv(16), _conv(16, stride=2), _conv(32), _conv(32, stride=2), *_HEAD),
    "seed-maxpool": (
        _conv(16),
        _conv(16),
        _conv(32),
        _conv(32),
        {"type": "maxpool", "size": 2},
        *_HEAD,
    ),
    "seed-deep": (
        _conv(8),
        _conv(8, kernel=2, stride=2),
        _conv(16),
        _conv(16, stride=2),
        _conv(32),
        _conv(32, stride=2),
        *_HEAD,
    ),
    "tiny": (
        _conv(4, stride=2),
        {"type": "flatten"},
        {"type": "dense", "units": 10, "activation": "softmax", "l1": 1e-4},
    ),
    "tiny-modern": (
        {
            "type": "conv",
            "filters": 4,
            "kernel": 3,
            "padding": "same",
            "use_bias": False,
            "init": "he_normal",
        },
        {"type": "batchnorm"},
        {"type": "activation", "activation": "gelu"},
        {
            "type": "residual",
            "layers": [
                {
                    "type": "conv",
                    "filters": 4,
                    "kernel": 3,
                    "padding": "same",
                    "use_bias": False,  # a batch norm follows: a bias would have no gradient
                    "l2": 1e-4,
                },
                {"type": "batchnorm"},
                {"type": "activation", "activation": "silu"},
            ],
        },
        {"type": "avgpool", "size": 2},
        {
            "type": "residual",
            "layers": [
                {
                    "type": "conv",
                    "filters": 8,
                    "kernel": 3,
                    "stride": 2,
                    "padding": "same",
                    "activation": "relu",
                }
            ],
        },
        {"type": "globalavgpool"},
        {"type": "dropout", "rate": 0.25},
        {"type": "dense", "units": 10, "l1": 1e-4},
        {"type": "rescaling", "scale": 0.5},  # a logit temperature, as the strong nets have
        {"type": "activation", "activation": "softmax"},
    ),
    "strong-s": _strong((32, 64, 128)),
    "strong-m": _strong((64, 128, 256)),
    "strong-l": _strong((64, 256, 256)),
}
DESCRIPTIONS = {
    "seed": "the seed report's ConvNet: two strided conv pairs, dropout, L1 dense",
    "seed-maxpool": "seed without strides, one 2x2 max-pool after the fourth conv (report, c)",
    "seed-deep": "thinner and deeper: six convs 8-8-16-16-32-32, every second strided (report, d)",
    "tiny": "one strided conv and a dense layer, for tests",
    "tiny-modern": "batch norm, gelu, silu, residual blocks, a global pool, rescaling; for tests",
    "strong-s": "the strong recipe's net (airbench-style): whitened stem, blocks 32-64-128",
    "strong-m": "the strong recipe's net, blocks 64-128-256",
    "strong-l": "the strong recipe's net, blocks 64-256-256 (airbench94's widths)",
}


def get_architecture(name: str) -> tuple[dict[str, Any], ...]:
    """The layer specs of a registered architecture; an unknown name lists the known ones."""
    if name not in ARCHITECTURES:
        raise CnnlabError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[name]
