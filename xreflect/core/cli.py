"""The entry wrapper of every stage script: a stop-the-run error becomes one message and an exit code.

    if __name__ == "__main__":
        run_stage(main)

Known errors (xreflect.core.errors.StopRun, params errors, Ctrl-C; an API error outside a
backend's own handling becomes a StopRun through xreflect.backends.retry.api_stop) print their message alone, with no
traceback, and exit with their code (table in xreflect.core.errors). Anything else is a bug and keeps its
traceback. `XREFLECT_DEBUG=1` shows the traceback for every error.

The process ends with os._exit once its output is flushed (on success after running the atexit
handlers): worker threads still waiting on a request (a hung server) must not hold the exit for up
to `timeout_s`, and the interpreter's teardown after torch is loaded costs ~0.35 s of every stage
(13 train stages and the embed stage in the demo's `dvc repro`). Everything worth keeping is
already on disk by then (answers are committed one by one, outputs are written atomically and
closed, Ray is shut down and worker processes joined before a stage's main returns).
"""
from __future__ import annotations

import atexit
import os
import sys
from typing import Callable

from xreflect.core.config import ParamsError
from xreflect.core.errors import EXIT_INTERRUPTED, EXIT_PARAMS, StopRun
from xreflect.core.memory import keep_freed_memory

DEBUG_ENV = "XREFLECT_DEBUG"


def exit_code_of(error: BaseException) -> int | None:
    """The exit code of a known stop-the-run error; None for anything else (a bug)."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, StopRun):
        return error.exit_code
    if isinstance(error, ParamsError):
        return EXIT_PARAMS
    return None


def message_of(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return ("interrupted (Ctrl-C): nothing more is sent or computed; what was finished is kept "
                "(answers in the response cache, finished files); rerun to continue where it stopped")
    return str(error)


def run_stage(main: Callable[[], object], name: str | None = None) -> None:
    label = name or os.path.basename(sys.argv[0]).removesuffix(".py")
    keep_freed_memory()  # before the stage's first large allocation (xreflect/core/memory.py)
    try:
        main()
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - unknown errors are re-raised
        code = exit_code_of(error)
        if code is None or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"\n{label}: {message_of(error)}", file=sys.stderr)
        exit_now(code)
    atexit._run_exitfuncs()  # what libraries (and the tests' read audit) registered for a normal exit
    exit_now(0)


def exit_now(code: int) -> None:
    """Flush what the stage printed and end the process without the interpreter's teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
