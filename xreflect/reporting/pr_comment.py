"""The pull-request comment: what changed against the base branch, in Markdown.

    python -m xreflect.reporting.pr_comment --base origin/main [--out comment.md]

Run after `dvc repro` (or `dvc pull`) on the pull request's head. It holds `dvc metrics diff --md`,
`dvc params diff --md` and the paper's tables (python -m xreflect.reporting.tables) for the base and the
workspace side by side. The first line is a marker that the workflow uses to update its one comment
instead of adding a new one on every push (.github/workflows/results.yml).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from xreflect.core.io import write_text
from xreflect.reporting.revisions import RevisionError
from xreflect.reporting.tables import build_tables, to_markdown

MARKER = "<!-- xreflect-results -->"
GITHUB_LIMIT = 65536  # characters GitHub accepts in one comment


def dvc_md(root: Path, *args: str) -> str:
    """A `dvc ... --md` table, or a line saying why there is none."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args, "--md"], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        return f"`dvc {' '.join(args)}` failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    table = done.stdout.strip()
    # With nothing changed dvc prints the header and separator rows alone.
    return table if len(table.splitlines()) > 2 else "No changes."


def build_comment(root: Path, base: str, head: str = "workspace", title: str = "Results") -> str:
    parts = [MARKER, f"## {title}: this pull request against `{base}`", "",
             "### Metrics (`dvc metrics diff`)", "", dvc_md(root, "metrics", "diff", base), "",
             "### Parameters (`dvc params diff`)", "", dvc_md(root, "params", "diff", base), "",
             "### The paper's tables (`python -m xreflect.reporting.tables`)", ""]
    try:
        tables = to_markdown(build_tables(root, [f"base={base}", f"pr={head}"]), "text_image")
        parts.append(tables.replace("### Table", "#### Table").replace("### Backbone", "#### Backbone"))
    except RevisionError as err:
        parts.append(f"No tables: {err}")
    comment = "\n".join(parts) + "\n"
    if len(comment) > GITHUB_LIMIT:
        note = (f"\n\n_Cut at GitHub's {GITHUB_LIMIT} characters: run `python -m xreflect.reporting.tables "
                f"--exp base={base} --exp pr={head}` for the rest._\n")
        comment = comment[:GITHUB_LIMIT - len(note)] + note
    return comment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the base branch or commit, e.g. origin/main")
    parser.add_argument("--head", default="workspace", help="what to compare (default: the workspace)")
    parser.add_argument("--out", type=Path, help="write the comment here (default: print it)")
    parser.add_argument("--repo", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    comment = build_comment(args.repo.resolve(), args.base, args.head)
    if args.out:
        write_text(args.out, comment)
    else:
        print(comment)
    return 0


if __name__ == "__main__":
    sys.exit(main())
