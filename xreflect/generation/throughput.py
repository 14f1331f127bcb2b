"""Requests/s and tokens/s of a generation run, from the usage numbers of the answers.

A serving engine that batches shows it here: with more requests in flight, tokens/s grows while
each request's latency stays about the same. The clock starts when the first answered request was
sent (its arrival less its latency), so a server's start-up time does not count.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping


class Throughput:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started: float | None = None
        self.requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def add(self, usage: Mapping[str, int], latency_s: float = 0.0) -> None:
        if self.started is None:
            self.started = self.clock() - latency_s
        self.requests += 1
        self.prompt_tokens += int(usage.get("prompt_tokens", 0) or 0)
        self.completion_tokens += int(usage.get("completion_tokens", 0) or 0)

    def rates(self) -> dict:
        if self.started is None:
            return {"requests_per_s": 0.0, "tokens_per_s": 0.0, "output_tokens_per_s": 0.0}
        elapsed = max(self.clock() - self.started, 1e-9)
        return {"requests_per_s": round(self.requests / elapsed, 3),
                "tokens_per_s": round((self.prompt_tokens + self.completion_tokens) / elapsed, 1),
                "output_tokens_per_s": round(self.completion_tokens / elapsed, 1)}

    def summary(self) -> str:
        rates = self.rates()
        return (f"{rates['requests_per_s']:.2f} req/s, {rates['tokens_per_s']:.0f} tok/s "
                f"({rates['output_tokens_per_s']:.0f} out)")
