"""xreflect.data.image_analysis on hand-made images whose colours, brightness and shapes are known."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from xreflect.data.image_analysis import EMBEDDING_DIM, analyse_image, colour_name, load_rgb, pixel_stats_embedding

DARK_BLUE, YELLOW, LIGHT_PINK = (20, 30, 90), (240, 220, 40), (250, 200, 215)


def poster(shape: str, background=DARK_BLUE, fill=YELLOW, centre=(48, 48), radius=20, size=96) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    cx, cy = centre
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius * 0.7), (cx + radius, cy + radius * 0.7)], fill=fill)
    elif shape == "star":
        draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for k in range(10)
                      for r, a in [(radius if k % 2 == 0 else radius * 0.42, -math.pi / 2 + k * math.pi / 5)]],
                     fill=fill)
    return image


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("rgb,name", [((1, 0, 0), "red"), ((0, 0, 0.3), "dark blue"), ((1, 1, 0.6), "light yellow"),
                                      ((0.1, 0.7, 0.2), "green"), ((1, 1, 1), "white"), ((0, 0, 0), "black"),
                                      ((0.5, 0.5, 0.5), "grey"), ((0.55, 0.2, 0.8), "purple")])
def test_colour_names(rgb, name):
    assert colour_name(rgb) == name


def test_dark_blue_poster_with_yellow_circle():
    analysis = analyse_image(encode(poster("circle")))
    # circle share pi*20^2/96^2 = 13.6 %; luma: background .133, yellow .806 -> mean ~ .225
    assert [c.family for c in analysis.colours[:2]] == ["blue", "yellow"]
    assert analysis.colours[0].name == "dark blue"
    assert analysis.colours[1].share == pytest.approx(0.136, abs=0.01)
    assert analysis.brightness == pytest.approx(0.225, abs=0.01)
    assert analysis.brightness_label == "dark"
    assert analysis.background == "dark blue"
    assert analysis.shape.kind == "circle" and analysis.shape.colour == "yellow"
    assert analysis.shape.position == "centre"


def test_bright_image_is_bright():
    analysis = analyse_image(poster("square", background=LIGHT_PINK, fill=(230, 60, 110)))
    assert analysis.brightness_label == "bright"
    assert analysis.dominant == "pink"
    assert analysis.warmth == "warm"


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "star"])
@pytest.mark.parametrize("radius", [14, 26])
def test_shapes_are_recognised(shape, radius):
    assert analyse_image(poster(shape, radius=radius)).shape.kind == shape


def test_position_of_the_main_shape():
    assert analyse_image(poster("circle", centre=(18, 18), radius=12)).shape.position == "upper left"
    assert analyse_image(poster("square", centre=(78, 80), radius=10)).shape.position == "lower right"


def test_no_shape_in_a_plain_or_noisy_image():
    assert analyse_image(Image.new("RGB", (64, 64), (200, 30, 30))).shape is None
    noise = np.random.default_rng(0).integers(0, 256, size=(120, 80, 3), dtype=np.uint8)
    analysis = analyse_image(encode(Image.fromarray(noise), "JPEG"))
    assert analysis.shape is None and analysis.contrast_label in ("moderate", "high")


def test_load_rgb_handles_real_world_files():
    transparent = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    assert np.allclose(load_rgb(encode(transparent)), 1.0)  # composited on white
    large = poster("circle", size=600, radius=150, centre=(300, 300))
    rgb = load_rgb(encode(large, "JPEG"))
    assert max(rgb.shape[:2]) == 128
    assert analyse_image(encode(large, "JPEG")).shape.kind == "circle"
    assert load_rgb(encode(Image.new("L", (10, 10), 128))).shape == (10, 10, 3)
    with pytest.raises(ValueError, match="cannot decode image"):
        load_rgb(b"not an image")


def test_pixel_stats_embedding():
    images = [encode(poster("circle")), encode(poster("circle", centre=(46, 50))),
              encode(poster("triangle", background=LIGHT_PINK, fill=(230, 60, 110)))]
    vectors = pixel_stats_embedding(images)
    assert vectors.shape == (3, EMBEDDING_DIM) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors, pixel_stats_embedding(images))  # deterministic
    # the same poster shifted a little is closer than a different colour, tone and shape
    assert vectors[0] @ vectors[1] > 0.9 > vectors[0] @ vectors[2]
    assert pixel_stats_embedding([]).shape == (0, EMBEDDING_DIM)
    with_missing = pixel_stats_embedding([images[0], None])
    assert np.array_equal(with_missing[0], vectors[0]) and not with_missing[1].any()


def test_embedding_separates_shapes_of_the_same_colours():
    vectors = pixel_stats_embedding([encode(poster(s, centre=(48 + dx, 48))) for s in ("square", "star")
                                     for dx in (-6, 6)])
    same = min(vectors[0] @ vectors[1], vectors[2] @ vectors[3])
    assert same > vectors[0] @ vectors[2] + 0.05
