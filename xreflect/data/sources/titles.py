"""Title comparison across tables that spell the same movie differently.

Third-party tables of MovieLens movies rewrite titles: accents dropped ("Cérémonie" -> "Ceremonie"),
case changed ("Vita è bella" -> "vita è bella"), spaces moved ("(Höstsonaten )" -> "(Höstsonaten)"),
HTML entities decoded ("Dieu&#8230;Créa" -> "Dieu… créa"). `normalize_title` removes exactly those
differences, so that what still differs is a different movie.
"""
from __future__ import annotations

import html
import re
import unicodedata

_NOT_WORD = re.compile(r"[^0-9a-z]+")


def normalize_title(title: str) -> str:
    """Lower case, no accents, no punctuation, single spaces: 'Life of Émile Zola, The' ->
    'life of emile zola the'."""
    text = unicodedata.normalize("NFKD", html.unescape(title))
    text = "".join(char for char in text if not unicodedata.combining(char)).casefold()
    return " ".join(_NOT_WORD.sub(" ", text).split())


def same_title(a: str, b: str) -> bool:
    return normalize_title(a) == normalize_title(b)


def row_title_mismatches(expected: list[tuple[str, str]], got: list[str]) -> list[dict]:
    """Rows of a row-order table whose title is not the expected one after normalization.
    `expected` holds (item id, title) per row, `got` the table's titles in the same order."""
    return [{"row": row, "movie_id": movie_id, "expected": title, "table": table_title}
            for row, ((movie_id, title), table_title) in enumerate(zip(expected, got), start=1)
            if not same_title(title, table_title)]
