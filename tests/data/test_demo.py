"""The synthetic demo dataset: deterministic, valid contract, images that show what the truth says."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xreflect.data.contract import read_interactions, read_items
from xreflect.data.sources.demo import COLOUR_WORDS, MIN_INTERACTIONS, TONE_WORDS, TRUTH_FILE, DemoItem, affinities, build_demo
from xreflect.data.image_analysis import analyse_image
from xreflect.core.io import read_json

SMALL = {"seed": 3, "n_users": 40, "n_items": 80, "image_size": 64}


def files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    build_demo(out, **SMALL)
    return out


def test_byte_identical_on_rerun_and_seed_dependent(demo, tmp_path):
    build_demo(tmp_path / "again", **SMALL)
    assert files(tmp_path / "again") == files(demo)
    build_demo(tmp_path / "other", **{**SMALL, "seed": 4})
    assert files(tmp_path / "other")["items.jsonl"] != files(demo)["items.jsonl"]


def test_contract(demo):
    items = read_items(demo / "items.jsonl")
    frame = read_interactions(demo / "interactions.csv")
    assert len(items) == SMALL["n_items"]
    assert list(frame.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert set(frame.item_id) <= {item.item_id for item in items}
    assert frame.user_id.nunique() == SMALL["n_users"]
    assert frame.groupby("user_id").size().min() >= MIN_INTERACTIONS
    assert not frame.duplicated(["user_id", "item_id"]).any()
    assert frame.rating.between(1, 5).all() and frame.rating.nunique() >= 3
    for item in items:
        assert item.title and len(re.findall(r"[.!?]", item.description)) >= 3
        assert item.image_path(demo).is_file()
    assert read_json(demo / "source.json")["params"] == SMALL
    assert len({item.description for item in items}) == len(items)


def test_images_differ_and_show_the_true_attributes(demo):
    truth = pd.read_csv(demo / TRUTH_FILE)
    items = {item.item_id: item for item in read_items(demo / "items.jsonl")}
    hashes = set()
    for row in truth.itertuples():
        data = items[row.item_id].image_path(demo).read_bytes()
        hashes.add(hashlib.sha256(data).hexdigest())
        analysis = analyse_image(data)
        assert (analysis.dominant, analysis.brightness_label, analysis.shape.kind) == (row.colour, row.tone, row.shape)
    assert len(hashes) == len(truth)


def test_text_states_its_claims_which_conflict_for_some_items(demo):
    truth = pd.read_csv(demo / TRUTH_FILE)
    items = {item.item_id: item for item in read_items(demo / "items.jsonl")}
    for row in truth.itertuples():
        text = items[row.item_id].description
        assert any(word in text for word in COLOUR_WORDS[row.text_colour])
        assert any(words in text for words in TONE_WORDS[row.text_tone])
        assert not re.search(r"\b(circle|square|triangle|star)\b", text)  # the shape is image-only
        assert row.conflict == ((row.text_colour, row.text_tone) != (row.colour, row.tone))
    assert 0.1 < truth.conflict.mean() < 0.4


def test_preference_follows_the_image_not_the_text():
    base = DemoItem("a", "space", "circle", "blue", "dark", "blue", "dark", False, 0.0)
    lying = DemoItem("b", "space", "circle", "blue", "dark", "red", "bright", True, 0.0)
    other_shape = DemoItem("c", "space", "star", "blue", "dark", "blue", "dark", False, 0.0)
    scores = affinities(np.random.default_rng(0), [base, lying, other_shape], n_users=50)
    assert np.array_equal(scores[:, 0], scores[:, 1])  # only the text differs: same affinity
    assert not np.allclose(scores[:, 0], scores[:, 2])  # only the image differs: different


def test_full_size_build_keeps_every_user_for_a_5_core(tmp_path):
    build_demo(tmp_path, seed=7, n_users=400, n_items=500, image_size=48)
    frame = read_interactions(tmp_path / "interactions.csv")
    assert frame.groupby("user_id").size().min() >= MIN_INTERACTIONS
    assert (frame.item_id.value_counts() >= 5).mean() > 0.97


def test_rejects_unusable_params(tmp_path):
    with pytest.raises(ValueError, match="data.demo"):
        build_demo(tmp_path, seed=0, n_users=10, n_items=5, image_size=96)
