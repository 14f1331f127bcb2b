"""The transformers provider end to end on CPU with a tiny LLaVA built here (random weights, a BPE
tokenizer trained here, no download), and what can be checked of InternLM-XComposer2 without its
remote code (prompt and image preparation, the revision pin)."""
from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from xreflect.backends.base import Request
from xreflect.backends.hf import (TransformersBackend, check_pinned, family_of, pick_device_dtype,
                                  write_image_file, xcomposer2_query)
from xreflect.generation.cache import ResponseCache
from xreflect.generation.runner import run_requests

N_PATCHES = 16  # a 32-px image in 8-px patches; LLaVA's "default" strategy drops the CLS token
CHAT_TEMPLATE = (
    "{% for message in messages %}USER: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}")
CORPUS = ["Describe the image.", "The item description is as follows: a red poster with a dark sky.",
          "USER: ASSISTANT: what else should I say if I want to recommend it to others?"] * 20


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE, image_token="<image>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=32, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=3),
        image_token_index=image_token, vision_feature_select_strategy="default", vision_feature_layer=-2)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    directory = tmp_path_factory.mktemp("tiny-llava")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def png(color: tuple[int, int, int], size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def requests() -> list[Request]:
    image_prompts = [Request("visual_only", 1, "Describe the image.", f"v{k}", png((60 * k, 20, 200)), "image/png")
                     for k in range(3)]
    text_prompts = [Request("llm_rec", 1, f"The item description is as follows: a red poster {k}.", f"t{k}")
                    for k in range(2)]
    return image_prompts + text_prompts


def backend(model: str, **config) -> TransformersBackend:
    return TransformersBackend("llava", {"provider": "hf", "model": model, "max_new_tokens": 6,
                                         "batch_size": 2, **config})


def test_tiny_llava_end_to_end_through_the_cache(tiny_llava, tmp_path):
    cache = ResponseCache(tmp_path / "r.sqlite")
    chosen = backend(tiny_llava)
    records = run_requests(requests(), chosen, cache)
    assert not any(r["failed"] for r in records) and all(r["text"] for r in records)
    # 3 image prompts in batches of 2 (2 + 1), 2 text prompts (1 batch): 3 batches, 5 answers
    assert chosen.stats == {"batches": 3, "requests_sent": 5}
    hits = cache.get_many(r["key"] for r in records)
    runner = chosen.runner()
    for request, record in zip(requests(), records):
        usage = hits[record["key"]].usage
        # prompt tokens counted independently: the chat template, <image> expanded to 16 patches
        text = runner.prompt_text(request)
        expected = len(runner.processor.tokenizer(text).input_ids) + (N_PATCHES - 1 if request.image else 0)
        assert usage["prompt_tokens"] == expected and 1 <= usage["completion_tokens"] <= 6
    assert runner.prompt_text(requests()[0]) == "USER: <image>\nDescribe the image. ASSISTANT:"
    again = backend(tiny_llava)
    assert run_requests(requests(), again, cache) == records and again._runner is None  # no model load


def test_batching_does_not_change_greedy_answers(tiny_llava, tmp_path):
    one = run_requests(requests(), backend(tiny_llava, batch_size=1), ResponseCache(tmp_path / "a.sqlite"))
    three = run_requests(requests(), backend(tiny_llava, batch_size=3), ResponseCache(tmp_path / "b.sqlite"))
    assert [r["text"] for r in one] == [r["text"] for r in three]  # left padding is masked correctly


def test_identity_covers_model_revision_dtype_and_generation_params(tiny_llava):
    request = requests()[0]
    base = backend(tiny_llava).identity(request)
    assert base == {"provider": "hf", "model": tiny_llava, "revision": None, "family": "llava",
                    "dtype": "float32", "max_new_tokens": 6, "do_sample": False}
    assert backend(tiny_llava, temperature=0.7, seed=3).identity(request)["seed"] == 3
    assert backend(tiny_llava, revision="abc").identity(request) != base


def test_device_and_dtype_on_cpu():
    assert pick_device_dtype() == ("cpu", "float32")  # no GPU here
    assert pick_device_dtype("cpu", "bfloat16") == ("cpu", "bfloat16")
    with pytest.raises(ValueError, match="allowed values"):
        pick_device_dtype("cpu", "int4")


# InternLM-XComposer2's modelling code is remote (trust_remote_code) and cannot be downloaded here;
# these tests cover what we prepare for its chat(): the query, the image file, the revision pin.

def test_xcomposer2_query_and_image_file(tmp_path):
    assert family_of("internlm/internlm-xcomposer2-vl-7b") == "internlm-xcomposer2"
    assert family_of("llava-hf/llava-1.5-7b-hf") == "llava"
    rgba = io.BytesIO()
    Image.new("RGBA", (7, 5), (10, 20, 30, 128)).save(rgba, format="PNG")
    request = Request("cot", 1, "Describe this item.", "i0", rgba.getvalue(), "image/png")
    assert xcomposer2_query(request) == "<ImageHere>Describe this item."
    assert xcomposer2_query(Request("llm_rec", 1, "Text only.", "i0")) == "Text only."
    with Image.open(write_image_file(request, tmp_path)) as written:
        assert written.mode == "RGB" and written.size == (7, 5) and written.getpixel((0, 0)) == (10, 20, 30)


def test_remote_code_needs_a_pinned_commit(tmp_path):
    with pytest.raises(ValueError, match="40-character commit hash"):
        check_pinned("internlm/internlm-xcomposer2-vl-7b", "main", trust_remote_code=True)
    check_pinned("internlm/internlm-xcomposer2-vl-7b", "a" * 40, trust_remote_code=True)
    check_pinned(str(tmp_path), None, trust_remote_code=True)  # a local directory is already fixed
    chosen = TransformersBackend("internlm", {"provider": "hf", "model": "internlm/internlm-xcomposer2-vl-7b",
                                              "revision": "main"})
    assert chosen.trust_remote_code and chosen.batch_size == 1
    with pytest.raises(ValueError, match="commit hash"):
        list(chosen.generate([Request("cot", 1, "x", "i0")]))
