"""The paper's Tables 2-6 from DVC experiments or commits, with the paper's numbers beside ours.

    python -m xreflect.reporting.tables --exp gpt4v=<rev> --exp internlm=<rev> --exp llava=<rev> \
        [--protocol sampled|full] [--md tables.md] [--csv tables.csv]

Each --exp NAME=REV reads metrics/detail.json at REV (a commit, branch, DVC experiment or
`workspace`); the dataset and backbone it records decide where it goes. The main backbone
(`--main-backbone`, default gpt4v when an experiment has it, else the first experiment's) fills
Table 2 (@10), Table 3 (@1) and Table 6 (keyword variant); InternLM fills Table 4 and LLaVA Table 5;
any other backbone gets a table shaped like them. Several experiments in one table become column
groups side by side (e.g. MovieLens-1M and Amazon-Software, or a base branch and a pull request).
`--protocol full` builds the same tables, tests included, from the full-ranking results
(detail.json's `full_results`, same shape as the sampled `results`); the paper's values, all
sampled but for Item Popularity, are then left out.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

from xreflect.core.io import write_text
from xreflect.evaluation.report import LABELS
from xreflect.reporting.revisions import Revision, RevisionError, parse_exp_arg, read_json, resolve
from xreflect.evaluation.significance import mark, paired_test, smallest_wilcoxon_p

DETAIL = "metrics/detail.json"
RESULT_KEYS = {"sampled": "results", "full": "full_results"}  # detail.json's key per protocol
PAPER_FILE = Path(__file__).resolve().parents[1] / "paper" / "paper_tables.csv"
PAPER_DATASETS = {"movielens-1m": "MovieLens-1M", "amazon-software": "Amazon-Software"}
AT10 = ["precision@10", "recall@10", "ndcg@10"]
# The paper's baselines; the cross-reflection rows are X-REFLECT's own variants. The best of these
# in a column is what X-REFLECT is tested against besides Text + Image.
BASELINES = ["popularity", "text", "kar", "llm_rec", "text_image", "rec_gpt4v", "cot", "visual_only",
             "visual_textual"]
PROPOSED = ["xr_separate", "xr_combined", "xreflect", "xreflect_keyword"]
# Scored on a different candidate set (the whole catalog), so not paired with the other rows.
UNPAIRED = {"popularity_global"}
BACKBONE_ROWS = ["text_image", "rec_gpt4v", "cot", "visual_only", "visual_textual", "xr_separate",
                 "xr_combined", "xreflect"]


@dataclass(frozen=True)
class TableSpec:
    number: int | None   # the paper's table number; None for a backbone the paper did not use
    title: str
    metrics: list[str]
    rows: list[str]
    paper_backbone: str | None  # whose numbers the paper printed in this table


MAIN_TABLES = [
    TableSpec(2, "Table 2: recommendation performance @10", AT10,
              ["popularity", "popularity_global", "text", "kar", "llm_rec", "text_image", "rec_gpt4v", "cot",
               "visual_only", "visual_textual", "xr_separate", "xr_combined", "xreflect"], "gpt4v"),
    TableSpec(3, "Table 3: recommendation performance @1", ["precision@1", "recall@1"],
              ["text", "kar", "llm_rec", "text_image", "rec_gpt4v", "cot", "visual_only", "visual_textual",
               "xr_separate", "xr_combined", "xreflect"], "gpt4v"),
    TableSpec(6, "Table 6: the keyword variant @10", AT10, ["xreflect", "xreflect_keyword"], "gpt4v"),
]
PAPER_BACKBONE_TABLES = {"internlm": 4, "llava": 5}


def backbone_table(backbone: str) -> TableSpec:
    number = PAPER_BACKBONE_TABLES.get(backbone)
    title = f"Table {number}: @10 with the {backbone} backbone" if number else \
        f"Backbone {backbone}: @10 (rows as in Tables 4 and 5)"
    return TableSpec(number, title, AT10, BACKBONE_ROWS, backbone if number else None)


@dataclass
class Experiment:
    revision: Revision
    dataset: str
    backbone: str
    n_splits: int
    results: dict[str, dict[str, dict]]


def load_experiment(root: Path, revision: Revision, protocol: str = "sampled") -> Experiment:
    detail = read_json(root, revision, DETAIL)
    where = f"{DETAIL} at {revision.name}={revision.rev} ({revision.short})"
    key = RESULT_KEYS[protocol]
    missing = [k for k in ("dataset", "backbone", "n_splits", key) if k not in detail]
    if missing:
        raise RevisionError(f"{where} lacks {missing}; rerun the evaluate stage at that revision"
                            + (" (the full-ranking protocol is newer than it)" if key in missing and protocol == "full" else ""))
    return Experiment(revision, detail["dataset"], detail["backbone"], int(detail["n_splits"]), detail[key])


def load_paper(path: Path = PAPER_FILE) -> dict[tuple[int, str, str, str], tuple[float, float]]:
    """(table, dataset, strategy, metric) -> (mean, std) as printed in the paper."""
    with open(path, newline="", encoding="utf-8") as fh:
        return {(int(r["table"]), r["dataset"], r["strategy"], r["metric"]): (float(r["mean"]), float(r["std"]))
                for r in csv.DictReader(fh)}


def gain(value: float, base: float | None) -> float | None:
    """Relative gain in percent, as the paper prints it; None without a usable base."""
    if base is None or base <= 0:
        return None
    return 100.0 * (value - base) / base


@dataclass
class Cell:
    """One strategy x metric x experiment: ours, the tests, and the paper's value when it has one."""
    mean: float
    std: float
    per_split: list[float]
    gain: float | None
    vs_base: object = None       # PairedTest against the baseline (Text + Image)
    best_baseline: str | None = None
    vs_best: object = None       # PairedTest against the best baseline
    paper: tuple[float, float] | None = None
    paper_gain: float | None = None
    best: bool = False


@dataclass
class Table:
    spec: TableSpec
    experiments: list[Experiment]
    cells: dict[tuple[int, str, str], Cell] = field(default_factory=dict)  # (exp index, strategy, metric)

    @property
    def rows(self) -> list[str]:
        present = {s for e in self.experiments for s in e.results}
        return [s for s in self.spec.rows if s in present]


def build_table(spec: TableSpec, experiments: list[Experiment], baseline: str,
                paper: dict | None) -> Table:
    table = Table(spec, experiments)
    for i, exp in enumerate(experiments):
        for metric in spec.metrics:
            base = exp.results.get(baseline, {}).get(metric)
            pool = [s for s in BASELINES if metric in exp.results.get(s, {})]
            best_baseline = max(pool, key=lambda s: exp.results[s][metric]["mean"]) if pool else None
            means = [exp.results[s][metric]["mean"] for s in table.rows if metric in exp.results.get(s, {})]
            for strategy in table.rows:
                result = exp.results.get(strategy, {}).get(metric)
                if result is None:
                    continue
                cell = Cell(result["mean"], result["std"], result["per_split"],
                            None if strategy == baseline else gain(result["mean"], base and base["mean"]),
                            best=result["mean"] == max(means))
                if strategy not in UNPAIRED and base is not None and strategy != baseline:
                    cell.vs_base = paired_test(result["per_split"], base["per_split"])
                if strategy in PROPOSED and best_baseline is not None:
                    cell.best_baseline = best_baseline
                    cell.vs_best = paired_test(result["per_split"],
                                               exp.results[best_baseline][metric]["per_split"])
                if paper is not None and spec.number is not None and exp.dataset in PAPER_DATASETS:
                    cell.paper = paper.get((spec.number, exp.dataset, strategy, metric))
                    paper_base = paper.get((spec.number, exp.dataset, baseline, metric))
                    if cell.paper and paper_base and strategy != baseline:
                        cell.paper_gain = gain(cell.paper[0], paper_base[0])
                table.cells[(i, strategy, metric)] = cell
    return table


def assign(experiments: list[Experiment], main_backbone: str | None) -> list[tuple[TableSpec, list[Experiment]]]:
    backbones = [e.backbone for e in experiments]
    main = main_backbone or ("gpt4v" if "gpt4v" in backbones else backbones[0])
    plan = [(spec, [e for e in experiments if e.backbone == main]) for spec in MAIN_TABLES]
    others = []
    for backbone in backbones:
        if backbone != main and backbone not in others:
            others.append(backbone)
    others.sort(key=lambda b: PAPER_BACKBONE_TABLES.get(b, 99))
    plan += [(backbone_table(b), [e for e in experiments if e.backbone == b]) for b in others]
    return [(spec, exps) for spec, exps in plan if exps]


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}"


def _fmt_gain(value: float | None) -> str:
    return "" if value is None else f" ({value:+.2f}%)"


def metric_label(metric: str) -> str:
    name, k = metric.split("@")
    return {"precision": "Precision", "recall": "Recall", "ndcg": "NDCG"}[name] + f"@{k}"


def has_paper_column(table: Table, i: int) -> bool:
    return any(table.cells[key].paper for key in table.cells if key[0] == i)


def render_markdown(table: Table, baseline: str) -> str:
    spec, exps = table.spec, table.experiments
    lines = [f"### {spec.title}", ""]
    for exp in exps:
        lines.append(f"- `{exp.revision.name}`: dataset `{exp.dataset}`, backbone `{exp.backbone}`, "
                     f"{exp.n_splits} splits, at `{exp.revision.rev}` ({exp.revision.short})")
    lines.append("")
    header, columns = ["Strategy"], []
    for i, exp in enumerate(exps):
        paper = has_paper_column(table, i)
        for metric in spec.metrics:
            header.append(f"{exp.revision.name} {metric_label(metric)}")
            columns.append((i, metric, False))
            if paper:
                header.append(f"paper {metric_label(metric)}")
                columns.append((i, metric, True))
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for strategy in table.rows:
        cells = [LABELS.get(strategy, strategy)]
        for i, metric, paper in columns:
            cell = table.cells.get((i, strategy, metric))
            if cell is None or (paper and cell.paper is None):
                cells.append("–")
            elif paper:
                cells.append(_fmt(*cell.paper) + _fmt_gain(cell.paper_gain))
            else:
                text = _fmt(cell.mean, cell.std)
                if cell.best:
                    text = f"**{text}**"
                marks = (mark(cell.vs_base.t_p, "*") if cell.vs_base else "") + \
                        (mark(cell.vs_best.t_p, "†") if cell.vs_best else "")
                cells.append(text + _fmt_gain(cell.gain) + marks)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", footnote(table, baseline), ""]
    return "\n".join(lines)


def footnote(table: Table, baseline: str) -> str:
    n_values = sorted({e.n_splits for e in table.experiments})
    n = n_values[0]
    bests = sorted({f"{LABELS.get(c.best_baseline, c.best_baseline)}" for c in table.cells.values()
                    if c.best_baseline})
    parts = [f"Mean ± sample std over {'/'.join(map(str, n_values))} splits; bold: best of ours in the column; "
             f"(±x%): relative gain against {LABELS.get(baseline, baseline)}.",
             f"\\* / \\*\\*: paired two-sided t-test over the splits against {LABELS.get(baseline, baseline)}, "
             f"p < 0.05 / p < 0.01 (two-sided: on a negative gain it marks a significant loss)."]
    if bests:
        parts.append(f"† / ††: the same test for the cross-reflection rows against the best baseline of the "
                     f"column ({', '.join(bests)}).")
    parts.append(f"Wilcoxon signed-rank p-values (exact, two-sided) are in the CSV as a check; with {n} splits "
                 f"that test cannot go below p = {smallest_wilcoxon_p(n):.4f}, and the t-test has {n - 1} degrees "
                 f"of freedom, so only large, consistent differences are marked: a missing mark is weak "
                 f"evidence of no difference.")
    if any(c.paper for c in table.cells.values()):
        parts.append(f"paper: the published values (backbone `{table.spec.paper_backbone}`) for the same "
                     f"dataset, gains recomputed from them.")
    if "popularity_global" in table.rows:
        parts.append("Item Popularity (global top-K) ranks the whole catalog (the paper's reading); it is "
                     "not paired with the sampled rows and not tested.")
    return " ".join(parts)


CSV_FIELDS = ["table", "experiment", "rev", "commit", "dataset", "backbone", "n_splits", "strategy", "metric",
              "mean", "std", "gain_pct", "t_p_vs_baseline", "wilcoxon_p_vs_baseline", "best_baseline",
              "t_p_vs_best_baseline", "wilcoxon_p_vs_best_baseline", "paper_mean", "paper_std",
              "paper_gain_pct"]


def csv_rows(table: Table) -> list[dict]:
    rows = []
    for (i, strategy, metric), cell in table.cells.items():
        exp = table.experiments[i]
        rows.append({
            "table": table.spec.number or f"backbone:{exp.backbone}", "experiment": exp.revision.name,
            "rev": exp.revision.rev, "commit": exp.revision.commit or "workspace", "dataset": exp.dataset,
            "backbone": exp.backbone, "n_splits": exp.n_splits, "strategy": strategy, "metric": metric,
            "mean": cell.mean, "std": cell.std, "gain_pct": cell.gain,
            "t_p_vs_baseline": cell.vs_base.t_p if cell.vs_base else None,
            "wilcoxon_p_vs_baseline": cell.vs_base.wilcoxon_p if cell.vs_base else None,
            "best_baseline": cell.best_baseline,
            "t_p_vs_best_baseline": cell.vs_best.t_p if cell.vs_best else None,
            "wilcoxon_p_vs_best_baseline": cell.vs_best.wilcoxon_p if cell.vs_best else None,
            "paper_mean": cell.paper[0] if cell.paper else None,
            "paper_std": cell.paper[1] if cell.paper else None, "paper_gain_pct": cell.paper_gain})
    return rows


def to_csv(tables: list[Table]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        for row in csv_rows(table):
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()


def build_tables(root: Path, exp_args: list[str], baseline: str = "text_image",
                 main_backbone: str | None = None, with_paper: bool = True,
                 protocol: str = "sampled") -> list[Table]:
    pairs = [parse_exp_arg(arg) for arg in exp_args]
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise RevisionError(f"--exp names must be unique, got {names}")
    experiments = [load_experiment(root, resolve(root, name, rev), protocol) for name, rev in pairs]
    # The paper's numbers are sampled-protocol ones: beside full-ranking results they would mislead.
    paper = load_paper() if with_paper and protocol == "sampled" else None
    plan = assign(experiments, main_backbone)
    if protocol == "full":
        plan = [(dataclasses.replace(spec, title=f"{spec.title}, full ranking"), exps) for spec, exps in plan]
    return [build_table(spec, exps, baseline, paper) for spec, exps in plan]


def to_markdown(tables: list[Table], baseline: str) -> str:
    return "\n".join(render_markdown(t, baseline) for t in tables)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xreflect.reporting.tables", description=__doc__.split("\n")[0])
    parser.add_argument("--exp", action="append", required=True, metavar="NAME=REV",
                        help="an experiment: a label and a commit/branch/DVC experiment/'workspace'")
    parser.add_argument("--baseline", default="text_image", help="gains and tests against this strategy")
    parser.add_argument("--main-backbone", help="the backbone of Tables 2, 3 and 6 (default: gpt4v if given)")
    parser.add_argument("--no-paper", action="store_true", help="leave out the paper's published values")
    parser.add_argument("--protocol", choices=sorted(RESULT_KEYS), default="sampled",
                        help="sampled candidates (the paper's) or full ranking (default: sampled)")
    parser.add_argument("--md", type=Path, help="write the Markdown here (default: print it)")
    parser.add_argument("--csv", type=Path, help="write the CSV (one row per cell, with p-values) here")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the repository (default: here)")
    args = parser.parse_args(argv)
    try:
        tables = build_tables(args.repo.resolve(), args.exp, args.baseline, args.main_backbone, not args.no_paper,
                              args.protocol)
    except RevisionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    markdown = to_markdown(tables, args.baseline)
    if args.md:
        write_text(args.md, markdown)
    else:
        print(markdown)
    if args.csv:
        write_text(args.csv, to_csv(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
