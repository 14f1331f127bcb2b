"""The requests of one prompt: its template filled from each item and from its parents' responses.

A chained prompt (KAR after its factor list, cross-reflection separate after L_text and L_image) is
built from the responses its parents wrote into the strategy's response directory; the dry run and
batch mode build it before those exist, with a placeholder in their place.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from xreflect.backends.base import Request
from xreflect.core.config import ParamsError, dataset_entry
from xreflect.core.io import read_jsonl
from xreflect.core.paths import RESPONSES_DIR
from xreflect.data.contract import Item, read_image
from xreflect.paper.prompts import PROMPTS, PromptSpec


@dataclass(frozen=True)
class ParentText:
    """A value a chained prompt is built from: a response (with its cache key) or raw item text."""
    text: str
    key: str | None = None


def build_requests(spec: PromptSpec, items: list[Item], dataset_dir: Path,
                   shared: Mapping[str, ParentText],
                   parents: Mapping[str, Mapping[str, ParentText]]) -> list[Request]:
    """One request per item. `shared` holds dataset-level fields (item_kind, KAR factors);
    `parents` maps a field name to each item's parent text (e.g. r_text -> {item_id: ...})."""
    requests = []
    for item in items:
        values = {"title": ParentText(item.title), "description": ParentText(item.description),
                  **shared, **{name: by_item[item.item_id] for name, by_item in parents.items()}}
        fields = {name: values[name].text for name in spec.fields}
        parent_keys = tuple(values[name].key for name in spec.fields if values[name].key)
        image, mime = read_image(item, dataset_dir) if spec.image else (None, None)
        requests.append(Request(spec.id, spec.version, spec.render(**fields), item.item_id, image, mime,
                                {**fields, "title": item.title, "description": item.description},
                                parent_keys))
    return requests


def parent_texts(path: Path) -> dict[str, ParentText]:
    return {r["item_id"]: ParentText(r["text"], r["key"]) for r in read_jsonl(path)}


def separate_inputs(params: Mapping) -> dict[str, str]:
    """L_text and L_image of cross-reflection separate: {"r_text": source, "r_image": source}."""
    chosen = (params.get("generate") or {}).get("separate_inputs") or {}
    per_item = sorted(p for p in PROMPTS if PROMPTS[p].per_item)
    for name in ("r_text", "r_image"):
        source = chosen.get(name)
        if not (source in per_item or (source == "description" and name == "r_text")):
            raise ParamsError(f"params.yaml: generate.separate_inputs.{name}={source!r}; allowed "
                              f"values are per-item prompt ids {per_item}"
                              + (" or 'description'" if name == "r_text" else ""))
    return {name: chosen[name] for name in ("r_text", "r_image")}


def parent_prompts(prompt_id: str, params: Mapping) -> list[str]:
    """The prompts whose responses `prompt_id` is built from."""
    if prompt_id == "kar":
        return ["kar_factors"]
    if set(PROMPTS[prompt_id].parents) & {"r_text", "r_image"}:
        return [s for s in separate_inputs(params).values() if s != "description"]
    return []


def prompts_for(sources: list[str], params: Mapping) -> list[str]:
    """Every prompt a strategy's sources need, parents before children (each once)."""
    order: list[str] = []

    def visit(prompt_id: str) -> None:
        for parent in parent_prompts(prompt_id, params):
            visit(parent)
        if prompt_id not in order:
            order.append(prompt_id)

    for source in sources:
        if source in PROMPTS:
            visit(source)
    return order


def _find_parent(source: str, responses_dir: Path | None) -> Path | None:
    """A parent prompt's response file: in `responses_dir` (a strategy's, inside its stage), or in
    any strategy's directory (dry runs and batch files, outside the pipeline)."""
    if responses_dir is not None:
        return responses_dir / f"{source}.jsonl"
    return next(iter(sorted(RESPONSES_DIR.glob(f"*/{source}.jsonl"))), None)


def _parent_file(source: str, placeholder: str | None, responses_dir: Path | None,
                 fresh: bool = False) -> dict[str, ParentText] | None:
    """A parent prompt's responses by item, or None (dry run) when they are not generated yet."""
    path = _find_parent(source, responses_dir)
    if placeholder is not None and (fresh or path is None or not path.exists()):
        return None
    if path is None or not path.exists():
        raise FileNotFoundError(f"{path or RESPONSES_DIR / '<strategy>' / (source + '.jsonl')}: the "
                                f"responses of {source!r} are missing; generate them first (dvc repro)")
    return parent_texts(path)


def inputs_of(prompt_id: str, params: Mapping, items: list[Item],
              placeholder: str | None = None, responses_dir: Path | None = None,
              fresh: bool = False) -> tuple[dict, dict]:
    """Dataset-level fields and per-item parent responses that `prompt_id` is built from.

    Parents are read from `responses_dir` (the strategy's, inside its generate stage) or, when it
    is None, from whichever strategy generated them. `placeholder` is for estimates made before the
    parents exist (xreflect.generation.estimate): it stands in for each missing parent response, so the prompt's
    length can be estimated; no request built from it is ever sent (its parent key
    `placeholder:<field>` never matches a cache entry). `fresh` stands it in for every parent (an
    estimate for a dataset not generated yet)."""
    _, dataset = dataset_entry(dict(params))
    shared = {"item_kind": ParentText(str(dataset.get("item_kind", "an item")))}
    parents: dict[str, dict[str, ParentText]] = {}
    stand_in = lambda field: ParentText(placeholder or "", f"placeholder:{field}")  # noqa: E731
    if prompt_id == "kar":
        path = _find_parent("kar_factors", responses_dir)
        if placeholder is not None and (fresh or path is None or not path.exists()):
            shared["factors"] = stand_in("factors")
        else:
            (factors,) = read_jsonl(path)
            shared["factors"] = ParentText(factors["factors"], factors["key"])
    if set(PROMPTS[prompt_id].parents) & {"r_text", "r_image"}:
        for name, source in separate_inputs(params).items():
            if source == "description":
                parents[name] = {item.item_id: ParentText(item.description) for item in items}
            else:
                found = _parent_file(source, placeholder, responses_dir)
                parents[name] = found if found is not None else {i.item_id: stand_in(name) for i in items}
    return shared, parents


def prompt_requests(prompt_id: str, params: Mapping, items: list[Item], dataset_dir: Path,
                    placeholder: str | None = None, responses_dir: Path | None = None,
                    fresh: bool = False) -> list[Request]:
    """Every request of one prompt for `items`: one per item, or a single one for a dataset-level
    prompt. Which items get a request is the plan's decision (xreflect.generation.plan)."""
    spec = PROMPTS[prompt_id]
    shared, parents = inputs_of(prompt_id, params, items, placeholder, responses_dir, fresh)
    if spec.per_item:
        return build_requests(spec, items, dataset_dir, shared, parents)
    fields = {name: shared[name].text for name in spec.fields}
    return [Request(spec.id, spec.version, spec.render(**fields), None, fields=fields)]
