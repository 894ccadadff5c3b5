"""What training reports while it runs: one stream of events, whichever path trains the runs."""

from __future__ import annotations

import dataclasses
from typing import Any

KINDS = ("started", "progress", "done", "failed")


@dataclasses.dataclass(frozen=True)
class Event:
    """A run `started`, an epoch's `progress` row, `done` (with its RunResult) or `failed`."""

    kind: str  # one of KINDS
    index: int  # which of the configs
    payload: Any = None  # progress: the history row; done: the RunResult; failed: the reason

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind


def failure_reason(error: BaseException) -> str:
    """How a failed run's reason reads: the exception's type and message."""
    return f"{type(error).__name__}: {error}".strip()
