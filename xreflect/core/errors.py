"""Errors that stop a run on purpose, each with its own exit code.

A stop-the-run error carries a message that already says what went wrong and what to do, so the
stage entry point (xreflect.core.cli.run_stage) prints that message alone, without a traceback, and exits
with the error's code. Scripts and CI can tell the causes apart by the code:

    3  bad params            (xreflect.core.config.ParamsError)
    4  bad input data        (missing, corrupt or mismatching file)
    5  server unreachable    (connection failures or timeouts in a row)
    6  authentication failed (the key was refused)
    7  quota exhausted       (the account has no credit left)
    8  budget reached        (generate.budget_usd_per_prompt / budget_usd_total)
    9  too many failed items (more than generate.max_failures)
    10 server error          (not an OpenAI API, model not found, ...)
    130 interrupted          (Ctrl-C)
"""
from __future__ import annotations

EXIT_PARAMS = 3
EXIT_DATA = 4
EXIT_UNREACHABLE = 5
EXIT_AUTH = 6
EXIT_QUOTA = 7
EXIT_BUDGET = 8
EXIT_FAILURES = 9
EXIT_SERVER = 10
EXIT_INTERRUPTED = 130


class StopRun(RuntimeError):
    """An error that ends the run with a message meant for the user, and an exit code."""
    exit_code = 1


class DataError(StopRun, ValueError):
    """An input file that cannot be used; the message names the file, the record and the fix."""
    exit_code = EXIT_DATA
