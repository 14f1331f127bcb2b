"""Open multimodal models run locally through transformers: LLaVA-1.5 and InternLM-XComposer2.

LLaVA-1.5 (`llava-hf/llava-1.5-7b-hf`) is native to transformers: its processor and chat template
build the prompt ("USER: <image>\\n... ASSISTANT:"), and requests are generated in batches with
left padding. InternLM-XComposer2 (`internlm/internlm-xcomposer2-vl-7b`) ships its own modelling
code (`trust_remote_code`); we call its public `chat()` one request at a time, since that API takes
one query, and we refuse to run remote code from anything but a pinned commit. (lmdeploy can also
serve it over the OpenAI API; vLLM cannot.)

Device and dtype are chosen automatically: CUDA with bf16 where the GPU supports it, else fp16;
CPU in fp32. The dtype is part of the cache key (half precision can change greedy answers).
Models load on the first `generate`, so the dry run and cache hits never touch the weights.
"""
from __future__ import annotations

import io
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from xreflect.core.config import ParamsError
from xreflect.backends.base import Backend, GenerationError, Request, Response

LLAVA, XCOMPOSER2 = "llava", "internlm-xcomposer2"
XCOMPOSER2_IMAGE_TOKEN = "<ImageHere>"
DTYPES = ("float32", "float16", "bfloat16")


def family_of(model_id: str, configured: str | None = None) -> str:
    """Which runner a model id needs; `family` in params overrides the guess."""
    if configured:
        if configured not in (LLAVA, XCOMPOSER2):
            raise ParamsError(f"params.yaml: family {configured!r}; allowed values are {[LLAVA, XCOMPOSER2]}")
        return configured
    return XCOMPOSER2 if "xcomposer2" in model_id.lower() else LLAVA


def pick_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """('cuda', 'bfloat16'|'float16') on a GPU, ('cpu', 'float32') otherwise, unless set in params."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        if device.startswith("cuda"):
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"  # half precision on CPU is slow and poorly supported
    if dtype not in DTYPES:
        raise ParamsError(f"params.yaml: dtype {dtype!r}; allowed values are ['auto', *{list(DTYPES)}]")
    return device, dtype


def check_pinned(model_id: str, revision: str | None, trust_remote_code: bool) -> None:
    """Remote code runs with our privileges: only from a fixed commit, never from a moving branch."""
    if trust_remote_code and not Path(model_id).is_dir() and not re.fullmatch(r"[0-9a-f]{40}", revision or ""):
        raise ParamsError(
            f"params.yaml: {model_id} needs trust_remote_code, so its revision must be a 40-character "
            f"commit hash (got {revision!r}); pick one from https://huggingface.co/{model_id}/commits/main")


def load_image(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def llava_conversation(request: Request) -> list[dict]:
    content: list[dict] = [{"type": "image"}] if request.image is not None else []
    return [{"role": "user", "content": content + [{"type": "text", "text": request.prompt}]}]


def xcomposer2_query(request: Request) -> str:
    """XComposer2's chat() puts the image where `<ImageHere>` stands: before the prompt, as in its card."""
    return (XCOMPOSER2_IMAGE_TOKEN if request.image is not None else "") + request.prompt


class LlavaRunner:
    def __init__(self, model_id: str, revision: str | None, device: str, dtype: str):
        import torch
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        self.device = device
        self.processor = AutoProcessor.from_pretrained(model_id, revision=revision)
        self.processor.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        self.model = LlavaForConditionalGeneration.from_pretrained(
            model_id, revision=revision, dtype=getattr(torch, dtype)).to(device).eval()

    def prompt_text(self, request: Request) -> str:
        return self.processor.apply_chat_template(llava_conversation(request), add_generation_prompt=True)

    def generate(self, batch: Sequence[Request], options: Mapping[str, Any]) -> list[tuple[str, dict]]:
        import torch

        images = [load_image(r.image) for r in batch if r.image is not None] or None
        inputs = self.processor(images=images, text=[self.prompt_text(r) for r in batch],
                                padding=True, return_tensors="pt").to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        tokenizer = self.processor.tokenizer
        with torch.inference_mode():
            output = self.model.generate(**inputs, **options, pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        completion_tokens = (new_tokens != tokenizer.pad_token_id).sum(dim=1).tolist()
        return [(text.strip(), {"prompt_tokens": int(p), "completion_tokens": int(c)})
                for text, p, c in zip(texts, prompt_tokens, completion_tokens)]


class XComposer2Runner:
    """Through the model's own `chat()` (remote code), which reads the image from a file path."""

    def __init__(self, model_id: str, revision: str | None, device: str, dtype: str):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.device, self.dtype = device, getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision, trust_remote_code=True)
        self.model = AutoModel.from_pretrained(model_id, revision=revision, trust_remote_code=True,
                                               dtype=self.dtype).to(device).eval()

    def generate(self, batch: Sequence[Request], options: Mapping[str, Any]) -> list[tuple[str, dict]]:
        import torch

        answers = []
        for request in batch:
            with tempfile.TemporaryDirectory() as scratch, torch.inference_mode(), \
                    torch.autocast(device_type=self.device.split(":")[0], dtype=self.dtype,
                                   enabled=self.device.startswith("cuda")):
                image = write_image_file(request, Path(scratch)) if request.image is not None else None
                text, _ = self.model.chat(self.tokenizer, query=xcomposer2_query(request), image=image,
                                          history=[], **options)
            answers.append((text.strip(), {"completion_tokens": len(self.tokenizer(text).input_ids)}))
        return answers


def write_image_file(request: Request, directory: Path) -> str:
    """XComposer2's chat() takes an image path: decode, normalise to RGB PNG, write, return the path."""
    path = directory / "image.png"
    load_image(request.image).save(path, format="PNG")
    return str(path)


class TransformersBackend(Backend):
    provider = "hf"

    def __init__(self, name: str, config: Mapping[str, Any]):
        super().__init__(name, config)
        if not config.get("model"):
            raise ParamsError(f"params.yaml: backbones.{name}.model is missing (a hub id or a local directory)")
        self.model_id = str(config["model"])
        self.revision = config.get("revision")
        self.family = family_of(self.model_id, config.get("family"))
        self.trust_remote_code = bool(config.get("trust_remote_code", self.family == XCOMPOSER2))
        self.device, self.dtype = pick_device_dtype(config.get("device", "auto"), config.get("dtype", "auto"))
        self.batch_size = int(config.get("batch_size", 8)) if self.family == LLAVA else 1
        self.stats: Counter = Counter()
        self._runner = None

    def identity(self, request: Request) -> dict:
        return {"provider": self.provider, "model": self.model_id, "revision": self.revision,
                "family": self.family, "dtype": self.dtype, **self.generation_options()}

    def generation_options(self) -> dict:
        temperature = float(self.config.get("temperature", 0.0))
        options: dict[str, Any] = {"max_new_tokens": int(self.config.get("max_new_tokens", 512)),
                                   "do_sample": temperature > 0}
        if temperature > 0:  # greedy decoding ignores these; keeping them out keeps the key stable
            options.update(temperature=temperature, top_p=float(self.config.get("top_p", 1.0)),
                           seed=int(self.config.get("seed", 0)))
        return options

    def runner(self):
        if self._runner is None:
            check_pinned(self.model_id, self.revision, self.trust_remote_code)
            started = time.monotonic()
            runner_class = LlavaRunner if self.family == LLAVA else XComposer2Runner
            self._runner = runner_class(self.model_id, self.revision, self.device, self.dtype)
            print(f"[{self.name}] loaded {self.model_id}@{self.revision or 'default'} on {self.device} "
                  f"({self.dtype}) in {time.monotonic() - started:.1f} s", file=sys.stderr)
        return self._runner

    def batches(self, requests: Sequence[Request]) -> Iterator[list[int]]:
        """Indices in batches of `batch_size`, image and text-only requests apart (the processor
        takes one image per image prompt), similar lengths together to waste less padding."""
        for with_image in (True, False):
            order = sorted((i for i, r in enumerate(requests) if (r.image is not None) == with_image),
                           key=lambda i: len(requests[i].prompt))
            for start in range(0, len(order), self.batch_size):
                yield order[start:start + self.batch_size]

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Response | GenerationError]]:
        import torch

        runner = self.runner()
        options = self.generation_options()
        seed = options.pop("seed", None)
        for indices in self.batches(requests):
            if seed is not None:
                torch.manual_seed(seed)
            started = time.monotonic()
            try:
                answers = runner.generate([requests[i] for i in indices], options)
            except (RuntimeError, ValueError) as error:  # e.g. CUDA out of memory: fail these items only
                for index in indices:
                    yield index, GenerationError(f"{type(error).__name__}: {error}")
                continue
            self.stats["batches"] += 1
            latency = (time.monotonic() - started) / len(indices)
            for index, (text, usage) in zip(indices, answers):
                self.stats["requests_sent"] += 1
                yield index, (Response(text, self.model_id, usage, latency) if text
                              else GenerationError("empty answer"))

    def close(self) -> None:
        self._runner = None  # frees the weights; the GPU cache below returns the memory
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
