"""The manifest of a pinned poster set: one sha256 per poster file, so every downloaded poster is
checked byte for byte (a raw-file URL at a pinned commit still passes through hosts and caches).

Format: CSV with header `movie_id,sha256,bytes`, one row per file, sorted by movie_id.
`scripts/build_poster_manifest.py` writes it from a directory of `<movie_id>.jpg` files.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
from pathlib import Path

from xreflect.core.errors import DataError
from xreflect.core.config import ParamsError

COLUMNS = ["movie_id", "sha256", "bytes"]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def manifest_rows(directory: Path, suffix: str = ".jpg") -> list[tuple[str, str, int]]:
    """(movie_id, sha256, bytes) for every `<movie_id><suffix>` file in `directory`."""
    rows = []
    for path in directory.iterdir():
        if path.suffix == suffix and path.stem.isdigit():
            data = path.read_bytes()
            rows.append((path.stem, hashlib.sha256(data).hexdigest(), len(data)))
    return sorted(rows, key=lambda row: int(row[0]))


def manifest_csv(rows: list[tuple[str, str, int]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    return buffer.getvalue()


def read_manifest(path: Path, where: str) -> dict[str, str]:
    """movie_id -> sha256; one clear error for a missing file or a bad row."""
    if not path.is_file():
        raise ParamsError(f"params.yaml: {where} is {str(path)!r}, which does not exist (paths are "
                                "relative to the repository root)")
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header != COLUMNS:
            raise DataError(f"{path}: the header must be {','.join(COLUMNS)}, not {header}; rebuild it "
                             "with scripts/build_poster_manifest.py")
        digests = {}
        for number, row in enumerate(reader, start=2):
            if len(row) != 3 or not row[0].isdigit() or not _SHA256.match(row[1]):
                raise DataError(f"{path}, line {number}: expected movie_id,sha256 (64 lower-case hex),bytes; "
                                 f"got {row}; rebuild it with scripts/build_poster_manifest.py")
            digests[row[0]] = row[1]
    return digests
