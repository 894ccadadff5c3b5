"""The `cnnlab` command: parse arguments, call the library, print. No logic of its own.

`parser` builds the argument parser; each subcommand has one `cmd_*` handler, in `datasets`
(data info/show/fetch), `training` (train, evaluate, study, export) or `inspection` (convolve,
archs, summary, results, compare, report, explain, export-model). User mistakes raise
`CnnlabError`, which `main` prints as one line on stderr with exit code 2.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Sequence

from cnnlab.cli.parser import EXIT_USER_ERROR, build_parser
from cnnlab.cli.training import EXIT_DIVERGED
from cnnlab.errors import CnnlabError

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_DIVERGED", "EXIT_USER_ERROR", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except CnnlabError as error:
        print(f"cnnlab: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        # Stopped, with exit code 130, never a death by SIGINT. A later Ctrl-C is ignored on
        # the way out. And CPython (3.11, 3.12) marks the interpreter to kill itself by SIGINT
        # at exit whenever a KeyboardInterrupt leaves an exec() of a string, handled or not:
        # every dataclass defined by a lazy import is one, so a Ctrl-C during an import left
        # the mark. It clears the mark at the start of each such exec, so an empty one clears it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        exec("")  # clears the mark (see above)
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (`cnnlab results | head -1`): stop quietly, as a shell tool would.
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as error:
        if error.errno not in _ENVIRONMENT_ERRORS:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"cnnlab: error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_USER_ERROR


# A full disk, a read-only or unwritable place, a quota: one line, not a traceback.
_ENVIRONMENT_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
}
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit raises nothing more."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
