"""The paper's tables from commits and experiments: transcription, gains, paired tests, output."""
import csv
import io
import json
import subprocess

import pytest

from xreflect.reporting import tables
from xreflect.reporting.revisions import RevisionError
from xreflect.evaluation.significance import paired_test, smallest_wilcoxon_p


def test_paper_values_spot_checked_against_the_paper():
    paper = tables.load_paper()
    # Values read off the paper by hand.
    assert paper[(2, "movielens-1m", "xreflect", "recall@10")] == (0.2746, 0.0020)
    assert paper[(2, "amazon-software", "popularity_global", "ndcg@10")] == (0.0571, 0.0838)
    assert paper[(3, "amazon-software", "kar", "precision@1")] == (0.2108, 0.0925)
    assert paper[(3, "movielens-1m", "visual_only", "recall@1")] == (0.0407, 0.0020)
    assert paper[(4, "amazon-software", "xr_separate", "recall@10")] == (0.4048, 0.0294)
    assert paper[(5, "movielens-1m", "cot", "ndcg@10")] == (0.3760, 0.0049)
    assert paper[(6, "amazon-software", "xreflect_keyword", "ndcg@10")] == (0.3125, 0.0307)
    rows = {n: sum(1 for key in paper if key[0] == n) for n in (2, 3, 4, 5, 6)}
    assert rows == {2: 13 * 6 - 6, 3: 11 * 4, 4: 8 * 6, 5: 8 * 6, 6: 2 * 6}


@pytest.mark.parametrize("table,dataset,metric,published", [
    (2, "movielens-1m", "precision@10", 5.96), (2, "amazon-software", "ndcg@10", 53.81),
    (3, "movielens-1m", "recall@1", 11.79), (3, "amazon-software", "precision@1", 46.52),
    (4, "amazon-software", "precision@10", 70.52), (5, "movielens-1m", "recall@10", 4.39),
])
def test_transcribed_values_reproduce_the_papers_printed_gains(table, dataset, metric, published):
    paper = tables.load_paper()
    ours = paper[(table, dataset, "xreflect", metric)][0]
    base = paper[(table, dataset, "text_image", metric)][0]
    # Both printed to 4 decimals, so the recomputed gain agrees to about 0.05 points.
    assert tables.gain(ours, base) == pytest.approx(published, abs=0.06)


def test_paired_tests_by_hand():
    # differences 1..5: mean 3, sd sqrt(2.5), t = 3 / (sqrt(2.5)/sqrt(5)) = 4.243, df 4 -> p = 0.0132
    result = paired_test([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    assert result.mean_difference == 3
    assert result.t_p == pytest.approx(0.01324, abs=5e-5)
    # all 5 differences positive: the exact signed-rank p is 2 / 2**5, the smallest possible
    assert result.wilcoxon_p == pytest.approx(0.0625)
    assert smallest_wilcoxon_p(5) == 0.0625
    # differences 1, -2, 3, 4, 5: W- = 2; rank sums <= 2 come from {}, {1}, {2}: p = 2 * 3 / 32
    assert paired_test([1, -2, 3, 4, 5], [0, 0, 0, 0, 0]).wilcoxon_p == pytest.approx(0.1875)
    same = paired_test([0.3, 0.2], [0.3, 0.2])
    assert (same.t_p, same.wilcoxon_p) == (1.0, 1.0)
    with pytest.raises(ValueError, match="same number of splits"):
        paired_test([1, 2, 3], [1, 2])


def _result(values):
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return {"mean": mean, "std": std, "per_split": values}


def _detail(dataset, backbone, shift=0.0):
    base = [0.25, 0.26, 0.24, 0.25, 0.25]
    per_strategy = {
        "text_image": base,
        "rec_gpt4v": [v + 0.005 for v in base[:4]] + [base[4] - 0.004],  # best baseline, mixed signs
        "xreflect": [v + 0.02 + shift + 0.001 * i for i, v in enumerate(base)],
        "xreflect_keyword": [v + 0.001 for v in base],
        "xr_separate": base[::-1],
    }
    results = {s: {m: _result(vals) for m in ("precision@10", "recall@10", "ndcg@10", "precision@1", "recall@1")}
               for s, vals in per_strategy.items()}
    return {"dataset": dataset, "backbone": backbone, "n_splits": 5, "results": results, "selection": {}}


@pytest.fixture
def repo(tmp_path):
    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q", "-b", "main")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (tmp_path / "metrics").mkdir()

    def commit(detail, message):
        (tmp_path / "metrics" / "detail.json").write_text(json.dumps(detail))
        git("add", "metrics/detail.json")
        git("commit", "-q", "-m", message)
        return git("rev-parse", "HEAD")
    return tmp_path, git, commit


def test_tables_from_commits_and_an_experiment_ref(repo, tmp_path):
    root, git, commit = repo
    ml = commit(_detail("movielens-1m", "gpt4v"), "ml")
    amazon = commit(_detail("amazon-software", "gpt4v", shift=0.01), "amazon")
    # A DVC experiment is a ref under refs/exps/<baseline[:2]>/<baseline[2:]>/<name>.
    llava = commit(_detail("movielens-1m", "llava"), "llava")
    git("update-ref", f"refs/exps/{ml[:2]}/{ml[2:]}/tidy-exp", llava)
    git("reset", "-q", "--hard", amazon)
    out = tmp_path / "out"
    code = tables.main(["--repo", str(root), "--exp", f"ml={ml}", "--exp", "amazon=HEAD",
                        "--exp", "llava=tidy-exp", "--md", str(out / "t.md"), "--csv", str(out / "t.csv")])
    assert code == 0
    markdown = (out / "t.md").read_text()
    for title in ("Table 2:", "Table 3:", "Table 5:", "Table 6:"):
        assert title in markdown
    assert "Table 4:" not in markdown  # no InternLM experiment given
    rows = list(csv.DictReader(io.StringIO((out / "t.csv").read_text())))
    cell = {(r["table"], r["experiment"], r["strategy"], r["metric"]): r for r in rows}
    x = cell[("2", "ml", "xreflect", "recall@10")]
    # base mean 0.25, X-REFLECT mean 0.25 + 0.02 + 0.002 = 0.272: gain +8.8%
    assert float(x["gain_pct"]) == pytest.approx(8.8)
    assert float(x["paper_mean"]) == 0.2746 and float(x["paper_gain_pct"]) == pytest.approx(8.58, abs=0.06)
    assert float(x["t_p_vs_baseline"]) < 0.01 and float(x["wilcoxon_p_vs_baseline"]) == pytest.approx(0.0625)
    assert x["best_baseline"] == "rec_gpt4v"
    assert cell[("2", "amazon", "xreflect", "recall@10")]["paper_mean"] == "0.3969"
    assert cell[("5", "llava", "xreflect", "recall@10")]["commit"] == llava
    assert cell[("5", "llava", "xreflect", "recall@10")]["paper_mean"] == "0.264"
    # Same per-split values reversed: no paired difference in mean, nothing marked.
    sep = cell[("2", "ml", "xr_separate", "recall@10")]
    assert float(sep["gain_pct"]) == pytest.approx(0.0, abs=1e-9) and float(sep["t_p_vs_baseline"]) > 0.5
    # Markdown: X-REFLECT's ML cell is the best (bold), its gain, ** against Text + Image and †† against
    # Rec-GPT4V; the paper's value beside it. Split values .250 .261 .242 .253 .254: std 0.0069.
    line = next(l for l in markdown.splitlines() if l.startswith("| X-REFLECT |"))
    assert "**0.2720 ± 0.0069** (+8.80%)**††" in line and "0.2746 ± 0.0020 (+8.58%)" in line
    assert "cannot go below p = 0.0625" in markdown


def test_bad_arguments_give_one_clear_error(repo, capsys):
    root, _, commit = repo
    commit(_detail("demo", "offline"), "demo")
    assert tables.main(["--repo", str(root), "--exp", "nope=does-not-exist"]) == 2
    assert "neither a git revision nor a DVC experiment" in capsys.readouterr().err
    assert tables.main(["--repo", str(root), "--exp", "HEAD"]) == 2
    assert "expected NAME=REV" in capsys.readouterr().err
    with pytest.raises(RevisionError, match="unique"):
        tables.build_tables(root, ["a=HEAD", "a=HEAD"])


def test_demo_has_no_paper_column_and_workspace_reads_disk(repo):
    root, _, commit = repo
    commit(_detail("demo", "offline"), "demo")
    built = tables.build_tables(root, ["demo=workspace"])
    assert [t.spec.number for t in built] == [2, 3, 6]
    assert all(cell.paper is None for t in built for cell in t.cells.values())
    assert "paper" not in tables.to_markdown(built, "text_image").split("\n\n")[2]


def test_full_ranking_tables_test_the_full_results_and_leave_out_the_paper(repo):
    root, _, commit = repo
    detail = _detail("movielens-1m", "gpt4v")
    # Full ranking: X-REFLECT below Text + Image on every split, so the mark is a significant loss.
    full = {s: {m: _result([v - 0.1 for v in r["per_split"]]) for m, r in metrics.items()}
            for s, metrics in detail["results"].items()}
    full["xreflect"] = {m: _result([v - 0.01 - 0.001 * i for i, v in enumerate(full["text_image"][m]["per_split"])])
                        for m in full["xreflect"]}
    old = commit(detail, "sampled only")
    new = commit({**detail, "full_results": full}, "both protocols")
    built = tables.build_tables(root, [f"ml={new}"], protocol="full")
    assert built[0].spec.title == "Table 2: recommendation performance @10, full ranking"
    cell = built[0].cells[(0, "xreflect", "recall@10")]
    assert cell.mean == pytest.approx(0.25 - 0.1 - 0.01 - 0.002)  # from full_results, not results
    assert cell.vs_base.t_p < 0.01 and cell.vs_base.mean_difference < 0
    assert all(c.paper is None for t in built for c in t.cells.values())
    sampled = tables.build_tables(root, [f"ml={new}"])  # the default protocol is unchanged
    assert sampled[0].cells[(0, "xreflect", "recall@10")].mean == pytest.approx(0.272)
    with pytest.raises(RevisionError, match="lacks \\['full_results'\\].*full-ranking protocol is newer"):
        tables.build_tables(root, [f"ml={old}"], protocol="full")
