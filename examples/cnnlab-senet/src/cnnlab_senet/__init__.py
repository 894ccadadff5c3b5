"""A small ConvNet with squeeze-excitation blocks, for cnnlab's `arch = "senet"`."""

from cnnlab_senet.nets import SENet, build

__all__ = ["SENet", "build"]
