"""MovieLens-1M source against a local server serving a hand-worked ml-1m.zip and posters."""
from __future__ import annotations

import csv
import hashlib
import json
import zipfile

import pytest

from tests.support.fixtures.datasets import (CORRUPT_IMAGE, SMALL_MOVIES, SMALL_RATINGS, SMALL_USERS, image_bytes,
                                     ml1m_zip)
from tests.support.fixtures.http_server import FixtureServer
from xreflect.data.contract import read_interactions, read_items
from xreflect.data.sources.descriptions import display_title, movie_fallback, split_title
from xreflect.data.sources.download import ENV_MIRROR, ChecksumError
from xreflect.data.filtering import filter_dataset
from xreflect.data.sources.movielens import prepare, read_archive
from xreflect.core.io import read_json, read_jsonl

ARCHIVE = ml1m_zip(SMALL_RATINGS, SMALL_MOVIES, SMALL_USERS)
JPEG, PNG = image_bytes("JPEG"), image_bytes("PNG", (10, 200, 10))
DOWNLOAD = {"retries": 3, "backoff_s": 0.01, "timeout_s": 5, "image_timeout_s": 5, "workers": 4}


@pytest.fixture
def server():
    with FixtureServer() as running:
        running.add("/ml-1m.zip", ARCHIVE)
        running.add("/alt/1.png", PNG)                       # movie 1: from the poster table
        running.add("/posters/2.jpg", JPEG)                  # movie 2: template
        running.add("/posters/3.jpg", CORRUPT_IMAGE)         # movie 3: does not decode
        running.add("/posters/5.jpg", JPEG, fail_first=2)    # movie 5: fails twice, then works
        running.add("/descriptions.csv", (                   # movie 4: 404 (no route)
            'movie_id,description\n1,"A cowboy doll, a space ranger."\n2,Rêves volés.\n3,\n').encode())
        running.add("/kar.jsonl", b'{"movie_id": 1, "knowledge": "Pixar, 1995."}\n')
        yield running


def entry(server: FixtureServer, tmp_path, **overrides) -> dict:
    (tmp_path / "posters.csv").write_text(f"1,{server.url('/alt/1.png')}\n")
    config = {
        "source": "movielens-1m", "min_interactions": 5, "split_ratio": [8, 1, 1],
        "archive": {"urls": [server.url("/ml-1m.zip")], "sha256": hashlib.sha256(ARCHIVE).hexdigest(),
                    "md5": hashlib.md5(ARCHIVE).hexdigest()},
        "descriptions": {"table": server.url("/descriptions.csv"), "label": "fixture plots"},
        "posters": {"table": str(tmp_path / "posters.csv"),
                    "url_template": server.url("/posters/{movie_id}.jpg")},
        "kar_knowledge": {"table": server.url("/kar.jsonl")},
        "missing_image": "text-only",
        "download": DOWNLOAD,
    }
    config.update(overrides)
    return config


def test_titles_and_fallback_descriptions():
    assert split_title("Misérables, Les (1995)") == ("Misérables, Les", 1995)
    assert display_title("City of Lost Children, The (Cité des enfants perdus, La)") == \
        "The City of Lost Children (Cité des enfants perdus, La)"
    assert movie_fallback("American President, The (1995)", ["Comedy", "Drama"]) == \
        "The American President is a movie from 1995. Genres: Comedy, Drama."


def test_read_archive_parses_latin1_and_counts(tmp_path):
    path = tmp_path / "ml-1m.zip"
    path.write_bytes(ARCHIVE)
    ratings, movies, n_users = read_archive(path)
    assert (len(ratings), ratings["user_id"].nunique(), ratings["item_id"].nunique(), n_users) == (42, 8, 7, 8)
    assert movies[1].title == "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
    assert movies[3].genres == ["Drama", "Musical"] and len(movies) == 8
    assert ratings.iloc[0].tolist() == ["1", "1", 3, 978300000]


def test_prepare_tables_report_and_filter(server, tmp_path):
    out = tmp_path / "dataset"
    prepare(out, "movielens-1m", entry(server, tmp_path), {})
    items = {item.item_id: item for item in read_items(out / "items.jsonl")}
    assert sorted(items, key=int) == [str(i) for i in range(1, 9)]
    assert items["2"].title == "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
    assert items["1"].description == "A cowboy doll, a space ranger."
    assert items["2"].description == "Rêves volés."
    assert items["3"].description == "The American President is a movie from 1995. Genres: Comedy, Drama, Romance."
    # Posters: 1 (table, PNG), 2 (template, JPEG), 5 (after two 503s); 3 corrupt, 4 missing.
    # 6, 7, 8 cannot survive the 5-core, so no poster is fetched for them.
    assert {i for i, item in items.items() if item.image} == {"1", "2", "5"}
    assert items["1"].image == f"images/{hashlib.sha256(PNG).hexdigest()[:32]}.png"
    assert items["2"].image == items["5"].image == f"images/{hashlib.sha256(JPEG).hexdigest()[:32]}.jpg"
    assert (out / items["1"].image).read_bytes() == PNG
    assert [status for _, _, status in server.requests_to("/posters/5.jpg")] == [503, 503, 200]
    assert server.requests_to("/posters/1.jpg") == [] and server.requests_to("/posters/6.jpg") == []
    missing = list(csv.DictReader(open(out / "missing_images.csv", encoding="utf-8")))
    assert [(m["item_id"], m["url"].rsplit("/", 1)[1]) for m in missing] == [("3", "3.jpg"), ("4", "4.jpg")]
    assert "does not decode" in missing[0]["reason"] and "HTTP 404" in missing[1]["reason"]
    assert read_jsonl(out / "kar_knowledge.jsonl") == [{"item_id": "1", "knowledge": "Pixar, 1995."}]

    source = read_json(out / "source.json")
    assert source["raw"] == {"ratings": 42, "users_in_users_dat": 8, "movies_in_movies_dat": 8, "rated_movies": 7}
    assert source["descriptions"]["used"] == "table+fallback"
    assert (source["descriptions"]["from_table"], source["descriptions"]["fallback"]) == (2, 6)
    assert source["posters"]["attempted"] == 5 and source["posters"]["without_image"] == 2
    assert source["archive"]["sha256"] == hashlib.sha256(ARCHIVE).hexdigest()

    interactions = read_interactions(out / "interactions.csv")
    filtered, report = filter_dataset(list(items.values()), interactions, 5)
    assert report["raw"] == {"ratings": 42, "interactions": 42, "users": 8, "items": 7, "density": 0.75}
    assert report["filtered"] == {"interactions": 30, "users": 6, "items": 5, "density": 1.0}
    assert (report["items_with_image"], report["items_without_image"]) == (3, 2)
    assert (report["items_with_text"], report["items_without_text"]) == (5, 0)
    assert report["catalog"] == {"items": 8, "with_text": 8, "without_text": 0, "with_image": 3,
                                 "without_image": 5}


def test_rerun_downloads_nothing(server, tmp_path):
    config = entry(server, tmp_path)
    prepare(tmp_path / "dataset", "movielens-1m", config, {})
    before = len(server.log)
    prepare(tmp_path / "dataset2", "movielens-1m", config, {})
    assert len(server.log) == before
    assert (tmp_path / "dataset" / "items.jsonl").read_text() == (tmp_path / "dataset2" / "items.jsonl").read_text()


def test_drop_policy_removes_items_without_poster(server, tmp_path):
    prepare(tmp_path / "dataset", "movielens-1m", entry(server, tmp_path, missing_image="drop"), {})
    ids = {item.item_id for item in read_items(tmp_path / "dataset" / "items.jsonl")}
    assert ids == {"1", "2", "5", "6", "7", "8"}  # 3 and 4 dropped; 6-8 were never candidates


def test_error_policy_lists_items(server, tmp_path):
    with pytest.raises(RuntimeError, match=r"2 of 5 items have no usable image.*item 3: .*/posters/3.jpg"):
        prepare(tmp_path / "dataset", "movielens-1m", entry(server, tmp_path, missing_image="error"), {})


def test_no_description_table_uses_fallback_only(server, tmp_path):
    prepare(tmp_path / "dataset", "movielens-1m", entry(server, tmp_path, descriptions=None), {})
    assert read_json(tmp_path / "dataset" / "source.json")["descriptions"]["used"] == "fallback"


def test_row_order_description_table(server, tmp_path):
    rows = "".join(json.dumps({"plot": f"Plot {i}"}) + "\n" for i in range(1, 9))
    (tmp_path / "plots.jsonl").write_text(rows)
    config = entry(server, tmp_path, descriptions={"table": str(tmp_path / "plots.jsonl"), "key": "row",
                                                   "text": "plot"})
    prepare(tmp_path / "dataset", "movielens-1m", config, {})
    items = read_items(tmp_path / "dataset" / "items.jsonl")
    assert [item.description for item in items] == [f"Plot {i}" for i in range(1, 9)]


def test_archive_checksum_mismatch(server, tmp_path):
    config = entry(server, tmp_path)
    config["archive"] = {**config["archive"], "sha256": "ab" * 32}
    with pytest.raises(ChecksumError, match=f"expected {'ab' * 32}, got {hashlib.sha256(ARCHIVE).hexdigest()}"):
        prepare(tmp_path / "dataset", "movielens-1m", config, {})
    assert list((tmp_path / "raw" / "movielens-1m").glob("ml-1m.zip.mismatch-*"))
    assert not (tmp_path / "raw" / "movielens-1m" / "ml-1m.zip").exists()


def test_malformed_ratings_line_names_file_line_and_content(server, tmp_path):
    broken = ml1m_zip(SMALL_RATINGS[:2] + [(1, "2", "x", 5)] + SMALL_RATINGS[2:], SMALL_MOVIES, SMALL_USERS)
    server.add("/broken/ml-1m.zip", broken)
    config = entry(server, tmp_path, archive={"urls": [server.url("/broken/ml-1m.zip")]})
    with pytest.raises(ValueError, match=r"ml-1m.zip:ml-1m/ratings.dat, line 3: Rating 'x' is not an "
                                         r"integer: '1::2::x::5'"):
        prepare(tmp_path / "dataset", "movielens-1m", config, {})


def test_offline_from_mirror_directory(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "ml-1m.zip").write_bytes(ARCHIVE)
    for movie_id in (1, 2, 4, 5):
        (mirror / f"{movie_id}.jpg").write_bytes(JPEG)
    (mirror / "3.jpg").write_bytes(CORRUPT_IMAGE)
    monkeypatch.setenv(ENV_MIRROR, str(mirror))
    nowhere = "http://127.0.0.1:9"  # discard port: nothing answers
    config = {"source": "movielens-1m", "min_interactions": 5, "download": {"retries": 0},
              "archive": {"urls": [f"{nowhere}/datasets/movielens/ml-1m.zip"],
                          "sha256": hashlib.sha256(ARCHIVE).hexdigest()},
              "posters": {"url_template": nowhere + "/posters/{movie_id}.jpg"}}
    prepare(tmp_path / "dataset", "movielens-1m", config, {})
    items = read_items(tmp_path / "dataset" / "items.jsonl")
    assert [item.item_id for item in items if item.image] == ["1", "2", "4", "5"]
    assert zipfile.is_zipfile(tmp_path / "raw" / "movielens-1m" / "ml-1m.zip")
