"""Batch mode: generate a prompt's missing answers through the OpenAI Batch API (or `vllm run-batch`).

The Batch API costs half as much and has its own rate limits, at the price of waiting (up to 24 h).
One JSONL line per request not yet in the response cache, `custom_id` = its cache key, `body` = the
exact Chat Completions body the online path would send. Results are merged into the response cache,
so the normal stage (`dvc repro` / `dvc exp run`) then finds every answer cached and sends nothing.

    python -m xreflect.batch prepare --prompt cot          # write .cache/batches/cot.jsonl only
    python -m xreflect.batch submit  --prompt cot          # upload it and create the batch
    python -m xreflect.batch poll    --prompt cot [--wait] # status (and wait until it ends)
    python -m xreflect.batch merge   --prompt cot          # download results into the cache
    python -m xreflect.batch run     --prompt cot          # all four, waiting in between
    python -m xreflect.batch merge   --prompt cot --results out.jsonl   # from `vllm run-batch -o out.jsonl`

The same input file works with vLLM's offline batch runner:
    vllm run-batch -i .cache/batches/cot.jsonl -o out.jsonl --model <backbones.<name>.model>

Chained prompts (kar after kar_factors; xr_separate after its L_text/L_image prompts) need their
parents' response files: run the parents' batches, `dvc repro generate_<parent>`, then the child.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from xreflect.backends import create_backend
from xreflect.backends.base import GenerationError, Request
from xreflect.backends.openai_backend import OpenAIBackend, chat_body, response_from_body
from xreflect.cache import ResponseCache, cache_dir, request_key
from xreflect.cost import Budget, Prices, worst_case_cost

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def batch_dir() -> Path:
    return cache_dir() / "batches"


def batch_lines(requests: list[Request], backend: OpenAIBackend, cache: ResponseCache) -> list[dict]:
    """One Batch API task per request whose answer is not cached yet."""
    keyed = [(request_key(request, backend.identity(request)), request) for request in requests]
    cached = cache.get_many(key for key, _ in keyed)
    lines, seen = [], set()
    for key, request in keyed:
        if key not in cached and key not in seen:
            seen.add(key)
            lines.append({"custom_id": key, "method": "POST", "url": "/v1/chat/completions",
                          "body": chat_body(request, backend.identity(request))})
    return lines


def write_batch(prompt_id: str, requests: list[Request], backend: OpenAIBackend,
                cache: ResponseCache, directory: Path) -> tuple[Path, dict]:
    """Write <prompt>.jsonl and its state file (which request each custom_id stands for)."""
    lines = batch_lines(requests, backend, cache)
    by_key = {request_key(r, backend.identity(r)): r for r in requests}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{prompt_id}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    state = {"prompt": prompt_id, "input": str(path), "batch_id": None, "status": "prepared",
             "requests": {line["custom_id"]: [by_key[line["custom_id"]].template_id,
                                              by_key[line["custom_id"]].item_id] for line in lines}}
    save_state(directory, prompt_id, state)
    return path, state


def save_state(directory: Path, prompt_id: str, state: dict) -> None:
    (directory / f"{prompt_id}.state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")


def load_state(directory: Path, prompt_id: str) -> dict:
    path = directory / f"{prompt_id}.state.json"
    if not path.exists():
        raise SystemExit(f"no batch prepared for prompt {prompt_id!r} ({path} missing); run "
                         f"`python -m xreflect.batch prepare --prompt {prompt_id}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def submit(client, state: dict) -> str:
    """Upload the JSONL and create the batch; returns the batch id."""
    with open(state["input"], "rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"prompt": state["prompt"]})
    return batch.id


def poll(client, batch_id: str, wait: bool, interval_s: float = 30.0) -> Any:
    while True:
        batch = client.batches.retrieve(batch_id)
        counts = batch.request_counts
        print(f"batch {batch_id}: {batch.status}" + (f" ({counts.completed}/{counts.total} done, "
              f"{counts.failed} failed)" if counts else ""), file=sys.stderr)
        if not wait or batch.status in TERMINAL:
            return batch
        time.sleep(interval_s)


def download(client, batch) -> list[str]:
    """The result lines of a finished batch: answers and per-request errors."""
    lines: list[str] = []
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            lines += client.files.content(file_id).text.splitlines()
    return lines


def merge_results(lines: Iterable[str], state: Mapping, cache: ResponseCache) -> tuple[int, int]:
    """Store each answer under its custom_id (= cache key); record failures. Returns (stored, failed).

    Reads both the OpenAI format and `vllm run-batch` output (the same line shape)."""
    stored = failed = 0
    for line in lines:
        if not line.strip():
            continue
        result = json.loads(line)
        key = result["custom_id"]
        if key not in state["requests"]:
            print(f"skipping result {key[:12]}...: not part of this batch", file=sys.stderr)
            continue
        template_id, item_id = state["requests"][key]
        request = Request(template_id, 0, "", item_id)  # only template_id and item_id are stored
        response = result.get("response") or {}
        error = result.get("error")
        if error is None and response.get("status_code") == 200:
            try:
                cache.put(key, request, response_from_body(response["body"]))
                stored += 1
                continue
            except GenerationError as problem:
                error = str(problem)
        cache.record_failure(key, request, f"batch: {error or response.get('body')}")
        failed += 1
    return stored, failed


def _client(backend: OpenAIBackend):
    (client, *_) = backend._connect()  # a batch lives on one server: the first base URL
    return client


def _check_budget(state: dict, requests: list[Request], backend: OpenAIBackend,
                  backbone: Mapping, settings: Mapping) -> None:
    prices = Prices.from_config(backbone)
    keys = set(state["requests"])
    worst = sum(worst_case_cost(r, backend.identity(r), prices) for r in requests
                if request_key(r, backend.identity(r)) in keys)
    worst *= float(backbone.get("batch_discount", 1.0))
    budget = Budget(settings.get("budget_usd_per_prompt"), prices)
    if budget.limit_usd is not None and worst > budget.limit_usd:
        raise SystemExit(f"batch for {state['prompt']!r} could cost up to ${worst:.4f}, over "
                         f"generate.budget_usd_per_prompt=${budget.limit_usd:.2f}; raise it to submit")
    print(f"batch {state['prompt']}: {len(keys)} requests, worst case ${worst:.4f}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    from xreflect.config import registry_entry, load_params
    from xreflect.data.contract import ITEMS_FILE, read_items
    from xreflect.generate import prompt_requests
    from xreflect.image_guard import MissingImages
    from xreflect.pipeline import DATASET_DIR, FILTERED_DIR

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["prepare", "submit", "poll", "merge", "run"])
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--wait", action="store_true", help="poll: wait until the batch ends")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between polls")
    parser.add_argument("--results", help="merge: a local results file (vllm run-batch -o)")
    parser.add_argument("--backbone", help="use this backbone instead of params' `backbone`")
    args = parser.parse_args(argv)
    params = load_params()
    params["backbone"] = args.backbone or params.get("backbone")
    name, backbone = registry_entry(params, "backbone", "backbones")
    backend = create_backend(name, params.get("backbones") or {})
    if not isinstance(backend, OpenAIBackend):
        raise SystemExit(f"batch mode needs an OpenAI-compatible backbone; {name!r} is "
                         f"provider {backbone.get('provider')!r}")
    directory, cache = batch_dir(), ResponseCache()
    try:
        if args.action in ("prepare", "submit", "run"):
            try:  # the image guard: nothing is written or sent when too many items have no image
                requests = prompt_requests(args.prompt, params, read_items(FILTERED_DIR / ITEMS_FILE), DATASET_DIR)
            except MissingImages as err:
                raise SystemExit(str(err)) from None
            path, state = write_batch(args.prompt, requests, backend, cache, directory)
            print(f"wrote {path}: {len(state['requests'])} requests not in the cache", file=sys.stderr)
            if args.action == "prepare" or not state["requests"]:
                return
            _check_budget(state, requests, backend, backbone, params.get("generate") or {})
            state.update(batch_id=submit(_client(backend), state), status="submitted")
            save_state(directory, args.prompt, state)
            print(f"submitted batch {state['batch_id']}", file=sys.stderr)
            if args.action == "submit":
                return
        state = load_state(directory, args.prompt)
        if args.results:
            lines = Path(args.results).read_text(encoding="utf-8").splitlines()
        else:
            if not state.get("batch_id"):
                raise SystemExit(f"batch for {args.prompt!r} was never submitted; use submit or --results")
            batch = poll(_client(backend), state["batch_id"], args.wait or args.action == "run", args.interval)
            state["status"] = batch.status
            save_state(directory, args.prompt, state)
            if args.action == "poll":
                return
            if batch.status != "completed":
                raise SystemExit(f"batch {state['batch_id']} is {batch.status}; merge when it is completed")
            lines = download(_client(backend), batch)
        stored, failed = merge_results(lines, state, cache)
        print(f"merged into the cache: {stored} answers, {failed} failures (retried by the stage)",
              file=sys.stderr)
    finally:
        backend.close()
        cache.close()


if __name__ == "__main__":
    main()
