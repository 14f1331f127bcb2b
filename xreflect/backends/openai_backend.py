"""Any OpenAI-compatible Chat Completions server: OpenAI itself, vLLM, lmdeploy, Ollama, LM Studio.

Images travel inline as base64 data URLs, so a server needs no access to our files. Where the
server is and who we are come from the environment, never from params (they change no answer and
must stay out of git): `$OPENAI_BASE_URL` (or the variable named by `base_url_env`) may hold several
URLs separated by commas or spaces, and requests are spread over all of them; `$OPENAI_API_KEY`
(or `api_key_env`) is the key. Each server gets at most `concurrency` requests in flight; a request
takes whichever server has a free slot first, so a faster server takes more work, and a retry
usually lands on another server.

Errors: see xreflect.backends.retry. Transient ones are retried here; an item that still fails is
yielded as a GenerationError (recorded in the cache and retried on the next run); authentication
and quota errors raise FatalBackendError and stop the run. A circuit breaker stops the run when a
server gives no answer `breaker_after` times in a row (connection refused, timeouts) instead of
retrying every item against it, and a server whose 200 answers are not Chat Completions JSON (a
proxy's HTML page) stops the run after ALIEN_ANSWERS of them.
"""
from __future__ import annotations

import base64
import json
import os
import queue
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from xreflect.core.config import ParamsError
from xreflect.backends.base import Backend, GenerationError, NotSent, Request, Response
from xreflect.backends.retry import (AuthError, Decision, FatalBackendError, NotOpenAIServer, QuotaError,
                                     RetryPolicy, ServerUnreachable, classify)

OPENAI_URL = "https://api.openai.com/v1"
# Prompts the paper answers with a text-only model (GPT-4): KAR and LLM-Rec. Everything else,
# X-REFLECT's separate step included, goes to the vision model, as in the paper.
DEFAULT_TEXT_PROMPTS = ("kar_factors", "kar", "llm_rec")


def split_urls(value: str) -> list[str]:
    return [url.rstrip("/") for url in re.split(r"[,\s]+", value or "") if url]


def data_url(request: Request) -> str:
    mime = request.image_mime or "image/png"
    return f"data:{mime};base64,{base64.b64encode(request.image).decode('ascii')}"


def chat_messages(request: Request, detail: str | None) -> list[dict]:
    """One user turn: the rendered prompt, and the image (if any) after it."""
    if request.image is None:
        return [{"role": "user", "content": request.prompt}]
    image_url: dict[str, Any] = {"url": data_url(request)}
    if detail:
        image_url["detail"] = detail
    return [{"role": "user", "content": [{"type": "text", "text": request.prompt},
                                         {"type": "image_url", "image_url": image_url}]}]


def chat_body(request: Request, identity: Mapping[str, Any]) -> dict:
    """The Chat Completions request body; the same body goes into Batch API files."""
    body: dict[str, Any] = {"model": identity["model"],
                            "messages": chat_messages(request, identity.get("image_detail")),
                            "max_tokens": identity["max_tokens"], "temperature": identity["temperature"]}
    for name in ("seed", "top_p"):
        if identity.get(name) is not None:
            body[name] = identity[name]
    return body


# 200 answers in a row from one server that are not Chat Completions JSON before the run stops.
ALIEN_ANSWERS = 3


def openai_payload(content: bytes) -> dict | None:
    """The JSON object of a Chat Completions answer, or None when the body is something else."""
    try:
        payload = json.loads(content)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) and "choices" in payload else None


def body_excerpt(content: bytes, size: int = 120) -> str:
    return repr(content[:size].decode("utf-8", "replace")) + ("..." if len(content) > size else "")


@dataclass
class ServerHealth:
    """One server's recent record, for the circuit breaker."""
    in_a_row: int = 0     # connection failures / timeouts since the last answer
    alien: int = 0        # 200 answers in a row that were not Chat Completions JSON
    out: bool = False     # taken out of this run

    def answered(self) -> None:
        self.in_a_row = self.alien = 0

    def failed(self) -> None:
        self.in_a_row += 1


def response_from_body(body: Mapping[str, Any], latency_s: float = 0.0) -> Response:
    """A Response from a Chat Completions JSON body; GenerationError if it carries no text."""
    choices = body.get("choices") or []
    text = (choices[0].get("message") or {}).get("content") if choices else None
    if not text:
        reason = choices[0].get("finish_reason") if choices else "no choices"
        raise GenerationError(f"empty answer (finish_reason={reason})")
    usage = {k: int(v) for k, v in (body.get("usage") or {}).items() if isinstance(v, (int, float))}
    return Response(text, str(body.get("model") or ""), usage, latency_s)


class OpenAIBackend(Backend):
    provider = "openai"

    def __init__(self, name: str, config: Mapping[str, Any]):
        super().__init__(name, config)
        if not config.get("model"):
            raise ParamsError(f"params.yaml: backbones.{name}.model is missing; name a vision model id")
        self.retry = RetryPolicy.from_config(config)
        self.concurrency = int(config.get("concurrency", 8))
        self.timeout_s = float(config.get("timeout_s", 120))
        # Circuit breaker: connection failures or timeouts in a row (no answer in between) after
        # which a server is taken out of the run, and the run stops when none is left.
        self.breaker_after = int(config.get("breaker_after", 5))
        self._health: list[ServerHealth] = []
        self.text_prompts = set(config.get("text_prompts", DEFAULT_TEXT_PROMPTS))
        self.stats: Counter = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._clients: list | None = None

    # ---- identity: everything that changes the answer (never the server URL or the key) ----
    def model_for(self, request: Request) -> str:
        if request.template_id in self.text_prompts and request.image is None:
            return str(self.config.get("text_model") or self.config["model"])
        return str(self.config["model"])

    def identity(self, request: Request) -> dict:
        identity = {"provider": self.provider, "model": self.model_for(request),
                    "revision": self.config.get("revision"),
                    "temperature": float(self.config.get("temperature", 0.0)),
                    "max_tokens": int(self.config.get("max_tokens", 512)),
                    "seed": self.config.get("seed"), "top_p": self.config.get("top_p")}
        if request.image is not None:
            identity["image_detail"] = self.config.get("image_detail")
        return identity

    # ---- servers ----
    def base_urls(self) -> list[str]:
        variable = self.config.get("base_url_env", "OPENAI_BASE_URL")
        return split_urls(os.environ.get(variable, "")) or [OPENAI_URL]

    def api_key(self, urls: list[str]) -> str:
        variable = self.config.get("api_key_env", "OPENAI_API_KEY")
        key = os.environ.get(variable)
        if key:
            return key
        if any(url.startswith(OPENAI_URL) for url in urls):
            raise FatalBackendError(
                f"backbone {self.name!r}: ${variable} is not set. Export your OpenAI API key, or point "
                f"${self.config.get('base_url_env', 'OPENAI_BASE_URL')} at an OpenAI-compatible server "
                "(vLLM, lmdeploy, Ollama) that needs none.")
        return "EMPTY"  # local servers started without --api-key accept any key

    def _connect(self) -> list:
        if self._clients is None:
            import openai

            urls = self.base_urls()
            key = self.api_key(urls)
            # max_retries=0: retries are ours (counted, jittered, and never on auth/quota errors).
            self._clients = [openai.OpenAI(base_url=url, api_key=key, timeout=self.timeout_s, max_retries=0)
                             for url in urls]
            print(f"[{self.name}] {len(urls)} server(s), {self.concurrency} in flight each: "
                  + ", ".join(urls), file=sys.stderr)
        return self._clients

    # ---- generation ----
    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Response | GenerationError]]:
        clients = self._connect()
        slots: queue.Queue[int] = queue.Queue()
        for _ in range(self.concurrency):
            for server in range(len(clients)):
                slots.put(server)  # interleaved, so the first requests fan out over all servers
        self._stop.clear()
        self._health = [ServerHealth() for _ in clients]
        pool = ThreadPoolExecutor(max_workers=self.concurrency * len(clients), thread_name_prefix=self.name)
        futures: dict[Future, int] = {pool.submit(self._answer, request, slots): index
                                      for index, request in enumerate(requests)}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    yield futures[future], future.result()  # FatalBackendError propagates here
        finally:
            # Interrupted, fatal error or done: send nothing more; requests in flight are dropped.
            self._stop.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def _take_slot(self, slots: queue.Queue) -> int | None:
        """A server with a free slot, or None once the run is stopping."""
        while not self._stop.is_set():
            try:
                return slots.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def request_body(self, request: Request) -> dict:
        """What is sent for `request`: the Chat Completions body of its identity."""
        return chat_body(request, self.identity(request))

    def _answer(self, request: Request, slots: queue.Queue) -> Response | GenerationError:
        body = self.request_body(request)
        attempt = 0
        while True:
            server = self._take_slot(slots)
            if server is None:
                return NotSent("not sent: the run stopped")
            started = time.monotonic()
            stop: FatalBackendError | None = None
            try:
                if self._stop.is_set():  # stopped while this request waited for a slot
                    return NotSent("not sent: the run stopped")
                self._count("requests_sent")
                raw = self._clients[server].chat.completions.with_raw_response.create(**body)
                payload = openai_payload(raw.content)
                if payload is None:
                    stop = self._alien_answer(server, raw)
                    decision = Decision(retry=False, reason=f"not an OpenAI answer: {body_excerpt(raw.content)}")
                else:
                    with self._lock:
                        self._health[server].answered()
                    return response_from_body(payload, time.monotonic() - started)
            except GenerationError as error:
                return error
            except Exception as error:  # noqa: BLE001 - classified below, never swallowed blindly
                decision = classify(error)
                if decision.fatal:
                    stop = decision.stop(self._fatal_message(server, decision))
                elif decision.unreachable:
                    stop = self._unreachable(server, decision)
            finally:
                if stop is not None:
                    self._stop.set()  # before the slot goes back, so no other request starts
                if not self._health[server].out:
                    slots.put(server)
            if stop is not None:
                raise stop
            attempt += 1
            if not decision.retry or attempt >= self.retry.max_attempts:
                self._count("failed")
                return GenerationError(f"{decision.reason} (after {attempt} attempt(s))")
            self._count("retries")
            self._stop.wait(self.retry.delay(attempt - 1, decision.retry_after))

    # ---- stopping the run: fatal answers, the circuit breaker, a server that is not an OpenAI API ----
    def _fatal_message(self, server: int, decision: Decision) -> str:
        url, key_env = self.base_urls()[server], self.config.get("api_key_env", "OPENAI_API_KEY")
        fix = {AuthError: f"check ${key_env} (the key this server expects)",
               QuotaError: "add credit to the account or use another key",
               }.get(decision.stop, f"check that backbones.{self.name}.model / text_model name a model this server serves")
        return (f"backbone {self.name!r} ({url}): {decision.reason}. Nothing more is sent; answers so far "
                f"are cached. To fix: {fix}, then rerun.")

    def _unreachable(self, server: int, decision: Decision) -> ServerUnreachable | None:
        """Count a connection failure or timeout; take the server out after `breaker_after` in a row,
        and stop the run (the error to raise) once no server is left."""
        with self._lock:
            health = self._health[server]
            health.failed()
            if health.out or health.in_a_row < self.breaker_after:
                return None
            health.out = True
            left = [url for url, h in zip(self.base_urls(), self._health) if not h.out]
        url = self.base_urls()[server]
        if decision.unreachable == "timeout":
            why = (f"{health.in_a_row} requests in a row timed out after {self.timeout_s:g} s. The server "
                   f"is too slow for this load: raise backbones.{self.name}.timeout_s (now {self.timeout_s:g}) "
                   f"or lower backbones.{self.name}.concurrency (now {self.concurrency})")
        else:
            variable = self.config.get("base_url_env", "OPENAI_BASE_URL")
            cause = decision.reason.removeprefix("connection failed (").removesuffix(")")
            why = (f"{health.in_a_row} connection attempts in a row failed ({cause}). Check that "
                   f"the server is running and reachable at that address and that ${variable} is right")
        if left:
            print(f"[{self.name}] server {url} taken out of this run: {why}; continuing on {', '.join(left)}",
                  file=sys.stderr)
            return None
        return ServerUnreachable(f"backbone {self.name!r}: no answer from the server at {url}: {why}. "
                                 "Nothing more is sent; answers so far are cached; rerun when it is fixed.")

    def _alien_answer(self, server: int, raw) -> NotOpenAIServer | None:
        """A 200 whose body is not a Chat Completions object: stop after `ALIEN_ANSWERS` of them."""
        with self._lock:
            health = self._health[server]
            health.alien += 1
            if health.alien < ALIEN_ANSWERS:
                return None
        type_ = raw.headers.get("content-type", "no content-type")
        return NotOpenAIServer(
            f"backbone {self.name!r}: the server at {self.base_urls()[server]} did not answer as an OpenAI "
            f"API ({health.alien} answers in a row were not Chat Completions JSON; {type_}, body starts "
            f"{body_excerpt(raw.content)}). Check that the base URL points at the API (it usually ends in "
            "/v1) and not at a web page or a proxy's login page. Nothing more is sent.")

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def cancel(self) -> None:
        """Send nothing more (from any thread): waiting requests end as GenerationError("cancelled")."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        for client in self._clients or []:
            client.close()
        self._clients = None
