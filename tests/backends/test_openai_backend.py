"""The OpenAI-compatible provider against a fake server on 127.0.0.1: request shape, retries, the
concurrency bound, several servers, fatal errors, cache hits, resume after a kill, cost and budget,
and batch mode. Every number asserted is worked out in the comment next to it."""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.support.fake_openai_server import FakeOpenAI
from xreflect.generation import batch
from xreflect.backends.base import GenerationError, Request
from xreflect.backends.openai_backend import OpenAIBackend
from xreflect.backends.retry import FatalBackendError, RetryPolicy, parse_retry_after
from tests.support.fixtures.stage_items import write_image_items
from xreflect.generation.cache import ResponseCache
from xreflect.generation.budget import Budget, BudgetExhausted, Prices, estimate_prompt_tokens
from xreflect.generation.runner import GenerationFailed, RunReport, run_requests

REPO = Path(__file__).resolve().parents[2]


def png(seed: int, size: int = 32) -> bytes:
    image = Image.new("RGB", (size, size), (seed * 40 % 256, 90, 200))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_requests(n: int, template: str = "visual_only") -> list[Request]:
    return [Request(template, 1, "Describe the image.", f"i{k}", png(k), "image/png") for k in range(n)]


def backend(**config) -> OpenAIBackend:
    base = {"provider": "openai", "model": "vision-1", "text_model": "text-1", "max_tokens": 100,
            "temperature": 0.0, "seed": 7, "concurrency": 1, "timeout_s": 2.0,
            "backoff_base_s": 0.01, "backoff_max_s": 0.05}
    return OpenAIBackend("gpt4v", {**base, **config})


@pytest.fixture
def server(monkeypatch):
    with FakeOpenAI() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        yield fake


def test_chat_request_carries_image_as_data_url_and_params(server, tmp_path):
    image = png(3)
    requests = [Request("cot", 1, "The item description is as follows: a red poster.", "i0", image, "image/png"),
                Request("llm_rec", 1, "The description of an item is as follows: x", "i1")]
    records = run_requests(requests, backend(), ResponseCache(tmp_path / "r.sqlite"))
    vision, text = sorted(server.chat_requests, key=lambda body: body["model"] != "vision-1")
    assert (vision["model"], vision["max_tokens"], vision["temperature"], vision["seed"]) == ("vision-1", 100, 0.0, 7)
    part_text, part_image = vision["messages"][0]["content"]
    assert part_text == {"type": "text", "text": requests[0].prompt}
    assert part_image["image_url"]["url"].startswith("data:image/png;base64,")
    # the fake decodes the data URL and answers with the sha256 of the bytes it got
    assert hashlib.sha256(image).hexdigest()[:12] in records[0]["text"]
    # llm_rec is a text-only strategy: the text model, plain string content, no image
    assert text["model"] == "text-1" and text["messages"] == [{"role": "user", "content": requests[1].prompt}]


def test_retries_429_500_and_timeout_then_succeeds(server, tmp_path):
    server.faults = ["429", "500", "timeout"]
    server.hang_s = 1.0
    started = time.monotonic()
    chosen = backend(timeout_s=0.3)
    records = run_requests(image_requests(3), chosen, ResponseCache(tmp_path / "r.sqlite"))
    elapsed = time.monotonic() - started
    assert [r["failed"] for r in records] == [False] * 3
    # concurrency 1: the first request meets all three faults in turn, then everything passes:
    # 3 failed attempts + 3 answers = 6 requests, 3 retries
    assert len(server.chat_requests) == 6 and chosen.stats["retries"] == 3
    # Retry-After: 1 was honoured (backoff alone is <= 0.05 s), and the timeout cut in at 0.3 s
    assert 1.0 + 0.3 <= elapsed < 5


def test_item_failing_every_attempt_is_recorded_and_retried_next_run(server, tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    server.faults = ["500"] * 3  # max_attempts 3: the first request fails three times
    records = run_requests(image_requests(4), backend(max_attempts=3), cache, max_failures=0.25)
    assert [r["failed"] for r in records] == [True, False, False, False]
    assert records[0]["text"] == "" and len(server.chat_requests) == 3 + 3
    (failure,) = cache.failures("visual_only")
    assert failure["item_id"] == "i0" and "HTTP 500" in failure["error"]
    # next run: only the failed item is sent, and it succeeds
    before = len(server.chat_requests)
    records = run_requests(image_requests(4), backend(), cache)
    assert len(server.chat_requests) - before == 1 and not any(r["failed"] for r in records)
    assert cache.failures() == []


def test_failures_over_the_threshold_fail_the_run(server, tmp_path):
    server.faults = ["500"] * 6  # two items fail all 3 attempts: 2 of 4 > 25%
    with pytest.raises(GenerationFailed, match="2 of 4 requests failed"):
        run_requests(image_requests(4), backend(max_attempts=3), ResponseCache(tmp_path / "r.sqlite"),
                     max_failures=0.25)


@pytest.mark.parametrize("fault, message", [("quota", "insufficient_quota"), ("auth", "authentication failed")])
def test_quota_and_auth_errors_stop_without_retry(server, tmp_path, fault, message):
    server.faults = [fault]
    chosen = backend()
    with pytest.raises(FatalBackendError, match=message):
        run_requests(image_requests(5), chosen, ResponseCache(tmp_path / "r.sqlite"))
    time.sleep(0.2)  # give a wrongly retrying worker time to show itself
    assert len(server.chat_requests) == 1 and chosen.stats["retries"] == 0


def test_missing_key_for_openai_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(FatalBackendError, match=r"\$OPENAI_API_KEY is not set"):
        list(backend().generate(image_requests(1)))


def test_concurrency_bound_per_server_and_spread_over_servers(monkeypatch, tmp_path):
    with FakeOpenAI(delay_s=0.1) as one, FakeOpenAI(delay_s=0.1) as two:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{one.base_url}, {two.base_url}")
        started = time.monotonic()
        run_requests(image_requests(16), backend(concurrency=2), ResponseCache(tmp_path / "r.sqlite"))
        elapsed = time.monotonic() - started
    assert len(one.chat_requests) + len(two.chat_requests) == 16
    assert one.max_in_flight == 2 and two.max_in_flight == 2  # the bound, and it is reached
    assert len(one.chat_requests) >= 4 and len(two.chat_requests) >= 4
    assert elapsed < 16 * 0.1 / 2  # 4 in flight: ~0.4 s of server time, well under sequential 1.6 s


def test_rerun_and_backbone_switch_send_nothing(server, tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    first = run_requests(image_requests(5), backend(), cache)
    other = run_requests(image_requests(5), backend(model="vision-2"), cache)  # another backbone
    assert len(server.chat_requests) == 10 and other[0]["key"] != first[0]["key"]
    assert run_requests(image_requests(5), backend(), cache) == first  # and back: all cached
    assert len(server.chat_requests) == 10


def test_budget_stops_before_it_is_exceeded(server, tmp_path):
    prices = Prices({"vision-1": (10.0, 20.0)})  # USD per million tokens
    requests = image_requests(10)
    # worst case per request: ceil(19 chars / 3) + 8 = 15 text tokens + 85 + 170 for one 32-px tile
    # = 270 prompt tokens, plus max_tokens 100: (270*10 + 100*20) / 1e6 = $0.0047
    assert estimate_prompt_tokens(requests[0]) == 270
    budget = Budget(0.02, prices)
    report = RunReport()
    with pytest.raises(BudgetExhausted, match="4 new answers"):
        run_requests(requests, backend(), ResponseCache(tmp_path / "r.sqlite"), budget=budget, report=report)
    # 4 fit (4 * 0.0047 = 0.0188 <= 0.02); each really costs (300*10 + 50*20)/1e6 = $0.004, so
    # $0.016 is spent and the fifth (worst $0.0047 > $0.004 left) is never sent
    assert len(server.chat_requests) == 4
    assert budget.spent_usd == pytest.approx(0.016) and report.new_cost_usd == pytest.approx(0.016)


def test_retry_delay_grows_with_jitter_and_honours_retry_after():
    policy, rng = RetryPolicy(base_delay_s=1.0, max_delay_s=60.0), random.Random(0)
    for attempt, (low, high) in enumerate([(0.5, 1), (1, 2), (2, 4), (4, 8)]):
        assert all(low <= policy.delay(attempt, rng=rng) <= high for _ in range(50))
    assert all(30 <= policy.delay(10, rng=rng) <= 60 for _ in range(50))  # capped at max_delay_s
    assert policy.delay(0, retry_after=7.0, rng=rng) == 7.0
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT"},
                             now=1445412480.0) == 30.0  # that date is 1445412510 in epoch seconds


# ---- the stage end to end: kill mid-run, resume, metric ----

def stage_project(tmp_path: Path, base_url: str, n_items: int, concurrency: int) -> dict:
    """A project directory with items, images and params for `python -m stages.generate --strategy cot`."""
    write_image_items(tmp_path, [png(k) for k in range(n_items)])
    params = {"dataset": "demo", "backbone": "gpt4v",
              "datasets": {"demo": {"item_kind": "a poster", "split_ratio": [8, 1, 1]}},
              "backbones": {"gpt4v": {"provider": "openai", "model": "vision-1", "max_tokens": 100,
                                      "concurrency": concurrency, "timeout_s": 5,
                                      "prices": {"vision-1": {"input": 2.5, "output": 10.0}}}},
              "generate": {"max_failures": 0.0, "budget_usd_per_prompt": 1.0},
              "strategies": {"cot": ["description", "cot"]}, "run": ["cot"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return {**os.environ, "OPENAI_BASE_URL": base_url, "XREFLECT_CACHE_DIR": str(tmp_path / ".cache"),
            "PYTHONPATH": str(REPO)}


def run_stage(tmp_path: Path, env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stages.generate", "--strategy", "cot"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, **kwargs)


def test_stage_killed_mid_run_resumes_and_reports_cost(tmp_path):
    n = 12
    with FakeOpenAI(delay_s=0.15) as server:
        env = stage_project(tmp_path, server.base_url, n, concurrency=2)
        first = run_stage(tmp_path, env)
        cache_file = tmp_path / ".cache/responses.sqlite"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if cache_file.exists() and len(ResponseCache(cache_file)) >= 4:
                break
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        stored = len(ResponseCache(cache_file))
        sent_before_kill = len(server.chat_requests)
        assert 4 <= stored < n and sent_before_kill <= stored + 2  # lost at most the 2 in flight

        second = run_stage(tmp_path, env)
        assert second.wait(timeout=30) == 0, second.stderr.read()
        assert len(server.chat_requests) - sent_before_kill == n - stored  # only what was missing

        third = run_stage(tmp_path, env)
        assert third.wait(timeout=30) == 0
        third_log = third.stderr.read()
        assert len(server.chat_requests) - sent_before_kill == n - stored  # rerun: zero requests
    records = [json.loads(line) for line in (tmp_path / "data/responses/cot/cot.jsonl").read_text().splitlines()]
    assert len(records) == n and not any(r["failed"] for r in records)
    metric = json.loads((tmp_path / "metrics/generate/cot.json").read_text())["cot"]
    # every answer: 100 + 200 (one image) prompt tokens, 50 completion tokens at $2.5 / $10 per M:
    # (300 * 2.5 + 50 * 10) / 1e6 = $0.00125 each, $0.015 for 12
    assert metric["prompt_tokens"] == 300 * n and metric["completion_tokens"] == 50 * n
    assert metric["cost_usd"] == pytest.approx(0.015)
    # What the rerun itself did goes to the log, not the metric (it changes on every rerun).
    assert "this_run" not in metric
    assert f"this run: {{'cached': {n}, 'generated': 0, 'cost_usd': 0.0" in third_log


def test_batch_submit_poll_merge_then_stage_sends_nothing(tmp_path, monkeypatch):
    with FakeOpenAI() as server:
        env = stage_project(tmp_path, server.base_url, 6, concurrency=2)
        for name in ("OPENAI_BASE_URL", "XREFLECT_CACHE_DIR"):
            monkeypatch.setenv(name, env[name])
        monkeypatch.chdir(tmp_path)
        batch.main(["prepare", "--prompt", "cot"])
        lines = [json.loads(line) for line in (tmp_path / ".cache/batches/cot.jsonl").read_text().splitlines()]
        assert len(lines) == 6 and lines[0]["url"] == "/v1/chat/completions"
        assert len(lines[0]["custom_id"]) == 64 and lines[0]["body"]["model"] == "vision-1"
        server.faults = [None, "500"]  # the second task of the batch fails inside the batch
        batch.main(["run", "--prompt", "cot", "--interval", "0"])
        assert server.polls == 2  # validating -> in_progress -> completed
        cache = ResponseCache(tmp_path / ".cache/responses.sqlite")
        assert len(cache) == 5 and len(cache.failures("cot")) == 1
        sent = len(server.chat_requests)
        stage = run_stage(tmp_path, env)
        assert stage.wait(timeout=30) == 0, stage.stderr.read()
        assert len(server.chat_requests) - sent == 1  # only the task that failed in the batch
    # a vllm run-batch style results file merges the same way
    results = tmp_path / "out.jsonl"
    results.write_text(json.dumps({"id": "x", "custom_id": lines[0]["custom_id"], "error": None,
                                   "response": {"status_code": 200, "body": {
                                       "model": "vision-1", "usage": {"prompt_tokens": 1, "completion_tokens": 2},
                                       "choices": [{"message": {"content": "from vllm"}}]}}}) + "\n")
    state = batch.load_state(tmp_path / ".cache/batches", "cot")
    assert batch.merge_results(results.read_text().splitlines(), state, cache) == (1, 0)
    assert cache.get_many([lines[0]["custom_id"]])[lines[0]["custom_id"]].text == "from vllm"
