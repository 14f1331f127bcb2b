"""One plan, three entry points: the generate stage, batch mode and the cost dry run ask for the same
requests. The fixture has released KAR knowledge for some items and items without an image; none
of those may get a request from any of the three."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.generation.test_image_guard import generate, project
from tests.support.fake_openai_server import FakeOpenAI
from xreflect.generation import batch
from xreflect.generation import estimate as dry_run
from xreflect.generation.plan import plan_prompts
from xreflect.data.contract import Item

RELEASED = {"0", "1", "2"}      # items with the KAR authors' knowledge
WITHOUT_IMAGE = {3, 4}          # items without an image (2 of 10, allowed by max_missing_images 0.3)


def with_released_knowledge(tmp_path: Path) -> None:
    lines = [json.dumps({"item_id": item_id, "knowledge": f"released knowledge of {item_id}"}) for item_id in RELEASED]
    (tmp_path / "data/dataset/kar_knowledge.jsonl").write_text("\n".join(lines) + "\n")


def stage_request_keys(tmp_path: Path, strategy: str, prompt: str) -> set[str]:
    """The request keys the stage answered through the backbone (released and no-image items have none)."""
    lines = (tmp_path / f"data/responses/{strategy}/{prompt}.jsonl").read_text().splitlines()
    return {r["key"] for r in map(json.loads, lines) if r["key"]}


def test_plan_leaves_out_released_and_imageless_items():
    items = [Item(str(k), f"T{k}", f"item {k}", None if k in WITHOUT_IMAGE else f"images/{k}.png") for k in range(10)]
    params = {"dataset": "demo", "datasets": {"demo": {}}, "generate": {"max_missing_images": 0.3}}
    visual, llm_rec = plan_prompts(["visual_only", "llm_rec"], params, items, Path("/nonexistent"))
    assert [i.item_id for i in visual.asked] == [str(k) for k in range(10) if k not in WITHOUT_IMAGE]
    assert visual.without_image == ["3", "4"] and visual.released == {}
    assert len(llm_rec.asked) == 10 and llm_rec.without_image == []  # a text prompt sees every item


def test_stage_batch_and_dry_run_send_the_same_requests(tmp_path, monkeypatch, capsys):
    with FakeOpenAI() as server:
        env = project(tmp_path, 10, WITHOUT_IMAGE, "gpt4v", 0.3, server.base_url)
        with_released_knowledge(tmp_path)
        done = generate(tmp_path, env, "visual_only")
        assert done.returncode == 0, done.stderr
        params = yaml.safe_load((tmp_path / "params.yaml").read_text())
        params["strategies"] = {"kar": ["description", "kar"], "visual_only": ["description", "visual_only"]}
        params["run"] = ["kar", "visual_only"]
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        done = generate(tmp_path, env, "kar")
        assert done.returncode == 0, done.stderr
    stage = {"visual_only": stage_request_keys(tmp_path, "visual_only", "visual_only"),
             "kar": stage_request_keys(tmp_path, "kar", "kar"),
             "kar_factors": stage_request_keys(tmp_path, "kar", "kar_factors")}
    assert (len(stage["visual_only"]), len(stage["kar"]), len(stage["kar_factors"])) == (8, 7, 1)

    # Batch mode and the dry run, each with an empty cache, so every planned request shows up.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    for prompt, keys in stage.items():
        monkeypatch.setenv("XREFLECT_CACHE_DIR", str(tmp_path / f".cache-{prompt}"))
        batch.main(["prepare", "--prompt", prompt])
        state = json.loads((tmp_path / f".cache-{prompt}/batches/{prompt}.state.json").read_text())
        assert set(state["requests"]) == keys, prompt
        dry_run.main(["--prompt", prompt, "--json"])
        (row,) = json.loads(capsys.readouterr().out)["rows"]
        assert row["calls"] == len(keys) and row["cached"] == 0, (prompt, row)
        assert row["without_image"] == (2 if prompt == "visual_only" else 0)
