"""The interface every backbone implements, and the registry that picks one from params.yaml.

A backbone turns prompt requests into responses. The pipeline never talks to a model directly: it
builds `Request`s from the prompt templates (xreflect.paper.prompts), looks them up in the response cache
(xreflect.generation.cache) and hands only the misses to `Backend.generate`, storing each response as soon as
it arrives so an interrupted stage resumes where it stopped.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from xreflect.core.config import ParamsError


@dataclass(frozen=True)
class Request:
    """One prompt for one item (or, for dataset-level prompts such as KAR's factor list, none)."""

    template_id: str          # e.g. "cot"; see xreflect.paper.prompts.PROMPTS
    template_version: int     # bumped whenever the template text changes
    prompt: str               # the fully rendered prompt text, exactly what a model receives
    item_id: str | None = None
    image: bytes | None = None  # raw bytes of the image file (PNG/JPEG) for prompts that take one
    image_mime: str | None = None
    # The values substituted into the template (e.g. {"description": ...}). Real models read only
    # `prompt`; the offline stand-in composes its answer from these fields and the image.
    fields: Mapping[str, str] = field(default_factory=dict)
    parents: tuple[str, ...] = ()  # cache keys of the responses this prompt was built from

    @property
    def has_image(self) -> bool:
        return self.image is not None


@dataclass(frozen=True)
class Response:
    text: str
    model: str
    usage: Mapping[str, int] = field(default_factory=dict)  # prompt_tokens, completion_tokens, ...
    latency_s: float = 0.0


class GenerationError(Exception):
    """A request that failed after the backend's own retries; recorded per item and retried next run."""


class NotSent(GenerationError):
    """A request the backend never sent because the run was stopping: not a failure of the item."""


class Backend(ABC):
    """A backbone. Subclasses are constructed with their params.yaml entry (`backbones.<name>`)."""

    provider: str = ""

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name = name
        self.config = dict(config)

    @abstractmethod
    def identity(self, request: Request) -> dict:
        """Everything about this backend that changes the answer to `request`: provider, model id
        and revision, generation params. It is part of the response-cache key."""

    @abstractmethod
    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Response | GenerationError]]:
        """Answer `requests`, yielding (index into requests, response or error) as each completes."""

    def metric_fields(self) -> dict:
        """Facts about the model actually used (e.g. a resolved revision) for the usage metric."""
        return {}

    def close(self) -> None:
        """Release models, sessions or pools."""


# provider name -> "module:Class"; imported lazily so heavy dependencies load only when used.
PROVIDERS = {
    "offline": "xreflect.backends.offline:OfflineBackend",
    "openai": "xreflect.backends.openai_backend:OpenAIBackend",
    "hf": "xreflect.backends.hf:TransformersBackend",
    "served": "xreflect.backends.served:ServedBackend",
}


def create_backend(name: str, backbones: Mapping[str, Mapping[str, Any]]) -> Backend:
    """Build the backbone called `name` from the `backbones` registry of params.yaml."""
    if name not in backbones:
        raise ParamsError(f"params.yaml: backbone {name!r} is not defined; allowed values of "
                         f"'backbone' are {sorted(backbones)} (add an entry under 'backbones' for a new one)")
    config = backbones[name]
    provider = config.get("provider")
    if provider not in PROVIDERS:
        raise ParamsError(f"params.yaml: backbones.{name}.provider is {provider!r}; allowed values are "
                         f"{sorted(PROVIDERS)}")
    module_name, class_name = PROVIDERS[provider].split(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(name, config)
