"""The stage entry wrapper (xreflect.core.cli.run_stage), run as the real process DVC starts."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from xreflect.core.errors import EXIT_DATA


def run_wrapped(body: str) -> subprocess.CompletedProcess:
    """A process whose stage main is `body`; its stdout is a pipe, so print() is block-buffered and
    only an explicit flush before the process ends gets it out."""
    script = "\n".join([
        "from xreflect.core.cli import run_stage",
        "from xreflect.core.errors import DataError",
        "def main():",
        textwrap.indent(textwrap.dedent(body).strip(), "    "),
        'run_stage(main, "demo")',
        'print("after run_stage")',  # never reached: run_stage ends the process
    ])
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_a_finished_stage_exits_0_with_all_it_printed_and_its_atexit_handlers_run():
    done = run_wrapped("""
        import atexit
        atexit.register(lambda: print("atexit handler ran"))
        print("line 1")
        print("no newline at the end", end="")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "line 1\nno newline at the endatexit handler ran\n"


def test_a_known_error_prints_its_message_alone_and_exits_with_its_code():
    done = run_wrapped("""
        print("work before the error")
        raise DataError("data/x.jsonl: record 3 has no text; regenerate it")
    """)
    assert done.returncode == EXIT_DATA
    assert done.stdout == "work before the error\n"
    assert done.stderr.strip() == "demo: data/x.jsonl: record 3 has no text; regenerate it"
    assert "Traceback" not in done.stderr


def test_an_unknown_error_keeps_its_traceback():
    done = run_wrapped("""
        raise ZeroDivisionError("a bug")
    """)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ZeroDivisionError: a bug" in done.stderr
    assert "after run_stage" not in done.stdout
