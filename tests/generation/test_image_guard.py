"""The image guard: an image prompt sends nothing when more than generate.max_missing_images of the
items have no image, for a paying backbone (the OpenAI provider against a fake server on
127.0.0.1), for the offline one and in the cost dry run; under the share, items without an image
get their description as the response, with no call."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.support.fake_openai_server import FakeOpenAI
from xreflect.generation import batch
from xreflect.generation import estimate as cost
from xreflect.data.contract import Item
from xreflect.generation.image_guard import MissingImages, check_image_coverage, items_without_image

REPO = Path(__file__).resolve().parents[2]


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (seed * 40 % 256, 90, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def items(n: int, without: set[int]) -> list[Item]:
    return [Item(str(k), f"T{k}", f"item {k}", None if k in without else f"images/{k}.png") for k in range(n)]


def test_share_is_checked_per_image_prompt():
    params = {"dataset": "movielens-1m", "generate": {"max_missing_images": 0.01}}
    assert check_image_coverage("visual_only", items(100, {7}), params) == ["7"]  # 1 of 100 = 1%: allowed
    with pytest.raises(MissingImages) as err:
        check_image_coverage("rec_gpt4v", items(100, {7, 9}), params)          # 2 of 100 > 1%
    message = str(err.value)
    assert "2 of 100 items (2.0%) have no image" in message and "7, 9" in message
    assert "generate.max_missing_images=0.02" in message and "datasets.movielens-1m.missing_image=drop" in message
    assert check_image_coverage("llm_rec", items(100, set(range(50))), params) == []  # a text prompt
    assert items_without_image("kar", items(3, {0})) == []


def test_default_share_is_one_percent():
    with pytest.raises(MissingImages):
        check_image_coverage("cot", items(99, {0, 1}), {})   # 2 of 99 > 0.99 allowed by the default
    assert check_image_coverage("cot", items(200, {0, 1}), {}) == ["0", "1"]  # 2 of 200 = 1%


def test_bad_share_is_one_clear_error():
    with pytest.raises(Exception, match=r"generate.max_missing_images is 'lots'"):
        check_image_coverage("cot", items(3, set()), {"generate": {"max_missing_images": "lots"}})


def project(tmp_path: Path, n: int, without: set[int], backbone: str, max_missing: float,
            base_url: str = "http://127.0.0.1:9/v1") -> dict:
    """items.jsonl, images and params.yaml for the generate stage in tmp_path."""
    images = tmp_path / "data/dataset/images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for item in items(n, without):
        if item.image:
            (tmp_path / "data/dataset" / item.image).write_bytes(png(int(item.item_id)))
        records.append(vars(item))
    (tmp_path / "data/filtered").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data/filtered/items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "metrics").mkdir(exist_ok=True)  # the filter stage's report says which dataset it holds
    (tmp_path / "metrics/data.json").write_text(json.dumps({"dataset": "demo"}))
    params = {"dataset": "demo", "backbone": backbone,
              "datasets": {"demo": {"item_kind": "a poster", "split_ratio": [8, 1, 1]}},
              "backbones": {"offline": {"provider": "offline"},
                            "gpt4v": {"provider": "openai", "model": "vision-1", "max_tokens": 100,
                                      "concurrency": 2, "timeout_s": 5, "max_attempts": 1,
                                      "prices": {"vision-1": {"input": 2.5, "output": 10.0}}}},
              "generate": {"max_failures": 0.0, "budget_usd_per_prompt": 1.0, "max_missing_images": max_missing}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return {**os.environ, "OPENAI_BASE_URL": base_url, "XREFLECT_CACHE_DIR": str(tmp_path / ".cache"),
            "PYTHONPATH": str(REPO)}


def generate(tmp_path: Path, env: dict, prompt: str) -> subprocess.CompletedProcess:
    """The generate stage of a strategy `prompt` whose one source is that prompt."""
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["strategies"], params["run"] = {prompt: ["description", prompt]}, [prompt]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, "-m", "stages.generate", "--strategy", prompt], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)


def responses(tmp_path: Path, prompt: str) -> dict[str, dict]:
    lines = (tmp_path / f"data/responses/{prompt}/{prompt}.jsonl").read_text().splitlines()
    return {r["item_id"]: r for r in map(json.loads, lines)}


def test_openai_stage_sends_nothing_above_the_share_then_skips_the_few(tmp_path):
    with FakeOpenAI() as server:
        env = project(tmp_path, 40, {3}, "gpt4v", 0.01, server.base_url)   # 1 of 40 = 2.5% > 1%
        blocked = generate(tmp_path, env, "visual_only")
        assert blocked.returncode != 0
        assert "[visual_only] 1 of 40 items (2.5%) have no image" in blocked.stderr
        assert "generate.max_missing_images=0.03" in blocked.stderr
        assert server.chat_requests == []                                  # not a single request
        assert "Traceback" not in blocked.stderr                           # one clear error
        assert not (tmp_path / "data/responses/visual_only/visual_only.jsonl").exists()

        env = project(tmp_path, 40, {3}, "gpt4v", 0.05, server.base_url)   # now 2.5% <= 5%
        done = generate(tmp_path, env, "visual_only")
        assert done.returncode == 0, done.stderr
        assert len(server.chat_requests) == 39                             # every item but 3
        assert all(isinstance(body["messages"][0]["content"], list) for body in server.chat_requests)
    records = responses(tmp_path, "visual_only")
    assert len(records) == 40
    assert records["3"] == {"item_id": "3", "text": "item 3", "key": None, "model": None, "failed": False,
                            "no_image": True}
    assert all(records[str(k)]["model"] == "vision-1" for k in range(40) if k != 3)
    metric = json.loads((tmp_path / "metrics/generate/visual_only.json").read_text())["visual_only"]
    assert metric["items_without_image"] == 1 and metric["responses"] == 39


def test_offline_stage_guard_and_text_only_items(tmp_path):
    env = project(tmp_path, 20, {0, 5}, "offline", 0.05)                   # 2 of 20 = 10% > 5%
    blocked = generate(tmp_path, env, "xr_combined")
    assert blocked.returncode != 0 and "[xr_combined] 2 of 20 items (10.0%) have no image" in blocked.stderr

    env = project(tmp_path, 20, {0, 5}, "offline", 0.1)
    done = generate(tmp_path, env, "xr_combined")
    assert done.returncode == 0, done.stderr                               # max_failures 0: nothing failed
    records = responses(tmp_path, "xr_combined")
    assert [records[i]["text"] for i in ("0", "5")] == ["item 0", "item 5"]
    assert not any(r["failed"] for r in records.values())
    assert sum(bool(r.get("no_image")) for r in records.values()) == 2
    # A text prompt ignores images entirely: all 20 answered by the backbone.
    done = generate(tmp_path, env, "llm_rec")
    assert done.returncode == 0 and len(responses(tmp_path, "llm_rec")) == 20


def test_cost_dry_run_applies_the_guard(tmp_path, monkeypatch, capsys):
    project(tmp_path, 40, {3, 4}, "gpt4v", 0.01)                           # 2 of 40 = 5% > 1%
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XREFLECT_CACHE_DIR", str(tmp_path / ".cache"))
    with pytest.raises(SystemExit, match="1 image prompt"):
        cost.main(["--prompt", "visual_only", "--prompt", "llm_rec"])
    out = capsys.readouterr().out
    assert "BLOCKED [visual_only] 2 of 40 items (5.0%) have no image" in out
    assert "visual_only" in out and "llm_rec" in out

    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["generate"]["max_missing_images"] = 0.05
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cost.main(["--prompt", "visual_only", "--json"])
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    # 38 calls: the two items without an image are answered from their description, for free.
    assert (row["requests"], row["calls"], row["without_image"], row["blocked"]) == (38, 38, 2, None)


def test_batch_prepare_applies_the_guard(tmp_path, monkeypatch):
    project(tmp_path, 40, {3, 4}, "gpt4v", 0.01)                           # 2 of 40 = 5% > 1%
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XREFLECT_CACHE_DIR", str(tmp_path / ".cache"))
    with pytest.raises(MissingImages, match=r"\[cot\] 2 of 40 items \(5.0%\) have no image"):
        batch.main(["prepare", "--prompt", "cot"])
    assert not list((tmp_path / ".cache").rglob("*.jsonl"))                # no batch file written
