"""The entry wrapper of every stage script: a stop-the-run error becomes one message and an exit code.

    if __name__ == "__main__":
        run_stage(main)

Known errors (xreflect.errors.StopRun, params errors, Ctrl-C) print their message alone, with no
traceback, and exit with their code (table in xreflect.errors). Anything else is a bug and keeps its
traceback. `XREFLECT_DEBUG=1` shows the traceback for every error.

The process ends with os._exit once the message is printed: worker threads still waiting on a
request (a hung server) must not hold the exit for up to `timeout_s`. Everything worth keeping is
already on disk by then (answers are committed one by one, outputs are written atomically).
"""
from __future__ import annotations

import os
import sys
from typing import Callable

from xreflect.config import ParamsError
from xreflect.errors import EXIT_INTERRUPTED, EXIT_PARAMS, EXIT_SERVER, EXIT_UNREACHABLE, StopRun

DEBUG_ENV = "XREFLECT_DEBUG"


def _api_error(error: BaseException):
    """An OpenAI SDK error raised outside the provider's own handling (the Batch API calls)."""
    openai = sys.modules.get("openai")
    return error if openai is not None and isinstance(error, openai.APIError) else None


def exit_code_of(error: BaseException) -> int | None:
    """The exit code of a known stop-the-run error; None for anything else (a bug)."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, StopRun):
        return error.exit_code
    if isinstance(error, ParamsError):
        return EXIT_PARAMS
    if _api_error(error) is not None:
        from xreflect.backends.retry import classify

        decision = classify(error)
        return decision.stop.exit_code if decision.fatal else EXIT_UNREACHABLE if decision.unreachable else EXIT_SERVER
    return None


def message_of(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return ("interrupted (Ctrl-C): nothing more is sent or computed; what was finished is kept "
                "(answers in the response cache, finished files); rerun to continue where it stopped")
    if _api_error(error) is not None:
        from xreflect.backends.retry import classify

        request = getattr(error, "request", None)
        where = f" from {request.method} {request.url}" if request is not None else ""
        return (f"the server answered{where}: {classify(error).reason}. Check the base URL "
                "($OPENAI_BASE_URL), the key ($OPENAI_API_KEY) and the account, then rerun.")
    return str(error)


def run_stage(main: Callable[[], object], name: str | None = None) -> None:
    label = name or os.path.basename(sys.argv[0]).removesuffix(".py")
    try:
        main()
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - unknown errors are re-raised
        code = exit_code_of(error)
        if code is None or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"\n{label}: {message_of(error)}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
