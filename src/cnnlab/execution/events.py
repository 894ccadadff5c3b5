"""What training reports while it runs: one stream of events, whichever path trains the runs."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any


class EventKind(enum.StrEnum):
    """What happened to a run (named apart from the store's statuses, `cnnlab.store.Status`)."""

    STARTED = "started"  # it began training
    EPOCH = "epoch"  # an epoch ended: the payload is its history row
    RESULT = "result"  # it ended with a RunResult (whose status says how: done, diverged...)
    ERROR = "error"  # training raised: the payload is the reason, and there is no result


ENDED = (EventKind.RESULT, EventKind.ERROR)


@dataclasses.dataclass(frozen=True)
class Event:
    """One thing that happened to the run at `index` of the configs trained."""

    kind: EventKind
    index: int  # which of the configs
    payload: Any = None  # EPOCH: the history row; RESULT: the RunResult; ERROR: the reason

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", EventKind(self.kind))


def failure_reason(error: BaseException) -> str:
    """How a failed run's reason reads: the exception's type and message."""
    return f"{type(error).__name__}: {error}".strip()
