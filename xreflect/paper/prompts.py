"""Prompt templates, verbatim from the paper, and the graph of which prompt feeds which.

Template fields in braces are filled per item: `{description}` (the item's text description),
`{title}`, `{factors}` (KAR's scenario factors), `{r_text}` / `{r_image}` (the responses of
L_text and L_image for cross-reflection separate), `{item_kind}` (from the dataset registry).

Quoted from the paper (Baselines; Cross-Reflection Prompting; Appendix "KAR Augmentation Details"):
LLM-Rec, Rec-GPT4V, CoT, visual-only, visual-textual, cross-reflection separate and combined, and
both KAR prompts. The paper names the "{item description}" / "{text description}" / "{R_text}"
placeholders; they are spelled `{description}` / `{r_text}` here, nothing else changes.

Not given in the paper, written here and documented in README:
- The keyword variants (Table 6 "X-REFLECT-keyword"): the paper says only that the prompts were
  modified "to generate only unique keywords while maintaining the explicit instruction to
  identify whether the text and image information is supportive or contradictory".
- L_text and L_image of separate prompting: the paper leaves them open. By default L_text is the
  LLM-Rec prompt and L_image the visual-only prompt ("Describe the image."), reused from those
  strategies' responses; `generate.separate_inputs` in params.yaml changes that (and `description`
  as `r_text` omits L_text, which the paper allows).
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptSpec:
    id: str
    template: str
    version: int = 1
    image: bool = False        # the image is sent with the prompt (needs an LMM)
    per_item: bool = True      # False: asked once per dataset (KAR's factor list)
    parents: tuple[str, ...] = ()  # prompts whose responses fill this template's fields

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for _, name, _, _ in string.Formatter().parse(self.template) if name)

    def render(self, **values: str) -> str:
        missing = set(self.fields) - values.keys()
        if missing:
            raise KeyError(f"prompt {self.id!r} needs field(s) {sorted(missing)}")
        return self.template.format(**{name: values[name] for name in self.fields})


_CROSS_REFLECTION = ("Evaluate whether the information presented in the {a} and the {b} are supportive "
                     "of each other or if there are any discrepancies. If any conflicts are identified, "
                     "please address these conflicts.")
_KEYWORDS = (" Answer only with a comma-separated list of unique keywords that characterize the item, "
             "covering both the supportive and the conflicting information.")

PROMPTS: dict[str, PromptSpec] = {spec.id: spec for spec in [
    PromptSpec("kar_factors", "List the importance factors or features that determine whether a user "
               "will be interested in {item_kind}.", per_item=False),
    PromptSpec("kar", "Introduce {title}, {description} and describe its attributes precisely "
               "(including but not limited to {factors})", parents=("kar_factors",)),
    PromptSpec("llm_rec", "The description of an item is as follows: {description}, what else should I "
               "say if I want to recommend it to others?"),
    PromptSpec("rec_gpt4v", "What's in this image?", image=True),
    PromptSpec("cot", "The item description is as follows: {description}. Please think step by step and "
               "describe this item based on both the description and the input image. Your response "
               "should highlight how combining both the text and image provides a comprehensive "
               "understanding of the item.", image=True),
    PromptSpec("visual_only", "Describe the image.", image=True),
    PromptSpec("visual_textual", "The item description is as follows: {description}. Please describe "
               "this item based on both the description and the input image. Your response should "
               "highlight how combining both the text and image provides a comprehensive understanding "
               "of the item.", image=True),
    PromptSpec("xr_separate", "This is the item description: {r_text}. This is the description of the "
               "item image: {r_image}. "
               + _CROSS_REFLECTION.format(a="item description", b="image description"),
               parents=("r_text", "r_image")),
    PromptSpec("xr_combined", "Please provide a summary of the item characteristics based on the "
               "provided text description and image. The item description is as follows: {description}. "
               + _CROSS_REFLECTION.format(a="text", b="image"), image=True),
    PromptSpec("xr_separate_keyword", "This is the item description: {r_text}. This is the description "
               "of the item image: {r_image}. "
               + _CROSS_REFLECTION.format(a="item description", b="image description") + _KEYWORDS,
               parents=("r_text", "r_image")),
    PromptSpec("xr_combined_keyword", "Please provide unique keywords of the item characteristics based "
               "on the provided text description and image. The item description is as follows: "
               "{description}. " + _CROSS_REFLECTION.format(a="text", b="image") + _KEYWORDS, image=True),
]}

# Sources a strategy can concatenate besides prompt responses.
BASE_SOURCES = ("description", "image")


def parse_factor_list(response: str) -> str:
    """Turn KAR's factor-list response into the comma-separated phrase its second prompt expects.

    LLMs answer "List the importance factors ..." with a numbered or bulleted list, often as
    "1. Genre: whether ..."; the factor is the part before the colon. Falls back to the whole
    response (whitespace-collapsed) when no list is found.
    """
    factors = []
    for line in response.splitlines():
        match = re.match(r"^\s*(?:\d+[.)]|[-*•])\s*(?:\*\*)?([^:*\n]+?)(?:\*\*)?\s*(?::|$| - )", line)
        if match:
            factors.append(match.group(1).strip().rstrip(".").lower())
    return ", ".join(factors) if factors else " ".join(response.split())
