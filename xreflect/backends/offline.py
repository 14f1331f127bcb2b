"""The `offline` backbone: a deterministic stand-in for a multimodal model. It is NOT a language model.

It exists so that the whole pipeline runs with no network, GPU or API key (`backbone: offline`).
It answers every prompt of xreflect.paper.prompts from two things only:

- the request's fields (description, title, factors, item_kind, r_text, r_image), read with a small
  lexicon: colour words, brightness/mood words, shape words and salient content keywords;
- a real analysis of the request's image (xreflect.data.image_analysis.analyse_image): dominant colours,
  brightness, contrast, saturation, the main shape, where it sits, accents.

Answers are composed from templates per prompt, with the access each prompt has in the paper:
text-only prompts (kar, llm_rec) never look at the image; image-only prompts (rec_gpt4v,
visual_only) never read the text; cot and visual_textual put both side by side without checking
them against each other; the cross-reflection prompts (xr_*) really compare the text's claims with
the image (xr_combined) or with the image description it is given (xr_separate, which has no image
and parses the description text), list supportive elements and discrepancies, and resolve the
conflicts in favour of the image. Results obtained with it say something about the pipeline and
the demo data, nothing about what GPT-4V, LLaVA or InternLM would do.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from xreflect.backends.base import Backend, GenerationError, Request, Response
from xreflect.backends.analysis_cache import cached_analysis
from xreflect.data.image_analysis import ImageAnalysis

ANALYSER_VERSION = "offline-analyser-v1"

COLOUR_WORDS: dict[str, str] = {
    **dict.fromkeys(("red", "crimson", "scarlet", "ruby", "maroon"), "red"),
    **dict.fromkeys(("orange", "amber", "tangerine", "brown", "rust"), "orange"),
    **dict.fromkeys(("yellow", "golden", "gold", "lemon", "mustard"), "yellow"),
    **dict.fromkeys(("green", "emerald", "olive", "lime", "mint"), "green"),
    **dict.fromkeys(("cyan", "teal", "turquoise", "aqua"), "cyan"),
    **dict.fromkeys(("blue", "navy", "azure", "cobalt", "sapphire"), "blue"),
    **dict.fromkeys(("purple", "violet", "plum", "lilac", "lavender", "indigo"), "purple"),
    **dict.fromkeys(("pink", "rose", "magenta", "fuchsia"), "pink"),
    **dict.fromkeys(("black", "ebony"), "black"),
    **dict.fromkeys(("white", "ivory"), "white"),
    **dict.fromkeys(("grey", "gray", "silver", "monochrome"), "grey"),
}
BRIGHT_WORDS = frozenset(("bright", "brightly", "cheerful", "sunny", "light", "luminous", "airy", "radiant",
                          "joyful", "upbeat", "playful", "glowing", "pastel", "lighthearted", "vibrant"))
DARK_WORDS = frozenset(("dark", "darker", "moody", "shadowy", "gloomy", "sombre", "somber", "brooding",
                        "dim", "nocturnal", "noir", "grim", "bleak", "mysterious", "intense", "ominous"))
SHAPE_WORDS: dict[str, str] = {"circle": "circle", "circular": "circle", "disc": "circle", "square": "square",
                               "rectangle": "rectangle", "rectangular": "rectangle", "triangle": "triangle",
                               "triangular": "triangle", "star": "star", "diamond": "diamond", "oval": "oval"}
STOPWORDS = frozenset("""a an the and or but of in on at to for from by with without about into over under
    this that these those it its it's is are was were be been being as than then so such very more most
    also just only can could should would will may might must do does did has have had not no nor
    their there they them he she his her him we our you your i me my what which who whom whose
    when where why how all any each every some many much few other another same own up down out
    off again further once here both either neither one two three poster posters print prints
    artwork art design designed item items piece image picture feels feel look looks style overall
    atmosphere palette tones tone colour color colours colors scheme shades shade mostly rendered
    dominated run runs ties together whole expect theme inspired celebrates pays tribute collector's
    collector recommend recommending mention describe suggest enjoy enjoys fans point details practical
    promises people anyone say add else following description described text lead likely drawn
    interested part available among between through across around toward towards within while""".split())
POSITION_PATTERN = re.compile(r"\bin the ((?:upper |lower )?(?:left|right|centre|center))\b")
WORD_PATTERN = re.compile(r"[A-Za-z][A-Za-z'-]*")


# ----------------------------------------------------------------------------- reading text


@dataclass(frozen=True)
class Claims:
    """What a text says about an item's look and subject."""

    colours: tuple[str, ...] = ()     # colour families, in order of first mention
    colour_words: tuple[str, ...] = ()
    tone: str | None = None           # "bright" | "dark" | None (no or balanced evidence)
    tone_words: tuple[str, ...] = ()
    shapes: tuple[str, ...] = ()
    position: str | None = None
    keywords: tuple[str, ...] = ()    # salient content words of the sentences that are not about looks


def unique(values) -> tuple:
    return tuple(dict.fromkeys(values))


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def extract_claims(text: str, max_keywords: int = 8) -> Claims:
    """Colour, tone and shape claims and content keywords of a text (any text, may be empty).

    Tone words directly before a colour word ("dark blue", "light yellow") are shades, not claims
    about the item's tone. Shape words count only in the singular ("among the stars" is a theme).
    """
    words = [w.lower().strip("'-") for w in WORD_PATTERN.findall(text)]
    colours, colour_words, tone_words, shapes = [], [], [], []
    for k, word in enumerate(words):
        following = words[k + 1] if k + 1 < len(words) else ""
        if word in COLOUR_WORDS:
            colours.append(COLOUR_WORDS[word])
            colour_words.append(word)
        elif word in SHAPE_WORDS:
            shapes.append(SHAPE_WORDS[word])
        elif (word in BRIGHT_WORDS or word in DARK_WORDS) and following not in COLOUR_WORDS:
            tone_words.append(word)
    bright = sum(w in BRIGHT_WORDS for w in tone_words)
    dark = sum(w in DARK_WORDS for w in tone_words)
    tone = "bright" if bright > dark else "dark" if dark > bright else None
    looks = set(COLOUR_WORDS) | BRIGHT_WORDS | DARK_WORDS
    keywords = []
    for sentence in sentences(text):
        tokens = [w.lower().strip("'-") for w in WORD_PATTERN.findall(sentence)]
        if any(t in looks for t in tokens):
            continue  # a sentence about the look, not the subject
        keywords += [t for t in tokens if len(t) > 2 and t not in STOPWORDS and not t.isdigit()]
    position = POSITION_PATTERN.search(text.lower())
    return Claims(unique(colours), unique(colour_words), tone, unique(tone_words), unique(shapes),
                  position.group(1).replace("center", "centre") if position else None,
                  unique(keywords)[:max_keywords])


def join(values: Sequence[str], last: str = "and") -> str:
    values = list(values)
    if len(values) <= 1:
        return "".join(values)
    return ", ".join(values[:-1]) + f" {last} " + values[-1]


def subject_phrase(claims: Claims, fallback: str = "an unspecified subject") -> str:
    return ", ".join(claims.keywords[:5]) if claims.keywords else fallback


def look_phrase(claims: Claims) -> str:
    """How the text says the item looks, in its own words ("dark and moody, in azure")."""
    parts = []
    if claims.tone_words:
        parts.append(join(claims.tone_words[:3]))
    if claims.colour_words:
        parts.append("in " + join(claims.colour_words[:3], "or"))
    return ", ".join(parts)


# ----------------------------------------------------------------------------- reading images


@dataclass(frozen=True)
class Visual:
    """What is known about the item's look from the image (or from a description of it)."""

    colours: tuple[str, ...]          # families, dominant first
    tone: str | None                  # "bright" | "dark" | None (medium or unknown)
    shape: str | None
    position: str | None
    colour_evidence: str              # e.g. "the image is dominated by dark blue (71%)"
    tone_evidence: str
    shape_evidence: str
    traits: tuple[str, ...] = field(default=())  # image-grounded keywords for the resolution


def visual_from_analysis(a: ImageAnalysis) -> Visual:
    top = a.colours[0] if a.colours else None
    colour_evidence = (f"the image is dominated by {top.name} ({top.share:.0%})" if top
                       else "the image has no dominant colour")
    tone = a.brightness_label if a.brightness_label != "medium" else None
    tone_evidence = f"the image is {a.brightness_label} (mean brightness {a.brightness:.2f} on a 0-1 scale)"
    if a.shape:
        shape_evidence = f"the image shows a {a.shape.size} {a.shape.colour} {a.shape.kind} in the {a.shape.position}"
    else:
        shape_evidence = "the image has no single dominant shape"
    traits = unique([a.brightness_label, *(c.family for c in a.colours[:2]),
                     *((a.shape.kind, a.shape.position) if a.shape else ()), f"{a.warmth} palette",
                     a.saturation_label, f"{a.contrast_label} contrast"])
    return Visual(tuple(c.family for c in a.colours), tone, a.shape.kind if a.shape else None,
                  a.shape.position if a.shape else None, colour_evidence, tone_evidence, shape_evidence, traits)


def visual_from_description(text: str) -> Visual:
    """Read an image description (an L_image response) as the visual evidence: what it names first
    is taken as dominant. Used by cross-reflection separate, which never sees the image."""
    c = extract_claims(text)
    colour_evidence = (f"the image description names {join(c.colours[:3])}" if c.colours
                       else "the image description does not name a colour")
    tone_evidence = (f"the image description calls it {join(c.tone_words[:3])}" if c.tone_words
                     else "the image description does not say how bright it is")
    shape = c.shapes[0] if c.shapes else None
    shape_evidence = (f"the image description mentions a {shape}" + (f" in the {c.position}" if c.position else "")
                      if shape else "the image description mentions no particular shape")
    traits = unique([*([c.tone] if c.tone else []), *c.colours[:2], *([shape] if shape else []),
                     *([c.position] if c.position else [])])
    return Visual(c.colours, c.tone, shape, c.position, colour_evidence, tone_evidence, shape_evidence, traits)


# ----------------------------------------------------------------------------- cross-reflection


@dataclass
class Comparison:
    supportive: list[str] = field(default_factory=list)
    discrepancies: list[str] = field(default_factory=list)
    image_only: list[str] = field(default_factory=list)
    text_only: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # aspect names with a discrepancy
    agreements: list[str] = field(default_factory=list)


def compare(text: Claims, visual: Visual, image_word: str = "image") -> Comparison:
    """Check the text's colour, tone and shape claims against the visual evidence."""
    out = Comparison()
    if not text.colours:
        out.image_only.append(f"Colour: the text does not name a colour; {visual.colour_evidence}.")
    elif not visual.colours:
        out.unverified.append(f"Colour: the text mentions {join(text.colour_words[:3])}, "
                              f"but {visual.colour_evidence}.")
    elif set(text.colours) & set(visual.colours[:3]):
        out.supportive.append(f"Colour: the text mentions {join(text.colour_words[:3])} and "
                              f"{visual.colour_evidence}.")
        out.agreements.append("colour")
    else:
        out.discrepancies.append(f"Colour: the text describes the item in {join(text.colour_words[:3], 'or')}, "
                                 f"but {visual.colour_evidence}; the {image_word} shows no "
                                 f"{join(text.colours[:3], 'or')} to speak of.")
        out.conflicts.append("colour")
    if text.tone is None:
        out.image_only.append(f"Brightness and mood: the text does not say; {visual.tone_evidence}.")
    elif visual.tone is None:
        out.unverified.append(f"Brightness and mood: the text calls it {join(text.tone_words[:3])}; "
                              f"{visual.tone_evidence}, which neither confirms nor contradicts it.")
    elif visual.tone == text.tone:
        out.supportive.append(f"Brightness and mood: the text calls it {join(text.tone_words[:3])} and "
                              f"{visual.tone_evidence}.")
        out.agreements.append("brightness")
    else:
        out.discrepancies.append(f"Brightness and mood: the text describes it as {join(text.tone_words[:3])}, "
                                 f"but {visual.tone_evidence}; the look is {visual.tone}, not {text.tone}.")
        out.conflicts.append("brightness")
    if not text.shapes:
        out.image_only.append(f"Composition: the text does not describe the composition; {visual.shape_evidence}.")
    elif visual.shape is None:
        out.unverified.append(f"Composition: the text mentions a {text.shapes[0]}, but {visual.shape_evidence}.")
    elif visual.shape in text.shapes:
        out.supportive.append(f"Composition: the text mentions a {visual.shape} and {visual.shape_evidence}.")
        out.agreements.append("shape")
    else:
        out.discrepancies.append(f"Composition: the text mentions a {text.shapes[0]}, but {visual.shape_evidence}.")
        out.conflicts.append("shape")
    if text.keywords:
        out.text_only.append(f"Subject: the text says it is about {subject_phrase(text)}; "
                             f"the {image_word} neither shows nor contradicts this.")
    return out


def resolved_look(visual: Visual) -> str:
    """The image-grounded description of the look, e.g. "dark, mainly blue, with a circle in the centre"."""
    parts = [visual.tone] if visual.tone else []
    if visual.colours:
        parts.append(f"mainly {visual.colours[0]}")
    if visual.shape:
        parts.append(f"with a {visual.shape}" + (f" in the {visual.position}" if visual.position else ""))
    return ", ".join(parts) or "without clear visual cues"


def cross_reflection(name: str, text: Claims, visual: Visual, image_word: str) -> str:
    c = compare(text, visual, image_word)
    if c.conflicts:
        verdict = (f"The text and the {image_word} are partly supportive of each other, but there are "
                   f"discrepancies in {join(c.conflicts)}.")
    elif c.supportive:
        verdict = f"The text and the {image_word} are supportive of each other; no conflicts were found."
    else:
        verdict = f"The text and the {image_word} cover different aspects and do not contradict each other."
    lines = [f"Summary: {name} is about {subject_phrase(text)}; judged by the {image_word} it looks "
             f"{resolved_look(visual)}.", "", verdict, "", "Supportive elements:"]
    lines += [f"- {s}" for s in c.supportive] or ["- none found."]
    lines += ["", "Discrepancies:"] + ([f"- {s}" for s in c.discrepancies] or ["- none found."])
    if c.image_only:
        lines += ["", f"Only in the {image_word}:"] + [f"- {s}" for s in c.image_only]
    if c.text_only or c.unverified:
        lines += ["", "Only in the text:"] + [f"- {s}" for s in c.text_only + c.unverified]
    if c.conflicts:
        wrong = [f"{join(text.tone_words[:2])}" if "brightness" in c.conflicts else "",
                 f"{join(text.colour_words[:2], 'or')} colouring" if "colour" in c.conflicts else "",
                 f"{text.shapes[0]}" if "shape" in c.conflicts and text.shapes else ""]
        resolution = (f"Resolution: the {image_word} is the direct evidence of how the item looks, so it "
                      f"takes precedence where they conflict. The item is {resolved_look(visual)}; the "
                      f"text's claim of {join([w for w in wrong if w])} does not match what is shown. The subject "
                      f"({subject_phrase(text)}) comes from the text.")
    else:
        resolution = (f"Resolution: there are no conflicts to address. Taken together, the item is about "
                      f"{subject_phrase(text)} and looks {resolved_look(visual)}.")
    return "\n".join(lines + ["", resolution])


def reflection_keywords(text: Claims, visual: Visual) -> str:
    c = compare(text, visual)
    words = [*text.keywords[:6], *visual.traits, *(f"supportive {a}" for a in c.agreements),
             *(f"conflicting {a}" for a in c.conflicts)]
    if "brightness" in c.conflicts and text.tone:
        words.append(f"not {text.tone}")
    if "colour" in c.conflicts and text.colours:
        words.append(f"not {text.colours[0]}")
    return ", ".join(unique(w for w in words if w))


# ----------------------------------------------------------------------------- describing images


def image_sentences(a: ImageAnalysis) -> dict[str, str]:
    kind = "minimal graphic" if a.shape and a.edge_density < 0.12 else "detailed composition"
    background = f"a {a.background} background" + (f" that gets {a.gradient}" if a.gradient else "")
    if a.shape:
        s = a.shape
        main = (f"The main element is a {s.size} {s.colour} {s.kind} in the {s.position} of the frame, "
                f"covering about {s.area:.0%} of it.")
        short = f"a {s.size} {s.colour} {s.kind} on {background}"
    else:
        main = "There is no single dominant shape; the content is spread over the whole frame."
        short = f"a {kind} on {background}"
    colours = [f"{c.name} ({c.share:.0%})" for c in a.colours[:3]]
    palette = (f"The dominant colour is {colours[0]}" + (f", followed by {join(colours[1:])}." if len(colours) > 1
                                                          else ".")) if colours else "No colour dominates."
    accents = (f" {a.accents} small accent marks are scattered around." if a.accents > 1 else
               " One small accent mark stands apart." if a.accents == 1 else "")
    return {
        "opening": f"The image is a {a.brightness_label} {kind} with {background}.",
        "main": main + accents,
        "short": short,
        "palette": palette,
        "qualities": (f"Overall it is {a.brightness_label} (mean brightness {a.brightness:.2f}), with "
                      f"{a.contrast_label} contrast and {a.saturation_label} colours, giving a {a.warmth} palette."),
        "kind": kind,
    }


# ----------------------------------------------------------------------------- prompt composers

PromptFn = Callable[[Request, "ImageAnalysis | None"], str]

KAR_FACTORS: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {
    ("movie", "film"): (("Genre", "the kind of story the user likes"), ("Plot and story", "what happens"),
                        ("Cast and director", "who made and stars in it"), ("Release era", "when it came out"),
                        ("Mood and tone", "light-hearted or dark"), ("Visual style", "how it looks"),
                        ("Reviews and ratings", "what others thought"), ("Runtime", "how long it is")),
    ("software", "app", "program"): tuple((f.capitalize(), "how the software performs on this") for f in (
        "functionality", "user interface", "user experience", "performance", "compatibility", "cost",
        "security", "support and documentation", "customizability", "scalability", "reliability",
        "updates and maintenance", "reputation and reviews", "accessibility")),
    ("poster", "print", "art", "painting"): (
        ("Subject and theme", "what the poster is about"), ("Colour palette", "the dominant colours"),
        ("Mood and brightness", "bright and cheerful or dark and moody"),
        ("Composition and shapes", "the main shapes and their layout"), ("Art style", "minimal, detailed, photographic"),
        ("Size and print quality", "formats, paper and finish"), ("Price", "how much it costs"),
        ("Room and occasion fit", "where and for whom it suits")),
}
GENERIC_FACTORS = (("Purpose and category", "what the item is for"), ("Main features", "what it offers"),
                   ("Appearance", "colour, shape and style"), ("Quality", "how well it is made"),
                   ("Price", "how much it costs"), ("Brand and reputation", "who makes it"),
                   ("Reviews", "what other users say"))


def kar_factors(request: Request, _: ImageAnalysis | None) -> str:
    kind = request.fields.get("item_kind", "").strip() or "an item"
    factors = next((f for keys, f in KAR_FACTORS.items() if any(k in kind.lower() for k in keys)), GENERIC_FACTORS)
    lines = [f"{i}. {name}: {why}." for i, (name, why) in enumerate(factors, start=1)]
    return f"The factors that determine whether a user will be interested in {kind}:\n" + "\n".join(lines)


def kar_attribute(factor: str, description: str, claims: Claims) -> str:
    f = factor.lower()
    if any(k in f for k in ("colour", "color", "palette", "appearance", "visual")):
        return f"described as {join(claims.colour_words[:3], 'and')}" if claims.colour_words else "not stated in the description"
    if any(k in f for k in ("mood", "tone", "bright", "atmosphere")):
        return f"described as {join(claims.tone_words[:3])}" if claims.tone_words else "not stated in the description"
    if any(k in f for k in ("composition", "shape", "layout")):
        return f"mentions a {claims.shapes[0]}" if claims.shapes else "not stated in the description"
    if any(k in f for k in ("subject", "theme", "genre", "plot", "story", "topic", "purpose", "category",
                            "functionality", "feature")):
        return subject_phrase(claims, "not stated in the description")
    terms = [t for t in re.split(r"\W+", f) if len(t) > 3]
    matching = [s for s in sentences(description) if any(t[:5] in s.lower() for t in terms)]
    return " ".join(matching) if matching else "not stated in the description"


def kar(request: Request, _: ImageAnalysis | None) -> str:
    title = request.fields.get("title", "").strip() or "This item"
    description = request.fields.get("description", "").strip()
    factors = [f.strip() for f in request.fields.get("factors", "").split(",") if f.strip()]
    claims = extract_claims(description)
    intro = (f"{title}: {sentences(description)[0]}" if description
             else f"{title}: no description is available, so its attributes cannot be stated.")
    lines = [f"- {f[0].upper() + f[1:]}: {kar_attribute(f, description, claims)}." for f in factors]
    return "\n".join([intro, "Attributes (from the text; no image was used):", *lines])


def llm_rec(request: Request, _: ImageAnalysis | None) -> str:
    description = request.fields.get("description", "").strip()
    if not description:
        return ("There is no description to build on. To recommend it, ask what the person enjoys and "
                "describe the item's visible features yourself.")
    claims = extract_claims(description)
    practical = [s for s in sentences(description)[1:]
                 if not (extract_claims(s).colours or extract_claims(s).tone_words)]
    parts = [f"To recommend it, lead with what it is about: {subject_phrase(claims)}.",
             f"Anyone interested in {join(claims.keywords[:3]) or 'this subject'} is likely to enjoy it."]
    if look_phrase(claims):
        parts.append(f"Describe the look it promises: {look_phrase(claims)}.")
    if practical:
        parts.append("Add the practical details: " + " ".join(practical))
    return " ".join(parts)


def rec_gpt4v(_: Request, a: ImageAnalysis | None) -> str:
    s = image_sentences(a)
    return (f"This image shows {s['short']}. It is a {a.brightness_label} {s['kind']} in mostly "
            f"{a.colours[0].name if a.colours else 'mixed colours'}.")


def visual_only(_: Request, a: ImageAnalysis | None) -> str:
    s = image_sentences(a)
    return " ".join([s["opening"], s["main"], s["palette"], s["qualities"]])


def cot(request: Request, a: ImageAnalysis | None) -> str:
    description = request.fields.get("description", "").strip()
    claims = extract_claims(description)
    s = image_sentences(a)
    text_step = (f"Step 1 - the description: it is about {subject_phrase(claims)}"
                 + (f" and it describes the look as {look_phrase(claims)}." if look_phrase(claims) else ".")
                 if description else "Step 1 - the description: none was given.")
    combined = (f"Step 3 - combining both: the description supplies the subject ({subject_phrase(claims)})"
                + (f" and the intended mood ({join(claims.tone_words[:2])})" if claims.tone_words else "")
                + f", while the image supplies the visual composition: {s['short']}, "
                  f"{a.brightness_label} and mostly {a.dominant}. Together they give a comprehensive "
                  f"understanding of the item.")
    return "\n".join([text_step, f"Step 2 - the image: {s['opening']} {s['main']}", combined])


def visual_textual(request: Request, a: ImageAnalysis | None) -> str:
    description = request.fields.get("description", "").strip()
    claims = extract_claims(description)
    s = image_sentences(a)
    said = " ".join(sentences(description)[:2]) if description else "There is no text description."
    return (f"According to its description: {said} The image shows {s['short']}; {s['palette'][0].lower()}"
            f"{s['palette'][1:]} Combining both gives a comprehensive understanding: the text explains what "
            f"the item is about ({subject_phrase(claims)}), and the image shows how it looks "
            f"({a.brightness_label}, {a.dominant}" + (f", a {a.shape.kind}" if a.shape else "") + ").")


def xr_combined(request: Request, a: ImageAnalysis | None) -> str:
    claims = extract_claims(request.fields.get("description", ""))
    return cross_reflection(request.fields.get("title", "").strip() or "The item", claims,
                            visual_from_analysis(a), "image")


def xr_separate(request: Request, _: ImageAnalysis | None) -> str:
    claims = extract_claims(request.fields.get("r_text", ""))
    return cross_reflection("The item", claims, visual_from_description(request.fields.get("r_image", "")),
                            "image description")


def xr_combined_keyword(request: Request, a: ImageAnalysis | None) -> str:
    return reflection_keywords(extract_claims(request.fields.get("description", "")), visual_from_analysis(a))


def xr_separate_keyword(request: Request, _: ImageAnalysis | None) -> str:
    return reflection_keywords(extract_claims(request.fields.get("r_text", "")),
                               visual_from_description(request.fields.get("r_image", "")))


COMPOSERS: dict[str, PromptFn] = {
    "kar_factors": kar_factors, "kar": kar, "llm_rec": llm_rec, "rec_gpt4v": rec_gpt4v, "cot": cot,
    "visual_only": visual_only, "visual_textual": visual_textual, "xr_separate": xr_separate,
    "xr_combined": xr_combined, "xr_separate_keyword": xr_separate_keyword,
    "xr_combined_keyword": xr_combined_keyword,
}
IMAGE_PROMPTS = frozenset(("rec_gpt4v", "cot", "visual_only", "visual_textual", "xr_combined", "xr_combined_keyword"))


def respond(request: Request) -> str:
    """The offline answer to one request; raises GenerationError when it cannot be answered."""
    where = f"offline backbone, prompt {request.template_id!r}, item {request.item_id!r}"
    composer = COMPOSERS.get(request.template_id)
    if composer is None:
        raise GenerationError(f"{where}: no offline composer for this prompt id; add one to "
                              "COMPOSERS in xreflect/backends/offline.py or use a model backbone")
    analysis = None
    if request.template_id in IMAGE_PROMPTS:
        if request.image is None:
            raise GenerationError(f"{where}: this prompt needs the item image but the request has none; "
                                  "give the item an image or leave it out of image prompts")
        try:
            analysis = cached_analysis(request.image)
        except ValueError as err:
            raise GenerationError(f"{where}: {err}") from err
    return composer(request, analysis)


class OfflineBackend(Backend):
    """Deterministic stand-in for a multimodal model: image analysis plus templated composition per
    prompt (see the module docstring). NOT a language model; its answers depend only on the request."""

    provider = "offline"

    def identity(self, request: Request) -> dict:
        return {"provider": self.provider, "model": ANALYSER_VERSION}

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Response | GenerationError]]:
        for index, request in enumerate(requests):
            start = time.perf_counter()
            try:
                text = respond(request)
            except GenerationError as err:
                yield index, err
                continue
            usage = {"prompt_tokens": len(request.prompt.split()), "completion_tokens": len(text.split())}
            yield index, Response(text, ANALYSER_VERSION, usage, time.perf_counter() - start)
