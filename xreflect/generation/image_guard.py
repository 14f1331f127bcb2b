"""The image-availability guard: no image prompt is sent when too many items have no image.

An image prompt (rec_gpt4v, visual_only, visual_textual, cot, xr_combined, ...) is about the
picture. Sent without it, a paid model still answers and is paid for, but the answer is not what
the prompt means. So before a single request of an image prompt goes out (generate stage, Batch
API, cost dry run), the share of items without an image is checked against
`generate.max_missing_images` (default 0.01).

Under that share, every image prompt handles an item without an image the same way, whatever the
backbone: no request is sent, and the item's response is its own description (the record says
`no_image: true`), so it contributes the original text and nothing invented.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from xreflect.core.config import ParamsError
from xreflect.data.contract import Item
from xreflect.paper.prompts import PROMPTS

DEFAULT_MAX_MISSING = 0.01


class MissingImages(ParamsError):
    """Too many items of an image prompt have no image; nothing was sent."""


def max_missing_images(params: Mapping[str, Any]) -> float:
    value = (params.get("generate") or {}).get("max_missing_images", DEFAULT_MAX_MISSING)
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise ParamsError(f"params.yaml: generate.max_missing_images is {value!r}; it must be a share "
                          "between 0 and 1 (0.01 = 1% of the items)")
    return share


def items_without_image(prompt_id: str, items: Sequence[Item]) -> list[str]:
    """Ids of the items an image prompt cannot show an image of ([] for a text prompt)."""
    if not PROMPTS[prompt_id].image:
        return []
    return [item.item_id for item in items if item.image is None]


def check_image_coverage(prompt_id: str, items: Sequence[Item], params: Mapping[str, Any]) -> list[str]:
    """The ids without an image, or MissingImages when they are more than the allowed share."""
    missing = items_without_image(prompt_id, items)
    allowed = max_missing_images(params)
    if missing and len(missing) > allowed * len(items):
        dataset = params.get("dataset")
        raise MissingImages(
            f"[{prompt_id}] {len(missing):,} of {len(items):,} items ({len(missing) / len(items):.1%}) have no "
            f"image, more than generate.max_missing_images ({allowed:.1%}) allows for an image prompt; no "
            f"request was sent. Items without an image, e.g. {', '.join(missing[:8])} "
            f"(data/dataset/missing_images.csv says why). Give them images (datasets.{dataset}.posters), "
            f"remove them (-S datasets.{dataset}.missing_image=drop), or accept answering them from "
            f"their description (-S generate.max_missing_images={_enough(len(missing), len(items))}).")
    return missing


def _enough(missing: int, total: int) -> str:
    """The smallest two-decimal share that lets `missing` of `total` through."""
    share = -(-missing * 100 // total) / 100
    return f"{share:.2f}"
