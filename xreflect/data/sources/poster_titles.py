"""Map a poster table keyed by MovieLens-100K ids onto MovieLens-1M MovieIDs by title and year.

The paper's poster list (babu-thomas/movielens-posters) is keyed by the `movie id` of ML-100K's
`u.item` (`id|Title (Year)|release date|...`, latin-1). The two releases number movies differently,
so a 100K id belongs to the 1M movie with the same normalized title (xreflect.data.sources.titles) and year.
Titles that several movies share in either file are left out rather than guessed.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from xreflect.core.errors import DataError
from xreflect.data.sources.descriptions import split_title
from xreflect.data.sources.titles import normalize_title


def title_key(title: str) -> tuple[str, int | None]:
    name, year = split_title(title.strip())
    return normalize_title(name), year


def read_u_item(path: Path) -> list[tuple[str, str]]:
    """(id, 'Title (Year)') per line of an ML-100K u.item file."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # GroupLens' encoding for u.item
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 2 or not fields[0].strip().isdigit():
            raise DataError(f"{path}, line {number}: expected 'id|Title (Year)|...' (MovieLens-100K u.item), "
                             f"got {line[:200]!r}")
        rows.append((fields[0].strip(), fields[1]))
    return rows


def table_ids_by_title(u_item: Path, movies: list[tuple[str, str]]) -> dict[str, str]:
    """MovieLens-1M MovieID -> the other table's id, for titles (with year) unique on both sides."""
    others = read_u_item(u_item)
    other_counts = Counter(title_key(title) for _, title in others)
    movie_counts = Counter(title_key(title) for _, title in movies)
    other_by_key = {title_key(title): other_id for other_id, title in others}
    mapping = {}
    for movie_id, title in movies:
        key = title_key(title)
        if movie_counts[key] == 1 and other_counts.get(key) == 1:
            mapping[movie_id] = other_by_key[key]
    return mapping
