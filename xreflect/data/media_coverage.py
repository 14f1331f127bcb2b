"""What the filtered items have: posters and descriptions counted after the k-core, with the ids
that lack them, for metrics/data.json (next to the Table 1 counts).

The source lists its items without an image in `missing_images.csv` (item_id,url,reason) and, for
MovieLens, the items whose description is the title/year/genres sentence in
`fallback_descriptions.csv` (item_id,reason: no_table | not_in_table | empty_text | title_mismatch).
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

from xreflect.data.contract import MISSING_IMAGES_FILE, Item

from xreflect.core.io import write_text

FALLBACK_FILE = "fallback_descriptions.csv"
LISTED = 50  # ids named in the report; the CSV files hold them all


def write_fallback_list(out_dir: Path, reasons: dict[str, str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["item_id", "reason"])
    writer.writerows(reasons.items())
    write_text(Path(out_dir) / FALLBACK_FILE, buffer.getvalue())


def _column(path: Path, column: str) -> dict[str, str]:
    """item_id -> `column` of a listing CSV ({} when the source wrote none)."""
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8", newline="") as fh:
        return {row["item_id"]: row[column] for row in csv.DictReader(fh)}


def filtered_media(dataset_dir: Path, items: list[Item]) -> dict:
    """Posters and descriptions of the items that survived the filter."""
    ids = [item.item_id for item in items]
    kept = set(ids)
    without_image = [item.item_id for item in items if item.image is None]
    missing = _column(Path(dataset_dir) / MISSING_IMAGES_FILE, "reason")
    fallbacks = {i: r for i, r in _column(Path(dataset_dir) / FALLBACK_FILE, "reason").items() if i in kept}
    return {
        "items": len(items),
        "with_image": len(items) - len(without_image),
        "without_image": len(without_image),
        "without_image_ids": without_image[:LISTED],
        "without_image_reasons": {i: missing[i] for i in without_image[:LISTED] if i in missing},
        "description_from_source": len(items) - len(fallbacks),
        "description_fallback": len(fallbacks),
        "fallback_reasons": dict(Counter(fallbacks.values())),
        "fallback_ids": {reason: [i for i in ids if fallbacks.get(i) == reason][:LISTED]
                         for reason in sorted(set(fallbacks.values())) if reason != "no_table"},
    }
