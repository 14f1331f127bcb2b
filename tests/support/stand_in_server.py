"""A stand-in for `vllm serve MODEL --port P ...` in the server life-cycle tests.

It takes the same command-line shape as vLLM's server, serves the project's fake OpenAI API
(tests/support/fake_openai_server.py) on 127.0.0.1, and like a real engine starts a worker process of its
own, so the tests can check that stopping the server leaves nothing of its process group running.
Extra flags make it misbehave:
  --startup-delay S   load for S seconds before listening (slow start-up)
  --die-after N       exit with code 3 after answering N chat requests (server dying mid-run)
  --list-model M      /v1/models lists M instead of the served model (never lists the model)
  --delay S           seconds per chat request
  --download-to DIR   record the "downloaded" commit in DIR, a Hugging Face cache, as the hub does
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.support

from tests.support.fake_openai_server import FakeOpenAI  # noqa: E402


DOWNLOADED_COMMIT = "5f0e2b9c1d3a4e6f7a8b9c0d1e2f3a4b5c6d7e8f"


class DyingFake(FakeOpenAI):
    def __init__(self, die_after: int | None, **kwargs):
        super().__init__(**kwargs)
        self.die_after = die_after

    def chat(self, body: dict, key: str | None = None):
        if self.die_after is not None and len(self.chat_requests) >= self.die_after:
            print(f"stand-in: dying after answering {len(self.chat_requests)} requests", flush=True)
            os._exit(3)
        return super().chat(body, key)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--served-model-name")
    parser.add_argument("--revision")
    parser.add_argument("--gpu-memory-utilization", type=float)
    parser.add_argument("--chat-template")
    parser.add_argument("--startup-delay", type=float, default=0.0)
    parser.add_argument("--die-after", type=int)
    parser.add_argument("--list-model")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--download-to")
    args = parser.parse_args()
    print(f"stand-in: pid {os.getpid()} group {os.getpgid(0)} loading {args.model}@{args.revision}", flush=True)
    # An engine worker, as vLLM and lmdeploy start: it must go when the server's group is stopped.
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    time.sleep(args.startup_delay)
    if args.download_to:
        refs = Path(args.download_to) / f"models--{args.model.replace('/', '--')}" / "refs"
        refs.mkdir(parents=True, exist_ok=True)
        (refs / args.revision).write_text(DOWNLOADED_COMMIT)
    served = args.list_model or args.served_model_name or args.model
    try:
        server = DyingFake(args.die_after, port=args.port, models=[served], delay_s=args.delay)
    except OSError as error:
        print(f"stand-in: cannot listen on port {args.port}: {error}", flush=True)
        sys.exit(1)
    with server:
        print(f"stand-in: serving {served} on {server.base_url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
