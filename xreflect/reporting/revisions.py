"""Reading a results file as it was at a git commit, a branch or a DVC experiment.

`NAME=REV` arguments name what to compare: REV is anything `git rev-parse` understands (a commit,
a branch, `HEAD~1`, `origin/main`), a DVC experiment name (`dvc exp show` lists them) or
`workspace` for the files on disk.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

WORKSPACE = "workspace"


class RevisionError(ValueError):
    pass


@dataclass(frozen=True)
class Revision:
    name: str       # the label the user gave (column headers use it)
    rev: str        # what the user wrote
    commit: str | None  # resolved commit, None for the workspace

    @property
    def short(self) -> str:
        return self.commit[:7] if self.commit else WORKSPACE


def parse_exp_arg(arg: str) -> tuple[str, str]:
    name, sep, rev = arg.partition("=")
    if not sep or not name or not rev:
        raise RevisionError(f"--exp {arg!r}: expected NAME=REV, e.g. --exp gpt4v=HEAD or --exp base=main "
                            f"(REV: a commit, branch, DVC experiment name or '{WORKSPACE}')")
    return name, rev


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def resolve(root: Path, name: str, rev: str) -> Revision:
    if rev == WORKSPACE:
        return Revision(name, rev, None)
    found = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if found.returncode == 0:
        return Revision(name, rev, found.stdout.strip())
    commit = _experiment_commit(root, rev)
    if commit is None:
        raise RevisionError(f"--exp {name}={rev}: {rev!r} is neither a git revision nor a DVC experiment "
                            f"in {root}; `git log --oneline` and `dvc exp show` list what exists")
    return Revision(name, rev, commit)


def _experiment_commit(root: Path, exp_name: str) -> str | None:
    """The commit of a DVC experiment (experiments live under refs/exps/)."""
    refs = _git(root, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps/")
    matches = [line.split()[0] for line in refs.stdout.splitlines()
               if line.split()[1].rsplit("/", 1)[-1] == exp_name]
    if len(matches) > 1:
        raise RevisionError(f"DVC experiment name {exp_name!r} matches {len(matches)} experiments "
                            f"(different baselines); pass its commit instead (`dvc exp show --sha`)")
    return matches[0] if matches else None


def read_text(root: Path, revision: Revision, path: str) -> str:
    """`path` at `revision`: from git when it is committed there, else through DVC (a cached output)."""
    if revision.commit is None:
        file = root / path
        if not file.exists():
            raise RevisionError(f"{file} not found in the workspace; run `dvc repro` (or `dvc pull`) first")
        return file.read_text(encoding="utf-8")
    shown = _git(root, "show", f"{revision.commit}:{path}")
    if shown.returncode == 0:
        return shown.stdout
    try:
        import dvc.api

        return dvc.api.read(path, repo=str(root), rev=revision.commit, encoding="utf-8")
    except Exception as err:  # dvc raises several kinds; the message below says what to do
        raise RevisionError(f"--exp {revision.name}={revision.rev}: {path} is not at commit "
                            f"{revision.short} in git nor in DVC ({err}); was the evaluate stage run "
                            f"and its outputs committed there?") from err


def read_json(root: Path, revision: Revision, path: str):
    text = read_text(root, revision, path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RevisionError(f"{path} at {revision.name}={revision.rev} ({revision.short}) is not valid "
                            f"JSON: {err}") from err
