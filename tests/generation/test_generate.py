"""The response cache and the generation runner: cache hits, resume after an interruption,
failures under and over the threshold."""
from __future__ import annotations

import pytest

from xreflect.backends.base import Backend, GenerationError, Request, Response
from xreflect.generation.cache import ResponseCache, request_key
from xreflect.data.contract import Item
from xreflect.generation.requests import ParentText, build_requests
from xreflect.generation.runner import GenerationFailed, run_requests
from xreflect.paper.prompts import PROMPTS


class EchoBackend(Backend):
    """Answers with the upper-cased prompt; counts calls; can be told to die or fail."""
    provider = "test"

    def __init__(self, die_after: int | None = None, fail_items: set[str] = frozenset()):
        super().__init__("echo", {"provider": "test"})
        self.calls, self.die_after, self.fail_items = [], die_after, fail_items

    def identity(self, request):
        return {"provider": "test", "model": "echo-1"}

    def generate(self, requests):
        for index, request in enumerate(requests):
            if self.die_after is not None and len(self.calls) == self.die_after:
                raise KeyboardInterrupt  # the process is killed mid-stage
            self.calls.append(request.item_id)
            if request.item_id in self.fail_items:
                yield index, GenerationError("server said no")
            else:
                yield index, Response(request.prompt.upper(), "echo-1", {"completion_tokens": 3})


def items(n=5):
    return [Item(f"i{k}", f"Title {k}", f"description {k}", None) for k in range(n)]


def requests_for(prompt="llm_rec", n=5):
    return build_requests(PROMPTS[prompt], items(n), None, {}, {})


def test_rerun_is_all_cache_hits(tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    first = EchoBackend()
    records = run_requests(requests_for(), first, cache)
    assert len(first.calls) == 5 and records[2]["text"].startswith("THE DESCRIPTION OF AN ITEM")
    second = EchoBackend()
    assert run_requests(requests_for(), second, cache) == records and second.calls == []


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    path = tmp_path / "r.sqlite"
    with pytest.raises(KeyboardInterrupt):
        run_requests(requests_for(), EchoBackend(die_after=3), ResponseCache(path))
    resumed = EchoBackend()
    records = run_requests(requests_for(), resumed, ResponseCache(path))
    assert resumed.calls == ["i3", "i4"] and len(records) == 5


def test_key_changes_with_prompt_image_and_parents():
    base = Request("cot", 1, "p", "i", b"img")
    identity = {"model": "m"}
    variants = [Request("cot", 1, "q", "i", b"img"), Request("cot", 2, "p", "i", b"img"),
                Request("cot", 1, "p", "i", b"other"), Request("cot", 1, "p", "i", b"img", parents=("k",))]
    keys = {request_key(r, identity) for r in [base, *variants]}
    assert len(keys) == 5
    assert request_key(base, {"model": "n"}) != request_key(base, identity)
    # The item id alone does not change the answer: identical requests share one response.
    assert request_key(Request("cot", 1, "p", "other", b"img"), identity) == request_key(base, identity)


def test_chained_prompt_carries_parent_keys():
    parents = {"r_text": {f"i{k}": ParentText(f"t{k}", f"kt{k}") for k in range(2)},
               "r_image": {f"i{k}": ParentText(f"v{k}", f"kv{k}") for k in range(2)}}
    reqs = build_requests(PROMPTS["xr_separate"], items(2), None, {}, parents)
    assert reqs[1].parents == ("kt1", "kv1")
    assert reqs[1].prompt.startswith("This is the item description: t1. This is the description of the item image: v1.")


def test_failures_under_threshold_fall_back_and_are_retried(tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    records = run_requests(requests_for(), EchoBackend(fail_items={"i1"}), cache, max_failures=0.2)
    assert records[1]["failed"] and records[1]["text"] == "description 1"
    assert [f["item_id"] for f in cache.failures()] == ["i1"]
    retry = EchoBackend()
    records = run_requests(requests_for(), retry, cache)
    assert retry.calls == ["i1"] and not records[1]["failed"] and cache.failures() == []


def test_failures_over_threshold_fail_the_stage_keeping_answers(tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    with pytest.raises(GenerationFailed, match="2 of 5 requests failed"):
        run_requests(requests_for(), EchoBackend(fail_items={"i1", "i2"}), cache, max_failures=0.2)
    assert len(cache) == 3
