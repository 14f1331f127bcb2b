"""A downloaded archive that cannot be read (truncated, corrupt) is moved aside, never used again
and never deleted, and the error says which file, what failed and how to get a good copy."""
from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from pathlib import Path

from xreflect.core.errors import DataError

# What reading a damaged zip or gzip file raises, besides our own parse errors.
DAMAGED = (zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError, UnicodeDecodeError)


def damaged_archive(path: Path, error: BaseException, member: str | None = None) -> DataError:
    """Move `path` aside as `<name>.corrupt` and return the error to raise (naming the damaged
    `member` of the archive when known)."""
    path = Path(path)
    aside = path.with_name(path.name + ".corrupt")
    if path.exists():
        os.replace(path, aside)
    return DataError(
        f"{path}: the archive is truncated or corrupt" + (f" in {member}" if member else "") +
        f" ({type(error).__name__}: {error}). It was moved "
        f"aside to {aside} (kept for inspection, not used). Rerun the download stage (`dvc repro "
        "download`) to fetch a fresh copy, or put a good copy in the mirror directory; pin its "
        "checksum in params.yaml so a damaged copy is caught before it is read.")
