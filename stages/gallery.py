"""DVC stage `gallery`: a page to read what the model wrote, and the words per answer.

Reads params.yaml (strategies, run, gallery), data/filtered/items.jsonl, the images under
data/dataset/ and data/responses/. Writes reports/gallery.html (one self-contained page: for
`gallery.items` items drawn with `gallery.seed`, the image, the description and every prompt's
answer side by side) and metrics/word_counts.json. With no strategy in `run` that uses a prompt,
the page shows the descriptions alone and says why. The library function is
xreflect.reporting.gallery.build_gallery.

    python -m stages.gallery [--items 12] [--seed 0] [--out reports/gallery.html]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from xreflect.core.cli import run_stage
from xreflect.core.config import ParamsError, load_params
from xreflect.reporting.gallery import OUT, WORD_COUNTS, build_gallery


def main(argv: list[str] | None = None) -> None:
    params = load_params()
    config = params.get("gallery") or {}
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=int(config.get("items", 12)))
    parser.add_argument("--seed", type=int, default=int(config.get("seed", 0)))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.items < 1:
        raise ParamsError(f"params.yaml: gallery.items (or --items) must be at least 1, got {args.items}")
    summary = build_gallery(params, args.items, args.seed, args.out)
    print(f"wrote {args.out} and {WORD_COUNTS}: mean words per answer " +
          ", ".join(f"{k} {v.get('mean', '-')}" for k, v in summary.items()))


if __name__ == "__main__":
    run_stage(main)
