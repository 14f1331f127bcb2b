"""Content-addressed store of model responses, kept beside the pipeline rather than in DVC outs.

DVC deletes a stage's outs before rerunning it, never restores `persist: true` outs from its
run-cache, and queued experiments see only the git-HEAD copy; a response store inside the outs
would therefore lose paid-for answers. This store is one SQLite file under
`$XREFLECT_CACHE_DIR` (default `.cache/`, git-ignored), safe for several processes at once (WAL
journal, busy timeout), and each response is committed as soon as it arrives, so a crash loses at
most the requests in flight. Switching backbone and back costs no new call: the key covers the
backbone identity, so both sets of answers stay.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from xreflect.backends.base import Request, Response
from xreflect.core.paths import cache_dir



def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def request_key(request: Request, identity: Mapping[str, Any]) -> str:
    """Everything that changes the answer: backbone identity (provider, model, revision,
    generation params), template id and version, the rendered prompt, the image bytes' hash and
    the keys of the parent responses a chained prompt was built from."""
    material = {
        "identity": identity,
        "template": [request.template_id, request.template_version],
        "prompt": request.prompt,
        "image_sha256": sha256_bytes(request.image) if request.image is not None else None,
        "parents": list(request.parents),
    }
    return sha256_bytes(json.dumps(material, sort_keys=True, ensure_ascii=False).encode("utf-8"))


@dataclass(frozen=True)
class CachedResponse:
    key: str
    text: str
    model: str
    usage: dict
    latency_s: float
    created_at: float


_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, template_id TEXT, item_id TEXT, text TEXT NOT NULL, model TEXT,
    usage TEXT, latency_s REAL, created_at REAL);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY, template_id TEXT, item_id TEXT, error TEXT, attempts INTEGER,
    updated_at REAL);
CREATE TABLE IF NOT EXISTS spending (
    scope TEXT, template_id TEXT, usd REAL, at REAL);
"""


class ResponseCache:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else cache_dir() / "responses.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedResponse]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, CachedResponse] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = self._db.execute(
                f"SELECT key, text, model, usage, latency_s, created_at FROM responses "
                f"WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            for key, text, model, usage, latency, created in rows:
                found[key] = CachedResponse(key, text, model, json.loads(usage or "{}"), latency, created)
        return found

    def put(self, key: str, request: Request, response: Response) -> None:
        with self._db:  # one transaction: the response lands and its failure record goes together
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, request.template_id, request.item_id, response.text, response.model,
                 json.dumps(dict(response.usage)), response.latency_s, time.time()))
            self._db.execute("DELETE FROM failures WHERE key = ?", (key,))

    def record_failure(self, key: str, request: Request, error: str) -> None:
        self._db.execute(
            "INSERT INTO failures VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT(key) DO UPDATE SET "
            "error = excluded.error, attempts = attempts + 1, updated_at = excluded.updated_at",
            (key, request.template_id, request.item_id, error, time.time()))

    def failures(self, template_id: str | None = None) -> list[dict]:
        query = "SELECT key, template_id, item_id, error, attempts FROM failures"
        rows = self._db.execute(query + (" WHERE template_id = ?" if template_id else ""),
                                (template_id,) if template_id else ())
        return [dict(zip(("key", "template_id", "item_id", "error", "attempts"), row)) for row in rows]

    # ---- what new answers cost, for the whole-run budget (xreflect.generation.budget); one row per paid answer ----
    def record_spend(self, scope: str, template_id: str, usd: float) -> None:
        self._db.execute("INSERT INTO spending VALUES (?, ?, ?, ?)", (scope, template_id, usd, time.time()))

    def spent_usd(self, scope: str) -> float:
        return float(self._db.execute("SELECT COALESCE(SUM(usd), 0) FROM spending WHERE scope = ?",
                                      (scope,)).fetchone()[0])

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()
