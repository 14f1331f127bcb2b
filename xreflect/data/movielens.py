"""MovieLens-1M source: the GroupLens archive, item descriptions, posters, optional KAR knowledge.

Reads `datasets.movielens-1m` in params.yaml (see the comments there) and writes the data contract
(xreflect/data/contract.py) into `out_dir`. Raw downloads live in `data/raw/<name>/` (beside the
dataset directory), outside DVC's outs, so reruns reuse them.

The archive (`ml-1m.zip`) holds `ml-1m/ratings.dat` (UserID::MovieID::Rating::Timestamp),
`ml-1m/movies.dat` (MovieID::Title::Genres, titles like "Toy Story (1995)", genres joined by '|')
and `ml-1m/users.dat` (UserID::Gender::Age::Occupation::Zip-code), all latin-1 text.
"""
from __future__ import annotations

import io
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

from xreflect.data.archives import DAMAGED, damaged_archive
from xreflect.data.contract import INTERACTIONS_FILE, ITEMS_FILE, Item, write_interactions, write_items
from xreflect.data.descriptions import TableSpec, keyed_texts, movie_fallback, obtain_table, read_records
from xreflect.data.download import Settings, fetch_file, raw_dir_for
from xreflect.data.item_images import attach_images, core_items, missing_image_policy
from xreflect.errors import DataError
from xreflect.io import write_json, write_jsonl

ARCHIVE = "ml-1m.zip"
KAR_FILE = "kar_knowledge.jsonl"


@dataclass(frozen=True)
class Movie:
    movie_id: str
    title: str
    genres: list[str]


# ---------------------------------------------------------------------------------------------
# The archive


def _member_lines(archive: zipfile.ZipFile, name: str, where: Path) -> tuple[Iterator[str], str]:
    """The member's lines and a label ("<zip>:<member>") for error messages."""
    members = [m for m in archive.namelist() if m == name or m.endswith("/" + name)]
    if not members:
        raise DataError(f"{where} has no {name}; is it the MovieLens-1M archive (ml-1m.zip)?")
    try:
        text = archive.read(members[0]).decode("latin-1")  # the archive's documented encoding
    except DAMAGED as error:
        raise damaged_archive(where, error, members[0]) from error
    return iter(text.splitlines()), f"{where}:{members[0]}"


def _fields(lines: Iterator[str], source: str, count: int) -> Iterator[tuple[int, str, list[str]]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != count:
            raise DataError(f"{source}, line {number}: expected {count} fields separated by '::', "
                             f"got {len(fields)}: {line[:200]!r}")
        yield number, line, fields


def _int(value: str, source: str, number: int, line: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{source}, line {number}: {what} {value!r} is not an integer: {line[:200]!r}") from None


def parse_ratings(lines: Iterator[str], source: str) -> pd.DataFrame:
    """Ratings as interactions (ids as strings). A vectorised read handles the well-formed file;
    anything else goes through the line-by-line parser, which names the bad line."""
    text = "\n".join(lines)
    columns = ["user_id", "item_id", "rating", "timestamp"]
    try:
        frame = pd.read_csv(io.StringIO(text.replace("::", "\t")), sep="\t", header=None, names=columns)
    except (ValueError, pd.errors.ParserError):
        frame = None
    if frame is not None and all(pd.api.types.is_integer_dtype(frame[c]) for c in columns):
        return frame.astype({"user_id": str, "item_id": str})
    return _parse_ratings_by_line(iter(text.splitlines()), source)


def _parse_ratings_by_line(lines: Iterator[str], source: str) -> pd.DataFrame:
    rows = []
    for number, line, (user, movie, rating, stamp) in _fields(lines, source, 4):
        rows.append((str(_int(user, source, number, line, "UserID")),
                     str(_int(movie, source, number, line, "MovieID")),
                     _int(rating, source, number, line, "Rating"),
                     _int(stamp, source, number, line, "Timestamp")))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def parse_movies(lines: Iterator[str], source: str) -> list[Movie]:
    movies = []
    for number, line, (movie_id, title, genres) in _fields(lines, source, 3):
        movies.append(Movie(str(_int(movie_id, source, number, line, "MovieID")), title.strip(),
                            [g for g in genres.strip().split("|") if g]))
    return movies


def read_archive(path: Path) -> tuple[pd.DataFrame, list[Movie], int]:
    """(ratings, movies in file order, number of users in users.dat)."""
    try:
        with zipfile.ZipFile(path) as archive:
            ratings = parse_ratings(*_member_lines(archive, "ratings.dat", path))
            movies = parse_movies(*_member_lines(archive, "movies.dat", path))
            lines, source = _member_lines(archive, "users.dat", path)
            n_users = sum(1 for _ in _fields(lines, source, 5))
    except DAMAGED as error:
        raise damaged_archive(path, error) from error
    unknown = set(ratings["item_id"]) - {m.movie_id for m in movies}
    if unknown:
        raise DataError(f"{path}: ratings.dat refers to {len(unknown)} MovieID(s) missing from "
                         f"movies.dat, e.g. {sorted(unknown)[:5]}; the archive looks damaged")
    return ratings, movies, n_users


# ---------------------------------------------------------------------------------------------
# Descriptions, posters, KAR knowledge


def movie_descriptions(movies: list[Movie], config: Mapping[str, Any] | None, raw: Path, name: str,
                       settings: Settings) -> tuple[dict[str, str], dict]:
    """Text per movie: the configured table where it has a non-empty text, else the fallback built
    from title, year and genres. The report says which was used for how many movies."""
    spec = TableSpec.from_params(config, f"datasets.{name}.descriptions", "movie_id", "description")
    table: dict[str, str] = {}
    if spec is not None:
        path = obtain_table(spec, raw, settings)
        table = keyed_texts(read_records(path, spec.key, spec.text), [m.movie_id for m in movies],
                            spec.key, path)
    texts, from_table = {}, 0
    for movie in movies:
        text = " ".join(table.get(movie.movie_id, "").split())
        from_table += bool(text)
        texts[movie.movie_id] = text or movie_fallback(movie.title, movie.genres)
    used = "fallback" if not from_table else ("table" if from_table == len(movies) else "table+fallback")
    report = {"used": used, "label": (config or {}).get("label"),
              "table": spec.location if spec else None, "from_table": from_table,
              "fallback": len(movies) - from_table,
              "fallback_form": "<title> is a movie from <year>. Genres: <genres>."}
    return texts, report


def poster_candidates(movies: list[Movie], config: Mapping[str, Any] | None, raw: Path, name: str,
                      settings: Settings) -> tuple[dict[str, list[str]], dict]:
    """Poster URLs per movie, best first: the MovieID -> URL table, then the URL template."""
    config = dict(config or {})
    template = config.pop("url_template", None)
    spec = TableSpec.from_params(config, f"datasets.{name}.posters", 0, 1)
    table: dict[str, str] = {}
    if spec is not None:
        path = obtain_table(spec, raw, settings)
        table = {k: v.strip() for k, v in read_records(path, spec.key, spec.text) if v.strip()}
    candidates = {}
    for movie in movies:
        urls = [table[movie.movie_id]] if movie.movie_id in table else []
        if template:
            urls.append(template.format(movie_id=movie.movie_id))
        candidates[movie.movie_id] = urls
    return candidates, {"table": spec.location if spec else None, "url_template": template}


def write_kar_knowledge(movies: list[Movie], config: Mapping[str, Any] | None, raw: Path, out_dir: Path,
                        name: str, settings: Settings) -> dict | None:
    """The KAR authors' per-item knowledge texts, if configured, as kar_knowledge.jsonl
    ({"item_id", "knowledge"} per line) for the generate stage to use instead of the backbone."""
    spec = TableSpec.from_params(config, f"datasets.{name}.kar_knowledge", "movie_id", "knowledge")
    if spec is None:
        return None
    path = obtain_table(spec, raw, settings)
    table = keyed_texts(read_records(path, spec.key, spec.text), [m.movie_id for m in movies], spec.key, path)
    records = [{"item_id": m.movie_id, "knowledge": table[m.movie_id].strip()}
               for m in movies if table.get(m.movie_id, "").strip()]
    write_jsonl(out_dir / KAR_FILE, records)
    return {"table": spec.location, "file": KAR_FILE, "items": len(records)}


# ---------------------------------------------------------------------------------------------
# The source


def prepare(out_dir: Path, name: str, entry: dict[str, Any], params: dict[str, Any]) -> None:
    out_dir = Path(out_dir)
    settings = Settings.from_entry(name, entry)
    policy = missing_image_policy(name, entry)
    raw = raw_dir_for(out_dir, name)
    archive_config = entry.get("archive") or {}
    if not archive_config.get("urls"):
        raise ValueError(f"params.yaml: datasets.{name}.archive.urls must list the ml-1m.zip URL(s)")
    archive = fetch_file(archive_config["urls"], raw / ARCHIVE, settings,
                         sha256=archive_config.get("sha256"), md5=archive_config.get("md5"))
    ratings, movies, n_users = read_archive(archive.path)
    print(f"{name}: {len(ratings):,} ratings, {ratings['user_id'].nunique():,} users, "
          f"{ratings['item_id'].nunique():,} rated of {len(movies):,} movies", file=sys.stderr)

    texts, text_report = movie_descriptions(movies, entry.get("descriptions"), raw, name, settings)
    items = [Item(m.movie_id, m.title, texts[m.movie_id], None) for m in movies]
    urls, poster_report = poster_candidates(movies, entry.get("posters"), raw, name, settings)
    wanted = core_items(ratings, int(entry.get("min_interactions", 5)))
    items, image_report = attach_images(items, {i: u for i, u in urls.items() if i in wanted}, out_dir,
                                        raw / "posters", settings, policy, name)
    kar_report = write_kar_knowledge(movies, entry.get("kar_knowledge"), raw, out_dir, name, settings)

    write_items(out_dir / ITEMS_FILE, items)
    write_interactions(out_dir / INTERACTIONS_FILE, ratings)
    write_json(out_dir / "source.json", {
        "source": "movielens-1m",
        "archive": archive.provenance(),
        "raw": {"ratings": len(ratings), "users_in_users_dat": n_users,
                "movies_in_movies_dat": len(movies), "rated_movies": int(ratings["item_id"].nunique())},
        "descriptions": text_report,
        "posters": {**poster_report, **image_report},
        "kar_knowledge": kar_report,
    })
