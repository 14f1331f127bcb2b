"""The offline stand-in's image analyses, kept across stage processes.

Every image prompt of the stand-in analyses the item's image, and each `generate@` stage is a
process of its own, so the demo analysed its 398 posters once per image prompt: ~2 s of the 2.5 s
of each such stage. Analyses are stored by sha256 of the analysis code and the image bytes in
`$XREFLECT_CACHE_DIR/image_analysis.sqlite` (beside the response cache), so a change to
xreflect/data/image_analysis.py starts afresh instead of reusing analyses it would not make.
"""
from __future__ import annotations

import hashlib
import pickle
import sqlite3
from functools import lru_cache
from pathlib import Path

from xreflect.core.paths import cache_dir
from xreflect.data import image_analysis
from xreflect.data.image_analysis import ImageAnalysis, analyse_image

CACHE_FILE = "image_analysis.sqlite"


@lru_cache(maxsize=1)
def _code_key() -> bytes:
    return hashlib.sha256(Path(image_analysis.__file__).read_bytes()).digest()


@lru_cache(maxsize=1)
def _database(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=60.0, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS analyses (key TEXT PRIMARY KEY, analysis BLOB NOT NULL)")
    return db


def cached_analysis(image: bytes) -> ImageAnalysis:
    """analyse_image(image), from the cache when this code has analysed these bytes before."""
    key = hashlib.sha256(_code_key() + bytes(image)).hexdigest()
    db = _database(cache_dir() / CACHE_FILE)
    row = db.execute("SELECT analysis FROM analyses WHERE key = ?", (key,)).fetchone()
    if row is not None:
        return pickle.loads(row[0])
    analysis = analyse_image(image)
    db.execute("INSERT OR REPLACE INTO analyses VALUES (?, ?)", (key, pickle.dumps(analysis)))
    return analysis
