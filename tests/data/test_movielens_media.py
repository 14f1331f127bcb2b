"""MovieLens-1M posters and plot descriptions as the default entry gets them: a pinned poster set
checked against a sha256 manifest and a row-order plot table checked title by title, served from
127.0.0.1. The small case is tests/support/fixtures/datasets.py's SMALL_* (its 5-core keeps movies 1-5)."""
from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fixtures.datasets import SMALL_MOVIES, SMALL_RATINGS, SMALL_USERS, image_bytes, ml1m_zip
from tests.support.fixtures.http_server import FixtureServer
from xreflect.data.contract import read_interactions, read_items
from xreflect.data.sources.download import Settings
from xreflect.data.filtering import filter_dataset
from xreflect.data.media_coverage import filtered_media
from xreflect.data.sources.movielens import Movie, poster_candidates, prepare
from xreflect.data.sources.poster_manifest import manifest_csv, manifest_rows, read_manifest
from xreflect.data.sources.registry import prepare_dataset
from xreflect.data.sources.titles import normalize_title, same_title
from xreflect.core.config import ParamsError
from xreflect.core.io import read_json

ARCHIVE = ml1m_zip(SMALL_RATINGS, SMALL_MOVIES, SMALL_USERS)
POSTERS = {k: image_bytes("JPEG", (40 * k, 20, 200 - 20 * k), size=18) for k in range(1, 9)}
TAMPERED = image_bytes("JPEG", (1, 2, 3), size=18)     # what the server sends for movie 3
DOWNLOAD = {"retries": 1, "backoff_s": 0.01, "timeout_s": 5, "image_timeout_s": 5, "workers": 2}
# Row order = movies.dat order. Row 2 differs only by accents and case (a match); row 3 names another
# movie; row 4 has an empty plot.
PLOTS = [("Toy Story", "Toys come alive."), ("City of lost children, The (Cite des enfants perdus, La)",
         "A scientist steals dreams."), ("Bang", "A woman in Los Angeles."), ("Misérables, Les", ""),
         ("Jour de fête", "A postman in a village."), ("Heat", "A heist."), ("Sabrina", "A chauffeur's daughter."),
         ("Zéro de conduite", "Boarding school revolt.")]


def plot_table(rows) -> bytes:
    lines = ["MovieID,Title,Plot"] + [f'{k},"{title}","{plot}"' for k, (title, plot) in enumerate(rows, start=1)]
    return ("\n".join(lines) + "\n").encode("utf-8")


@pytest.fixture
def server():
    with FixtureServer() as running:
        running.add("/ml-1m.zip", ARCHIVE)
        running.add("/plots/movies.csv", plot_table(PLOTS))
        for k in (1, 2, 5, 6, 7, 8):
            running.add(f"/MovieImages/{k}.jpg", POSTERS[k])
        running.add("/MovieImages/3.jpg", TAMPERED)
        running.add("/MovieImages/4.jpg", POSTERS[4])    # served, but the manifest has no movie 4
        yield running


def entry(server, tmp_path, **overrides) -> dict:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(manifest_csv([(str(k), hashlib.sha256(POSTERS[k]).hexdigest(), len(POSTERS[k]))
                                      for k in (1, 2, 3, 5, 6, 7, 8)]))
    table = plot_table(PLOTS)
    config = {
        "source": "movielens-1m", "min_interactions": 5,
        "archive": {"urls": [server.url("/ml-1m.zip")], "sha256": hashlib.sha256(ARCHIVE).hexdigest()},
        "descriptions": {"table": server.url("/plots/movies.csv"), "key": "row", "text": "Plot", "title": "Title",
                         "max_title_mismatch": 0.2, "sha256": hashlib.sha256(table).hexdigest(),
                         "label": "fixture plots"},
        "posters": {"url_template": server.url("/MovieImages/{movie_id}.jpg"), "manifest": str(manifest)},
        "missing_image": "text-only", "download": DOWNLOAD,
    }
    config.update(overrides)
    return config


def test_titles_normalize_only_spelling():
    assert same_title("Cérémonie, La", "Ceremonie, La")
    assert same_title("Slingshot, The (Kådisbellan )", "Slingshot, The (Kådisbellan)")
    assert same_title("School of Flesh, The (L' École de la chair)", "School of Flesh, The (L'École de la chair)")
    assert same_title("And God Created Woman (Et Dieu&#8230;Créa la Femme)",
                      "And God Created Woman (Et Dieu… créa la femme)")
    assert normalize_title("Life of Émile Zola, The") == "life of emile zola the"
    assert not same_title("Big Bang Theory, The", "Bang")
    assert not same_title("Beauty", "Dangerous Beauty")


def test_plots_and_manifest_posters(server, tmp_path, capsys):
    out = tmp_path / "dataset"
    prepare(out, "movielens-1m", entry(server, tmp_path), {})
    items = {item.item_id: item for item in read_items(out / "items.jsonl")}
    assert items["1"].description == "Toys come alive."
    assert items["2"].description == "A scientist steals dreams."                    # accents/case only
    assert items["3"].description == "The American President is a movie from 1995. Genres: Comedy, Drama, Romance."
    assert items["4"].description == "Les Misérables is a movie from 1995. Genres: Drama, Musical."
    assert items["8"].description == "Boarding school revolt."
    source = read_json(out / "source.json")
    text = source["descriptions"]
    assert (text["from_table"], text["fallback"], text["fallback_not_in_table"]) == (6, 2, 0)
    assert text["fallback_empty_text"] == ["4"]
    assert text["fallback_title_mismatch"] == [{"row": 3, "movie_id": "3", "expected": "American President, The",
                                                "table": "Bang"}]
    log = capsys.readouterr().err
    assert "6 of 8 movies from fixture plots; 2 get the title/year/genres sentence (1 empty" in log
    assert "row 3, MovieID 3: movies.dat 'American President, The', table 'Bang': not used" in log

    # Posters: candidates are the 5-core movies 1-5. 3's bytes differ from the manifest, 4 is not in it.
    assert {i for i, item in items.items() if item.image} == {"1", "2", "5"}
    assert (out / items["2"].image).read_bytes() == POSTERS[2]
    assert server.requests_to("/MovieImages/4.jpg") == [] and server.requests_to("/MovieImages/6.jpg") == []
    missing = {row["item_id"]: row["reason"] for row in csv.DictReader(open(out / "missing_images.csv"))}
    assert missing["3"].startswith(f"{server.url('/MovieImages/3.jpg')}: sha256 mismatch: the manifest pins "
                                   f"{hashlib.sha256(POSTERS[3]).hexdigest()}, the bytes received have "
                                   f"{hashlib.sha256(TAMPERED).hexdigest()}")
    assert missing["4"] == "no poster URL (the poster set has no file for it)"
    posters = source["posters"]
    assert (posters["attempted"], posters["with_image"], posters["without_image"]) == (5, 3, 2)
    assert posters["with_image_by_host"] == {server.url("/").split("/")[2]: 3}
    assert posters["not_in_poster_set"] == ["4"] and posters["not_in_poster_set_core"] == ["4"]

    filtered, report = filter_dataset(list(items.values()), read_interactions(out / "interactions.csv"), 5)
    media = filtered_media(out, filtered.items)
    assert (media["items"], media["with_image"], media["without_image"]) == (5, 3, 2)
    assert media["without_image_ids"] == ["3", "4"]
    assert (media["description_from_source"], media["description_fallback"]) == (3, 2)
    assert media["fallback_reasons"] == {"title_mismatch": 1, "empty_text": 1}
    assert media["fallback_ids"] == {"empty_text": ["4"], "title_mismatch": ["3"]}

    before = len(server.log)   # a rerun: the tampered poster is remembered, nothing is fetched again
    prepare(tmp_path / "again", "movielens-1m", entry(server, tmp_path), {})
    assert len(server.log) == before


def test_table_in_another_order_is_refused(server, tmp_path):
    server.add("/shifted/movies.csv", plot_table(PLOTS[1:] + PLOTS[:1]))
    config = entry(server, tmp_path)
    config["descriptions"] = {**config["descriptions"], "table": server.url("/shifted/movies.csv"), "sha256": None}
    with pytest.raises(ValueError, match=r"movies.csv: 8 of 8 rows name another movie than the same row of "
                                         r"movies.dat \(allowed: 20.0%.*row 1 \(MovieID 1\): movies.dat "
                                         r"'Toy Story', table 'City of lost children"):
        prepare(tmp_path / "dataset", "movielens-1m", config, {})


def test_title_check_needs_a_row_order_table(server, tmp_path):
    config = entry(server, tmp_path)
    config["descriptions"] = {**config["descriptions"], "key": "MovieID"}
    with pytest.raises(ValueError, match=r"descriptions.title checks a row-order table; it needs key: row"):
        prepare(tmp_path / "dataset", "movielens-1m", config, {})


def test_images_dir_exists_without_any_image(server, tmp_path, capsys):
    out = tmp_path / "dataset"
    prepare_dataset(out, "movielens-1m", entry(server, tmp_path, posters=None, descriptions=None), {})
    assert ("descriptions: no table configured (datasets.movielens-1m.descriptions.table); all 8 movies get "
            "the title/year/genres sentence") in capsys.readouterr().err
    assert (out / "images").is_dir() and list((out / "images").iterdir()) == []
    assert all(item.image is None for item in read_items(out / "items.jsonl"))
    assert {row["reason"] for row in csv.DictReader(open(out / "fallback_descriptions.csv"))} == {"no_table"}


def test_manifest_builder_and_reader(tmp_path):
    (tmp_path / "posters").mkdir()
    for name, data in (("10.jpg", b"ten"), ("2.jpg", b"two"), ("notes.txt", b"x"), ("cover.jpg", b"y")):
        (tmp_path / "posters" / name).write_bytes(data)
    repo = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, str(repo / "scripts/build_poster_manifest.py"), str(tmp_path / "posters"),
                    str(tmp_path / "manifest.csv")], check=True, env={**os.environ, "PYTHONPATH": str(repo)})
    sha = {k: hashlib.sha256(v).hexdigest() for k, v in (("2", b"two"), ("10", b"ten"))}
    assert (tmp_path / "manifest.csv").read_text() == f"movie_id,sha256,bytes\n2,{sha['2']},3\n10,{sha['10']},3\n"
    assert read_manifest(tmp_path / "manifest.csv", "where") == sha
    assert manifest_rows(tmp_path / "posters")[0] == ("2", sha["2"], 3)
    (tmp_path / "bad.csv").write_text("movie_id,sha256,bytes\n7,XYZ,3\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 2: expected movie_id,sha256"):
        read_manifest(tmp_path / "bad.csv", "where")
    with pytest.raises(ParamsError, match=r"params.yaml: datasets.x.posters.manifest is"):
        read_manifest(tmp_path / "none.csv", "datasets.x.posters.manifest")


def test_shipped_manifest_covers_the_poster_set():
    """The committed manifest: 3,872 posters; of movies.dat's ids, the set lacks these 11 (7 of them rated)."""
    manifest = read_manifest(Path(__file__).resolve().parents[2] / "xreflect/data/sources/manifests/movielens1m_posters.csv",
                             "manifest")
    assert len(manifest) == 3872
    assert {"1107", "1142", "1421", "1423", "2258", "3027", "3935", "770", "1319", "1738", "3193"}.isdisjoint(manifest)
    assert {str(k) for k in range(1, 11)} <= set(manifest) and "3952" in manifest


def test_ml100k_poster_table_mapped_by_title_and_year(tmp_path):
    u_item = ("1|Toy Story (1995)|01-Jan-1995||http://x|0\n"
              "2|Misérables, Les (1995)|01-Jan-1995||http://x|0\n"     # latin-1 é: matches movie 4
              "3|Heat (1995)|01-Jan-1995||http://x|0\n"
              "4|Heat (1995)|01-Jan-1995||http://x|0\n"               # two 100K rows: left out
              "5|Sabrina (1954)|01-Jan-1954||http://x|0\n")           # another year than 1M's Sabrina (1995)
    (tmp_path / "u.item").write_bytes(u_item.encode("latin-1"))
    (tmp_path / "posters.csv").write_text("1,http://p/1.jpg\n2,http://p/2.jpg\n3,http://p/3.jpg\n5,http://p/5.jpg\n")
    movies = [Movie(str(k), title, genres.split("|")) for k, title, genres in SMALL_MOVIES]
    config = {"table": str(tmp_path / "posters.csv"), "titles": str(tmp_path / "u.item")}
    candidates, digests, report = poster_candidates(movies, config, tmp_path, "movielens-1m", Settings(progress=False))
    assert {k: v for k, v in candidates.items() if v} == {"1": ["http://p/1.jpg"], "4": ["http://p/2.jpg"]}
    assert digests == {} and (report["table_rows"], report["resolved_by_title"]) == (4, 2)
