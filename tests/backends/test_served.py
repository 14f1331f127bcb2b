"""Served backbones: the project starts the model server, reuses it across stages and stops it.

The server is tests/support/stand_in_server.py: vLLM's command-line shape, the fake OpenAI API, and a
worker process of its own. After every case, nothing of the server's process group may be left
running (checked through /proc). Real vLLM and lmdeploy are not run here (no GPU, no weights).
"""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jinja2
import pytest
import yaml
from PIL import Image

from xreflect.backends import server_cli as serve_cli
from xreflect.backends import create_backend
from xreflect.backends.base import Request
from xreflect.backends.served import ServedBackend, ServerDied, cached_commit
from xreflect.backends.supervisor import (ServeSpec, ServerError, ServerUnavailable, gpu_problem,
                                              group_members, preflight, serve_dir)
from tests.support.fixtures.stage_items import write_image_items
from xreflect.generation.cache import ResponseCache
from xreflect.generation.runner import RunReport, run_requests
from xreflect.generation.throughput import Throughput

REPO = Path(__file__).resolve().parents[2]
STAND_IN = str(REPO / "tests/support/stand_in_server.py")
MODEL = "stand-in/vision-7b"
PINNED = "0123456789abcdef0123456789abcdef01234567"


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (seed * 40 % 256, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_requests(n: int) -> list[Request]:
    return [Request("visual_only", 1, f"Describe image {k}.", f"i{k}", png(k), "image/png") for k in range(n)]


def backbone(*extra: str, **serve) -> dict:
    command = [sys.executable, STAND_IN, "serve", "{model}", "--port", "{port}", "--served-model-name", "{model}",
               "--revision", "{revision}", "--gpu-memory-utilization", "{gpu_memory}", *extra]
    return {"provider": "served", "model": MODEL, "revision": PINNED, "max_tokens": 64, "temperature": 0.0,
            "concurrency": 2, "timeout_s": 5, "max_attempts": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05,
            "serve": {"engine": "stand-in", "command": command, "port": 0, "gpu_memory": 0.5,
                      "startup_timeout_s": 30, "keep_alive_s": 60, "stop_grace_s": 5, "needs_gpu": False,
                      **serve}}


def starts_of(name: str = "llava") -> list[dict]:
    path = serve_dir(name) / "starts.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_until_gone(pgid: int, timeout_s: float = 20.0) -> list[int]:
    """The group's live members once it is empty, or what is still there at the deadline."""
    deadline = time.monotonic() + timeout_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return group_members(pgid)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XREFLECT_CACHE_DIR", str(tmp_path / ".cache"))
    monkeypatch.delenv("XREFLECT_SERVE_HOLDER", raising=False)
    yield tmp_path / ".cache"
    for start in starts_of("llava"):  # whatever a failing test left behind
        if group_members(start["pgid"]):
            os.killpg(start["pgid"], signal.SIGKILL)


# ---- start, generate, reuse, stop ----

def test_slow_start_then_answers_then_reused_then_stopped(tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    first = ServedBackend("llava", backbone("--startup-delay", "1.5"))
    records = run_requests(image_requests(4), first, cache)
    first.close()
    assert [r["text"].split(" | ")[0] for r in records] == [f"answer: Describe image {k}." for k in range(4)]
    assert first.server_starts == 1 and len(starts_of()) == 1
    pgid = starts_of()[0]["pgid"]
    assert len(group_members(pgid)) == 3  # supervisor, server, the server's worker: kept for the next stage

    second = ServedBackend("llava", backbone("--startup-delay", "1.5"))
    run_requests(image_requests(6), second, cache)  # 4 cached, 2 new
    second.close()
    assert second.server_starts == 0 and len(starts_of()) == 1  # one model load for both stages

    assert serve_cli.main(["stop", "llava"]) == 0
    assert group_members(pgid) == []


def test_idle_server_stops_itself_after_keep_alive(tmp_path):
    backend = ServedBackend("llava", backbone(keep_alive_s=0.5))
    run_requests(image_requests(2), backend, ResponseCache(tmp_path / "r.sqlite"))
    backend.close()
    assert wait_until_gone(starts_of()[0]["pgid"]) == []
    assert "idle" in json.loads((serve_dir("llava") / "exit.json").read_text())["reason"]


def test_changed_serve_params_replace_the_running_server(tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    first = ServedBackend("llava", backbone())
    run_requests(image_requests(1), first, cache)
    first.close()
    second = ServedBackend("llava", backbone(gpu_memory=0.6))
    run_requests(image_requests(2), second, cache)
    second.close()
    old, new = starts_of()
    assert group_members(old["pgid"]) == [] and second.server_starts == 1
    serve_cli.main(["stop"])
    assert group_members(new["pgid"]) == []


# ---- failures: nothing is left running ----

def test_server_dying_mid_run_stops_the_run_and_keeps_answers(tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    backend = ServedBackend("llava", {**backbone("--die-after", "3"), "concurrency": 1})
    with pytest.raises(ServerDied, match=r"stopped during generation \(the server exited with code 3\)") as error:
        try:
            run_requests(image_requests(8), backend, cache)
        finally:
            backend.close()
    assert "stand-in: dying after answering 3 requests" in str(error.value)  # the log's tail
    assert len(cache) == 3  # concurrency 1: requests 1-3 answered, the 4th killed the server
    assert wait_until_gone(starts_of()[0]["pgid"]) == []


def test_port_in_use_is_refused_before_starting(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        backend = ServedBackend("llava", backbone(port=port))
        with pytest.raises(ServerError, match=rf"port {port} \(backbones.llava.serve.port\) is already in use"):
            run_requests(image_requests(1), backend, ResponseCache(tmp_path / "r.sqlite"))
        backend.close()
    assert starts_of() == []


def test_server_that_never_lists_the_model_times_out_with_its_log(tmp_path):
    backend = ServedBackend("llava", backbone("--list-model", "other-model", startup_timeout_s=2))
    with pytest.raises(ServerError, match=r"not ready after 2 s .*lists \['other-model'\], not 'stand-in/vision-7b'") as error:
        run_requests(image_requests(1), backend, ResponseCache(tmp_path / "r.sqlite"))
    backend.close()
    assert "stand-in: serving other-model" in str(error.value)
    assert group_members(starts_of()[0]["pgid"]) == []  # stopped before the error was raised


def test_server_exiting_during_start_up_reports_its_log(tmp_path):
    backend = ServedBackend("llava", backbone("--no-such-flag"))
    with pytest.raises(ServerError, match=r"stopped during start-up \(the server exited with code 2\)") as error:
        run_requests(image_requests(1), backend, ResponseCache(tmp_path / "r.sqlite"))
    backend.close()
    assert "unrecognized arguments: --no-such-flag" in str(error.value)
    assert wait_until_gone(starts_of()[0]["pgid"]) == []


# ---- stages as DVC runs them: separate processes ----

def stage_project(tmp_path: Path, config: dict, n_items: int) -> dict:
    write_image_items(tmp_path, [png(k) for k in range(n_items)])
    params = {"dataset": "demo", "backbone": "llava",
              "datasets": {"demo": {"item_kind": "a poster", "split_ratio": [8, 1, 1]}},
              "backbones": {"llava": config}, "generate": {"max_failures": 0.0},
              "strategies": {p: ["description", p] for p in ("llm_rec", "cot", "visual_only")},
              "run": ["llm_rec", "cot", "visual_only"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return {**os.environ, "XREFLECT_CACHE_DIR": str(tmp_path / ".cache"), "PYTHONPATH": str(REPO)}


def stage_command(prompt: str) -> list[str]:
    """The generate stage of the strategy that uses `prompt` alone (stage_project defines one each)."""
    return [sys.executable, "-m", "stages.generate", "--strategy", prompt]


def test_ctrl_c_during_generation_stops_the_server(tmp_path):
    env = stage_project(tmp_path, backbone("--delay", "0.2"), n_items=20)
    stage = subprocess.Popen(stage_command("cot"), cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    cache_file = tmp_path / ".cache/responses.sqlite"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (cache_file.exists() and len(ResponseCache(cache_file)) >= 2):
        time.sleep(0.05)
    stage.send_signal(signal.SIGINT)
    log = stage.communicate(timeout=60)[1]
    assert stage.returncode != 0 and "interrupted (Ctrl-C)" in log
    (start,) = starts_of()
    assert group_members(start["pgid"]) == []  # stopped before the stage exited
    assert 2 <= len(ResponseCache(cache_file)) < 20  # what was answered stays cached


def test_ctrl_c_while_the_server_loads_stops_it(tmp_path):
    env = stage_project(tmp_path, backbone("--startup-delay", "60"), n_items=3)
    stage = subprocess.Popen(stage_command("cot"), cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    log = serve_dir("llava") / "server.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (log.exists() and "stand-in: pid" in log.read_text(errors="replace")):
        time.sleep(0.05)  # until the server process is up and loading
    stage.send_signal(signal.SIGINT)
    stage.communicate(timeout=60)
    (start,) = starts_of()
    assert stage.returncode != 0 and group_members(start["pgid"]) == []
    assert not (serve_dir("llava") / "state.json").exists()


def test_ctrl_c_in_the_terminal_of_a_wrapped_run_stops_everything(tmp_path):
    env = stage_project(tmp_path, backbone("--delay", "0.2"), n_items=20)
    # Its own session, so that Ctrl-C (SIGINT to the terminal's foreground group) reaches the
    # wrapper and the stage as a terminal would, and not pytest.
    wrapper = subprocess.Popen([sys.executable, "-m", "xreflect.backends.server_cli", "run", "--", *stage_command("cot")],
                               cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    cache_file = tmp_path / ".cache/responses.sqlite"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (cache_file.exists() and len(ResponseCache(cache_file)) >= 2):
        time.sleep(0.05)
    os.killpg(wrapper.pid, signal.SIGINT)
    log = wrapper.communicate(timeout=60)[1]
    assert wrapper.returncode != 0 and "1 server start(s) during this run" in log
    (start,) = starts_of()
    assert group_members(start["pgid"]) == [] and group_members(wrapper.pid) == []


def test_stages_in_sequence_share_one_server_and_the_wrapper_stops_it(tmp_path):
    env = stage_project(tmp_path, backbone("--startup-delay", "1"), n_items=5)
    script = " && ".join(" ".join(stage_command(p)) for p in ("llm_rec", "cot", "visual_only"))
    wrapped = subprocess.run([sys.executable, "-m", "xreflect.backends.server_cli", "run", "--", "sh", "-c", script],
                             cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, timeout=120)
    assert wrapped.returncode == 0, wrapped.stderr
    (start,) = starts_of()  # three generate stages, one server start
    assert wrapped.stderr.count("reusing the stand-in server") == 2
    assert "backbone llava: 1 server start(s) during this run, stopped" in wrapped.stderr
    assert group_members(start["pgid"]) == []
    for prompt in ("llm_rec", "cot", "visual_only"):
        assert len((tmp_path / f"data/responses/{prompt}/{prompt}.jsonl").read_text().splitlines()) == 5
    metric = json.loads((tmp_path / "metrics/generate/cot.json").read_text())["cot"]
    assert metric["revision"] == PINNED and metric["revision_pinned"] is True and metric["engine"] == "stand-in"


def test_stages_without_the_wrapper_reuse_the_server(tmp_path):
    env = stage_project(tmp_path, backbone(keep_alive_s=60), n_items=3)
    for prompt in ("llm_rec", "cot"):
        stage = subprocess.run(stage_command(prompt), cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
                               timeout=120)
        assert stage.returncode == 0, stage.stderr
        assert "req/s" in stage.stderr and "tok/s" in stage.stderr  # progress shows throughput
    (start,) = starts_of()
    assert group_members(start["pgid"])  # kept for a next stage (idling out: test_idle_server_...)
    assert serve_cli.main(["stop"]) == 0 and group_members(start["pgid"]) == []


# ---- configuration, install and revisions ----

def test_missing_engine_and_gpu_are_named_with_what_to_install():
    config = {"model": "llava-hf/llava-1.5-7b-hf", "revision": PINNED,
              "serve": {"engine": "vllm", "command": [".venv-vllm/bin/vllm", "serve", "{model}"],
                        "install": "python3 -m venv .venv-vllm && .venv-vllm/bin/pip install -r requirements-vllm.txt"}}
    spec = ServeSpec.from_config("llava", config)
    with pytest.raises(ServerUnavailable) as error:
        preflight(spec, check_gpu=lambda: "no NVIDIA GPU driver on this machine (nvidia-smi not found)")
    message = str(error.value)
    assert "the vllm server is not installed: .venv-vllm/bin/vllm does not exist" in message
    assert "pip install -r requirements-vllm.txt" in message
    assert "vllm needs a CUDA GPU, and there is no NVIDIA GPU driver" in message
    assert "docs/backbones/llava.md" in message


@pytest.mark.parametrize("name", ["llava", "internlm"])
def test_default_backbones_get_past_configuration(name, monkeypatch):
    monkeypatch.chdir(REPO)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    backend = create_backend(name, params["backbones"])
    assert isinstance(backend, ServedBackend) and backend.revision() == params["backbones"][name]["revision"]
    argv = backend.spec.argv(8000)
    assert argv[0].startswith(f".venv-{backend.spec.engine}/bin/") and backend.spec.model in argv
    assert params["backbones"][name]["revision"] in argv
    if name == "llava":
        assert argv[argv.index("--chat-template") + 1] == "xreflect/backends/templates/llava-1.5.jinja"
    monkeypatch.setattr("xreflect.backends.supervisor.gpu_problem", lambda: "no NVIDIA GPU driver")
    if not Path(argv[0]).exists():
        with pytest.raises(ServerUnavailable, match=f"requirements-{backend.spec.engine}.txt"):
            backend.start()
    assert not (serve_dir(name) / "starts.log").exists()


def test_remote_code_must_be_pinned_unless_opted_in_by_name():
    config = {**backbone(), "model": "org/remote-code-model", "revision": None, "trust_remote_code": True}
    with pytest.raises(ValueError, match="allow_unpinned_remote_code=org/remote-code-model"):
        ServedBackend("llava", config)
    with pytest.raises(ValueError, match="revision must be a 40-character commit hash"):
        ServedBackend("llava", {**config, "allow_unpinned_remote_code": "org/other"})
    ServedBackend("llava", {**config, "allow_unpinned_remote_code": "org/remote-code-model"})


def test_unpinned_revision_is_resolved_at_first_download(tmp_path, monkeypatch, capsys):
    hub = tmp_path / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    from tests.support.stand_in_server import DOWNLOADED_COMMIT

    config = {**backbone("--download-to", str(hub)), "revision": None}
    backend = ServedBackend("llava", config)
    assert cached_commit(MODEL, "main") is None
    request = image_requests(1)[0]
    identity = backend.identity(request)  # nothing cached: the server starts and "downloads" main
    assert identity["revision"] == DOWNLOADED_COMMIT and backend.server_starts == 1
    assert backend.metric_fields()["revision"] == DOWNLOADED_COMMIT
    assert backend.metric_fields()["revision_pinned"] is False
    assert f"unpinned revision 'main' of {MODEL} resolved to {DOWNLOADED_COMMIT}" in capsys.readouterr().err
    backend.close()
    serve_cli.main(["stop"])
    again = ServedBackend("llava", config)  # the next stage reads the commit without starting anything
    assert again.identity(request)["revision"] == DOWNLOADED_COMMIT and again.server_starts == 0


@pytest.mark.parametrize("listing, problem", [
    ("GPU 0: NVIDIA H200 (UUID: GPU-d9bedd35)", None),  # what nvidia-smi -L prints on a GPU node
    ("No devices were found", "nvidia-smi lists no GPU"),
])
def test_gpu_is_found_through_nvidia_smi(tmp_path, monkeypatch, listing, problem):
    fake = tmp_path / "bin/nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho '{listing}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert gpu_problem() == problem
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert gpu_problem() == "no NVIDIA GPU driver on this machine (nvidia-smi not found)"


def test_command_placeholders_are_checked():
    with pytest.raises(ValueError, match=r"uses \{host\}; allowed placeholders"):
        ServeSpec.from_config("llava", {"model": MODEL, "serve": {"command": ["vllm", "--host", "{host}"]}})


# ---- the LLaVA-1.5 chat template and throughput ----

def test_llava_template_gives_the_model_card_prompt():
    template = jinja2.Environment().from_string(
        (REPO / "xreflect/backends/templates/llava-1.5.jinja").read_text())
    parts = [{"type": "text", "text": "Describe it."}, {"type": "image"}]  # our order: text, then image
    rendered = template.render(messages=[{"role": "user", "content": parts}], bos_token="<s>",
                               eos_token="</s>", add_generation_prompt=True)
    assert rendered == "<s>USER: <image>\nDescribe it. ASSISTANT:"


def test_throughput_from_usage():
    now = [100.0]
    meter = Throughput(clock=lambda: now[0])
    assert meter.rates()["requests_per_s"] == 0.0  # nothing answered yet
    for _ in range(6):
        meter.add({"prompt_tokens": 300, "completion_tokens": 50}, latency_s=0.5)
    now[0] = 101.5
    # the first request was sent at 100 - 0.5 = 99.5: 6 answers in 2 s: 3 req/s;
    # (6 * 350) / 2 = 1050 tok/s, of which 6 * 50 / 2 = 150 generated
    assert meter.rates() == {"requests_per_s": 3.0, "tokens_per_s": 1050.0, "output_tokens_per_s": 150.0}
    assert meter.summary() == "3.00 req/s, 1050 tok/s (150 out)"


def test_run_report_carries_throughput(tmp_path):
    backend = ServedBackend("llava", backbone())
    report = RunReport()
    run_requests(image_requests(3), backend, ResponseCache(tmp_path / "r.sqlite"), report=report)
    backend.close()
    serve_cli.main(["stop"])
    assert report.throughput["requests_per_s"] > 0 and report.throughput["tokens_per_s"] > 0
