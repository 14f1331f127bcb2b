"""Write the sha256 manifest of a poster set from its files (see xreflect/data/sources/poster_manifest.py).

The default MovieLens-1M posters are `MovieImages/<MovieID>.jpg` of the GitHub repository
liangfgithub/liangfgithub.github.io at commit 8cf902e1a38b87db1a24e080512ec55596dac41a:

    git clone https://github.com/liangfgithub/liangfgithub.github.io posters-src
    git -C posters-src archive 8cf902e1a38b87db1a24e080512ec55596dac41a MovieImages | tar x -C /tmp/posters
    python scripts/build_poster_manifest.py /tmp/posters/MovieImages \
        xreflect/data/sources/manifests/movielens1m_posters.csv

Only the hashes, sizes and ids go into the repository, never the images.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xreflect.data.sources.poster_manifest import manifest_csv, manifest_rows
from xreflect.core.io import write_text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="folder of <movie_id>.jpg files")
    parser.add_argument("output", type=Path, help="manifest CSV to write")
    parser.add_argument("--suffix", default=".jpg")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        raise SystemExit(f"{args.directory} is not a directory of <movie_id>{args.suffix} files")
    rows = manifest_rows(args.directory, args.suffix)
    if not rows:
        raise SystemExit(f"{args.directory} holds no <movie_id>{args.suffix} file")
    write_text(args.output, manifest_csv(rows))
    print(f"{args.output}: {len(rows)} posters, {sum(r[2] for r in rows):,} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
