"""The model servers of served backbones, from the command line.

    python -m xreflect.backends.server_cli run -- dvc exp run -S backbone=llava   # one server for the whole run,
                                                                    # stopped when the run ends
    python -m xreflect.backends.server_cli status                                 # what is running, starts so far
    python -m xreflect.backends.server_cli stop [BACKBONE ...]                    # stop servers now

Without the `run` wrapper, `dvc repro` / `dvc exp run` work too: the first generate stage starts
the server, the next ones reuse it, and it stops itself `serve.keep_alive_s` after the last stage
released it (or at once when a stage fails or is interrupted). The wrapper only makes the stop
immediate and prints how many times the model was loaded.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from xreflect.backends.supervisor import (HOLDER_ENV, file_lock, group_members, leases, pid_alive,
                                              read_state, release_holder, serve_root, starts, stop_server,
                                              supervise)


def _directories(names: list[str] | None = None) -> list[Path]:
    if not serve_root().exists():
        return []
    found = sorted(p for p in serve_root().iterdir() if p.is_dir())
    return [p for p in found if not names or p.name in names]


def run(command: list[str]) -> int:
    """Run `command` (e.g. `dvc repro`) with this process holding every server it starts."""
    if not command:
        raise SystemExit("usage: python -m xreflect.backends.server_cli run -- <command ...>")
    before = {p.name: starts(p) for p in _directories()}
    child = subprocess.Popen(command, env={**os.environ, HOLDER_ENV: str(os.getpid())})
    try:
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:  # the child got the Ctrl-C too; let it finish its own clean-up
                print("[serve] interrupted: waiting for the command to stop", file=sys.stderr)
    finally:
        stopped = release_holder(os.getpid())
        for directory in _directories():
            count = starts(directory) - before.get(directory.name, 0)
            if count:
                print(f"[serve] backbone {directory.name}: {count} server start(s) during this run"
                      + (", stopped" if directory.name in stopped else ""), file=sys.stderr)
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's convention


def status() -> int:
    for directory in _directories():
        state = read_state(directory)
        running = state is not None and bool(group_members(state["pgid"]))
        users = [f"{pid} ({kind})" for pid, kind in leases(directory).items() if pid_alive(pid)]
        line = (f"{directory.name}: {state['engine']} serving {state['model']} on port {state['port']}, "
                f"up {time.time() - state['started_at']:.0f} s, process group {state['pgid']}, "
                f"used by {', '.join(users) or 'nobody'}") if running else f"{directory.name}: not running"
        print(f"{line}; {starts(directory)} start(s) recorded")
    return 0


def stop(names: list[str]) -> int:
    for directory in _directories(names):
        with file_lock(directory / "lock"):
            if stop_server(directory, 30.0, "python -m xreflect.backends.server_cli stop"):
                print(f"stopped the server of backbone {directory.name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xreflect.backends.server_cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="action", required=True)
    run_parser = commands.add_parser("run", help="run a command, stopping the servers it started at its end")
    run_parser.add_argument("command", nargs=argparse.REMAINDER)
    commands.add_parser("status", help="servers, their users and start counts")
    stop_parser = commands.add_parser("stop", help="stop servers now")
    stop_parser.add_argument("backbones", nargs="*")
    supervise_parser = commands.add_parser("supervise", help=argparse.SUPPRESS)
    supervise_parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.action == "run":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        return run(command)
    if args.action == "status":
        return status()
    if args.action == "stop":
        return stop(args.backbones)
    supervise(args.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
