"""The machine a study ran on, for the report's environment section (no torch import)."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path


def machine_description() -> str:
    """Host, OS and CPU model of this machine, for the report's environment section."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{platform.node()}: {platform.platform()}, {cpu}"
