"""Amazon-Software (2018) source against a local server serving gzipped JSON lines and images."""
from __future__ import annotations

import hashlib

import pytest

from tests.support.fixtures.datasets import (CORRUPT_IMAGE, amazon_metadata, amazon_reviews, image_bytes,
                                     json_lines_gz)
from tests.support.fixtures.http_server import FixtureServer
from xreflect.data.sources.amazon import image_urls, prepare
from xreflect.data.contract import read_interactions, read_items
from xreflect.data.sources.descriptions import clean_html
from xreflect.data.filtering import filter_dataset
from xreflect.core.io import read_json

JPEG, PNG = image_bytes("JPEG", (250, 200, 0)), image_bytes("PNG", (0, 0, 120))
DOWNLOAD = {"retries": 2, "backoff_s": 0.01, "timeout_s": 5, "image_timeout_s": 5, "workers": 4}


@pytest.fixture
def server():
    with FixtureServer() as running:
        image = lambda name: running.url(f"/images/I/{name}")  # noqa: E731
        running.add("/categoryFiles/Software.json.gz", json_lines_gz(amazon_reviews()))
        running.add("/metaFiles2/meta_Software.json.gz", json_lines_gz(amazon_metadata(image)))
        running.add("/images/I/a1.jpg", JPEG)
        running.add("/images/I/a1-small.jpg", JPEG)
        running.add("/images/I/a2.png", PNG)
        running.add("/images/I/a4.jpg", JPEG)
        running.add("/images/I/a5-corrupt.jpg", CORRUPT_IMAGE)
        yield running


def entry(server: FixtureServer, **overrides) -> dict:
    config = {"source": "amazon-software", "min_interactions": 5, "split_ratio": [6, 2, 2],
              "reviews": {"urls": [server.url("/categoryFiles/Software.json.gz")]},
              "metadata": {"urls": [server.url("/metaFiles2/meta_Software.json.gz")]},
              "missing_image": "text-only", "download": DOWNLOAD}
    config.update(overrides)
    return config


def test_clean_html():
    assert clean_html("<p>Edit <b>photos</b>&nbsp;fast.</p>") == "Edit photos fast."
    assert clean_html("Line one<br/>line two<script>var x;</script> &amp; more") == "Line one line two & more"
    assert clean_html("<ul><li>Fast</li><li>Easy</li></ul>") == "Fast Easy"


def test_image_url_order():
    record = {"imageURL": ["http://x/s.jpg", "http://x/big.jpg"], "imageURLHighRes": ["http://x/big.jpg", ""]}
    assert image_urls(record) == ["http://x/big.jpg", "http://x/s.jpg"]
    assert image_urls({"asin": "A"}) == []


def test_prepare_items_images_report_and_filter(server, tmp_path):
    out = tmp_path / "dataset"
    prepare(out, "amazon-software", entry(server), {})
    items = {item.item_id: item for item in read_items(out / "items.jsonl")}
    assert sorted(items) == ["A1", "A2", "A3", "A4", "A5", "A6", "A7"]
    assert items["A1"].title == "Photo Editor & Organizer"          # first A1 line wins
    assert items["A1"].description == "Edit photos fast. Fast Easy"
    assert items["A2"].description == "Files your taxes. Every year."
    assert items["A4"].description == "Accounting <pro>"
    assert items["A6"].description == ""
    jpeg_name = f"images/{hashlib.sha256(JPEG).hexdigest()[:32]}.jpg"
    assert items["A1"].image == items["A4"].image == jpeg_name       # A4: 404 high-res, then imageURL
    assert items["A2"].image.endswith(".png")                        # A2: imageURL only
    assert items["A3"].image is None and items["A5"].image is None   # no URL; does not decode
    assert server.requests_to("/images/I/a1-small.jpg") == []        # high-res was usable

    source = read_json(out / "source.json")
    assert source["raw"] == {"reviews": 40, "reviewers": 7, "reviewed_items": 7, "products_in_metadata": 7,
                             "reviews_without_metadata": 6}
    assert source["images"]["attempted"] == 5 and source["images"]["without_image"] == 2
    assert any("item A5" in e and "a5-corrupt.jpg" in e and "does not decode" in e
               for e in source["images"]["missing_examples"])

    interactions = read_interactions(out / "interactions.csv")
    assert len(interactions) == 40 and interactions["rating"].between(1, 5).all()
    filtered, report = filter_dataset(list(items.values()), interactions, 5)
    assert report["raw"]["interactions"] == 39 and report["raw"]["users"] == 7 and report["raw"]["items"] == 7
    assert report["interactions_on_unknown_items"] == 6
    assert report["filtered"] == {"interactions": 30, "users": 6, "items": 5, "density": 1.0}
    assert [item.item_id for item in filtered.items] == ["A1", "A2", "A3", "A4", "A5"]
    assert (report["items_with_image"], report["items_without_image"]) == (3, 2)
    assert report["catalog"]["without_text"] == 1  # A6


def test_rerun_downloads_nothing(server, tmp_path):
    prepare(tmp_path / "d1", "amazon-software", entry(server), {})
    before = len(server.log)
    prepare(tmp_path / "d2", "amazon-software", entry(server), {})
    assert len(server.log) == before


def test_mirror_url_list_and_drop_policy(server, tmp_path):
    config = entry(server, missing_image="drop")
    config["reviews"] = {"urls": [server.url("/gone/Software.json.gz"),
                                  server.url("/categoryFiles/Software.json.gz")]}
    prepare(tmp_path / "dataset", "amazon-software", config, {})
    ids = {item.item_id for item in read_items(tmp_path / "dataset" / "items.jsonl")}
    assert ids == {"A1", "A2", "A4", "A6", "A7"}


def test_malformed_review_line(server, tmp_path):
    reviews = amazon_reviews()
    server.add("/bad/Software.json.gz", json_lines_gz(reviews[:1] + ['{"reviewerID": "r9", "asin": '] + reviews[1:]))
    config = entry(server, reviews={"urls": [server.url("/bad/Software.json.gz")]})
    with pytest.raises(ValueError, match=r"Software.json.gz, line 2: not valid JSON .*'\{\"reviewerID\": \"r9\""):
        prepare(tmp_path / "dataset", "amazon-software", config, {})
