"""Start, find again and stop the model server (vLLM, lmdeploy, SGLang, ...) of a served backbone.

A loaded 7B model should answer every generate stage of a run, but DVC runs each stage as its own
process. So the server outlives the stage that started it, and the next stage finds it again
through a state file. Everything about one backbone's server lives in
`$XREFLECT_CACHE_DIR/serve/<backbone>/`:

    state.json      supervisor pid, process group, port, model, fingerprint of the serve params
    supervisor.json what the supervisor runs (argv, env, keep-alive)
    server.log      the server's stdout and stderr
    leases/<pid>    one per process using the server: "stage" (a generate stage) or "holder"
                    (the `python -m xreflect.backends.server_cli run` wrapper around a whole `dvc repro`)
    starts.log      one line per server start: the number of model loads a run cost
    exit.json       why the last server stopped
    lock            one process at a time starts, reuses or stops the server

The server runs under a supervisor (`python -m xreflect.backends.server_cli supervise DIR`) that leads its own
process group and session, so engine worker processes are in the group too and a Ctrl-C in the
terminal does not reach them half-way. The supervisor stops the whole group when the server exits
on its own, at once when a lease's process died without releasing it (a killed stage or wrapper),
and after `keep_alive_s` with no lease (the run is over). A stage that fails or is interrupted
stops the server itself, unless another stage is using it.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from xreflect.core.config import ParamsError
from xreflect.core.paths import cache_dir
from xreflect.core.io import read_json, write_json

HOLDER_ENV = "XREFLECT_SERVE_HOLDER"  # pid of the `xreflect.backends.server_cli run` wrapper, inherited by stages
PLACEHOLDERS = ("model", "revision", "port", "gpu_memory", "chat_template", "python")  # python: this interpreter
LOG_TAIL_LINES = 25


class ServerError(RuntimeError):
    """The server could not be started, did not become ready, or died."""


class ServerUnavailable(ServerError):
    """What the server needs (a GPU, the engine's environment) is missing on this machine."""


def serve_root() -> Path:
    return cache_dir() / "serve"


def serve_dir(backbone: str) -> Path:
    return serve_root() / backbone


# ---- what to run: the `serve` section of a backbone entry ----

@dataclass(frozen=True)
class ServeSpec:
    backbone: str
    model: str
    revision: str            # what the server is asked for: a commit hash, or a branch when unpinned
    engine: str
    command: tuple[str, ...]  # argv with {placeholders}, rendered once the port is known
    port: int                # 0: any free port
    gpu_memory: float        # the engine's GPU memory share (vLLM: of the whole GPU; lmdeploy: k/v cache share of what is free)
    startup_timeout_s: float
    keep_alive_s: float
    stop_grace_s: float
    needs_gpu: bool
    install: str             # what to install when the engine is missing (shown in the error)
    chat_template: str | None
    env: Mapping[str, str]
    modules: tuple[str, ...] = ()  # Python modules the server imports, checked before it starts

    @classmethod
    def from_config(cls, name: str, config: Mapping[str, Any]) -> "ServeSpec":
        key = f"params.yaml: backbones.{name}.serve"
        serve = config.get("serve")
        if not isinstance(serve, Mapping):
            raise ParamsError(f"params.yaml: {key} is missing: a served backbone says how to start its server "
                             "(command, port, gpu_memory, startup_timeout_s); see docs/backbones/")
        command = serve.get("command")
        if not (isinstance(command, list) and command and all(isinstance(a, (str, int, float)) for a in command)):
            raise ParamsError(f"params.yaml: {key}.command must be a list of arguments, e.g. [vllm, serve, '{{model}}', "
                             f"--port, '{{port}}']; got {command!r}")
        for arg in command:
            for field in re.findall(r"{(\w*)}", str(arg)):
                if field not in PLACEHOLDERS:
                    raise ParamsError(f"params.yaml: {key}.command uses {{{field}}}; allowed placeholders are "
                                     f"{['{' + p + '}' for p in PLACEHOLDERS]}")
        gpu_memory = float(serve.get("gpu_memory", 0.5))
        if not 0 < gpu_memory <= 1:
            raise ParamsError(f"params.yaml: {key}.gpu_memory must be a share of GPU memory in (0, 1]; got {gpu_memory}")
        port = int(serve.get("port", 0))
        if not 0 <= port < 65536:
            raise ParamsError(f"params.yaml: {key}.port must be 0 (any free port) or a TCP port; got {port}")
        template = serve.get("chat_template")
        if template is not None and not Path(template).is_file():
            raise ParamsError(f"params.yaml: {key}.chat_template: {template} does not exist (a path from the repository root)")
        return cls(backbone=name, model=str(config["model"]), revision=str(config.get("revision") or "main"),
                   engine=str(serve.get("engine") or Path(str(command[0])).name),
                   command=tuple(str(a) for a in command), port=port, gpu_memory=gpu_memory,
                   startup_timeout_s=float(serve.get("startup_timeout_s", 1800)),
                   keep_alive_s=float(serve.get("keep_alive_s", 600)),
                   stop_grace_s=float(serve.get("stop_grace_s", 30)),
                   needs_gpu=bool(serve.get("needs_gpu", True)), install=str(serve.get("install") or ""),
                   chat_template=str(template) if template is not None else None,
                   env={str(k): str(v) for k, v in (serve.get("env") or {}).items()},
                   modules=tuple(str(m) for m in serve.get("modules") or ()))

    def argv(self, port: int) -> list[str]:
        values = {"model": self.model, "revision": self.revision, "port": port, "gpu_memory": self.gpu_memory,
                  "chat_template": self.chat_template or "", "python": sys.executable}
        return [arg.format(**values) for arg in self.command]

    def chat_template_sha256(self) -> str | None:
        if self.chat_template is None:
            return None
        return hashlib.sha256(Path(self.chat_template).read_bytes()).hexdigest()

    def fingerprint(self) -> str:
        """Everything that makes a running server the wrong one for these params."""
        material = {"command": self.command, "model": self.model, "revision": self.revision,
                    "port": self.port, "gpu_memory": self.gpu_memory, "env": dict(self.env),
                    "chat_template": self.chat_template_sha256()}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


# ---- processes ----

def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of a live process, from /proc; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces
    return fields[0], int(fields[2])


def pid_alive(pid: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group: what "nothing left running" is checked by."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def stop_group(pgid: int, grace_s: float) -> None:
    """SIGTERM to the whole group, SIGKILL to what is left after `grace_s`; returns when it is empty."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not group_members(pgid):
                return
            time.sleep(0.05)


# ---- files ----

@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_state(directory: Path) -> dict | None:
    path = directory / "state.json"
    return read_json(path) if path.exists() else None


def leases(directory: Path) -> dict[int, str]:
    """pid -> kind of every lease file, live or not."""
    found = {}
    for path in (directory / "leases").glob("*"):
        if path.name.isdigit():
            try:
                found[int(path.name)] = path.read_text().strip()
            except FileNotFoundError:
                pass
    return found


def add_lease(directory: Path, pid: int, kind: str) -> None:
    (directory / "leases").mkdir(parents=True, exist_ok=True)
    (directory / "leases" / str(pid)).write_text(kind)


def drop_lease(directory: Path, pid: int) -> None:
    (directory / "leases" / str(pid)).unlink(missing_ok=True)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return "(no server log)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join("    " + line for line in text) or "    (the server log is empty)"


def starts(directory: Path) -> int:
    path = directory / "starts.log"
    return len(path.read_text().splitlines()) if path.exists() else 0


# ---- the network side ----

def listed_models(base_url: str, timeout_s: float = 2.0) -> list[str] | None:
    """Model ids `GET /v1/models` lists; None while the server does not answer."""
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=timeout_s) as response:
            body = json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return [str(entry.get("id")) for entry in body.get("data") or [] if isinstance(entry, dict)]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- before starting: what this machine lacks ----

def gpu_problem() -> str | None:
    """None when nvidia-smi lists a GPU; else what is missing."""
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU driver on this machine (nvidia-smi not found)"
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return f"nvidia-smi failed ({error})"
    return None if "GPU" in listing else "nvidia-smi lists no GPU"


def program_problem(program: str) -> str | None:
    if os.sep in program:
        path = Path(program)
        return None if path.is_file() and os.access(path, os.X_OK) else f"{program} does not exist"
    return None if shutil.which(program) else f"{program} is not on PATH"


def preflight(spec: ServeSpec, check_gpu: Callable[[], str | None] | None = None) -> None:
    """One error naming everything the server needs that this machine lacks, and what to install."""
    check_gpu = check_gpu or gpu_problem
    problems = []
    missing_program = program_problem(spec.argv(spec.port)[0])
    missing_modules = [name for name in spec.modules if importlib.util.find_spec(name) is None]
    if missing_program or missing_modules:
        what = missing_program or f"{sys.executable} cannot import {', '.join(missing_modules)}"
        problems.append(f"the {spec.engine} server is not installed: {what}"
                        + (f". Install it: {spec.install}" if spec.install else ""))
    if spec.needs_gpu:
        missing_gpu = check_gpu()
        if missing_gpu:
            problems.append(f"{spec.engine} needs a CUDA GPU, and there is {missing_gpu}. Run this backbone "
                            f"on a GPU node (docs/backbones/{spec.backbone}.md), or use backbone "
                            f"'{spec.backbone}-hf' (transformers, slow) or 'offline'")
    if problems:
        raise ServerUnavailable(f"backbone {spec.backbone!r} ({spec.model}) cannot start its server here:\n  - "
                                + "\n  - ".join(problems)
                                + "\nEverything before generation is done and kept; rerun once this is fixed.")


# ---- start, reuse, stop ----

@dataclass
class Lease:
    """A process's use of a running server; `release` when done."""
    spec: ServeSpec
    directory: Path
    base_url: str
    pgid: int
    started_here: bool
    pid: int

    def alive(self) -> bool:
        return not (self.directory / "exit.json").exists() and bool(group_members(self.pgid))

    def wait_exit_reason(self, timeout_s: float = 10.0) -> None:
        """Give the supervisor time to notice a dead server and record why (exit.json)."""
        deadline = time.monotonic() + timeout_s
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)

    def exit_reason(self) -> str:
        path = self.directory / "exit.json"
        return read_json(path).get("reason", "unknown") if path.exists() else "its process group is gone"

    def release(self, stop: bool) -> None:
        """Give the server back. `stop`: the run failed or was interrupted, so stop the server now
        unless another stage is using it (a finished stage leaves it to the next one)."""
        with file_lock(self.directory / "lock"):
            drop_lease(self.directory, self.pid)
            others = [pid for pid, kind in leases(self.directory).items() if kind == "stage" and pid_alive(pid)]
            if stop and not others:
                stop_server(self.directory, self.spec.stop_grace_s, f"stopped by process {self.pid} (run failed)")


def stop_server(directory: Path, grace_s: float, reason: str) -> bool:
    """Stop the server recorded in `directory` (call with its lock held). True if one was running."""
    state = read_state(directory)
    if state is None:
        return False
    running = bool(group_members(state["pgid"]))
    if running:
        if not (directory / "exit.json").exists():
            write_json(directory / "exit.json", {"reason": reason})
        stop_group(state["pgid"], grace_s)
    (directory / "state.json").unlink(missing_ok=True)
    return running


def _launch_supervisor(directory: Path, argv: list[str], spec: ServeSpec) -> int:
    """Start the supervisor in a new session; returns its process group id."""
    write_json(directory / "supervisor.json", {"argv": argv, "env": dict(spec.env), "keep_alive_s": spec.keep_alive_s,
                                               "stop_grace_s": spec.stop_grace_s, "log": str(directory / "server.log")})
    # The launcher forks once more and exits, so the supervisor is nobody's child: it never lingers
    # as a zombie of a stage that has finished. start_new_session: pgid == the launcher's pid.
    with open(directory / "server.log", "ab") as log:
        launcher = subprocess.Popen([sys.executable, "-m", "xreflect.backends.server_cli", "supervise", str(directory)],
                                    start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=log, env={**os.environ, "PYTHONPATH": _pythonpath()})
        launcher.wait()
    return launcher.pid


def _pythonpath() -> str:
    """The supervisor imports this package from wherever this process does."""
    root = str(Path(__file__).resolve().parents[2])
    existing = os.environ.get("PYTHONPATH")
    return root + (os.pathsep + existing if existing else "")


def wait_ready(spec: ServeSpec, directory: Path, base_url: str, pgid: int,
               say: Callable[[str], None], poll_s: float = 0.25) -> None:
    """Until `/v1/models` lists the model; ServerError (with the log's tail) if the server exits
    or `startup_timeout_s` passes."""
    started = time.monotonic()
    last_listed: list[str] | None = None
    next_note = 30.0
    log = directory / "server.log"
    while True:
        listed = listed_models(base_url)
        if listed is not None and spec.model in listed:
            return
        last_listed = listed if listed is not None else last_listed
        waited = time.monotonic() - started
        if (directory / "exit.json").exists() or not group_members(pgid):
            reason = read_json(directory / "exit.json").get("reason") if (directory / "exit.json").exists() else "exited"
            raise ServerError(f"backbone {spec.backbone!r}: the {spec.engine} server stopped during start-up "
                              f"({reason}) after {waited:.0f} s. Last lines of {log}:\n{log_tail(log)}")
        if waited > spec.startup_timeout_s:
            seen = (f"it answers but /v1/models lists {last_listed}, not {spec.model!r} (does the command "
                    "name the served model as {model}?)" if last_listed is not None
                    else "it never answered on /v1/models")
            raise ServerError(f"backbone {spec.backbone!r}: the {spec.engine} server was not ready after "
                              f"{spec.startup_timeout_s:.0f} s (backbones.{spec.backbone}.serve.startup_timeout_s): "
                              f"{seen}. It was stopped. Last lines of {log}:\n{log_tail(log)}")
        if waited >= next_note:
            say(f"[{spec.backbone}] waiting for the {spec.engine} server to load {spec.model} "
                f"({waited:.0f} s; log: {log})")
            next_note += 30.0
        time.sleep(poll_s)


def acquire(spec: ServeSpec, say: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
            check_gpu: Callable[[], str | None] | None = None) -> Lease:
    """The running server for `spec` (reused if one with the same params is up), else a new one.

    The caller holds a lease until `release`; a wrapper named by $XREFLECT_SERVE_HOLDER gets one too,
    so the server stays up between stages until the wrapper ends."""
    directory = serve_dir(spec.backbone)
    directory.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    holder = int(os.environ.get(HOLDER_ENV) or 0)
    with file_lock(directory / "lock"):
        state = read_state(directory)
        if state is not None:
            base_url = f"http://127.0.0.1:{state['port']}/v1"
            running = bool(group_members(state["pgid"])) and not (directory / "exit.json").exists()
            if running and state["fingerprint"] == spec.fingerprint() and spec.model in (listed_models(base_url) or []):
                add_lease(directory, me, "stage")
                if holder and pid_alive(holder):
                    add_lease(directory, holder, "holder")
                say(f"[{spec.backbone}] reusing the {spec.engine} server on port {state['port']} "
                    f"(up {time.time() - state['started_at']:.0f} s, process group {state['pgid']})")
                return Lease(spec, directory, base_url, state["pgid"], False, me)
            why = "its serve params changed" if running else "it is no longer running"
            stop_server(directory, spec.stop_grace_s, f"replaced: {why}")
            say(f"[{spec.backbone}] not reusing the server recorded in {directory}: {why}")
        preflight(spec, check_gpu)
        port = spec.port or free_port()
        if not port_is_free(port):
            raise ServerError(
                f"backbone {spec.backbone!r}: port {port} (backbones.{spec.backbone}.serve.port) is already in use "
                f"by another program, not by a server this project started. Stop that program, or pick another "
                f"port: -S backbones.{spec.backbone}.serve.port=0 takes any free one.")
        for stale in ("exit.json", "state.json"):
            (directory / stale).unlink(missing_ok=True)
        for pid in leases(directory):
            drop_lease(directory, pid)
        add_lease(directory, me, "stage")
        if holder and pid_alive(holder):
            add_lease(directory, holder, "holder")
        argv = spec.argv(port)
        say(f"[{spec.backbone}] starting {spec.engine}: {' '.join(argv)} (log: {directory / 'server.log'})")
        started = time.monotonic()
        pgid = _launch_supervisor(directory, argv, spec)
        write_json(directory / "state.json", {"pgid": pgid, "port": port, "model": spec.model,
                                              "revision": spec.revision, "engine": spec.engine,
                                              "fingerprint": spec.fingerprint(), "started_at": time.time()})
        base_url = f"http://127.0.0.1:{port}/v1"
        try:
            wait_ready(spec, directory, base_url, pgid, say)
        except BaseException:  # start-up failed, timed out, or Ctrl-C: leave nothing running
            stop_server(directory, spec.stop_grace_s, "start-up failed or was interrupted")
            drop_lease(directory, me)
            raise
        say(f"[{spec.backbone}] {spec.engine} serves {spec.model} on port {port} "
            f"(ready after {time.monotonic() - started:.1f} s)")
        return Lease(spec, directory, base_url, pgid, True, me)


def release_holder(holder: int, grace_s: float = 30.0) -> list[str]:
    """End of a wrapped run: drop `holder`'s leases and stop every server no stage is using.
    Returns the backbones whose server was stopped."""
    stopped = []
    if not serve_root().exists():
        return stopped
    for directory in sorted(p for p in serve_root().iterdir() if p.is_dir()):
        with file_lock(directory / "lock"):
            drop_lease(directory, holder)
            busy = [pid for pid, kind in leases(directory).items() if kind == "stage" and pid_alive(pid)]
            if not busy and stop_server(directory, grace_s, f"the run wrapped by process {holder} ended"):
                stopped.append(directory.name)
    return stopped


# ---- the supervisor (runs as `python -m xreflect.backends.server_cli supervise DIR`) ----

def supervise(directory: Path, poll_s: float = 0.2) -> None:
    if os.fork() > 0:  # see _launch_supervisor: the launcher exits, the supervisor carries on
        os._exit(0)
    config = read_json(directory / "supervisor.json")
    stopping: list[str] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append("asked to stop (SIGTERM)"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with open(config["log"], "ab") as log:
        server = subprocess.Popen(config["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **config["env"]})
    with open(directory / "starts.log", "a") as record:
        record.write(json.dumps({"time": time.time(), "pgid": os.getpgid(0), "server_pid": server.pid,
                                 "argv": config["argv"]}) + "\n")
    idle_since: float | None = None
    reason = None
    while reason is None:
        time.sleep(poll_s)
        if stopping:
            reason = stopping[0]
        elif server.poll() is not None:
            reason = f"the server exited with code {server.returncode}"
        else:
            held = leases(directory)
            orphaned = [pid for pid in held if not pid_alive(pid)]
            if orphaned:
                reason = f"process {orphaned[0]} that used it ended without releasing it"
            elif held:
                idle_since = None
            else:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= config["keep_alive_s"]:
                    reason = f"idle for {config['keep_alive_s']:.0f} s (keep_alive_s)"
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group SIGTERM below is for the server
    if not (directory / "exit.json").exists():
        write_json(directory / "exit.json", {"reason": reason})
    with open(config["log"], "a") as log:
        log.write(f"[xreflect.backends.server_cli] stopping the server: {reason}\n")
    state = read_state(directory)
    pgid = os.getpgid(0)
    if state is not None and state.get("pgid") == pgid:
        (directory / "state.json").unlink(missing_ok=True)
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + config["stop_grace_s"]
    while time.monotonic() < deadline and set(group_members(pgid)) - {os.getpid()}:
        server.poll()  # reap it, so it does not count as alive
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)  # whatever is left, this process included
