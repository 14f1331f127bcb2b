"""The response cache: what the key covers, and several processes writing at once."""
from __future__ import annotations

import multiprocessing
from dataclasses import replace

from xreflect.backends.base import Request, Response
from xreflect.generation.cache import ResponseCache, request_key

IDENTITY = {"provider": "openai", "model": "vision-1", "revision": None, "temperature": 0.0,
            "max_tokens": 512, "seed": 1}
REQUEST = Request("xr_separate", 1, "This is the item description: a. ...", "i0", b"png-bytes", "image/png",
                  parents=("k-text", "k-image"))


def test_key_changes_with_everything_that_changes_the_answer():
    base = request_key(REQUEST, IDENTITY)
    assert request_key(replace(REQUEST), dict(IDENTITY)) == base  # same inputs, same key
    assert request_key(replace(REQUEST, item_id="other", image_mime="image/jpeg"), IDENTITY) == base
    variants = [replace(REQUEST, template_id="xr_combined"), replace(REQUEST, template_version=2),
                replace(REQUEST, prompt=REQUEST.prompt + " "), replace(REQUEST, image=b"png-bytez"),
                replace(REQUEST, image=None), replace(REQUEST, parents=("k-text", "k-image-2"))]
    identities = [{**IDENTITY, name: value} for name, value in
                  [("provider", "hf"), ("model", "vision-2"), ("revision", "abc"), ("temperature", 0.7),
                   ("max_tokens", 256), ("seed", 2)]]
    keys = {request_key(r, IDENTITY) for r in variants} | {request_key(REQUEST, i) for i in identities}
    assert len(keys) == 12 and base not in keys


def _writer(path: str, worker: int, n: int) -> None:
    cache = ResponseCache(path)
    for k in range(n):
        request = Request("cot", 1, f"p{worker}-{k}", f"{worker}-{k}")
        cache.put(f"{worker}-{k}", request, Response(f"answer {worker}-{k}", "m", {"completion_tokens": k}))
        if k % 10 == 0:
            cache.record_failure(f"fail-{k}", request, f"worker {worker}")
    cache.close()


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "r.sqlite")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(path, w, 100)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
    assert [p.exitcode for p in workers] == [0] * 4
    cache = ResponseCache(path)
    assert len(cache) == 400
    hits = cache.get_many(f"{w}-{k}" for w in range(4) for k in range(100))
    assert hits["3-99"].text == "answer 3-99" and hits["3-99"].usage == {"completion_tokens": 99}
    # the same 10 failure keys written by all 4 workers: one row each, attempts counted
    failures = cache.failures("cot")
    assert len(failures) == 10 and sorted(f["attempts"] for f in failures) == [4] * 10
