"""A static HTML page to read what the model wrote: for a sample of items, the image, the
description and every prompt's response side by side, plus word counts per prompt over all items.

    python -m stages.gallery [--items 12] [--seed 0] [--out reports/gallery.html]

Reads params.yaml (strategies, gallery), data/filtered/items.jsonl, the images under data/dataset/
and data/responses/<strategy>/<prompt>.jsonl for every prompt a strategy in `run` uses. Writes one self-contained page
(images inlined, the chart drawn by the vendored vega, so it opens offline and can be shared as one
file) and metrics/word_counts.json (words per response, per prompt: what `dvc metrics diff` compares).
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from xreflect.core.config import run_strategies
from xreflect.core.errors import DataError
from xreflect.data.contract import Item, read_items
from xreflect.core.io import log_stderr, read_jsonl, write_json, write_text
from xreflect.reporting.offline_plots import inline_scripts
from xreflect.core.paths import DATASET_DIR, FILTERED_DIR, RESPONSES_DIR
from xreflect.paper.prompts import BASE_SOURCES
from xreflect.paper.labels import LABELS
from xreflect.paper.strategies import strategy_sources

OUT = Path("reports/gallery.html")
WORD_COUNTS = Path("metrics/word_counts.json")
THUMBNAIL_PX = 240
METRIC_KEYS = ("items", "failed", "mean", "median")


def prompts_by_strategy(params: dict) -> dict[str, list[str]]:
    """prompt id -> the strategies in `run` that use its responses, in the order of `run`."""
    used: dict[str, list[str]] = {}
    for strategy in run_strategies(params):
        for source in strategy_sources(params, strategy):
            if source not in BASE_SOURCES:
                used.setdefault(source, []).append(strategy)
    return used


def prompt_label(prompt: str) -> str:
    if prompt.endswith("_keyword"):
        return f"{LABELS.get(prompt[:-len('_keyword')], prompt)} (keyword)"
    return LABELS.get(prompt, prompt)


def word_count(text: str) -> int:
    return len(text.split())


def load_responses(used_by: dict[str, list[str]], responses_dir: Path) -> dict[str, dict[str, dict]]:
    """Each prompt's responses, from the first strategy that uses it (every strategy's copy of a
    prompt comes from the same response cache)."""
    responses = {}
    for prompt, strategies in used_by.items():
        path = responses_dir / strategies[0] / f"{prompt}.jsonl"
        if not path.exists():
            raise DataError(f"{path} not found; the gallery shows every prompt a strategy uses: run "
                                    f"`dvc repro generate@{strategies[0]}` (or `dvc pull`) first")
        records = {}
        for number, record in enumerate(read_jsonl(path), start=1):
            if "item_id" not in record or "text" not in record:
                raise DataError(f"{path}, record {number}: needs item_id and text; rerun "
                                 f"`dvc repro generate@{strategies[0]}`")
            records[str(record["item_id"])] = record
        responses[prompt] = records
    return responses


def word_count_summary(items: list[Item], responses: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Words per answer for each prompt over all items (failed answers left out), and the description's."""
    def stats(counts: list[int], failed: int = 0) -> dict:
        values = np.array(counts, dtype=float)
        if not len(values):
            return {"items": 0, "failed": failed}
        return {"items": len(values), "failed": failed, "mean": round(float(values.mean()), 2),
                "median": float(np.median(values)), "p10": float(np.percentile(values, 10)),
                "p90": float(np.percentile(values, 90)), "min": int(values.min()), "max": int(values.max())}

    summary = {"description": stats([word_count(item.description) for item in items])}
    for prompt, records in responses.items():
        ok = [r for r in records.values() if not r.get("failed")]
        summary[prompt] = stats([word_count(r["text"]) for r in ok], failed=len(records) - len(ok))
    return summary


def sample_items(items: list[Item], responses: dict[str, dict[str, dict]], n: int, seed: int) -> list[Item]:
    """`n` items with an answer from every prompt, drawn reproducibly, in catalog order."""
    complete = [item for item in items if all(item.item_id in records for records in responses.values())]
    if not complete:
        raise DataError("no item has an answer from every prompt; check data/responses/ against "
                         "data/filtered/items.jsonl (rerun the generate stages)")
    picked = np.random.default_rng(seed).choice(len(complete), size=min(n, len(complete)), replace=False)
    return [complete[i] for i in sorted(picked)]


def image_data_uri(path: Path | None) -> str | None:
    """A small PNG thumbnail inlined as a data: URI, so the page stays one file."""
    if path is None or not path.exists():
        return None
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chart_spec(items: list[Item], responses: dict[str, dict[str, dict]]) -> dict:
    """Vega-Lite box plot of words per answer, one box per prompt, the description as a reference."""
    values = [{"source": "description", "words": word_count(item.description)} for item in items]
    for prompt, records in responses.items():
        values += [{"source": prompt_label(prompt), "words": word_count(r["text"])}
                   for r in records.values() if not r.get("failed")]
    order = ["description"] + [prompt_label(p) for p in responses]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "Words per answer (all items)",
        "data": {"values": values},
        "mark": {"type": "boxplot", "extent": "min-max"},
        "encoding": {"y": {"field": "source", "type": "nominal", "sort": order, "title": None},
                     "x": {"field": "words", "type": "quantitative", "title": "words"}},
        "width": 560,
    }


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table.counts { border-collapse: collapse; margin: 1em 0; }
table.counts td, table.counts th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
table.counts td:first-child, table.counts th:first-child { text-align: left; }
.items { overflow-x: auto; }
.row { display: grid; width: max-content; grid-auto-flow: column; grid-auto-columns: 230px; gap: 10px;
       border-top: 2px solid #ddd; padding: 10px 0; }
.cell { font-size: 0.8em; line-height: 1.35; }
.cell h3 { font-size: 1em; margin: 0 0 0.3em; }
.cell .meta { color: #777; font-size: 0.9em; }
.cell img { max-width: 100%; display: block; margin-bottom: 0.4em; image-rendering: auto; }
.failed { color: #b00; }
"""


def render_page(title: str, items: list[Item], sample: list[Item], responses: dict[str, dict[str, dict]],
                used_by: dict[str, list[str]], summary: dict[str, dict], dataset_dir: Path) -> str:
    esc = html.escape
    count_rows = []
    for source, stats in summary.items():
        label = "Description (the item text)" if source == "description" else prompt_label(source)
        cells = [f"{stats.get(k, '–')}" for k in ("items", "failed", "mean", "median", "p10", "p90", "min", "max")]
        count_rows.append(f"<tr><td>{esc(label)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    rows = []
    for item in sample:
        uri = image_data_uri(item.image_path(dataset_dir))
        image = f'<img src="{uri}" alt="image of {esc(item.item_id)}">' if uri else "<p class='meta'>no image</p>"
        cells = [f'<div class="cell"><h3>{esc(item.title)} <span class="meta">{esc(item.item_id)}</span></h3>'
                 f'{image}<p>{esc(item.description)}</p>'
                 f'<p class="meta">{word_count(item.description)} words</p></div>']
        for prompt, records in responses.items():
            record = records[item.item_id]
            failed = "<p class='failed'>failed: the description stands in</p>" if record.get("failed") else ""
            cells.append(f'<div class="cell"><h3>{esc(prompt_label(prompt))}</h3>{failed}'
                         f'<p>{esc(record["text"])}</p>'
                         f'<p class="meta">{word_count(record["text"])} words</p></div>')
        rows.append(f'<div class="row" data-item="{esc(item.item_id)}">' + "".join(cells) + "</div>")
    legend = "".join(f"<li><b>{esc(prompt_label(p))}</b> (<code>{esc(p)}</code>): used by "
                     f"{esc(', '.join(LABELS.get(s, s) for s in strategies))}</li>"
                     for p, strategies in used_by.items())
    spec = json.dumps(chart_spec(items, responses)).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
{inline_scripts()}
<style>{STYLE}</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p>{len(sample)} of {len(items)} items, drawn at random: each row shows the item's image and description,
then every prompt's answer for it (scroll sideways). <a href="#words">Words per answer</a> covers all items.</p>
<details><summary>Which strategy uses which prompt</summary><ul>{legend}</ul></details>
<div class="items">{''.join(rows)}</div>
<h2 id="words">Words per answer</h2>
<table class="counts"><tr><th>source</th><th>items</th><th>failed</th><th>mean</th><th>median</th><th>p10</th>
<th>p90</th><th>min</th><th>max</th></tr>{''.join(count_rows)}</table>
<div id="words-chart"></div>
<script>vegaEmbed('#words-chart', {spec}, {{renderer: 'svg', actions: false}});</script>
</body>
</html>
"""


def build_gallery(params: dict, n_items: int, seed: int, out: Path = OUT, word_counts: Path = WORD_COUNTS,
                  dataset_dir: Path = DATASET_DIR, filtered_dir: Path = FILTERED_DIR,
                  responses_dir: Path = RESPONSES_DIR) -> dict:
    used_by = prompts_by_strategy(params)
    if not used_by:  # e.g. run=[popularity,text]: a page of descriptions, and it says why
        log_stderr(f"gallery: no strategy in `run` ({run_strategies(params)}) uses a prompt, so there are no "
                   "answers to show; the page shows the sampled items' descriptions only")
    items = read_items(filtered_dir / "items.jsonl")
    responses = load_responses(used_by, responses_dir)
    summary = word_count_summary(items, responses)
    sample = sample_items(items, responses, n_items, seed)
    title = f"What the model wrote: dataset {params.get('dataset')}, backbone {params.get('backbone')}"
    if not used_by:
        title += " (no strategy in `run` uses a prompt: descriptions only)"
    write_text(out, render_page(title, items, sample, responses, used_by, summary, dataset_dir))
    # The metric keeps the few numbers worth a `dvc metrics diff` row; the page has the rest.
    write_json(word_counts, {source: {k: stats[k] for k in METRIC_KEYS if k in stats}
                             for source, stats in summary.items()})
    return summary
