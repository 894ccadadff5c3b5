"""The Keras-style summary of layer specs: rows, counts and the printed table, without torch."""

from __future__ import annotations

import subprocess
import sys

from cnnlab.nn.architectures import get_architecture
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
