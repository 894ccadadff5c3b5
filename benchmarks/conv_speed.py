"""cnnlab.conv against SciPy and against its own loop reference: one table of times and ratios.

    .venv/bin/python benchmarks/conv_speed.py [--size 1024] [--repeats 5]

Every function filters the same float64 image with the same random dense (not separable) kernel
in "same" mode with zero fill; each time is the best of several runs (time.perf_counter). The loop
reference runs once on a small image and is scaled per output pixel. Targets from the issue:
3x3 correlate2d <= 1.0x scipy.ndimage.correlate, 31x31 convolve2d <= 1.2x scipy.signal.fftconvolve,
and >= 300x faster than the loop.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
import scipy
from scipy import ndimage, signal

from cnnlab.conv import convolve

KERNEL_SIZES = (3, 7, 15, 31)
# The loop reference costs ~1 us per tap: keep each run to a second or two.
LOOP_IMAGE_SIZE = {3: 64, 7: 64, 15: 32, 31: 32}


def best_time(function: Callable[[], object], repeats: int, budget_s: float = 3.0) -> float:
    """The fastest of up to `repeats` runs, stopping early once `budget_s` is spent."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - started < budget_s):
        begin = time.perf_counter()
        function()
        times.append(time.perf_counter() - begin)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image height and width")
    parser.add_argument("--repeats", type=int, default=5, help="runs per timing (best is kept)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    image = rng.uniform(0.0, 255.0, (args.size, args.size))
    print(
        f"{args.size}x{args.size} float64, mode same, zero fill; best of {args.repeats}; "
        f"numpy {np.__version__}, scipy {scipy.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    header = (
        f"{'kernel':>7} {'method':>6} {'correlate2d':>11} {'ndimage':>9} {'ratio':>6} "
        f"{'convolve2d':>10} {'fftconv':>9} {'ratio':>6} {'signal.c2d':>10} {'ratio':>6} "
        f"{'loop':>9} {'speedup':>8}"
    )
    print(header)
    print("-" * len(header))
    for size in KERNEL_SIZES:
        kernel = rng.standard_normal((size, size))
        ours_correlate = best_time(
            lambda k=kernel: convolve.correlate2d(image, k, "same"), args.repeats
        )
        ours_convolve = best_time(
            lambda k=kernel: convolve.convolve2d(image, k, "same"), args.repeats
        )
        ndimage_time = best_time(
            lambda k=kernel: ndimage.correlate(image, k, mode="constant"), args.repeats
        )
        fft_time = best_time(lambda k=kernel: signal.fftconvolve(image, k, "same"), args.repeats)
        signal_time = best_time(lambda k=kernel: signal.convolve2d(image, k, "same"), args.repeats)
        small = image[: LOOP_IMAGE_SIZE[size], : LOOP_IMAGE_SIZE[size]]
        begin = time.perf_counter()
        loop_result = convolve.convolve2d_loop(small, kernel, "same")
        loop_time = (time.perf_counter() - begin) * image.size / small.size  # per output pixel

        # Same answers, or the times mean nothing.
        tolerance = 1e-10 * np.abs(kernel).sum() * 255.0
        reference = signal.fftconvolve(image, kernel, "same")
        assert np.abs(convolve.convolve2d(image, kernel, "same") - reference).max() < tolerance
        assert np.abs(convolve.convolve2d(small, kernel, "same") - loop_result).max() < tolerance

        print(
            f"{size:>3}x{size:<3} {convolve.choose_method(image.shape, kernel, 'same'):>6} "
            f"{ours_correlate * 1e3:>8.2f} ms {ndimage_time * 1e3:>6.2f} ms "
            f"{ours_correlate / ndimage_time:>5.2f}x "
            f"{ours_convolve * 1e3:>7.2f} ms {fft_time * 1e3:>6.2f} ms "
            f"{ours_convolve / fft_time:>5.2f}x "
            f"{signal_time * 1e3:>7.0f} ms {ours_convolve / signal_time:>6.3f}x "
            f"{loop_time:>7.1f} s {loop_time / ours_convolve:>7.0f}x"
        )
    small_sizes = ", ".join(f"{k}x{k} on {n}x{n}" for k, n in LOOP_IMAGE_SIZE.items())
    print("ratio = cnnlab time / SciPy time (below 1: cnnlab is faster)")
    print(f"loop = convolve2d_loop timed once ({small_sizes}), scaled per pixel to the full image")
    print("speedup = loop time / convolve2d time")


if __name__ == "__main__":
    main()
