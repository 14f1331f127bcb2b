"""The per-prompt plan: which items of a prompt get a request, and which are answered without one.

Three entry points send requests: the generate stage, batch mode and the cost dry run. All three
plan through `plan_prompts`, so they agree on the request set:
- items with released KAR knowledge (data/dataset/kar_knowledge.jsonl) take that text as their
  KAR answer, no request;
- items without an image are answered by their description under an image prompt, no request,
  as long as the image guard (xreflect.generation.image_guard) allows that many;
- every other item gets a request (a dataset-level prompt, KAR's factor list, gets one in all).
The image guard runs once per prompt, here, before any backbone exists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from xreflect.backends.base import Request
from xreflect.core.io import read_jsonl
from xreflect.data.contract import KAR_KNOWLEDGE_FILE, Item
from xreflect.generation.image_guard import check_image_coverage
from xreflect.generation.requests import prompt_requests


@dataclass
class PromptPlan:
    prompt_id: str
    asked: list[Item]                                       # the items that get a request
    released: dict[str, str] = field(default_factory=dict)  # item_id -> released KAR knowledge
    without_image: list[str] = field(default_factory=list)  # item ids answered by their description

    def requests(self, params: Mapping, dataset_dir: Path, responses_dir: Path | None = None,
                 placeholder: str | None = None, fresh: bool = False) -> list[Request]:
        """The requests, built once the prompt's parents are answered (or with `placeholder`
        standing in for them: xreflect.generation.requests.inputs_of)."""
        return prompt_requests(self.prompt_id, params, self.asked, dataset_dir, placeholder, responses_dir, fresh)


def released_kar_knowledge(dataset_dir: Path, item_ids: list[str]) -> dict[str, str]:
    path = dataset_dir / KAR_KNOWLEDGE_FILE
    if not path.exists():
        return {}
    wanted = set(item_ids)
    return {r["item_id"]: r["knowledge"] for r in read_jsonl(path) if r["item_id"] in wanted}


def plan_prompts(prompt_ids: list[str], params: Mapping, items: list[Item], dataset_dir: Path) -> list[PromptPlan]:
    """The plan of every prompt, in order. Raises MissingImages (nothing sent) when an image prompt
    has more items without an image than generate.max_missing_images allows."""
    plans = []
    for prompt_id in prompt_ids:
        without_image = check_image_coverage(prompt_id, items, params)
        released = released_kar_knowledge(dataset_dir, [i.item_id for i in items]) if prompt_id == "kar" else {}
        skipped = set(without_image) | set(released)
        plans.append(PromptPlan(prompt_id, [i for i in items if i.item_id not in skipped], released, without_image))
    return plans
