"""HTTP downloads for the dataset sources: verified files and content-addressed images.

What it guarantees, because a multi-GB dataset fetch over a flaky link has to be restartable:
- a file is written as `<name>.part` and renamed into place only once complete and verified, so no
  half-written file ever sits under its final name;
- an interrupted or truncated transfer resumes from the `.part` file with an HTTP Range request
  (servers that ignore Range get a full restart);
- transient failures (connection errors, timeouts, HTTP 408/429/5xx, short reads) are retried with
  exponential backoff; 4xx answers move on to the next URL;
- a file already present with the pinned checksum is not downloaded again; a file whose checksum
  differs is kept aside as `<name>.mismatch-<sha256 prefix>` and never used;
- a local mirror directory (`datasets.<name>.mirror_dir`, or the XREFLECT_MIRROR_DIR environment
  variable) is looked in first, by file name (`<mirror>/<name>`) or by URL (`<mirror>/<host>/<path>`,
  the layout `wget -x` writes), which makes the whole stage work offline.

Images are cached by URL under `data/raw/<dataset>/<kind>/` (`<sha256(url)>` for a decoded image,
`<sha256(url)>.failed` with the reason for a permanent failure such as a 404 or bytes that do not
decode), so a rerun touches the network only for URLs that failed transiently. Delete the `.failed`
markers to retry them.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlparse

from xreflect.core.config import ParamsError
from xreflect.core.errors import DataError

ENV_MIRROR = "XREFLECT_MIRROR_DIR"
USER_AGENT = "xreflect-dataset-downloader/1.0"
CHUNK = 1 << 16


class DownloadError(DataError):
    """A file could not be obtained; the message says from where and what to do."""


class ChecksumError(DownloadError):
    """A file's checksum differs from the pinned one; the file was kept aside."""


class _Transient(Exception):
    """A failure worth retrying (connection, timeout, 5xx, short read)."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry  # False: not now (the host name does not resolve: offline), but next run


class _Permanent(Exception):
    """A failure retrying will not fix (404, 403, ...): try the next URL."""


@dataclass(frozen=True)
class Settings:
    timeout_s: float = 600.0        # one attempt at one archive (connect + whole transfer)
    image_timeout_s: float = 30.0   # one attempt at one image
    retries: int = 4                # further attempts after the first, per URL
    backoff_s: float = 2.0          # wait before the first retry; doubled for each further one
    workers: int = 8                # concurrent image downloads
    mirror_dirs: tuple[Path, ...] = ()
    mirror_hint: str = f"set {ENV_MIRROR}=<dir>"  # how the user points the stage at a mirror
    progress: bool = True

    @classmethod
    def from_entry(cls, name: str, entry: Mapping[str, Any], progress: bool = True) -> "Settings":
        """Settings from `datasets.<name>` in params.yaml: `download: {...}` and `mirror_dir`."""
        config = dict(entry.get("download") or {})
        unknown = set(config) - {"timeout_s", "image_timeout_s", "retries", "backoff_s", "workers"}
        if unknown:
            raise ParamsError(f"params.yaml: datasets.{name}.download has unknown key(s) {sorted(unknown)}; "
                             "allowed: timeout_s, image_timeout_s, retries, backoff_s, workers")
        mirrors = [entry.get("mirror_dir"), os.environ.get(ENV_MIRROR)]
        return cls(
            timeout_s=float(config.get("timeout_s", cls.timeout_s)),
            image_timeout_s=float(config.get("image_timeout_s", cls.image_timeout_s)),
            retries=int(config.get("retries", cls.retries)),
            backoff_s=float(config.get("backoff_s", cls.backoff_s)),
            workers=max(1, int(config.get("workers", cls.workers))),
            mirror_dirs=tuple(Path(m).expanduser() for m in mirrors if m),
            mirror_hint=f"set datasets.{name}.mirror_dir in params.yaml or the environment variable "
                        f"{ENV_MIRROR} to a directory holding the file",
            progress=progress,
        )


@dataclass(frozen=True)
class Fetched:
    """A verified file on disk and where it came from (for source.json)."""
    path: Path
    origin: str          # the URL or mirror path it was obtained from ("present" if it was there)
    sha256: str
    size: int
    downloaded: bool     # False when an existing verified file was reused

    def provenance(self) -> dict[str, Any]:
        return {"file": self.path.name, "origin": self.origin, "sha256": self.sha256, "bytes": self.size}


@dataclass
class ImageResult:
    """The outcome for one item: a cached image file, or why there is none."""
    item_id: str
    path: Path | None = None
    url: str | None = None
    errors: list[str] = field(default_factory=list)


def raw_dir_for(out_dir: Path, name: str) -> Path:
    """Raw downloads of dataset `name`: data/raw/<name>/ beside the dataset directory. They are not a
    DVC out, so a rerun of the stage (which rebuilds data/dataset) reuses them."""
    return Path(out_dir).parent / "raw" / name


# ---------------------------------------------------------------------------------------------
# Checksums


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_digests(path: Path, sha256: str | None, md5: str | None) -> str:
    """Return the file's sha256; on a mismatch with a pinned digest, move the file aside and raise."""
    got = file_digest(path)
    for algorithm, expected, actual in (("sha256", sha256, got),
                                        ("md5", md5, file_digest(path, "md5") if md5 else None)):
        if expected and expected.lower() != actual:
            aside = path.with_name(f"{path.name.removesuffix('.part')}.mismatch-{got[:12]}")
            os.replace(path, aside)
            raise ChecksumError(
                f"{path.name.removesuffix('.part')}: {algorithm} mismatch: expected {expected.lower()}, "
                f"got {actual}. The file was kept aside as {aside} (not used). If the upstream file "
                f"changed on purpose, update the pinned checksum in params.yaml; otherwise delete "
                f"{aside} and rerun, or use a mirror with the right file.")
    return got


# ---------------------------------------------------------------------------------------------
# Single files


def mirror_candidates(url: str, mirror_dirs: Sequence[Path]) -> list[Path]:
    """Where a mirror may hold `url`: by file name, or as <host>/<path>."""
    parsed = urlparse(url)
    name = Path(parsed.path).name
    found = []
    for mirror in mirror_dirs:
        for candidate in (mirror / name, mirror / parsed.netloc / parsed.path.lstrip("/")):
            if name and candidate.is_file():
                found.append(candidate)
    return found


def fetch_file(urls: Sequence[str] | str, dest: Path, settings: Settings, *, sha256: str | None = None,
               md5: str | None = None, log: Callable[[str], None] | None = None) -> Fetched:
    """Obtain `dest` from a mirror or the first URL that works, verified against the pinned digests.

    An existing `dest` with matching digests is reused without any network access; with no digest
    pinned, an existing file is trusted (its sha256 goes to the report so it can be pinned).
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    log = log or _stderr
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        try:
            got = check_digests(dest, sha256, md5)
            return Fetched(dest, "present", got, dest.stat().st_size, downloaded=False)
        except ChecksumError as err:  # a stale copy: it is kept aside, fetch a fresh one
            log(f"download: {err}")
    part = dest.with_name(dest.name + ".part")
    for url in urls:
        for mirrored in mirror_candidates(url, settings.mirror_dirs):
            shutil.copyfile(mirrored, part)
            got = check_digests(part, sha256, md5)
            os.replace(part, dest)
            log(f"download: {dest.name} from mirror {mirrored}")
            return Fetched(dest, str(mirrored), got, dest.stat().st_size, downloaded=False)
    failures = []
    for url in urls:
        try:
            _download(url, part, settings.timeout_s, settings, log)
        except (_Transient, _Permanent) as err:
            failures.append(f"{url}: {err}")
            continue
        got = check_digests(part, sha256, md5)
        os.replace(part, dest)
        return Fetched(dest, url, got, dest.stat().st_size, downloaded=True)
    raise DownloadError(
        f"could not download {dest.name}: " + "; ".join(failures) + ". "
        f"If the host is unreachable or you are offline, {settings.mirror_hint} "
        f"({dest.name}, or <host>/<path> as in the URL). A partial transfer is kept as {part} "
        "and resumed on the next run.")


def _download(url: str, part: Path, timeout_s: float, settings: Settings,
              log: Callable[[str], None]) -> None:
    """Download `url` into `part`, resuming what is there; retry transient failures with backoff."""
    for attempt in range(settings.retries + 1):
        try:
            _attempt(url, part, timeout_s)
            return
        except _Transient as err:
            if not err.retry:
                raise
            if attempt == settings.retries:
                raise _Transient(f"{err} (gave up after {attempt + 1} attempts)") from err
            wait = settings.backoff_s * (2 ** attempt)
            log(f"download: {url}: {err}; retrying in {wait:g} s")
            time.sleep(wait)


def _attempt(url: str, part: Path, timeout_s: float) -> None:
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    deadline = time.monotonic() + timeout_s
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=min(timeout_s, 60.0)) as response:
            resumed = offset > 0 and response.status == 206 and \
                response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
            if not resumed:
                offset = 0  # the server sent the whole file (no Range support): start over
            length = response.headers.get("Content-Length")
            expected = offset + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as fh:
                while chunk := response.read(CHUNK):
                    fh.write(chunk)
                    if time.monotonic() > deadline:
                        raise _Transient(f"timed out after {timeout_s:g} s (partial file kept for resuming)")
    except urllib.error.HTTPError as err:
        if err.code == 416:  # our .part is not a prefix the server recognises: start over
            part.unlink(missing_ok=True)
            raise _Transient("HTTP 416 (range not satisfiable); restarting from zero") from err
        if err.code in (408, 429) or err.code >= 500:
            raise _Transient(f"HTTP {err.code} {err.reason}") from err
        raise _Permanent(f"HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError,
            TimeoutError) as err:
        reason = getattr(err, "reason", err)
        # An unresolvable host name (typically: offline) is not retried with backoff in this run.
        raise _Transient(f"{type(err).__name__}: {reason}",
                         retry=not isinstance(reason, socket.gaierror)) from err
    size = part.stat().st_size
    if expected is not None and size != expected:
        raise _Transient(f"transfer ended early ({size} of {expected} bytes)")


# ---------------------------------------------------------------------------------------------
# Images


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]


def check_image(path: Path) -> str:
    """Decode the whole image (a header check misses truncated files); return its format."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return (image.format or "img").lower()


_url_locks: dict[str, threading.Lock] = {}
_url_locks_guard = threading.Lock()


def fetch_image(url: str, cache_dir: Path, settings: Settings,
                sha256: str | None = None) -> tuple[Path | None, str | None]:
    """(cached file, None) or (None, why not). Permanent failures are remembered in the cache.
    With `sha256` (a manifest's pin), bytes that differ count as a permanent failure."""
    key = url_key(url)
    with _url_locks_guard:  # two items may share an image URL: one download, one .part writer
        lock = _url_locks.setdefault(key, threading.Lock())
    with lock:
        return _fetch_image(url, key, cache_dir, settings, sha256)


def _fetch_image(url: str, key: str, cache_dir: Path, settings: Settings,
                 sha256: str | None) -> tuple[Path | None, str | None]:
    cached, failed = cache_dir / key, cache_dir / f"{key}.failed"
    if cached.is_file():
        if sha256 is None or file_digest(cached) == sha256.lower():
            return cached, None
        cached.unlink()  # cached before the pin changed: fetch again
    if failed.is_file():
        return None, failed.read_text(encoding="utf-8").strip()
    part = cache_dir / f"{key}.part"
    mirrored = mirror_candidates(url, settings.mirror_dirs)
    try:
        if mirrored:
            shutil.copyfile(mirrored[0], part)
        else:
            _download(url, part, settings.image_timeout_s, settings, log=lambda _: None)
    except _Permanent as err:
        return _remember_failure(failed, str(err))
    except _Transient as err:
        return None, str(err)  # not remembered: the next run tries again
    try:
        check_image(part)
    except Exception as err:  # PIL raises several types for undecodable bytes
        part.unlink(missing_ok=True)
        return _remember_failure(failed, f"does not decode as an image ({type(err).__name__}: {err})")
    if sha256 is not None and (got := file_digest(part)) != sha256.lower():
        part.unlink(missing_ok=True)
        return _remember_failure(failed, f"sha256 mismatch: the manifest pins {sha256.lower()}, the bytes "
                                         f"received have {got}; the file was not used")
    os.replace(part, cached)
    return cached, None


def _remember_failure(marker: Path, reason: str) -> tuple[None, str]:
    from xreflect.core.io import write_text

    write_text(marker, reason + "\n")
    return None, reason


def fetch_images(candidates: Mapping[str, Sequence[str]], cache_dir: Path, settings: Settings,
                 digests: Mapping[str, str] | None = None) -> dict[str, ImageResult]:
    """For each item, the first of its candidate URLs that yields a decodable image (with the
    sha256 `digests` pins for that URL, if any).

    Runs `settings.workers` downloads at once; finished images stay in the cache if interrupted.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)

    def first_usable(item_id: str, urls: Sequence[str]) -> ImageResult:
        result = ImageResult(item_id)
        for url in urls:
            path, error = fetch_image(url, cache_dir, settings, (digests or {}).get(url))
            if path is not None:
                result.path, result.url = path, url
                return result
            result.errors.append(f"{url}: {error}")
        return result

    cached = sum((cache_dir / url_key(urls[0])).is_file() for urls in candidates.values() if urls)
    results: dict[str, ImageResult] = {}
    pool = ThreadPoolExecutor(max_workers=settings.workers)
    try:
        futures = [pool.submit(first_usable, item_id, urls) for item_id, urls in candidates.items()]
        for future in _progress(as_completed(futures), len(futures), "images", settings.progress):
            result = future.result()
            results[result.item_id] = result
    except BaseException:
        # Interrupted (Ctrl-C, a failure): stop now instead of working through the queue. Finished
        # images stay cached; a partial one is resumed or replaced by the next run.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    if settings.progress:
        _stderr(f"images: {len(candidates)} items; for {cached} the first URL was cached by an earlier run")
    return {item_id: results[item_id] for item_id in candidates}


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)
