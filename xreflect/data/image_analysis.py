"""Image analysis without any model download: colours, brightness, layout and main shape.

Used by the offline backbone (xreflect.backends.offline), which describes what an image shows
from `analyse_image`, and by the offline image encoder (`pixel_stats_embedding`), the `image`
source of the Text+Image baseline when CLIP cannot be downloaded.

Everything works on arbitrary RGB/RGBA/palette/greyscale PNG or JPEG images of any size: images
are downscaled to at most ANALYSIS_SIDE pixels first. The main-shape detector looks for the
largest connected region that differs from the border colour; when there is none (a busy photo
poster, a plain image) it reports no shape rather than guessing.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

ANALYSIS_SIDE = 128  # longest side analysed; the demo's 96 px images are used as they are

# Hue families in degrees [start, end); red wraps around 0.
HUE_FAMILIES = (("red", 345, 15), ("orange", 15, 45), ("yellow", 45, 70), ("green", 70, 160),
                ("cyan", 160, 195), ("blue", 195, 255), ("purple", 255, 290), ("pink", 290, 345))
ACHROMATIC = ("black", "grey", "white")
FAMILIES = tuple(name for name, _, _ in HUE_FAMILIES) + ACHROMATIC
WARM = {"red", "orange", "yellow", "pink"}
COOL = {"green", "cyan", "blue", "purple"}
SHAPES = ("square", "rectangle", "circle", "oval", "triangle", "diamond", "star")


@dataclass(frozen=True)
class ColourShare:
    family: str   # one of FAMILIES
    name: str     # with its most common shade, e.g. "dark blue", "light yellow", "white"
    share: float  # fraction of pixels


@dataclass(frozen=True)
class Shape:
    kind: str       # one of SHAPES, or "irregular shape"
    colour: str     # shade name of its mean colour
    position: str   # e.g. "centre", "upper left", "lower right"
    size: str       # "small" | "medium" | "large"
    area: float     # fraction of the image
    fill: float     # area / bounding-box area (square 1, circle .79, triangle .5, star ~.35)
    corners: int    # peaks of the radial signature (circle 0, triangle 3, square 4, star 5)


@dataclass(frozen=True)
class ImageAnalysis:
    width: int
    height: int
    colours: tuple[ColourShare, ...]  # dominant colours, largest share first (>= 4 % each)
    background: str                   # shade name of the border colour
    brightness: float                 # mean luma, 0 (black) .. 1 (white)
    brightness_label: str             # "dark" | "medium" | "bright"
    contrast: float                   # standard deviation of luma
    contrast_label: str               # "low" | "moderate" | "high"
    saturation: float                 # mean HSV saturation
    saturation_label: str             # "muted" | "moderately saturated" | "vivid"
    warmth: str                       # "warm" | "cool" | "neutral"
    edge_density: float               # fraction of pixels on a strong edge
    shape: Shape | None               # the main shape, if there is a clear one
    accents: int                      # small separate marks besides the main shape
    gradient: str | None              # "lighter toward the top" / "... bottom", if any

    @property
    def dominant(self) -> str:
        return self.colours[0].family if self.colours else "grey"


# ----------------------------------------------------------------------------- decoding


def load_rgb(image: bytes | Image.Image, max_side: int = ANALYSIS_SIDE) -> np.ndarray:
    """Decode to an RGB float array in [0, 1], at most `max_side` pixels on the longest side.

    Transparent areas are composited on white (how a viewer shows them); EXIF rotation is applied.
    Raises ValueError if the bytes are not an image PIL can read.
    """
    if isinstance(image, (bytes, bytearray)):
        try:
            img = Image.open(io.BytesIO(image))
            img.load()
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot decode image ({len(image)} bytes): {err}") from err
    else:
        img = image
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("RGB")
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """Vectorised RGB -> HSV; hue in degrees [0, 360), saturation and value in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    c = v - rgb.min(axis=-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-8), 0.0)
    safe = np.maximum(c, 1e-8)
    h = np.where(v == r, ((g - b) / safe) % 6, np.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = np.where(c > 0, h * 60.0, 0.0)
    return np.stack([h % 360.0, s, v], axis=-1)


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ----------------------------------------------------------------------------- colour names


def family_index(hsv: np.ndarray) -> np.ndarray:
    """Index into FAMILIES for every pixel (greys, black and white where there is little colour)."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    index = np.zeros(h.shape, dtype=np.int64)
    for i, (_, start, end) in enumerate(HUE_FAMILIES):
        inside = (h >= start) & (h < end) if start < end else (h >= start) | (h < end)
        index[inside] = i
    n = len(HUE_FAMILIES)
    achromatic = (s < 0.15) | (v < 0.12)
    index[achromatic] = n + 1                       # grey
    index[achromatic & (v < 0.22)] = n              # black
    index[achromatic & (v > 0.82) & (s < 0.15)] = n + 2  # white
    return index


def shade(hsv_pixel: np.ndarray) -> str:
    """"dark " / "light " / "" for one HSV colour of a chromatic family."""
    _, s, v = hsv_pixel
    if v < 0.45:
        return "dark "
    if s < 0.5 and v > 0.75:
        return "light "
    return ""


def colour_name(rgb: tuple[float, float, float] | np.ndarray) -> str:
    """Name of one colour (RGB in [0, 1]), e.g. "dark blue", "light yellow", "white"."""
    hsv = rgb_to_hsv(np.asarray(rgb, dtype=np.float32).reshape(1, 3))[0]
    family = FAMILIES[int(family_index(hsv.reshape(1, 3))[0])]
    return family if family in ACHROMATIC else shade(hsv) + family


def dominant_colours(rgb: np.ndarray, hsv: np.ndarray, min_share: float = 0.04) -> tuple[ColourShare, ...]:
    families = family_index(hsv).ravel()
    counts = np.bincount(families, minlength=len(FAMILIES)) / families.size
    flat_hsv = hsv.reshape(-1, 3)
    result = []
    for i in np.argsort(-counts, kind="stable"):
        if counts[i] < min_share:
            break
        family = FAMILIES[i]
        if family in ACHROMATIC:
            name = family
        else:  # the most common shade within the family names it
            shades = [shade(p) for p in flat_hsv[families == i][::7]] or [""]
            name = max(set(shades), key=lambda sh: (shades.count(sh), sh)) + family
        result.append(ColourShare(family, name, float(counts[i])))
    return tuple(result)


# ----------------------------------------------------------------------------- layout and shape


def background_colour(rgb: np.ndarray) -> np.ndarray:
    """Median colour of the one-pixel border: what a poster's main element stands out from."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return np.median(border, axis=0)


def foreground_mask(rgb: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Pixels clearly different from the border colour (Euclidean RGB distance in [0, 1] units)."""
    return np.linalg.norm(rgb - background_colour(rgb), axis=-1) > threshold


def radial_corners(mask: np.ndarray) -> tuple[int, float]:
    """Corners of a region from its radial signature: (peaks, coefficient of variation).

    The largest distance from the centroid per angle is flat for a circle and peaks once per
    corner: 3 for a triangle, 4 for a square or diamond, 5 for a five-pointed star.
    """
    ys, xs = np.nonzero(mask)
    dy, dx = ys - ys.mean(), xs - xs.mean()
    angle = (np.arctan2(dy, dx) + np.pi) / (2 * np.pi)
    bins = 48
    index = np.minimum((angle * bins).astype(int), bins - 1)
    radius = np.zeros(bins)
    np.maximum.at(radius, index, np.hypot(dy, dx))
    if (radius == 0).any():  # empty angle bins (tiny shapes): fill from neighbours
        filled = np.nonzero(radius)[0]
        radius = np.interp(np.arange(bins), filled, radius[filled], period=bins)
    smooth = (np.roll(radius, 1) + 2 * radius + np.roll(radius, -1)) / 4
    cv = float(smooth.std() / max(smooth.mean(), 1e-8))
    if cv < 0.045:
        return 0, cv
    floor = smooth.mean() + 0.25 * smooth.std()
    peaks = [i for i in range(bins) if smooth[i] > floor
             and smooth[i] >= smooth[i - 1] and smooth[i] > smooth[(i + 1) % bins]]
    # peaks closer than 3 bins are one corner split by pixelation
    merged = [p for k, p in enumerate(peaks) if k == 0 or p - peaks[k - 1] > 3]
    if len(merged) > 1 and merged[0] + bins - merged[-1] <= 3:
        merged = merged[1:]
    return len(merged), cv


def classify_shape(fill: float, aspect: float, corners: int, lower_share: float) -> str:
    """Name a region from its bounding-box fill, aspect ratio (w/h) and corner count."""
    squareish = 0.8 <= aspect <= 1.25
    if fill >= 0.86:
        return "square" if squareish else "rectangle"
    if fill >= 0.66 and corners in (0, 1, 2):
        return "circle" if squareish else "oval"
    if 0.4 <= fill < 0.66:
        if corners == 3 or abs(lower_share - 0.5) > 0.12:
            return "triangle"
        if corners == 4:
            return "diamond"
    if fill < 0.48 and corners == 5:
        return "star"
    return "irregular shape"


def position_label(cy: float, cx: float) -> str:
    """Where a point (relative coordinates in [0, 1]) lies: thirds of the frame."""
    vertical = "upper " if cy < 1 / 3 else "lower " if cy > 2 / 3 else ""
    horizontal = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"
    return "centre" if not vertical and horizontal == "centre" else (vertical + horizontal)


def find_shape(rgb: np.ndarray) -> tuple[Shape | None, int]:
    """The main shape (largest foreground region) and the number of small accent marks."""
    mask = foreground_mask(rgb)
    labels, count = ndimage.label(mask)
    if count == 0:
        return None, 0
    sizes = np.bincount(labels.ravel())[1:]
    main = int(np.argmax(sizes)) + 1
    accents = int(((sizes >= 2) & (sizes < 0.01 * mask.size)).sum())
    region = ndimage.binary_fill_holes(labels == main)
    area = float(region.sum()) / region.size
    ys, xs = np.nonzero(region)
    top, bottom, left, right = ys.min(), ys.max(), xs.min(), xs.max()
    height, width = rgb.shape[:2]
    touches = (top == 0) + (left == 0) + (bottom == height - 1) + (right == width - 1)
    # Too small, nearly everything, or a band along the frame: not a main shape.
    if area < 0.02 or area > 0.8 or touches >= 2:
        return None, accents
    box_h, box_w = bottom - top + 1, right - left + 1
    fill = float(region.sum() / (box_h * box_w))
    lower_share = float((ys > (top + bottom) / 2).mean())
    corners, _ = radial_corners(region)
    kind = classify_shape(fill, box_w / box_h, corners, lower_share)
    size = "small" if area < 0.08 else "large" if area > 0.22 else "medium"
    colour = colour_name(rgb[region].mean(axis=0))
    position = position_label(ys.mean() / height, xs.mean() / width)
    return Shape(kind, colour, position, size, area, fill, corners), accents


# ----------------------------------------------------------------------------- analysis


def _label(value: float, low: float, high: float, names: tuple[str, str, str]) -> str:
    return names[0] if value < low else names[2] if value > high else names[1]


def edge_magnitudes(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel gradient magnitude and orientation (radians in [0, pi))."""
    gx = ndimage.sobel(gray, axis=1, mode="nearest")
    gy = ndimage.sobel(gray, axis=0, mode="nearest")
    return np.hypot(gx, gy), np.arctan2(gy, gx) % np.pi


def vertical_gradient(y: np.ndarray) -> str | None:
    top, bottom = float(y[: len(y) // 4].mean()), float(y[-(len(y) // 4):].mean())
    if abs(top - bottom) < 0.04:
        return None
    return "lighter toward the top" if top > bottom else "lighter toward the bottom"


def analyse_array(rgb: np.ndarray) -> ImageAnalysis:
    hsv = rgb_to_hsv(rgb)
    y = luma(rgb)
    magnitude, _ = edge_magnitudes(y)
    families = family_index(hsv)
    chromatic = families < len(HUE_FAMILIES)
    names = np.array(FAMILIES)
    warm = float(np.isin(names[families], list(WARM)).mean())
    cool = float(np.isin(names[families], list(COOL)).mean())
    warmth = "neutral" if max(warm, cool) < 0.2 or abs(warm - cool) < 0.15 else "warm" if warm > cool else "cool"
    saturation = float(hsv[..., 1][chromatic].mean()) if chromatic.any() else 0.0
    shape, accents = find_shape(rgb)
    brightness, contrast = float(y.mean()), float(y.std())
    return ImageAnalysis(
        width=rgb.shape[1], height=rgb.shape[0],
        colours=dominant_colours(rgb, hsv),
        background=colour_name(background_colour(rgb)),
        brightness=brightness,
        brightness_label=_label(brightness, 0.35, 0.55, ("dark", "medium", "bright")),
        contrast=contrast,
        contrast_label=_label(contrast, 0.1, 0.25, ("low", "moderate", "high")),
        saturation=saturation,
        saturation_label=_label(saturation, 0.3, 0.6, ("muted", "moderately saturated", "vivid")),
        warmth=warmth,
        edge_density=float((magnitude > 0.5).mean()),
        shape=shape, accents=accents,
        gradient=vertical_gradient(y),
    )


@lru_cache(maxsize=2048)
def _analyse_bytes(data: bytes) -> ImageAnalysis:
    return analyse_array(load_rgb(data))


def analyse_image(image: bytes | Image.Image) -> ImageAnalysis:
    """Analyse one image given as file bytes (PNG, JPEG, ...) or a PIL image."""
    if isinstance(image, (bytes, bytearray)):
        return _analyse_bytes(bytes(image))
    return analyse_array(load_rgb(image))


# ----------------------------------------------------------------------------- embedding


def _unit(block: np.ndarray, weight: float = 1.0) -> np.ndarray:
    norm = float(np.linalg.norm(block))
    return (block / norm * weight if norm > 0 else block).astype(np.float32)


def pixel_stats_features(rgb: np.ndarray) -> np.ndarray:
    """EMBEDDING_DIM hand-made features of one RGB image; each block is L2-normalised."""
    hsv = rgb_to_hsv(rgb)
    y = luma(rgb)
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    families = family_index(hsv)
    chromatic = families < len(HUE_FAMILIES)
    # colour: 12 hue bins x {dark, light} for chromatic pixels, plus black/grey/white shares
    hue_bin = (h / 30).astype(int) % 12 + 12 * (v > 0.5)
    hue_hist = np.bincount(hue_bin[chromatic], minlength=24) / y.size
    achromatic = np.bincount(families[~chromatic] - len(HUE_FAMILIES), minlength=3) / y.size
    luma_hist = np.histogram(y, bins=8, range=(0, 1))[0] / y.size
    sat_hist = np.histogram(s, bins=4, range=(0, 1))[0] / y.size
    # layout: 4x4 grid of mean colour and of foreground share
    rows = np.array_split(np.arange(rgb.shape[0]), 4)
    cols = np.array_split(np.arange(rgb.shape[1]), 4)
    mask = foreground_mask(rgb)
    grid_rgb = np.array([rgb[np.ix_(r, c)].mean(axis=(0, 1)) for r in rows for c in cols]).ravel() - 0.5
    grid_fg = np.array([mask[np.ix_(r, c)].mean() for r in rows for c in cols]) - 0.25
    # texture: magnitude-weighted edge orientations (squares: 0/90 degrees; triangles: 60/120)
    magnitude, orientation = edge_magnitudes(y)
    orient_hist = np.bincount(((orientation / np.pi * 8).astype(int) % 8).ravel(), weights=magnitude.ravel(),
                              minlength=8)
    edges = np.append(orient_hist, (magnitude > 0.5).mean() * 10)
    # main shape descriptors
    shape, accents = find_shape(rgb)
    kind = np.zeros(len(SHAPES) + 2)
    if shape is None:
        kind[-1] = 1
    else:
        kind[SHAPES.index(shape.kind) if shape.kind in SHAPES else len(SHAPES)] = 1
    shape_stats = np.concatenate([kind, [shape.area if shape else 0.0, shape.fill if shape else 0.0,
                                         min(accents, 10) / 10]])
    global_stats = np.array([y.mean() - 0.5, y.std(), s.mean() - 0.3,
                             np.log(rgb.shape[1] / rgb.shape[0])])
    blocks = [(hue_hist, 1.5), (achromatic, 0.7), (luma_hist, 1.0), (sat_hist, 0.5), (grid_rgb, 1.0),
              (grid_fg, 1.0), (edges, 1.0), (shape_stats, 1.2), (global_stats, 0.8)]
    features = np.concatenate([_unit(np.asarray(b, dtype=np.float64), w) for b, w in blocks])
    return _unit(features)


EMBEDDING_DIM = 24 + 3 + 8 + 4 + 48 + 16 + 9 + (len(SHAPES) + 2 + 3) + 4  # = 128


def pixel_stats_embedding(images: list[bytes | None]) -> np.ndarray:
    """Deterministic image encoder needing no download: (len(images), EMBEDDING_DIM) float32,
    L2-normalised rows of colour histograms, 4x4 layout grids, edge orientations and shape stats.
    A missing image (None) gets a zero row, so text-only items keep their place."""
    rows = [np.zeros(EMBEDDING_DIM, dtype=np.float32) if data is None else pixel_stats_features(load_rgb(data))
            for data in images]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
