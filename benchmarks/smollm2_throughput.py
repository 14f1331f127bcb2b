"""First load and throughput of backbone `smollm2` (not a test: run it by hand, on an idle machine).

    python -m benchmarks.smollm2_throughput                       # both modes, 16 prompts, 8 in flight
    python -m benchmarks.smollm2_throughput --fresh --modes cb    # time the weights preparation too

Runs the backbone exactly as a generate stage does (xreflect/backends/served.py: weights prepared,
server started and waited for, requests through the OpenAI-compatible client with `concurrency`
in flight), once per mode: `cb` is the params.yaml command (`--continuous-batching`), `sequential`
the same command without it. Prompts are LLM-Rec's template over synthetic item descriptions, all
answered to `--max-tokens` or the model's own stop. Each mode gets its own empty response cache and
a freshly started server (`--fresh` also prepares the weights again in an empty cache directory).
Prints, per mode: weights preparation, server start-up to ready, wall time of the requests,
completion tokens and tokens/s (completion tokens / wall time), and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from xreflect.backends import create_backend
from xreflect.backends.base import Request
from xreflect.backends.local_weights import PackagedGGUF, prepare
from xreflect.generation.cache import ResponseCache
from xreflect.core.config import load_params
from xreflect.generation.runner import run_requests
from xreflect.paper.prompts import PROMPTS
from xreflect.backends.server_cli import stop

COLOURS = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
GENRES = ["drama", "comedy", "thriller", "documentary", "western", "musical", "horror", "romance"]


def prompts(count: int) -> list[Request]:
    spec = PROMPTS["llm_rec"]
    requests = []
    for k in range(count):
        description = (f"A {GENRES[k % len(GENRES)]} poster in {COLOURS[k * 3 % len(COLOURS)]} and "
                       f"{COLOURS[(k * 5 + 1) % len(COLOURS)]}, showing {k % 4 + 1} people by a river at dusk")
        requests.append(Request(spec.id, spec.version, spec.render(description=description), f"b{k}",
                                fields={"description": description}))
    return requests


def run_mode(mode: str, entry: dict, count: int) -> dict:
    entry = json.loads(json.dumps(entry))
    command = entry["serve"]["command"]
    if mode == "sequential":
        entry["serve"]["command"] = [arg for arg in command if arg != "--continuous-batching"]
    elif "--continuous-batching" not in command:
        entry["serve"]["command"] = command + ["--continuous-batching"]
    started = time.monotonic()
    prepare(PackagedGGUF.from_config("smollm2", entry))
    prepared_s = time.monotonic() - started
    backend = create_backend("smollm2", {"smollm2": entry})
    started = time.monotonic()
    backend.start()
    ready_s = time.monotonic() - started
    with tempfile.TemporaryDirectory() as scratch:
        cache = ResponseCache(Path(scratch) / "responses.sqlite")
        started = time.monotonic()
        records = run_requests(prompts(count), backend, cache, label=f"smollm2 {mode}")
        wall_s = time.monotonic() - started
        usage = [cache.get_many([r["key"]])[r["key"]].usage for r in records]
        cache.close()
    backend.close()
    stop(["smollm2"])
    completion = sum(u.get("completion_tokens", 0) for u in usage)
    return {"mode": mode, "prepare_s": round(prepared_s, 1), "server_ready_s": round(ready_s, 1),
            "requests": count, "in_flight": entry.get("concurrency"), "max_tokens": entry.get("max_tokens"),
            "wall_s": round(wall_s, 1), "completion_tokens": completion,
            "prompt_tokens": sum(u.get("prompt_tokens", 0) for u in usage),
            "tokens_per_s": round(completion / wall_s, 2), "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["cb", "sequential"], choices=["cb", "sequential"])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=None, help="default: params.yaml's")
    parser.add_argument("--max-tokens", type=int, default=None, help="default: params.yaml's")
    parser.add_argument("--fresh", action="store_true", help="prepare the weights in an empty cache directory")
    args = parser.parse_args()
    entry = dict(load_params()["backbones"]["smollm2"])
    if args.concurrency:
        entry["concurrency"] = args.concurrency
    if args.max_tokens:
        entry["max_tokens"] = args.max_tokens
    if args.fresh:
        os.environ["XREFLECT_CACHE_DIR"] = tempfile.mkdtemp(prefix="smollm2-bench-")
    for mode in args.modes:
        print(json.dumps(run_mode(mode, entry, args.requests)), flush=True)


if __name__ == "__main__":
    main()
