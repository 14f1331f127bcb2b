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
and quota errors raise FatalBackendError and stop the run.
"""
from __future__ import annotations

import base64
import os
import queue
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Iterator, Mapping, Sequence

from xreflect.backends.base import Backend, GenerationError, Request, Response
from xreflect.backends.retry import FatalBackendError, RetryPolicy, classify

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
            raise ValueError(f"params.yaml: backbones.{name}.model is missing; name a vision model id")
        self.retry = RetryPolicy.from_config(config)
        self.concurrency = int(config.get("concurrency", 8))
        self.timeout_s = float(config.get("timeout_s", 120))
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

    def _answer(self, request: Request, slots: queue.Queue) -> Response | GenerationError:
        body = chat_body(request, self.identity(request))
        attempt = 0
        while True:
            if self._stop.is_set():
                return GenerationError("cancelled")
            server = slots.get()
            started = time.monotonic()
            try:
                if self._stop.is_set():  # stopped while this request waited for a slot
                    return GenerationError("cancelled")
                self._count("requests_sent")
                completion = self._clients[server].chat.completions.create(**body)
                return response_from_body(completion.model_dump(), time.monotonic() - started)
            except GenerationError as error:
                return error
            except Exception as error:  # noqa: BLE001 - classified below, never swallowed blindly
                decision = classify(error)
                if decision.fatal:
                    self._stop.set()  # before the slot goes back, so no other request starts
            finally:
                slots.put(server)
            if decision.fatal:
                raise FatalBackendError(
                    f"backbone {self.name!r} ({self.base_urls()[server]}): {decision.reason}. Nothing "
                    "more is sent; answers so far are cached. Fix the key, quota or model id and rerun.")
            attempt += 1
            if not decision.retry or attempt >= self.retry.max_attempts:
                self._count("failed")
                return GenerationError(f"{decision.reason} (after {attempt} attempt(s))")
            self._count("retries")
            self._stop.wait(self.retry.delay(attempt - 1, decision.retry_after))

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
