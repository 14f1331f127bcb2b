"""Each fault of a paid generation run, and each bad input file, against loopback fakes: the run
stops early with one message naming the URL/file/param and the fix, with its own exit code and no
traceback, never pays twice, and keeps what is already in. Numbers are worked out in comments."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.support.fake_openai_server import HTML_PAGE, FakeOpenAI
from tests.backends.test_openai_backend import backend, image_requests, run_stage, server, stage_project  # noqa: F401 (fixture)
from tests.support.fixtures.datasets import CORRUPT_IMAGE, SMALL_MOVIES, SMALL_RATINGS, SMALL_USERS, image_bytes, ml1m_zip
from tests.support.fixtures.http_server import FixtureServer
from xreflect.generation import batch
from xreflect.generation import estimate as cost
from xreflect.backends.base import Request
from xreflect.backends.retry import NotOpenAIServer, ServerUnreachable
from xreflect.generation.cache import ResponseCache
from xreflect.core.config import ParamsError
from xreflect.generation.budget import Budget, BudgetExhausted, Prices, stage_budget
from xreflect.data.sources.movielens import prepare, read_archive
from xreflect.core.errors import (EXIT_AUTH, EXIT_BUDGET, EXIT_DATA, EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_QUOTA,
                             EXIT_UNREACHABLE, DataError)
from xreflect.generation.runner import run_requests, usage_metric, RunReport

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stage_env(tmp_path: Path, base_url: str, n: int = 6, concurrency: int = 1, **generate) -> dict:
    env = stage_project(tmp_path, base_url, n, concurrency)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["backbones"]["gpt4v"].update(backoff_base_s=0.01, backoff_max_s=0.05, max_attempts=3)
    params["generate"].update(generate)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return env


def finished(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    code = process.wait(timeout=timeout)
    return code, process.stderr.read()


def one_message(stderr: str) -> str:
    """The stop message: no traceback, and it is the last line."""
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


# ---- server down, slow server, not an OpenAI API ----

def test_server_down_stops_after_breaker_naming_url(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    chosen = backend(breaker_after=4)
    cache = ResponseCache(tmp_path / "r.sqlite")
    with pytest.raises(ServerUnreachable, match=rf"no answer from the server at {url}: 4 connection attempts in "
                                                r"a row failed .*Check that the server is running"):
        run_requests(image_requests(20), chosen, cache)
    # concurrency 1: one item, four attempts, then the breaker; the other 19 items are never tried
    assert chosen.stats["requests_sent"] == 4
    assert cache.failures() == []  # nothing was answered, and nothing never sent counts as failed


def test_server_down_stage_exit_code_and_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    code, stderr = finished(run_stage(tmp_path, stage_env(tmp_path, url)))
    assert code == EXIT_UNREACHABLE
    assert f"no answer from the server at {url}" in one_message(stderr)


def test_slow_server_trips_the_breaker_and_suggests_timeout_or_concurrency(server, tmp_path):
    server.always = "hang"
    chosen = backend(timeout_s=0.3, breaker_after=3)
    with pytest.raises(ServerUnreachable, match=r"3 requests in a row timed out after 0.3 s.*raise "
                       r"backbones.gpt4v.timeout_s \(now 0.3\) or lower backbones.gpt4v.concurrency \(now 1\)"):
        run_requests(image_requests(10), chosen, ResponseCache(tmp_path / "r.sqlite"))
    assert len(server.chat_requests) == 3  # concurrency 1: three timeouts, then nothing more


def test_one_dead_server_of_two_is_taken_out_and_the_other_finishes(tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with FakeOpenAI() as alive:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{dead},{alive.base_url}")
        records = run_requests(image_requests(8), backend(breaker_after=2, max_attempts=6),
                               ResponseCache(tmp_path / "r.sqlite"))
    assert not any(r["failed"] for r in records) and len(alive.chat_requests) == 8


def test_non_json_body_stops_after_three_showing_the_body(server, tmp_path):
    server.always = "html"
    chosen = backend()
    with pytest.raises(NotOpenAIServer, match=rf"the server at {server.base_url} did not answer as an OpenAI API "
                                              r"\(3 answers in a row.*text/html, body starts '<!DOCTYPE html>"):
        run_requests(image_requests(50), chosen, ResponseCache(tmp_path / "r.sqlite"))
    assert len(server.chat_requests) == 3 and HTML_PAGE.startswith(b"<!DOCTYPE html>")


def test_empty_choices_fail_that_item_only(server, tmp_path):
    server.faults = ["empty"]
    cache = ResponseCache(tmp_path / "r.sqlite")
    records = run_requests(image_requests(4), backend(), cache, max_failures=0.25)
    assert [r["failed"] for r in records] == [True, False, False, False]
    (failure,) = cache.failures()
    assert "empty answer (finish_reason=no choices)" in failure["error"]


# ---- auth, quota, Ctrl-C: stop at once, record nothing that was never sent ----

def test_refused_key_exit_code_and_no_cancelled_rows(tmp_path):
    with FakeOpenAI(api_key="sk-right") as server:
        env = {**stage_env(tmp_path, server.base_url, n=8, concurrency=4), "OPENAI_API_KEY": "sk-wrong"}
        code, stderr = finished(run_stage(tmp_path, env))
    assert code == EXIT_AUTH
    assert "authentication failed (HTTP 401" in one_message(stderr) and "check $OPENAI_API_KEY" in stderr
    assert ResponseCache(tmp_path / ".cache/responses.sqlite").failures() == []


def test_quota_mid_run_keeps_answers_and_records_no_cancelled_rows(tmp_path):
    with FakeOpenAI(delay_s=0.05) as server:
        server.faults = [None, None, None, "quota"]
        code, stderr = finished(run_stage(tmp_path, stage_env(tmp_path, server.base_url, n=12, concurrency=2)))
    cache = ResponseCache(tmp_path / ".cache/responses.sqlite")
    assert code == EXIT_QUOTA and "insufficient_quota" in one_message(stderr)
    assert len(cache) >= 2 and cache.failures() == []  # the 8+ requests never sent are not failures


def test_debug_env_brings_the_traceback_back(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    env = {**stage_env(tmp_path, url), "XREFLECT_DEBUG": "1"}
    code, stderr = finished(run_stage(tmp_path, env))
    assert code == 1 and "Traceback" in stderr and "ServerUnreachable" in stderr


def test_ctrl_c_keeps_answers_and_exits_with_130(tmp_path):
    with FakeOpenAI(delay_s=0.2) as server:
        process = run_stage(tmp_path, stage_env(tmp_path, server.base_url, n=40, concurrency=2))
        cache_file = tmp_path / ".cache/responses.sqlite"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (cache_file.exists() and len(ResponseCache(cache_file)) >= 3):
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        code, stderr = finished(process, timeout=30)
    assert code == EXIT_INTERRUPTED and "interrupted (Ctrl-C)" in one_message(stderr)
    cache = ResponseCache(cache_file)
    assert 3 <= len(cache) < 40 and cache.failures() == []


# ---- budgets and prices ----

def test_budget_stop_has_its_exit_code(tmp_path):
    with FakeOpenAI() as server:
        # each request's worst case is $0.00176 (see the worked example in test_openai_backend);
        # a $0.001 cap fits none
        env = stage_env(tmp_path, server.base_url, budget_usd_per_prompt=0.001)
        code, stderr = finished(run_stage(tmp_path, env))
        assert code == EXIT_BUDGET and "per-stage budget generate.budget_usd_per_prompt=$0.00" in one_message(stderr)
        assert server.chat_requests == []


def test_too_many_failures_has_its_exit_code(tmp_path):
    with FakeOpenAI() as server:
        server.always = "500"
        code, stderr = finished(run_stage(tmp_path, stage_env(tmp_path, server.base_url, n=3)))
    assert code == EXIT_FAILURES and "3 of 3 requests failed" in one_message(stderr)


def test_whole_run_budget_counts_earlier_runs_from_the_ledger(server, tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    prices = Prices({"vision-1": (10.0, 20.0)})
    # worst case per request $0.0047, real cost $0.004 (worked out in test_openai_backend)
    first = Budget(1.0, prices, total_limit_usd=0.02, scope="demo/gpt4v")
    run_requests(image_requests(3), backend(), cache, budget=first)
    assert cache.spent_usd("demo/gpt4v") == pytest.approx(0.012)
    # A later stage: $0.008 left of the total. The first request (worst $0.0047) fits, costs $0.004;
    # then $0.004 is left, under the next worst case: stop after one.
    later = Budget(1.0, prices, total_limit_usd=0.02, spent_before_usd=cache.spent_usd("demo/gpt4v"),
                   scope="demo/gpt4v")
    others = [Request("cot", 1, "Describe it.", f"j{k}", r.image, "image/png") for k, r in enumerate(image_requests(3))]
    with pytest.raises(BudgetExhausted, match=r"whole-run budget generate.budget_usd_total=\$0.02 for demo/gpt4v: "
                                              r"\$0.0120 spent by earlier runs and \$0.0040 by this one"):
        run_requests(others, backend(), cache, budget=later)
    assert len(server.chat_requests) == 4 and cache.spent_usd("demo/gpt4v") == pytest.approx(0.016)
    assert cache.spent_usd("movielens-1m/gpt4v") == 0.0  # another dataset's run has its own total


def gpt4v_params(budget=25.0) -> dict:
    return {"dataset": "demo", "backbone": "gpt4v",
            "backbones": {"gpt4v": {"provider": "openai", "model": "gpt-4o-2024-08-06", "text_model": "gpt-4-0613",
                                    "max_tokens": 10, "prices": {"gpt-4o-2024-08-06": {"input": 2.5, "output": 10}}}},
            "generate": {"budget_usd_per_prompt": budget, "budget_usd_total": None}}


def test_unpriced_model_is_refused_on_a_paid_server(tmp_path, monkeypatch):
    from xreflect.backends import create_backend

    params = gpt4v_params()
    chosen = create_backend("gpt4v", params["backbones"])
    text = [Request("llm_rec", 1, "The description of an item is as follows: x", "i0")]
    cache = ResponseCache(tmp_path / "r.sqlite")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)  # api.openai.com: paid (nothing is sent here)
    with pytest.raises(ParamsError, match=r"backbones.gpt4v.prices has no price for model 'gpt-4-0613' \(used by "
                                          r"llm_rec\), so the budget \(generate.budget_usd_per_prompt=25.0\) cannot "
                                          r"hold.*`gpt-4-0613: \{input: <USD>, output: <USD>\}`"):
        stage_budget(params, chosen, text, cache)
    stage_budget(params, chosen, image_requests(1), cache)  # the vision model has a price: fine
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")  # a local server: free
    stage_budget(params, chosen, text, cache)
    monkeypatch.delenv("OPENAI_BASE_URL")
    stage_budget(gpt4v_params(budget=None), chosen, text, cache)  # no budget to protect


# ---- the cost dry run ----

def test_dry_run_estimates_the_selected_dataset_before_download(tmp_path, monkeypatch, capsys):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(dataset="movielens-1m", backbone="gpt4v")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "data/filtered").mkdir(parents=True)  # the demo's filtered items are there ...
    (tmp_path / "data/filtered/items.jsonl").write_text(json.dumps({"item_id": "0", "title": "t",
                                                                    "description": "d", "image": None}) + "\n")
    (tmp_path / "metrics/data.json").write_text(json.dumps({"dataset": "demo"}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XREFLECT_CACHE_DIR", str(tmp_path / ".cache"))
    cost.main(["--json"])
    result = json.loads(capsys.readouterr().out)
    # ... but MovieLens-1M is selected: 3,706 items from paper_table1, an estimate
    assert (result["dataset"], result["items"], result["estimate"]) == ("movielens-1m", 3706, True)
    rows = {row["prompt"]: row for row in result["rows"]}
    assert rows["kar_factors"]["calls"] == 1 and rows["cot"]["calls"] == 3706 and rows["xr_separate"]["calls"] == 3706
    # the shipped defaults let the whole paper run finish: every prompt and the total fit their caps
    assert max(row["worst_case_usd"] for row in result["rows"]) <= result["budget_usd_per_prompt"]
    assert sum(row["worst_case_usd"] for row in result["rows"]) <= result["budget_usd_total"]
    cost.main([])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("dataset movielens-1m: 3,706 items (ESTIMATE: not downloaded and filtered yet")
    assert lines[-2].startswith("budget per prompt stage (generate.budget_usd_per_prompt): $40.00")
    assert lines[-1].startswith("budget for the whole run (generate.budget_usd_total, movielens-1m/gpt4v): "
                                "$300.00; spent so far $0.0000")


# ---- max_failures: pending failures are announced with the command that retries only them ----

def test_tolerated_failures_are_announced_and_retried_alone(tmp_path):
    with FakeOpenAI() as server:
        server.faults = ["500"] * 3  # max_attempts 3: the first item fails
        env = stage_env(tmp_path, server.base_url, n=4, max_failures=0.25)
        code, stderr = finished(run_stage(tmp_path, env))
        assert code == 0
        assert "PENDING: 1 of 4 items failed" in stderr and "dvc repro -s -f generate@cot" in stderr
        assert json.loads((tmp_path / "metrics/generate/cot.json").read_text())["cot"]["failed"] == 1
        sent = len(server.chat_requests)
        code, stderr = finished(run_stage(tmp_path, env))  # what `dvc repro -s -f generate@cot` runs
        assert code == 0 and "PENDING" not in stderr and len(server.chat_requests) - sent == 1


# ---- batches: never submitted twice, priced at the batch price ----

@pytest.fixture
def batch_project(tmp_path, monkeypatch):
    with FakeOpenAI() as server:
        env = stage_project(tmp_path, server.base_url, 6, concurrency=2)
        params = yaml.safe_load((tmp_path / "params.yaml").read_text())
        params["backbones"]["gpt4v"]["batch_discount"] = 0.5
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        for name in ("OPENAI_BASE_URL", "XREFLECT_CACHE_DIR"):
            monkeypatch.setenv(name, env[name])
        monkeypatch.chdir(tmp_path)
        yield server, env


def test_batch_submit_twice_resumes_the_first(batch_project, tmp_path):
    server, _ = batch_project
    batch.main(["submit", "--prompt", "cot"])
    batch.main(["submit", "--prompt", "cot"])                    # the same requests: resumed
    assert len(server.batches) == 1
    (tmp_path / ".cache/batches/cot.state.json").unlink()        # the local id lost ...
    batch.main(["submit", "--prompt", "cot"])                    # ... found by its metadata on the server
    batch.main(["run", "--prompt", "cot", "--interval", "0"])    # `run` while pending: resumes, merges
    assert len(server.batches) == 1 and len(ResponseCache(tmp_path / ".cache/responses.sqlite")) == 6
    batch.main(["submit", "--prompt", "cot"])                    # everything cached: nothing to submit
    assert len(server.batches) == 1


def test_batch_force_resubmits_the_same_requests_keeping_the_first_id(batch_project, tmp_path):
    server, _ = batch_project
    batch.main(["submit", "--prompt", "cot"])
    first = next(iter(server.batches))
    batch.main(["submit", "--prompt", "cot", "--force"])
    state = json.loads((tmp_path / ".cache/batches/cot.state.json").read_text())
    assert len(server.batches) == 2 and state["abandoned"] == [first] and state["batch_id"] != first


def test_batch_for_other_requests_is_refused_while_one_is_pending_unless_forced(batch_project, tmp_path):
    server, _ = batch_project
    batch.main(["submit", "--prompt", "cot"])
    first = next(iter(server.batches))
    (tmp_path / "data/dataset/images/0.png").write_bytes(image_bytes("PNG"))  # item 0 changes: another set
    with pytest.raises(batch.BatchConflict, match=rf"batch {first} for prompt 'cot' \(6 requests\) is submitted "
                                                  r"and not merged yet.*--force"):
        batch.main(["submit", "--prompt", "cot"])
    batch.main(["submit", "--prompt", "cot", "--force"])
    assert len(server.batches) == 2
    state = json.loads((tmp_path / ".cache/batches/cot.state.json").read_text())
    assert state["abandoned"] == [first] and state["batch_id"] != first  # the first id is kept


def test_batch_answers_are_priced_at_the_batch_price(batch_project, tmp_path):
    server, env = batch_project
    batch.main(["run", "--prompt", "cot", "--interval", "0"])
    code, stderr = finished(run_stage(tmp_path, env))
    assert code == 0, stderr
    metric = json.loads((tmp_path / "metrics/generate/cot.json").read_text())["cot"]
    # 6 answers of 300 prompt + 50 completion tokens at $2.5/$10 per M: $0.00125 each online,
    # half through the Batch API: 6 * 0.000625 = $0.00375
    assert metric["cost_usd"] == pytest.approx(0.00375)
    assert ResponseCache(tmp_path / ".cache/responses.sqlite").spent_usd("demo/gpt4v") == pytest.approx(0.00375)


# ---- bad input files: one message naming the file, the record and the fix ----

ARCHIVE = ml1m_zip(SMALL_RATINGS, SMALL_MOVIES, SMALL_USERS)


def test_truncated_archive_is_moved_aside_and_named(tmp_path):
    path = tmp_path / "ml-1m.zip"
    path.write_bytes(ARCHIVE[: len(ARCHIVE) // 2])
    with pytest.raises(DataError, match=r"ml-1m.zip: the archive is truncated or corrupt \(BadZipFile: .*moved "
                                        r"aside to .*ml-1m.zip.corrupt.*dvc repro download"):
        read_archive(path)
    assert not path.exists() and (tmp_path / "ml-1m.zip.corrupt").read_bytes() == ARCHIVE[: len(ARCHIVE) // 2]


def test_corrupt_member_names_the_member(tmp_path):
    path = tmp_path / "ml-1m.zip"
    path.write_bytes(ARCHIVE)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("ml-1m/ratings.dat")
    data = bytearray(ARCHIVE)  # flip a byte in the middle of ratings.dat's compressed data
    data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"ml-1m.zip: the archive is truncated or corrupt in ml-1m/ratings.dat \("):
        read_archive(path)


def download_project(tmp_path: Path, archive: bytes, md5: str | None) -> dict:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "ml-1m.zip").write_bytes(archive)
    params = {"dataset": "movielens-1m", "datasets": {"movielens-1m": {
        "source": "movielens-1m", "split_ratio": [8, 1, 1], "min_interactions": 5, "mirror_dir": str(mirror),
        "archive": {"urls": ["http://127.0.0.1:9/ml-1m.zip"], "md5": md5}, "download": {"retries": 0}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_download_stage_checksum_mismatch_one_message_exit_code(tmp_path):
    env = download_project(tmp_path, ARCHIVE, md5="0" * 32)
    run = subprocess.run([sys.executable, str(REPO / "stages/download.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == EXIT_DATA
    line = one_message(run.stderr)
    assert f"ml-1m.zip: md5 mismatch: expected {'0' * 32}, got {hashlib.md5(ARCHIVE).hexdigest()}" in line
    assert "update the pinned checksum in params.yaml" in line


def test_download_stage_corrupt_archive_one_message_exit_code(tmp_path):
    env = download_project(tmp_path, b"PK\x03\x04 not really a zip", md5=None)
    run = subprocess.run([sys.executable, str(REPO / "stages/download.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == EXIT_DATA and "the archive is truncated or corrupt" in one_message(run.stderr)
    assert (tmp_path / "data/raw/movielens-1m/ml-1m.zip.corrupt").exists()


def test_undecodable_poster_names_item_url_and_fix(tmp_path):
    with FixtureServer() as server:
        server.add("/ml-1m.zip", ARCHIVE)
        for movie_id in (1, 2, 4, 5):
            server.add(f"/posters/{movie_id}.jpg", image_bytes("JPEG"))
        server.add("/posters/3.jpg", CORRUPT_IMAGE)
        config = {"source": "movielens-1m", "min_interactions": 5, "missing_image": "error",
                  "archive": {"urls": [server.url("/ml-1m.zip")]}, "download": {"retries": 0},
                  "posters": {"url_template": server.url("/posters/{movie_id}.jpg")}}
        with pytest.raises(DataError, match=r"1 of 5 items have no usable image, e.g. item 3: .*/posters/3.jpg: "
                                            r"does not decode as an image.*missing_image"):
            prepare(tmp_path / "dataset", "movielens-1m", config, {})
    # the four good posters stay downloaded for the next run
    assert len([p for p in (tmp_path / "raw/movielens-1m/posters").iterdir() if "." not in p.name]) == 4


def test_batch_command_with_a_refused_key_one_message_exit_code(tmp_path):
    with FakeOpenAI(api_key="sk-right") as server:
        env = {**stage_project(tmp_path, server.base_url, 2, concurrency=1), "OPENAI_API_KEY": "sk-wrong"}
        run = subprocess.run([sys.executable, "-m", "xreflect.generation.batch", "submit", "--prompt", "cot"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == EXIT_AUTH
    assert f"from POST {server.base_url}/files: authentication failed (HTTP 401" in one_message(run.stderr)
    assert server.batches == {}


def test_truncated_gzip_is_moved_aside_and_named(tmp_path):
    from tests.support.fixtures.datasets import amazon_reviews, json_lines_gz
    from xreflect.data.sources.amazon import read_reviews

    data = json_lines_gz(amazon_reviews())
    path = tmp_path / "Software.json.gz"
    path.write_bytes(data[: len(data) - 20])
    with pytest.raises(DataError, match=r"Software.json.gz: the archive is truncated or corrupt \(EOFError: .*moved "
                                        r"aside to .*Software.json.gz.corrupt"):
        read_reviews(path)
    assert (tmp_path / "Software.json.gz.corrupt").exists()
