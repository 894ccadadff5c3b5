"""Every layer key against non-finite and out-of-range values, checked when a study is planned
against its dataset's shape: one line (CnnlabError) or a net that builds, never anything else."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.cli import main
from cnnlab.config import DATASET_SHAPES, RunConfig
from cnnlab.errors import CnnlabError
from cnnlab.nn.shapes import resolve_layers
from cnnlab.nn.specs import _LAYER_KEYS, _REQUIRED

HOSTILE = [
    math.nan,
    math.inf,
    -math.inf,
    -1,
    0,
    0.5,
    1e308,
    2**63,
    10**400,
    True,
    "1",
    None,
    [],
    [1, 2, 3],
    [2**62, 2**62],
]
VALID = {
    "filters": 2,
    "kernel": 3,
    "units": 10,
    "rate": 0.5,
    "activation": "relu",
    "scale": 1.0,
    "layers": [{"type": "activation", "activation": "relu"}],
}
NUMERIC = {
    (kind, key)
    for kind, (_, keys) in _LAYER_KEYS.items()
    for key, check in keys.items()
    if check in ("positive", "pair", "rate", "weight", "momentum", "finite", "epsilon")
}
IMAGE_DATASETS = [name for name, shape in DATASET_SHAPES.items() if shape is not None]


def net_with(kind: str, key: str, value) -> list[dict]:
    """A small classifier whose second layer is `kind` with `key` set to `value`."""
    layer = {"type": kind, **{name: VALID[name] for name in _REQUIRED.get(kind, ())}, key: value}
    head = [{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "softmax"}]
    if kind in ("flatten", "dense", "globalavgpool", "globalmaxpool"):
        return [{"type": "conv", "filters": 2, "kernel": 1}, layer, *head[kind == "flatten" :]]
    return [{"type": "conv", "filters": 2, "kernel": 1}, layer, *head]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(NUMERIC)),
    st.sampled_from(HOSTILE),
    st.sampled_from(IMAGE_DATASETS),
)
def test_a_hostile_layer_value_is_one_line_or_a_net_that_builds(place, value, dataset):
    kind, key = place
    shape, classes = DATASET_SHAPES[dataset]
    layers = net_with(kind, key, value)
    if kind == "dense" and key == "units":
        layers = [{"type": "flatten"}, {**layers[1], "activation": "softmax"}]
    config = RunConfig(dataset=dataset, arch="hostile", layers=tuple(layers))
    try:
        built = resolve_layers(config, shape, classes)
    except CnnlabError as error:
        assert "\n" not in str(error)
        return
    for layer in built:  # what was accepted is finite and in range
        for name, number in vars(layer).items():
            if isinstance(number, float):
                assert math.isfinite(number), (kind, name, number)


@pytest.mark.parametrize(("key", "value"), [("l1", "inf"), ("l2", "nan"), ("rate", "1.0")])
def test_the_dry_run_refuses_a_hostile_layer_at_its_line(tmp_path, capsys, key, value):
    kind = "dropout" if key == "rate" else "dense"
    layer = f'{{ type = "dropout", rate = {value} }}' if kind == "dropout" else ""
    dense = '{ type = "dense", units = 10, activation = "softmax"'
    dense += f", {key} = {value} }}" if kind == "dense" else " }"
    path = tmp_path / "hostile.toml"
    path.write_text(
        f"""[study]
name = "hostile"
[defaults]
dataset = "mnist"
arch = "a"
[architectures.a]
layers = [{{ type = "flatten" }}, {layer + "," if layer else ""} {dense}]
[experiments.e]
grid = {{ seed = [0] }}
"""
    )
    assert main(["study", str(path), "--dry-run"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "hostile.toml:" in error and key in error, error


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (None, None, "the images dataset needs a folder or archive"),
        ("CNNLAB_DATA_IMAGES", "/no/such/folder", "CNNLAB_DATA_IMAGES /no/such/folder: no such"),
    ],
)
def test_the_dry_run_refuses_data_it_could_not_load(
    tmp_path, monkeypatch, capsys, variable, value, expected
):
    # A dry run reads and downloads nothing, but a source that is missing is one line there,
    # not later, when the study starts.
    monkeypatch.delenv("CNNLAB_DATA_IMAGES", raising=False)
    if variable is not None:
        monkeypatch.setenv(variable, value)
    path = tmp_path / "images.toml"
    path.write_text(
        '[study]\nname = "imgs"\n[defaults]\ndataset = "images"\narch = "tiny"\n'
        '[experiments.a]\ntitle = "a"\n'
    )
    assert main(["study", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
