"""The gallery page and its word counts, built from a small dataset made here."""
import json

import pytest
from PIL import Image

from xreflect.core.errors import DataError
from xreflect.reporting import gallery

PARAMS = {"dataset": "demo", "backbone": "offline",
          "strategies": {"text": ["description"], "cot": ["description", "cot"],
                         "xr_separate": ["description", "xr_separate"],
                         "xreflect": ["description", "xr_separate", "xr_combined"]},
          "run": ["text", "cot", "xr_separate", "xreflect"]}


def make_fixture(root, failed_item=None):
    dataset, filtered, responses = root / "dataset", root / "filtered", root / "responses"
    for d in (dataset / "images", filtered, responses):
        d.mkdir(parents=True)
    items = []
    for i, colour in enumerate(["red", "green", "blue", "white"]):
        Image.new("RGB", (64, 48), colour).save(dataset / "images" / f"i{i}.png")
        items.append({"item_id": f"i{i}", "title": f"Item {i}", "image": f"images/i{i}.png",
                      "description": " ".join(["word"] * (i + 2)) + (" <b>bold</b>" if i == 0 else "")})
    items[3]["image"] = None
    (filtered / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    # cot answers have 1, 2, 3, 4 words; the cross-reflection answers 10 words each. Each prompt's
    # file is in the directory of the first strategy that uses it.
    answers = {"cot": lambda i: " ".join(["a"] * (i + 1)), "xr_separate": lambda i: "s " * 10,
               "xr_combined": lambda i: "c " * 10}
    first_user = {"cot": "cot", "xr_separate": "xr_separate", "xr_combined": "xreflect"}
    for prompt, text in answers.items():
        lines = [json.dumps({"item_id": f"i{i}", "text": text(i), "key": "k",
                             "failed": prompt == "xr_combined" and i == failed_item}) for i in range(4)]
        (responses / first_user[prompt]).mkdir(exist_ok=True)
        (responses / first_user[prompt] / f"{prompt}.jsonl").write_text("\n".join(lines) + "\n")
    return dict(dataset_dir=dataset, filtered_dir=filtered, responses_dir=responses)


def test_prompts_in_strategy_order_with_their_users():
    assert gallery.prompts_by_strategy(PARAMS) == {"cot": ["cot"], "xr_separate": ["xr_separate", "xreflect"],
                                                   "xr_combined": ["xreflect"]}
    assert gallery.prompt_label("xr_separate_keyword") == "Cross-reflection - separate (keyword)"


def test_gallery_page_and_word_counts(tmp_path):
    dirs = make_fixture(tmp_path, failed_item=2)
    out, counts = tmp_path / "out" / "gallery.html", tmp_path / "out" / "word_counts.json"
    summary = gallery.build_gallery(PARAMS, 10, 0, out, counts, **dirs)  # more than there are: all 4
    # cot: 1, 2, 3, 4 words -> mean 2.5, median 2.5; descriptions: 2+1 ("<b>bold</b>" is one word), 3, 4, 5
    assert summary["cot"] == {"items": 4, "failed": 0, "mean": 2.5, "median": 2.5, "p10": 1.3, "p90": 3.7,
                              "min": 1, "max": 4}
    assert summary["description"]["mean"] == pytest.approx((3 + 3 + 4 + 5) / 4)
    assert summary["xr_combined"]["items"] == 3 and summary["xr_combined"]["failed"] == 1
    assert json.loads(counts.read_text())["cot"] == {"items": 4, "failed": 0, "mean": 2.5, "median": 2.5}
    page = out.read_text()
    assert page.count('class="row"') == 4 and page.count("no image") == 1
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page  # item text is escaped
    assert "failed: the description stands in" in page
    assert "cdn.jsdelivr" not in page and "vega-embed" in page
    # A sample of 3; the same seed draws the same sample.
    gallery.build_gallery(PARAMS, 3, 0, out, counts, **dirs)
    page = out.read_text()
    assert page.count('class="row"') == 3
    gallery.build_gallery(PARAMS, 3, 0, out, counts, **dirs)
    assert out.read_text() == page


def test_missing_responses_name_the_stage(tmp_path):
    dirs = make_fixture(tmp_path)
    (dirs["responses_dir"] / "cot" / "cot.jsonl").unlink()
    with pytest.raises(DataError, match="dvc repro generate@cot"):
        gallery.build_gallery(PARAMS, 2, 0, tmp_path / "g.html", tmp_path / "w.json", **dirs)
