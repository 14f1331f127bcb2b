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

from xreflect.core.config import ParamsError
from xreflect.data.sources.archives import DAMAGED, damaged_archive
from xreflect.data.contract import INTERACTIONS_FILE, ITEMS_FILE, KAR_KNOWLEDGE_FILE, Item, write_interactions, write_items
from xreflect.data.sources.descriptions import (ROW, TableSpec, keyed_texts, movie_fallback, obtain_table, read_records,
                                        split_title)
from xreflect.data.sources.download import Settings, fetch_file, raw_dir_for
from xreflect.data.sources.images import attach_images, core_items, missing_image_policy
from xreflect.data.media_coverage import write_fallback_list
from xreflect.data.sources.poster_manifest import read_manifest
from xreflect.data.sources.poster_titles import table_ids_by_title
from xreflect.data.sources.titles import row_title_mismatches
from xreflect.core.errors import DataError
from xreflect.core.io import write_json, write_jsonl

ARCHIVE = "ml-1m.zip"
KAR_FILE = KAR_KNOWLEDGE_FILE


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
                       settings: Settings) -> tuple[dict[str, str], dict, dict[str, str]]:
    """Text per movie: the configured table where it has a non-empty text, else the fallback built
    from title, year and genres. The report says which was used for how many movies.

    A row-order table (`key: row`) with a `title` column has each row's title checked against
    movies.dat (xreflect.data.sources.titles): a row naming another movie falls back, and a table where more
    than `max_title_mismatch` of the rows do is refused, because its order is not movies.dat's."""
    config = dict(config or {})
    where = f"datasets.{name}.descriptions"
    title_column = config.pop("title", None)
    max_mismatch = float(config.pop("max_title_mismatch", 0.01))
    spec = TableSpec.from_params(config, where, "movie_id", "description")
    table: dict[str, str] = {}
    mismatches: list[dict] = []
    if spec is not None:
        path = obtain_table(spec, raw, settings)
        ids = [m.movie_id for m in movies]
        table = keyed_texts(read_records(path, spec.key, spec.text), ids, spec.key, path)
        if title_column is not None:
            mismatches = _check_row_titles(movies, path, spec, title_column, max_mismatch, where)
            for mismatch in mismatches:
                table.pop(mismatch["movie_id"], None)
    texts, from_table = {}, 0
    empty, fallback_reasons = [], {}
    mismatched = {m["movie_id"] for m in mismatches}
    for movie in movies:
        text = " ".join(table.get(movie.movie_id, "").split())
        from_table += bool(text)
        if not text:
            reason = ("no_table" if spec is None else "title_mismatch" if movie.movie_id in mismatched
                      else "empty_text" if movie.movie_id in table else "not_in_table")
            fallback_reasons[movie.movie_id] = reason
            if reason == "empty_text":
                empty.append(movie.movie_id)
        texts[movie.movie_id] = text or movie_fallback(movie.title, movie.genres)
    used = "fallback" if not from_table else ("table" if from_table == len(movies) else "table+fallback")
    report = {"used": used, "label": config.get("label"),
              "table": spec.location if spec else None, "from_table": from_table,
              "fallback": len(movies) - from_table,
              "fallback_empty_text": empty, "fallback_title_mismatch": mismatches,
              "fallback_not_in_table": len(movies) - from_table - len(empty) - len(mismatches),
              "fallback_form": "<title> is a movie from <year>. Genres: <genres>."}
    _log_descriptions(name, report, len(movies))
    return texts, report, fallback_reasons


def _check_row_titles(movies: list[Movie], path: Path, spec: TableSpec, title_column: str | int,
                      max_mismatch: float, where: str) -> list[dict]:
    if spec.key != ROW:
        raise ParamsError(f"params.yaml: {where}.title checks a row-order table; it needs key: row "
                         f"(the table's key is {spec.key!r})")
    titles = [title for _, title in read_records(path, ROW, title_column)]
    mismatches = row_title_mismatches([(m.movie_id, split_title(m.title)[0]) for m in movies], titles)
    if len(mismatches) > max_mismatch * len(movies):
        shown = "; ".join(f"row {m['row']} (MovieID {m['movie_id']}): movies.dat {m['expected']!r}, "
                          f"table {m['table']!r}" for m in mismatches[:5])
        raise DataError(
            f"{path}: {len(mismatches)} of {len(movies)} rows name another movie than the same row of "
            f"movies.dat (allowed: {max_mismatch:.1%}, {where}.max_title_mismatch), so the table is not "
            f"in movies.dat order; e.g. {shown}. Use a table in movies.dat order, or key it by MovieID "
            f"({where}.key).")
    return mismatches


def _log_descriptions(name: str, report: dict, total: int) -> None:
    if report["table"] is None:
        print(f"{name}: descriptions: no table configured (datasets.{name}.descriptions.table); all "
              f"{total:,} movies get the title/year/genres sentence", file=sys.stderr)
        return
    print(f"{name}: descriptions: {report['from_table']:,} of {total:,} movies from "
          f"{report['label'] or report['table']}; {report['fallback']:,} get the title/year/genres sentence "
          f"({len(report['fallback_empty_text'])} empty in the table, "
          f"{len(report['fallback_title_mismatch'])} with another movie's title, "
          f"{report['fallback_not_in_table']} not in it)", file=sys.stderr)
    for mismatch in report["fallback_title_mismatch"]:
        print(f"{name}: descriptions: row {mismatch['row']}, MovieID {mismatch['movie_id']}: movies.dat {mismatch['expected']!r}, "
              f"table {mismatch['table']!r}: not used", file=sys.stderr)


def poster_candidates(movies: list[Movie], config: Mapping[str, Any] | None, raw: Path, name: str,
                      settings: Settings) -> tuple[dict[str, list[str]], dict[str, str], dict]:
    """Poster URLs per movie, best first (the MovieID -> URL table, then the URL template), and the
    sha256 each template URL must have where a manifest pins it.

    `manifest` (CSV movie_id,sha256,bytes) lists the poster set behind the template: movies it lacks
    get no template URL (the set has no file for them), and every file fetched must match it.
    `titles` (a MovieLens-100K `u.item` file) says the table is keyed by another id space: its ids
    are mapped to MovieLens-1M by normalized title and year."""
    config = dict(config or {})
    where = f"datasets.{name}.posters"
    template = config.pop("url_template", None)
    manifest_path = config.pop("manifest", None)
    titles_config = {"table": config.pop("titles", None), "sha256": config.pop("titles_sha256", None)}
    spec = TableSpec.from_params(config, where, 0, 1)
    table: dict[str, str] = {}
    report: dict[str, Any] = {"table": spec.location if spec else None, "url_template": template,
                              "manifest": manifest_path}
    if spec is not None:
        path = obtain_table(spec, raw, settings)
        table = {k: v.strip() for k, v in read_records(path, spec.key, spec.text) if v.strip()}
        if titles_config["table"]:
            titles_path = obtain_table(TableSpec(str(titles_config["table"]), sha256=titles_config["sha256"]),
                                       raw, settings)
            mapping = table_ids_by_title(titles_path, [(m.movie_id, m.title) for m in movies])
            report["titles"] = titles_config["table"]
            report["table_rows"] = len(table)
            table = {movie_id: table[other] for movie_id, other in mapping.items() if other in table}
            report["resolved_by_title"] = len(table)
    manifest = read_manifest(Path(manifest_path), f"{where}.manifest") if manifest_path else None
    candidates, digests, not_in_set = {}, {}, []
    for movie in movies:
        urls = [table[movie.movie_id]] if movie.movie_id in table else []
        if template and (manifest is None or movie.movie_id in manifest):
            url = template.format(movie_id=movie.movie_id)
            urls.append(url)
            if manifest is not None:
                digests[url] = manifest[movie.movie_id]
        elif template:
            not_in_set.append(movie.movie_id)
        candidates[movie.movie_id] = urls
    if manifest is not None:
        report["manifest_posters"] = len(manifest)
        report["not_in_poster_set"] = not_in_set
    return candidates, digests, report


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
        raise ParamsError(f"params.yaml: datasets.{name}.archive.urls must list the ml-1m.zip URL(s)")
    archive = fetch_file(archive_config["urls"], raw / ARCHIVE, settings,
                         sha256=archive_config.get("sha256"), md5=archive_config.get("md5"))
    ratings, movies, n_users = read_archive(archive.path)
    print(f"{name}: {len(ratings):,} ratings, {ratings['user_id'].nunique():,} users, "
          f"{ratings['item_id'].nunique():,} rated of {len(movies):,} movies", file=sys.stderr)

    texts, text_report, fallbacks = movie_descriptions(movies, entry.get("descriptions"), raw, name, settings)
    write_fallback_list(out_dir, fallbacks)
    items = [Item(m.movie_id, m.title, texts[m.movie_id], None) for m in movies]
    urls, digests, poster_report = poster_candidates(movies, entry.get("posters"), raw, name, settings)
    wanted = core_items(ratings, int(entry.get("min_interactions", 5)))
    items, image_report = attach_images(items, {i: u for i, u in urls.items() if i in wanted}, out_dir,
                                        raw / "posters", settings, policy, name, digests,
                                        no_url_reason="no poster URL (the poster set has no file for it)")
    if poster_report.get("not_in_poster_set"):
        absent = [i for i in poster_report["not_in_poster_set"] if i in wanted]
        poster_report["not_in_poster_set_core"] = absent
        print(f"{name}: posters: the poster set has no file for {len(absent)} movie(s) that can survive the "
              f"{int(entry.get('min_interactions', 5))}-core: {', '.join(absent)}", file=sys.stderr)
    print(f"{name}: posters: {image_report['with_image']:,} of {image_report['attempted']:,} candidate movies "
          f"have one, {image_report['without_image']:,} do not (missing_image: {policy})", file=sys.stderr)
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
