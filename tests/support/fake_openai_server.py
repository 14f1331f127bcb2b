"""A small OpenAI-compatible server for tests: chat completions (with images), files and batches.

It runs in a thread on 127.0.0.1 and records what it receives. Tests make it misbehave by queueing
faults, consumed one per chat request in arrival order:
  "429"     rate limited, with `Retry-After: <retry_after>`
  "500"     server error
  "timeout" answers only after `hang_s` seconds (longer than the client's timeout)
  "quota"   429 with error code insufficient_quota
  "auth"    401
  "html"    200 with an HTML page (what a proxy or a wrong base URL answers)
  "empty"   200 with a Chat Completions object whose `choices` is empty
  "hang"    never answers: holds the request until the server shuts down
`always` (a fault name) applies to every chat request once `faults` is used up. With `api_key`
set, requests carrying another key get 401 (a server refusing the key).
Answers are deterministic: "answer: <first 40 chars of the prompt> | images: <sha256[:12] of each
decoded image>", so a test can check that the image bytes arrived intact. Usage is fixed so costs
can be worked out by hand: 100 prompt tokens + 200 per image, 50 completion tokens.
"""
from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROMPT_TOKENS, IMAGE_TOKENS, COMPLETION_TOKENS = 100, 200, 50
HTML_PAGE = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Corporate proxy</body></html>"


def answer_for(body: dict) -> dict:
    """The completion the fake returns for a chat request body."""
    (message,) = body["messages"]
    content = message["content"]
    parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
    text = " ".join(p["text"] for p in parts if p["type"] == "text")
    shas = []
    for part in parts:
        if part["type"] == "image_url":
            header, data = part["image_url"]["url"].split(",", 1)
            assert header.startswith("data:image/") and header.endswith(";base64"), header
            shas.append(hashlib.sha256(base64.b64decode(data)).hexdigest()[:12])
    usage = {"prompt_tokens": PROMPT_TOKENS + IMAGE_TOKENS * len(shas), "completion_tokens": COMPLETION_TOKENS}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"], "usage": usage,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"answer: {text[:40]} | images: {shas}"}}]}


class FakeOpenAI:
    def __init__(self, delay_s: float = 0.0, retry_after: str = "1", hang_s: float = 2.0,
                 api_key: str | None = None, always: str | None = None, port: int = 0,
                 models: list[str] | None = None):
        self.delay_s, self.retry_after, self.hang_s = delay_s, retry_after, hang_s
        self.api_key, self.always = api_key, always
        self.models = list(models or [])   # what GET /v1/models lists
        self._closing = threading.Event()
        self.chat_requests: list[dict] = []   # every chat body received, faults included
        self.faults: list[str] = []
        self.in_flight = self.max_in_flight = 0
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.polls = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()  # releases hanging requests
        self._server.shutdown()
        self._server.server_close()

    def new_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}-{next(self._ids)}"

    # ---- chat ----
    def chat(self, body: dict, key: str | None = None) -> tuple[int, dict, dict | bytes]:
        """(status, headers, JSON or raw bytes) for one chat request."""
        with self._lock:
            self.chat_requests.append(body)
            fault = self.faults.pop(0) if self.faults else self.always
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.api_key is not None and key != self.api_key:
                return 401, {}, _error("invalid_api_key", "Incorrect API key provided")
            if fault == "hang":
                self._closing.wait()
                return 500, {}, _error("server_error", "shutting down")
            time.sleep(self.hang_s if fault == "timeout" else self.delay_s)
            if fault == "html":
                return 200, {"Content-Type": "text/html"}, HTML_PAGE
            if fault == "empty":
                return 200, {}, {**answer_for(body), "choices": []}
            if fault == "429":
                return 429, {"Retry-After": self.retry_after}, _error("rate_limit_exceeded", "slow down")
            if fault == "quota":
                return 429, {}, _error("insufficient_quota", "You exceeded your current quota")
            if fault == "auth":
                return 401, {}, _error("invalid_api_key", "Incorrect API key provided")
            if fault == "500":
                return 500, {}, _error("server_error", "boom")
            return 200, {}, answer_for(body)
        finally:
            with self._lock:
                self.in_flight -= 1

    # ---- batches: validating -> in_progress -> completed, one step per poll ----
    def create_batch(self, body: dict) -> dict:
        batch = {"id": self.new_id("batch"), "object": "batch", "endpoint": body["endpoint"],
                 "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
                 "status": "validating", "created_at": int(time.time()), "output_file_id": None,
                 "metadata": body.get("metadata"),
                 "error_file_id": None, "request_counts": {"total": 0, "completed": 0, "failed": 0}}
        self.batches[batch["id"]] = batch
        return batch

    def poll_batch(self, batch_id: str) -> dict:
        batch = self.batches[batch_id]
        self.polls += 1
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        elif batch["status"] == "in_progress":
            self._run_batch(batch)
        return batch

    def _run_batch(self, batch: dict) -> None:
        outputs, errors = [], []
        for line in self.files[batch["input_file_id"]].decode().splitlines():
            task = json.loads(line)
            status, _, result = self.chat(task["body"], self.api_key)
            entry = {"id": self.new_id("req"), "custom_id": task["custom_id"],
                     "response": {"status_code": status, "request_id": "r", "body": result}, "error": None}
            (outputs if status == 200 else errors).append(json.dumps(entry))
        batch["output_file_id"] = self._store("\n".join(outputs) + "\n")
        batch["error_file_id"] = self._store("\n".join(errors) + "\n") if errors else None
        batch["request_counts"] = {"total": len(outputs) + len(errors), "completed": len(outputs),
                                   "failed": len(errors)}
        batch["status"] = "completed"

    def _store(self, text: str) -> str:
        file_id = self.new_id("file")
        self.files[file_id] = text.encode()
        return file_id

    def upload(self, content_type: str, raw: bytes) -> dict:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                  for part in message.iter_parts()}
        file_id = self._store(fields["file"].decode())
        return {"id": file_id, "object": "file", "bytes": len(fields["file"]), "created_at": int(time.time()),
                "filename": "batch.jsonl", "purpose": fields["purpose"].decode(), "status": "processed"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, payload, headers: dict | None = None) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                headers = dict(headers or {})
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def _refused(self) -> bool:
                """With `api_key` set, every endpoint refuses another key (chat requests are logged)."""
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if fake.api_key is None or key == fake.api_key or self.path == "/v1/chat/completions":
                    return False
                self._send(401, _error("invalid_api_key", "Incorrect API key provided"))
                return True

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self._refused():
                    return
                if self.path == "/v1/chat/completions":
                    key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                    status, headers, payload = fake.chat(json.loads(raw), key)
                    self._send(status, payload, headers)
                elif self.path == "/v1/files":
                    self._send(200, fake.upload(self.headers["Content-Type"], raw))
                elif self.path == "/v1/batches":
                    self._send(200, fake.create_batch(json.loads(raw)))
                else:
                    self._send(404, _error("not_found", self.path))

            def do_GET(self) -> None:
                if self._refused():
                    return
                if self.path.split("?")[0] == "/v1/batches":
                    listed = sorted(fake.batches.values(), key=lambda b: b["id"], reverse=True)
                    self._send(200, {"object": "list", "data": listed, "has_more": False,
                                     "first_id": None, "last_id": None})
                    return
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in fake.models]})
                elif self.path.startswith("/v1/batches/"):
                    self._send(200, fake.poll_batch(self.path.rsplit("/", 1)[1]))
                elif self.path.startswith("/v1/files/") and self.path.endswith("/content"):
                    self._send(200, fake.files[self.path.split("/")[3]])
                else:
                    self._send(404, _error("not_found", self.path))

        return Handler


def _error(code: str, message: str) -> dict:
    return {"error": {"message": message, "type": "error", "param": None, "code": code}}


if __name__ == "__main__":  # a manual server: `python tests/support/fake_openai_server.py [fault]` then point OPENAI_BASE_URL at it
    import sys

    with FakeOpenAI(always=sys.argv[1] if len(sys.argv) > 1 else None) as server:
        print(server.base_url, flush=True)
        threading.Event().wait()
