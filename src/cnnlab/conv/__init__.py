"""The seed's part 1: convolution by hand (NumPy, no torch), its fast paths, kernels and images.

`cnnlab.conv.convolve2d` / `correlate2d` are drop-ins for `scipy.signal`'s; the loops are there
to read.
"""

from cnnlab.conv.convolve import convolve2d, convolve2d_loop, correlate2d, correlate2d_loop

__all__ = ["convolve2d", "convolve2d_loop", "correlate2d", "correlate2d_loop"]
