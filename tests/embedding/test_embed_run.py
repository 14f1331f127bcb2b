"""The embed stage: every strategy in `run` in one process, one encoder load, each strategy's files
in its own directory (what the train stages and DVC's per-strategy reruns rely on)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from xreflect.core.errors import DataError
from xreflect.core.io import write_jsonl
from xreflect.data.contract import Item, write_items
from xreflect.embedding import encoders, run

ITEMS = [Item("i1", "One", "first description", None), Item("i2", "Two", "", None)]


class CountingEncoder:
    """Stands in for Sentence-BERT: a vector made from each text's length and first letter."""
    loads = 0

    def __init__(self):
        CountingEncoder.loads += 1
        self.texts: list[str] = []

    def encode(self, texts, **_):
        self.texts += texts
        return np.array([[len(t), ord(t[0]), 1.0] for t in texts], dtype=np.float32)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XREFLECT_CACHE_DIR", str(tmp_path / "cache"))
    CountingEncoder.loads = 0
    monkeypatch.setattr(encoders, "load_text_encoder", lambda model: CountingEncoder())
    write_items(tmp_path / "data/filtered/items.jsonl", ITEMS)
    for strategy, prompt in (("cot", "cot"), ("both", "cot"), ("both", "llm_rec")):
        write_jsonl(tmp_path / f"data/responses/{strategy}/{prompt}.jsonl",
                    [{"item_id": "i2", "text": f"{prompt} two"}, {"item_id": "i1", "text": f"{prompt} one"}])
    return {"run": ["popularity", "text", "cot", "both"],
            "strategies": {"popularity": [], "text": ["description"], "cot": ["description", "cot"],
                           "both": ["description", "cot", "llm_rec"]},
            "embed": {"text_model": "fake", "batch_size": 8}}


def test_every_strategy_in_one_process_with_one_encoder_load(project, tmp_path):
    run.embed_run(project)
    assert CountingEncoder.loads == 1
    out = tmp_path / "data/embeddings"
    assert sorted(p.name for p in out.iterdir()) == ["both", "cot", "popularity", "text"]
    # rows in item order; an empty description falls back to the title
    np.testing.assert_array_equal(np.load(out / "text/description.npy")[:, :2], [[17, ord("f")], [3, ord("T")]])
    np.testing.assert_array_equal(np.load(out / "both/cot.npy"), np.load(out / "cot/cot.npy"))
    np.testing.assert_array_equal(np.load(out / "both/llm_rec.npy")[:, 0], [len("llm_rec one"), len("llm_rec two")])
    manifest = json.loads((out / "both/sources.json").read_text())
    assert manifest == {"strategy": "both", "items": 2, "sources": ["description", "cot", "llm_rec"],
                        "widths": {"description": 3, "cot": 3, "llm_rec": 3}}
    # Item Popularity has no source, and still a directory that DVC keeps (its manifest)
    assert [p.name for p in (out / "popularity").iterdir()] == ["sources.json"]


def test_a_second_run_encodes_nothing_and_writes_the_same_bytes(project, tmp_path):
    run.embed_run(project)
    first = {p: p.read_bytes() for p in (tmp_path / "data/embeddings").rglob("*") if p.is_file()}
    CountingEncoder.loads = 0
    run.embed_run(project)
    assert CountingEncoder.loads == 0  # every text came from the embedding cache
    assert {p: p.read_bytes() for p in first} == first


def test_a_strategy_without_its_responses_names_the_file_and_the_stage(project):
    project["run"].append("kar")
    project["strategies"]["kar"] = ["description", "kar"]
    with pytest.raises(DataError, match=r"data/responses/kar/kar.jsonl.*dvc repro generate@kar"):
        run.embed_run(project)
