"""Item texts: keyed text tables (descriptions, poster URLs, KAR knowledge), HTML cleaning, and the
title/year/genres fallback description for MovieLens.

A table is a local path or an http(s) URL (downloaded into the dataset's raw directory, verified
against `sha256` when pinned) in one of these formats, chosen by the file name:
- `.csv` / `.tsv` (optionally `.gz`): with a header row, `key`/`text` name columns; without one,
  they are 0-based column numbers (e.g. `key: 0, text: 1` for `1,http://...` lines);
- `.jsonl`: one object per line, `key`/`text` name fields;
- `.json`: an object `{key: text}`, or a list of objects as in `.jsonl`.
`key: row` means the table has no key: row i belongs to the i-th item of the source's own order.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Mapping

from xreflect.core.errors import DataError
from xreflect.core.config import ParamsError
from xreflect.data.sources.download import ChecksumError, Settings, fetch_file, file_digest

ROW = "row"


@dataclass(frozen=True)
class TableSpec:
    """Where a keyed text table is and which columns hold the key and the text."""
    location: str
    key: str | int = "movie_id"
    text: str | int = "description"
    sha256: str | None = None

    @classmethod
    def from_params(cls, config: Mapping[str, Any] | None, where: str, key: str | int,
                    text: str | int) -> "TableSpec | None":
        if not config or not config.get("table"):
            return None
        unknown = set(config) - {"table", "key", "text", "sha256", "label"}
        if unknown:
            raise ParamsError(f"params.yaml: {where} has unknown key(s) {sorted(unknown)}; "
                             "allowed: table, key, text, sha256, label")
        return cls(str(config["table"]), config.get("key", key), config.get("text", text),
                   config.get("sha256"))

    @property
    def is_url(self) -> bool:
        return self.location.startswith(("http://", "https://"))


def obtain_table(spec: TableSpec, raw_dir: Path, settings: Settings) -> Path:
    """The table as a verified local file (downloaded into raw_dir if it is a URL)."""
    if spec.is_url:
        name = Path(spec.location.split("?")[0]).name or "table"
        return fetch_file(spec.location, raw_dir / name, settings, sha256=spec.sha256).path
    path = Path(spec.location).expanduser()
    if not path.is_file():
        raise DataError(f"table {path} not found (paths are relative to the repository root)")
    if spec.sha256 and file_digest(path) != spec.sha256.lower():
        # A user's own file is never moved; just refuse it.
        raise ChecksumError(f"{path}: sha256 mismatch: expected {spec.sha256.lower()}, got "
                            f"{file_digest(path)}; fix the file or the pinned sha256 in params.yaml")
    return path


def read_records(path: Path, key: str | int, text: str | int) -> list[tuple[str, str]]:
    """(key, text) pairs in file order; `key` may be ROW (the key is then the 0-based row number)."""
    name = path.name.removesuffix(".gz")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        raw = fh.read()
    if name.endswith((".csv", ".tsv")):
        rows = _csv_rows(raw, path, "\t" if name.endswith(".tsv") else ",", key, text)
    elif name.endswith(".jsonl"):
        rows = [_field_pair(record, key, text, path, number)
                for number, record in _jsonl(raw, path)]
    elif name.endswith(".json"):
        data = json.loads(raw)
        if isinstance(data, dict):
            rows = [(str(k), "" if v is None else str(v)) for k, v in data.items()]
        else:
            rows = [_field_pair(record, key, text, path, number) for number, record in enumerate(data, 1)]
    else:
        raise DataError(f"{path}: unknown table format; use .csv, .tsv, .jsonl or .json (optionally .gz)")
    return rows


def _csv_rows(raw: str, path: Path, delimiter: str, key: str | int,
              text: str | int) -> list[tuple[str, str]]:
    reader = csv.reader(io.StringIO(raw), delimiter=delimiter)
    header = None if isinstance(text, int) else next(reader, None)

    def column(name: str | int) -> int | None:
        if name == ROW:
            return None
        if isinstance(name, int):
            return name
        if header is None or name not in header:
            raise DataError(f"{path}: no column {name!r}; the header has {header}")
        return header.index(name)

    key_at, text_at = column(key), column(text)
    rows = []
    for number, row in enumerate(reader, start=2 if header else 1):
        if not row:
            continue
        needed = max(i for i in (key_at, text_at) if i is not None)
        if len(row) <= needed:
            raise DataError(f"{path}, line {number}: expected at least {needed + 1} columns, got "
                             f"{len(row)}: {delimiter.join(row)[:200]!r}")
        rows.append((str(len(rows)) if key_at is None else row[key_at].strip(), row[text_at]))
    return rows


def _jsonl(raw: str, path: Path):
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid JSON ({err.msg}): {line[:200]!r}") from err


def _field_pair(record: Any, key: str | int, text: str | int, path: Path, number: int) -> tuple[str, str]:
    if not isinstance(record, dict) or (key != ROW and key not in record) or text not in record:
        raise DataError(f"{path}, record {number}: expected an object with fields {key!r} and "
                         f"{text!r}: {str(record)[:200]!r}")
    value = record[text]
    return (str(number - 1) if key == ROW else str(record[key]).strip(), "" if value is None else str(value))


def keyed_texts(rows: list[tuple[str, str]], order: list[str], key: str | int, path: Path) -> dict[str, str]:
    """Map table rows onto item ids: by key, or (key == ROW) row i -> order[i]."""
    if key != ROW:
        return {k: v for k, v in rows}
    if len(rows) != len(order):
        raise DataError(f"{path}: a row-order table must have one row per item ({len(order)}), "
                         f"it has {len(rows)}; key it by item id instead")
    return {order[int(k)]: v for k, v in rows}


# ---------------------------------------------------------------------------------------------
# HTML -> text


class _TextCollector(HTMLParser):
    BLOCK = {"br", "p", "div", "li", "ul", "ol", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5",
             "h6", "table", "hr"}
    SKIP = {"script", "style"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def clean_html(text: str) -> str:
    """Visible text of an HTML fragment: tags dropped (block tags become spaces), entities decoded,
    whitespace collapsed."""
    parser = _TextCollector()
    parser.feed(text)
    parser.close()
    return re.sub(r"\s+", " ", "".join(parser.parts)).strip()


# ---------------------------------------------------------------------------------------------
# MovieLens fallback

_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
_ARTICLE = re.compile(r"^(?P<name>.+), (?P<article>The|A|An|La|Le|Les|L'|Il|Das|Der|Die|El|Los|Las)"
                      r"(?P<alt>\s*\(.*\))?$")


def split_title(title: str) -> tuple[str, int | None]:
    """'Toy Story (1995)' -> ('Toy Story', 1995)."""
    match = _YEAR.search(title)
    return (title[:match.start()], int(match.group(1))) if match else (title, None)


def display_title(name: str) -> str:
    """MovieLens moves leading articles to the end: 'American President, The' -> 'The American President'."""
    match = _ARTICLE.match(name)
    if not match:
        return name
    article = match.group("article")
    joiner = "" if article.endswith("'") else " "
    return f"{article}{joiner}{match.group('name')}{match.group('alt') or ''}"


def movie_fallback(title: str, genres: list[str]) -> str:
    """A plain description from what movies.dat holds, for movies no description table covers."""
    name, year = split_title(title)
    made = f" from {year}" if year else ""
    kinds = ", ".join(genres) if genres else "unknown genre"
    return f"{display_title(name)} is a movie{made}. Genres: {kinds}."
