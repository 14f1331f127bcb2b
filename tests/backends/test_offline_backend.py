"""The offline backbone: real cross-reflection on made-up items, every prompt answered, clear errors."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from xreflect.backends.base import GenerationError, Request, Response, create_backend
from xreflect.backends.offline import ANALYSER_VERSION, OfflineBackend, extract_claims
from xreflect.paper.prompts import PROMPTS, parse_factor_list

DARK_BLUE_IMAGE_TEXT = "A poster about whales and coral reefs. It is bright and cheerful, in sunny yellow tones."
AGREEING_TEXT = "A poster about whales and coral reefs. It is dark and moody, in deep navy blue."


def png(background, fill, shape="circle") -> bytes:
    image = Image.new("RGB", (96, 96), background)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse([18, 18, 58, 58], fill=fill)
    else:
        draw.rectangle([40, 40, 80, 80], fill=fill)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


DARK_BLUE = png((15, 25, 80), (30, 60, 170))
BRIGHT_YELLOW = png((250, 245, 190), (235, 205, 20), "square")


def request(prompt_id: str, image: bytes | None = None, **values: str) -> Request:
    spec = PROMPTS[prompt_id]
    fields = {name: values.get(name, "") for name in spec.fields}
    return Request(prompt_id, spec.version, spec.render(**fields), "item-1",
                   image=image if spec.image else None, image_mime="image/png", fields=fields)


def answer(prompt_id: str, image: bytes | None = DARK_BLUE, **values: str) -> str:
    backend = OfflineBackend("offline", {"provider": "offline"})
    ((index, response),) = list(backend.generate([request(prompt_id, image, **values)]))
    assert index == 0
    if isinstance(response, GenerationError):
        raise response
    return response.text


def section(text: str, title: str) -> str:
    match = re.search(rf"^{title}:\n((?:- .*\n?)*)", text, flags=re.M)
    assert match, f"no section {title!r} in:\n{text}"
    return match.group(1)


def test_combined_cross_reflection_flags_text_image_conflicts():
    text = answer("xr_combined", description=DARK_BLUE_IMAGE_TEXT, title="Deep Song")
    discrepancies = section(text, "Discrepancies")
    assert "Colour:" in discrepancies and "yellow" in discrepancies and "dark blue" in discrepancies
    assert "Brightness and mood:" in discrepancies and "bright and cheerful" in discrepancies
    assert section(text, "Supportive elements").strip() == "- none found."
    resolution = text.split("Resolution:")[1]
    assert "dark" in resolution and "mainly blue" in resolution and "circle" in resolution
    assert "composition" in section(text, "Only in the image").lower()  # what the text never says


def test_combined_cross_reflection_supports_agreeing_text():
    text = answer("xr_combined", description=AGREEING_TEXT, title="Deep Song")
    supportive = section(text, "Supportive elements")
    assert "Colour:" in supportive and "Brightness and mood:" in supportive
    assert section(text, "Discrepancies").strip() == "- none found."
    assert "supportive of each other" in text


def test_separate_cross_reflection_reads_the_image_description():
    image_description = answer("visual_only")
    assert "dark" in image_description and "blue" in image_description and "circle" in image_description
    conflicting = answer("xr_separate", r_text=DARK_BLUE_IMAGE_TEXT, r_image=image_description)
    assert "Brightness and mood:" in section(conflicting, "Discrepancies")
    assert "Colour:" in section(conflicting, "Discrepancies")
    # a free-text description from another model works too
    agreeing = answer("xr_separate", r_text=AGREEING_TEXT,
                      r_image="A gloomy picture: a navy square sits in the lower right of a black frame.")
    assert section(agreeing, "Discrepancies").strip() == "- none found."
    assert "square in the lower right" in agreeing


def test_keyword_variants_are_comma_separated_keywords():
    combined = answer("xr_combined_keyword", description=DARK_BLUE_IMAGE_TEXT).split(", ")
    assert {"whales", "dark", "blue", "circle", "conflicting brightness", "not bright"} <= set(combined)
    assert len(combined) == len(set(combined)) and all("\n" not in k and k for k in combined)
    separate = answer("xr_separate_keyword", r_text=AGREEING_TEXT, r_image=answer("visual_only")).split(", ")
    assert {"supportive colour", "supportive brightness", "dark"} <= set(separate)


@pytest.mark.parametrize("description", [DARK_BLUE_IMAGE_TEXT, ""])
def test_every_prompt_gets_a_distinct_non_empty_answer(description):
    values = {"description": description, "title": "Deep Song", "item_kind": "a poster",
              "factors": "subject and theme, colour palette", "r_text": description, "r_image": answer("visual_only")}
    answers = {prompt_id: answer(prompt_id, **values) for prompt_id in PROMPTS}
    assert all(text.strip() for text in answers.values())
    assert len(set(answers.values())) == len(PROMPTS)


def test_modalities_each_prompt_may_use():
    # text-only prompts ignore the image; image-only prompts ignore the text
    assert answer("llm_rec", DARK_BLUE, description=AGREEING_TEXT) == answer("llm_rec", BRIGHT_YELLOW,
                                                                              description=AGREEING_TEXT)
    assert answer("visual_only", DARK_BLUE) != answer("visual_only", BRIGHT_YELLOW)
    bright = answer("rec_gpt4v", BRIGHT_YELLOW)
    assert "yellow" in bright and "square" in bright and "bright" in bright
    # visual-textual and CoT put both side by side without reconciling them
    both = answer("visual_textual", description=DARK_BLUE_IMAGE_TEXT)
    assert "whales" in both and "circle" in both and "Discrepancies" not in both


def test_kar_factor_list_and_attributes():
    factors = parse_factor_list(answer("kar_factors", item_kind="software"))
    assert factors.split(", ")[:3] == ["functionality", "user interface", "user experience"]
    poster_factors = parse_factor_list(answer("kar_factors", item_kind="a poster"))
    text = answer("kar", title="Deep Song", description=AGREEING_TEXT, factors=poster_factors)
    assert "- Colour palette: described as navy and blue." in text
    assert "- Mood and brightness: described as dark and moody." in text
    assert "Composition and shapes: not stated" in text  # text only: it never saw the circle


def test_image_prompts_without_a_usable_image_fail_clearly():
    backend = OfflineBackend("offline", {"provider": "offline"})
    no_image = Request("visual_only", 1, "Describe the image.", "item-7")
    broken = Request("cot", 1, "...", "item-8", image=b"garbage", fields={"description": "x"})
    fine = request("llm_rec", description="A poster.")
    results = dict(backend.generate([no_image, broken, fine]))
    assert isinstance(results[0], GenerationError) and "needs the item image" in str(results[0])
    assert "item-7" in str(results[0])
    assert isinstance(results[1], GenerationError) and "cannot decode image" in str(results[1])
    assert isinstance(results[2], Response)


def test_identity_usage_and_registry():
    backend = create_backend("offline", {"offline": {"provider": "offline"}})
    assert isinstance(backend, OfflineBackend)
    req = request("visual_only", DARK_BLUE)
    assert backend.identity(req) == backend.identity(req) == {"provider": "offline", "model": ANALYSER_VERSION}
    ((_, first),), ((_, second),) = list(backend.generate([req])), list(backend.generate([req]))
    assert first.text == second.text and first.model == ANALYSER_VERSION
    assert first.usage == {"prompt_tokens": 3, "completion_tokens": len(first.text.split())}


def test_real_poster_like_image_is_described_sensibly():
    photo = np.random.default_rng(1).integers(0, 256, size=(300, 200, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG")
    text = answer("xr_combined", buffer.getvalue(),
                  description="A criminal pleads insanity and is admitted to a mental institution.")
    assert "no single dominant shape" in text
    assert "criminal, pleads, insanity" in text  # the subject comes from the text
    recommendation = answer("llm_rec", description="A criminal pleads insanity. He is admitted to a mental "
                                                   "institution. Rated R.")
    assert "criminal" in recommendation and "Rated R." in recommendation


def test_claims_ignore_shades_and_plural_shapes():
    claims = extract_claims("A light blue sky full of stars over dark green hills. The mood is gloomy.")
    assert claims.colours == ("blue", "green") and claims.tone == "dark" and claims.tone_words == ("gloomy",)
    assert claims.shapes == ()
