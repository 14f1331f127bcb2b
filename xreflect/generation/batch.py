"""Batch mode: generate a prompt's missing answers through the OpenAI Batch API (or `vllm run-batch`).

The Batch API costs half as much and has its own rate limits, at the price of waiting (up to 24 h).
One JSONL line per request not yet in the response cache, `custom_id` = its cache key, `body` = the
exact Chat Completions body the online path would send. Results are merged into the response cache,
so the normal stage (`dvc repro` / `dvc exp run`) then finds every answer cached and sends nothing.

    python -m xreflect.generation.batch prepare --prompt cot          # write .cache/batches/cot.jsonl only
    python -m xreflect.generation.batch submit  --prompt cot          # upload it and create the batch
    python -m xreflect.generation.batch poll    --prompt cot [--wait] # status (and wait until it ends)
    python -m xreflect.generation.batch merge   --prompt cot          # download results into the cache
    python -m xreflect.generation.batch run     --prompt cot          # all four, waiting in between
    python -m xreflect.generation.batch merge   --prompt cot --results out.jsonl   # from `vllm run-batch -o out.jsonl`

Submitting never pays twice: the state file (.cache/batches/<prompt>.state.json) and the batch's
metadata on the server carry an id of the request set (a hash of its cache keys). `submit` or `run`
for a request set that already has a pending or completed, not yet merged batch resumes that batch
instead of creating another, and refuses (naming the batch) to submit a different set while one is
still pending; `--force` submits anyway. Answers merged from a batch are priced at the batch price.

The same input file works with vLLM's offline batch runner:
    vllm run-batch -i .cache/batches/cot.jsonl -o out.jsonl --model <backbones.<name>.model>

Chained prompts (kar after kar_factors; xr_separate after its L_text/L_image prompts) need their
parents' response files: run the parents' batches, `dvc repro generate@<strategy>` for a strategy that uses the parent, then the child.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import openai

from xreflect.backends import create_backend
from xreflect.backends.base import GenerationError, Request
from xreflect.backends.openai_backend import OpenAIBackend, chat_body, response_from_body
from xreflect.backends.retry import api_stop
from xreflect.core.cli import run_stage
from xreflect.core.config import load_params, registry_entry
from xreflect.core.errors import EXIT_SERVER, StopRun
from xreflect.core.paths import DATASET_DIR, FILTERED_DIR
from xreflect.data.contract import ITEMS_FILE, read_items
from xreflect.generation.budget import BudgetExhausted, Prices, ledger_scope, stage_budget, worst_case_cost
from xreflect.core.paths import cache_dir
from xreflect.generation.cache import ResponseCache, request_key
from xreflect.generation.plan import plan_prompts

TERMINAL = {"completed", "failed", "expired", "cancelled"}
# A batch in one of these states is billed (or will be) and its answers are not merged yet.
LIVE = {"submitted", "validating", "in_progress", "finalizing", "completed"}


def request_set_id(keys) -> str:
    """Names a set of requests (their cache keys), whatever their order."""
    return hashlib.sha256("\n".join(sorted(keys)).encode("utf-8")).hexdigest()[:16]


class BatchConflict(StopRun):
    """A different batch for this prompt is still pending: submitting now could pay twice."""
    exit_code = EXIT_SERVER


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
                cache: ResponseCache, directory: Path, force: bool = False) -> tuple[Path, dict]:
    """Write <prompt>.jsonl and its state file (which request each custom_id stands for).

    A batch already submitted for the same request set stays in the state (it is resumed, not
    resubmitted); while one for another set is still pending this refuses, unless `force`."""
    lines = batch_lines(requests, backend, cache)
    by_key = {request_key(r, backend.identity(r)): r for r in requests}
    state = {"prompt": prompt_id, "input": str(directory / f"{prompt_id}.jsonl"), "batch_id": None,
             "status": "prepared", "request_set": request_set_id(line["custom_id"] for line in lines),
             "requests": {line["custom_id"]: [by_key[line["custom_id"]].template_id,
                                              by_key[line["custom_id"]].item_id] for line in lines}}
    earlier = _existing_state(directory, prompt_id)
    if earlier and earlier.get("batch_id") and earlier.get("status") in LIVE:
        if earlier.get("request_set") == state["request_set"]:
            state.update(batch_id=earlier["batch_id"], status=earlier["status"])
        elif not force:
            raise BatchConflict(
                f"batch {earlier['batch_id']} for prompt {prompt_id!r} ({len(earlier['requests'])} requests) is "
                f"{earlier['status']} and not merged yet; submitting the {len(lines)} requests missing now "
                "would pay again for those in both. Finish it first (`python -m xreflect.generation.batch poll "
                f"--prompt {prompt_id} --wait`, then `merge`), or pass --force to submit anyway.")
        else:
            state["abandoned"] = earlier.get("abandoned", []) + [earlier["batch_id"]]
    directory.mkdir(parents=True, exist_ok=True)
    path = Path(state["input"])
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    save_state(directory, prompt_id, state)
    return path, state


def _existing_state(directory: Path, prompt_id: str) -> dict | None:
    path = directory / f"{prompt_id}.state.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def save_state(directory: Path, prompt_id: str, state: dict) -> None:
    (directory / f"{prompt_id}.state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")


def load_state(directory: Path, prompt_id: str) -> dict:
    path = directory / f"{prompt_id}.state.json"
    if not path.exists():
        raise SystemExit(f"no batch prepared for prompt {prompt_id!r} ({path} missing); run "
                         f"`python -m xreflect.generation.batch prepare --prompt {prompt_id}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def submit(client, state: dict) -> str:
    """Upload the JSONL and create the batch; returns the batch id."""
    with open(state["input"], "rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h",
                                  metadata={"prompt": state["prompt"], "request_set": state["request_set"]})
    return batch.id


def find_submitted(client, state: dict) -> Any | None:
    """A batch on the server for the same prompt and request set that is pending or completed
    (its id may be missing locally: a crash between creating it and saving the state)."""
    try:
        listed = client.batches.list(limit=100)
    except Exception as error:  # noqa: BLE001 - a server without a batch list (vLLM) has nothing to find
        print(f"could not list the server's batches ({type(error).__name__}); relying on the local state",
              file=sys.stderr)
        return None
    for batch in getattr(listed, "data", None) or []:
        metadata = batch.metadata or {}
        if (metadata.get("prompt") == state["prompt"] and metadata.get("request_set") == state["request_set"]
                and batch.status in LIVE):
            return batch
    return None


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


def merge_results(lines: Iterable[str], state: Mapping, cache: ResponseCache, prices: Prices | None = None,
                  scope: str | None = None) -> tuple[int, int]:
    """Store each answer under its custom_id (= cache key); record failures. Returns (stored, failed).
    With `prices` and `scope`, what each answer cost (at the batch price) goes into the spending
    ledger of the whole-run budget.

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
                answer = response_from_body(response["body"])
                # marked so that the usage metric and the budget price it at the batch price
                answer = dataclasses.replace(answer, usage={**answer.usage, "batch": 1})
                cache.put(key, request, answer)
                if prices is not None and scope and prices.cost_of_usage(answer.model, answer.usage):
                    cache.record_spend(scope, template_id, prices.cost_of_usage(answer.model, answer.usage))
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
                  params: Mapping, cache: ResponseCache) -> None:
    """Refuse to submit a batch whose worst case (at the batch price) could break either budget."""
    keys = set(state["requests"])
    chosen = [r for r in requests if request_key(r, backend.identity(r)) in keys]
    budget = stage_budget(params, backend, chosen, cache)
    worst = sum(worst_case_cost(r, backend.identity(r), budget.prices) for r in chosen)
    worst *= budget.prices.batch_discount
    if budget.affordable([worst]) == 0:
        raise BudgetExhausted(f"batch for {state['prompt']!r} could cost up to ${worst:.4f} at the batch "
                              f"price, more than is left under {budget.reached()}; raise that budget to submit")
    print(f"batch {state['prompt']}: {len(keys)} requests, worst case ${worst:.4f}", file=sys.stderr)


def planned_requests(params: dict, prompt_id: str) -> list[Request]:
    """The prompt's requests under the same plan as the generate stage (xreflect.generation.plan):
    no request for released KAR knowledge or for items without an image; MissingImages (nothing
    written or sent) when too many items have no image."""
    items = read_items(FILTERED_DIR / ITEMS_FILE)
    (plan,) = plan_prompts([prompt_id], params, items, DATASET_DIR)
    return plan.requests(params, DATASET_DIR)


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except openai.APIError as error:  # a Batch API call the server refused: one message, an exit code
        raise api_stop(error) from error


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["prepare", "submit", "poll", "merge", "run"])
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--wait", action="store_true", help="poll: wait until the batch ends")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between polls")
    parser.add_argument("--results", help="merge: a local results file (vllm run-batch -o)")
    parser.add_argument("--backbone", help="use this backbone instead of params' `backbone`")
    parser.add_argument("--force", action="store_true",
                        help="submit/run: submit a new batch even though one for these requests is pending")
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
            requests = planned_requests(params, args.prompt)
            path, state = write_batch(args.prompt, requests, backend, cache, directory, args.force)
            print(f"wrote {path}: {len(state['requests'])} requests not in the cache", file=sys.stderr)
            if args.action == "prepare" or not state["requests"]:
                return
            if args.force and state["batch_id"]:  # a deliberate resubmit: keep the earlier id on record
                state.update(abandoned=state.get("abandoned", []) + [state["batch_id"]], batch_id=None)
            elif not state["batch_id"]:
                found = find_submitted(_client(backend), state)
                if found is not None:
                    state.update(batch_id=found.id, status=found.status)
            if state["batch_id"]:
                print(f"batch {state['batch_id']} for these {len(state['requests'])} requests is already "
                      f"{state['status']}: resuming it, not submitting again (--force submits a new one)",
                      file=sys.stderr)
            else:
                _check_budget(state, requests, backend, params, cache)
                state.update(batch_id=submit(_client(backend), state), status="submitted")
                print(f"submitted batch {state['batch_id']}", file=sys.stderr)
            save_state(directory, args.prompt, state)
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
        stored, failed = merge_results(lines, state, cache, Prices.from_config(backbone), ledger_scope(params))
        state["status"] = "merged"
        save_state(directory, args.prompt, state)
        print(f"merged into the cache: {stored} answers, {failed} failures (retried by the stage)",
              file=sys.stderr)
    finally:
        backend.close()
        cache.close()


if __name__ == "__main__":
    run_stage(main, "batch")
