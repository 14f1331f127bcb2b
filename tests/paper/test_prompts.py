"""Prompt texts against the paper (quoted from its Baselines, Cross-Reflection Prompting and
Appendix sections; placeholders renamed {item description} -> {description} and so on)."""
from xreflect.paper.prompts import PROMPTS, parse_factor_list

PAPER = {
    "llm_rec": "The description of an item is as follows: {description}, what else should I say if I "
               "want to recommend it to others?",
    "rec_gpt4v": "What's in this image?",
    "cot": "The item description is as follows: {description}. Please think step by step and describe "
           "this item based on both the description and the input image. Your response should highlight "
           "how combining both the text and image provides a comprehensive understanding of the item.",
    "visual_only": "Describe the image.",
    "visual_textual": "The item description is as follows: {description}. Please describe this item based "
                      "on both the description and the input image. Your response should highlight how "
                      "combining both the text and image provides a comprehensive understanding of the item.",
    "xr_separate": "This is the item description: {r_text}. This is the description of the item image: "
                   "{r_image}. Evaluate whether the information presented in the item description and the "
                   "image description are supportive of each other or if there are any discrepancies. If "
                   "any conflicts are identified, please address these conflicts.",
    "xr_combined": "Please provide a summary of the item characteristics based on the provided text "
                   "description and image. The item description is as follows: {description}. Evaluate "
                   "whether the information presented in the text and the image are supportive of each "
                   "other or if there are any discrepancies. If any conflicts are identified, please "
                   "address these conflicts.",
    "kar": "Introduce {title}, {description} and describe its attributes precisely (including but not "
           "limited to {factors})",
    "kar_factors": "List the importance factors or features that determine whether a user will be "
                   "interested in {item_kind}.",
}


def test_templates_are_verbatim_from_the_paper():
    for prompt_id, text in PAPER.items():
        assert PROMPTS[prompt_id].template == text, prompt_id


def test_amazon_kar_factor_prompt_matches_the_paper_adaptation():
    assert PROMPTS["kar_factors"].render(item_kind="software") == (
        "List the importance factors or features that determine whether a user will be interested in software.")


def test_keyword_variants_keep_the_cross_reflection_instruction():
    for variant, base in (("xr_separate_keyword", "xr_separate"), ("xr_combined_keyword", "xr_combined")):
        assert "supportive of each other or if there are any discrepancies" in PROMPTS[variant].template
        assert "keywords" in PROMPTS[variant].template and PROMPTS[variant].fields == PROMPTS[base].fields


def test_image_prompts_are_exactly_the_multimodal_ones():
    assert {p for p, s in PROMPTS.items() if s.image} == {
        "rec_gpt4v", "cot", "visual_only", "visual_textual", "xr_combined", "xr_combined_keyword"}


def test_factor_list_parsing():
    response = ("Here are the factors:\n1. **Genre**: the kind of story\n2) Cast - who stars\n"
                "- Director: who made it\nThese matter.")
    assert parse_factor_list(response) == "genre, cast, director"
    assert parse_factor_list("genre, cast and director") == "genre, cast and director"
