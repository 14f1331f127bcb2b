"""The synthetic `demo` dataset: posters with a text description and a rendered image.

It is the pipeline's embedded default (no network) and a small benchmark built around the paper's
premise: the text and the image of an item carry different, sometimes conflicting, information.

Generative model (everything drawn from one numpy Generator seeded by `seed`):

Items. Each item i has four latent attributes:
- theme   (6 values: space, ocean, jazz, mountains, sports, cuisine): appears ONLY in the text
  (a theme phrase such as "astronauts floating among the stars"); the image does not show it.
- shape   (circle, square, triangle, star): appears ONLY in the image (the main drawn shape).
- colour  (red, orange, yellow, green, blue, purple) and
- tone    (bright or dark): appear in the image (the hue of background and shape; a light tinted
  vs a deep shaded background) AND are claimed in the text ("a palette of blue tones", "dark
  and moody"). For CONFLICT_SHARE (25 %) of items the text's claim is wrong: it names another
  colour, the opposite tone, or both. The image shows the true values.
Nuisance variation that carries no preference: the shape's position and size, background
gradient, a few small accent dots in a random colour, hue jitter, title and wording, filler
sentences (paper, sizes, shipping).

Users. Each user u has Gaussian preference weights over every value of every attribute,
w_theme ~ N(0, 1.0), w_shape ~ N(0, 1.0), w_colour ~ N(0, 0.8), w_tone ~ N(0, 0.7), and the
affinity a(u, i) = w_theme[theme_i] + w_shape[shape_i] + w_colour[colour_i] + w_tone[tone_i]
uses the TRUE (image) colour and tone, so where text and image disagree, preference follows the
image. Items have a mild long-tail popularity p_i ~ N(0, POPULARITY_SIGMA).

Interactions. User u interacts with n_u = 15 + Poisson(10) items, drawn without replacement with
probability proportional to exp(SHARPNESS * a(u, i) + p_i) (Gumbel top-k). Ratings 1-5 are
round(2.4 + z + N(0, 0.6)), clipped, where z is the affinity standardised over the user's whole
catalogue; timestamps are increasing per user.

Consequences: a recommender that reads only the text sees theme and the (75 % correct)
colour/tone claims but never the shape; one that also sees the image gets shape and the true
colour/tone; Item Popularity sees only p_i. Measured with default params (ridge user vectors over
MiniLM / pixel-stats item features, per-user 8:1:1 splits, 100 sampled negatives, test Recall@10,
3 splits): popularity 0.15 < text 0.29 < text + pixel-stats image 0.51 (true attributes: 0.61).

Files (the contract of xreflect/data/contract.py): items.jsonl, interactions.csv, images/<item_id>.png,
source.json (the generation params), plus demo_truth.csv (the latent attributes of every item, for
analyses such as "do responses recover the true tone of conflicting items"; the pipeline ignores it).
Everything is byte-identical for the same parameters.
"""
from __future__ import annotations

import colorsys
import io
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from xreflect.core.config import ParamsError
from xreflect.data.contract import IMAGES_DIR, INTERACTIONS_FILE, ITEMS_FILE, Item, write_interactions, write_items
from xreflect.core.io import write_bytes, write_json

VERSION = 1
TRUTH_FILE = "demo_truth.csv"
CONFLICT_SHARE = 0.25
POPULARITY_SIGMA = 0.5
SHARPNESS = 1.6
MIN_INTERACTIONS = 15

THEMES: dict[str, tuple[str, ...]] = {
    "space": ("rocket launches and distant galaxies", "astronauts floating among the stars",
              "the first steps on the Moon", "a lonely probe leaving the solar system"),
    "ocean": ("whales and coral reefs", "strange creatures of the deep sea",
              "a lighthouse keeper watching the tides", "surfers chasing the perfect wave"),
    "jazz": ("a jazz club in the fifties", "a saxophone legend's farewell concert",
             "improvised bebop sessions", "a big-band swing evening"),
    "mountains": ("alpine climbers crossing a glacier", "a hiking trail through high peaks",
                  "a remote monastery in the Himalayas", "skiers racing down a steep slope"),
    "sports": ("a marathon through the old town", "a championship football final",
               "a boxer's comeback fight", "cyclists racing in a grand tour"),
    "cuisine": ("street food from a busy market", "a family bakery and its bread",
                "a chef's ten-course tasting menu", "coffee roasting in a small workshop"),
}
SHAPES = ("circle", "square", "triangle", "star")
COLOURS: dict[str, float] = {"red": 0.0, "orange": 30.0, "yellow": 55.0, "green": 125.0,
                             "blue": 220.0, "purple": 275.0}  # hue in degrees
TONES = ("bright", "dark")
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"), "orange": ("orange", "amber", "tangerine"),
    "yellow": ("yellow", "golden", "lemon"), "green": ("green", "emerald", "leafy green"),
    "blue": ("blue", "cobalt", "azure"), "purple": ("purple", "violet", "plum"),
}
TONE_WORDS: dict[str, tuple[str, ...]] = {
    "bright": ("bright and cheerful", "sunny and upbeat", "light, airy and joyful", "radiant and playful"),
    "dark": ("dark and moody", "shadowy and brooding", "gloomy and mysterious", "dim, sombre and intense"),
}
TITLE_ADJECTIVES = ("Silent", "Endless", "Hidden", "Restless", "Distant", "Wandering", "Final", "Secret",
                    "Lost", "Gentle", "Wild", "Quiet", "Rising", "Forgotten", "Sacred", "Hollow", "Swift",
                    "Brave", "Humble", "Fierce", "Early", "Second", "Northern", "Southern", "Ancient",
                    "Modern", "Little", "Grand", "Lonely", "Last")
TITLE_NOUNS = ("Voyage", "Harbor", "Orbit", "Parade", "Echo", "Garden", "Signal", "Journey", "Season",
               "Horizon", "Frontier", "Promise", "Rhythm", "Summit", "Station", "Chapter", "Portrait",
               "Festival", "Crossing", "Archive", "Anthem", "Meadow", "Canyon", "Engine", "Lantern",
               "Compass", "Bridge", "Theatre", "Atlas", "Refrain")
THEME_SENTENCES = ("A poster about {phrase}.", "This print celebrates {phrase}.",
                   "{title} is an art print inspired by {phrase}.", "A collector's poster on the theme of {phrase}.",
                   "{title} pays tribute to {phrase}.")
TONE_SENTENCES = ("The artwork feels {tone}.", "Its atmosphere is {tone}.", "The overall style is {tone}.",
                  "Expect a {tone} look.")
COLOUR_SENTENCES = ("Its palette is dominated by {colour} tones.", "The print is rendered mostly in {colour}.",
                    "Shades of {colour} run through the whole design.", "A {colour} colour scheme ties it together.")
FILLER_SENTENCES = ("Printed on heavyweight matte paper.", "Available in A2 and A3 sizes.",
                    "Part of a limited series of 200 signed copies.", "Ships rolled in a protective tube.",
                    "Designed by an independent studio.", "A thoughtful gift for friends and family.",
                    "Frame not included.")


@dataclass(frozen=True)
class DemoItem:
    """The latent truth of one item (written to demo_truth.csv)."""

    item_id: str
    theme: str
    shape: str
    colour: str         # true colour, shown in the image
    tone: str           # true tone, shown in the image
    text_colour: str    # colour the text claims
    text_tone: str      # tone the text claims
    conflict: bool      # text and image disagree
    popularity: float


def pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def draw_items(rng: np.random.Generator, n_items: int) -> list[DemoItem]:
    colours, themes = list(COLOURS), list(THEMES)
    items = []
    for index in range(n_items):
        theme, shape, colour, tone = pick(rng, themes), pick(rng, SHAPES), pick(rng, colours), pick(rng, TONES)
        text_colour, text_tone = colour, tone
        conflict = bool(rng.random() < CONFLICT_SHARE)
        if conflict:  # the text is wrong about the tone, the colour, or both
            kind = pick(rng, ("tone", "tone", "colour", "colour", "both"))
            if kind in ("tone", "both"):
                text_tone = "dark" if tone == "bright" else "bright"
            if kind in ("colour", "both"):
                text_colour = pick(rng, [c for c in colours if c != colour])
        popularity = float(rng.normal(0.0, POPULARITY_SIGMA))
        items.append(DemoItem(f"i{index + 1:04d}", theme, shape, colour, tone, text_colour, text_tone,
                              conflict, popularity))
    return items


def make_titles(rng: np.random.Generator, n_items: int) -> list[str]:
    pairs = [f"{a} {n}" for a in TITLE_ADJECTIVES for n in TITLE_NOUNS]
    order = rng.permutation(len(pairs))
    return [pairs[order[i % len(pairs)]] + ("" if i < len(pairs) else f" {i // len(pairs) + 1}")
            for i in range(n_items)]


def describe(rng: np.random.Generator, item: DemoItem, title: str) -> str:
    """A few sentences of varied wording: theme, tone claim, colour claim, practical filler."""
    theme = pick(rng, THEME_SENTENCES).format(phrase=pick(rng, THEMES[item.theme]), title=title)
    tone = pick(rng, TONE_SENTENCES).format(tone=pick(rng, TONE_WORDS[item.text_tone]))
    colour = pick(rng, COLOUR_SENTENCES).format(colour=pick(rng, COLOUR_WORDS[item.text_colour]))
    middle = [tone, colour] if rng.random() < 0.5 else [colour, tone]
    fillers = [FILLER_SENTENCES[i] for i in sorted(rng.choice(len(FILLER_SENTENCES), int(rng.integers(0, 3)),
                                                              replace=False))]
    return " ".join([theme, *middle, *fillers])


def hsv(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue % 360) / 360, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def shape_points(shape: str, cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    if shape == "triangle":  # pointing up
        return [(cx, cy - radius), (cx - radius * 0.95, cy + radius * 0.65), (cx + radius * 0.95, cy + radius * 0.65)]
    if shape == "star":  # five points, inner radius 0.42 of the outer one
        outer = radius * 1.1
        return [(cx + r * math.cos(a), cy + r * math.sin(a))
                for k in range(10)
                for r, a in [(outer if k % 2 == 0 else outer * 0.42, -math.pi / 2 + k * math.pi / 5)]]
    raise ValueError(shape)


def render(rng: np.random.Generator, item: DemoItem, size: int) -> bytes:
    """The poster image as PNG bytes: tinted background gradient, one main shape, accent dots."""
    hue = COLOURS[item.colour] + float(rng.uniform(-7, 7))
    bright = item.tone == "bright"
    top_sv, bottom_sv = ((0.28, 0.97), (0.40, 0.88)) if bright else ((0.80, 0.30), (0.85, 0.20))
    if rng.random() < 0.5:
        top_sv, bottom_sv = bottom_sv, top_sv
    rows = np.linspace(0.0, 1.0, size)[:, None, None]
    top, bottom = np.array(hsv(hue, *top_sv), float), np.array(hsv(hue, *bottom_sv), float)
    background = np.broadcast_to(top + (bottom - top) * rows, (size, size, 3))
    image = Image.fromarray(np.round(background).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    radius = size * float(rng.uniform(0.2, 0.3))
    margin = radius * 1.15 + 2
    cx, cy = (float(rng.uniform(margin, size - margin)) for _ in range(2))
    fill = hsv(hue, 0.9, 0.85) if bright else hsv(hue, 0.85, 0.62)
    if item.shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif item.shape == "square":
        half = radius * 0.87
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=fill)
    else:
        draw.polygon(shape_points(item.shape, cx, cy, radius), fill=fill)
    accent = hsv(float(rng.uniform(0, 360)), 0.7, 0.95 if not bright else 0.45)
    for _ in range(int(rng.integers(3, 9))):
        x, y, r = float(rng.uniform(2, size - 3)), float(rng.uniform(2, size - 3)), float(rng.uniform(0.8, 1.8))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=accent)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def affinities(rng: np.random.Generator, items: list[DemoItem], n_users: int) -> np.ndarray:
    """(n_users, n_items) affinity from the TRUE attributes (the image wins over the text)."""
    def weights(values: tuple[str, ...] | list[str], scale: float, attribute: str) -> np.ndarray:
        table = rng.normal(0.0, scale, size=(n_users, len(values)))
        index = np.array([list(values).index(getattr(item, attribute)) for item in items])
        return table[:, index]

    return (weights(list(THEMES), 1.0, "theme") + weights(SHAPES, 1.0, "shape")
            + weights(list(COLOURS), 0.8, "colour") + weights(TONES, 0.7, "tone"))


def draw_interactions(rng: np.random.Generator, items: list[DemoItem], affinity: np.ndarray) -> pd.DataFrame:
    popularity = np.array([item.popularity for item in items])
    logits = SHARPNESS * affinity + popularity
    standardised = (affinity - affinity.mean(axis=1, keepdims=True)) / affinity.std(axis=1, keepdims=True)
    start = 1_577_836_800  # 2020-01-01
    rows = []
    for user in range(affinity.shape[0]):
        count = min(MIN_INTERACTIONS + int(rng.poisson(10)), len(items))
        chosen = np.argsort(-(logits[user] + rng.gumbel(size=len(items))), kind="stable")[:count]
        noise = rng.normal(0.0, 0.6, size=count)
        ratings = np.clip(np.round(2.4 + standardised[user, chosen] + noise), 1, 5).astype(int)
        times = start + np.sort(rng.integers(0, 365 * 86_400, size=count))
        order = rng.permutation(count)  # the order of choice carries no signal about time
        for k, item_index in enumerate(chosen[order]):
            rows.append((f"u{user + 1:04d}", items[item_index].item_id, int(ratings[order][k]), int(times[k])))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])


def build_demo(out_dir: Path, *, seed: int, n_users: int, n_items: int, image_size: int) -> None:
    """Write the demo dataset (the contract of xreflect.data.contract) into `out_dir`."""
    if n_users < 1 or n_items < MIN_INTERACTIONS + 10 or image_size < 32:
        raise ParamsError(f"params.yaml: datasets.demo.generator: need n_users >= 1, n_items >= {MIN_INTERACTIONS + 10} and "
                         f"image_size >= 32 (got {n_users}, {n_items}, {image_size}); fix params.yaml data.demo")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    truth = draw_items(rng, n_items)
    titles = make_titles(rng, n_items)
    images_dir = out_dir / IMAGES_DIR
    shutil.rmtree(images_dir, ignore_errors=True)  # no stale images from a larger earlier build
    items = []
    for item, title in zip(truth, titles):
        description = describe(rng, item, title)
        relative = f"{IMAGES_DIR}/{item.item_id}.png"
        write_bytes(out_dir / relative, render(rng, item, image_size))
        items.append(Item(item.item_id, title, description, relative))
    interactions = draw_interactions(rng, truth, affinities(rng, truth, n_users))
    write_items(out_dir / ITEMS_FILE, items)
    write_interactions(out_dir / INTERACTIONS_FILE, interactions)
    truth_frame = pd.DataFrame([asdict(item) for item in truth])
    write_bytes(out_dir / TRUTH_FILE, truth_frame.to_csv(index=False, float_format="%.6f").encode())
    write_json(out_dir / "source.json", {
        "source": "demo", "generator": "xreflect.data.sources.demo", "version": VERSION,
        "params": {"seed": seed, "n_users": n_users, "n_items": n_items, "image_size": image_size},
        "model": {"conflict_share": CONFLICT_SHARE, "popularity_sigma": POPULARITY_SIGMA,
                  "sharpness": SHARPNESS, "min_interactions": MIN_INTERACTIONS,
                  "text_only": ["theme"], "image_only": ["shape"],
                  "both_may_conflict": ["colour", "tone"]},
        "n_interactions": len(interactions),
        "note": "synthetic: see the docstring of xreflect/data/sources/demo.py for the generative model",
    })
