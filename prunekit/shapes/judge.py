"""A deterministic judge of captioned-shapes images: does an image show the attributes it was asked for?

The shapes images have one filled shape on a uniform background, so every attribute can be read by
plain image analysis, with no learned model to trust:

1. the background is the median colour of the image's border (a shape may touch the border, but
   never covers much of it);
2. the shape is the largest connected region clearly unlike the background (after a 3x3 mean that
   tames noise); it must cover at most MAX_REGION of the image, and nearly every pixel away from it
   must be background, else the image shows no single shape on a uniform background;
3. colour: the nearest palette colour to the foreground's core (its most saturated pixels);
4. each pixel's coverage is its position between background and foreground colour (0 to 1), which
   anti-aliasing and blur redistribute but do not change in total: the summed coverage is the area
   and the coverage-weighted mean is the centroid;
5. position: the nearest of the five positions to the centroid; size: the area against the area
   that separates small from large shapes (their geometric mean, whatever the shape);
6. shape: each of the four shapes is drawn with the data set's own renderer at the centroid with the
   measured area, and the one overlapping the coverage map best (soft intersection over union) wins.

An image that shows no single shape on a uniform background (blank, noise, texture, two shapes)
is judged wrong on every attribute. The judge is shown trustworthy in tests/test_attributes.py on real held-out images,
clean and blurred with noise.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from prunekit.shapes.data import (
    BACKGROUNDS,
    COLORS,
    IMAGE_SIZE,
    POSITIONS,
    SHAPES,
    SIZES,
    Attributes,
    parse_caption,
    render,
)

ATTRIBUTES = ("color", "shape", "position", "size")
FOREGROUND_DISTANCE = 45.0  # RGB distance from the background that counts as foreground (palette gaps >= 90)
MAX_REGION = 0.3  # share of the image the shape may cover; the largest real shape covers under 0.2
MIN_BACKGROUND_SHARE = 0.97  # share of the pixels away from the shape that must be background
BLURS = (0.0, 0.75, 1.5, 2.25, 3.0)  # Gaussian sigmas (pixels) the shape templates are compared at
MIN_AREA = 20.0  # pixels of coverage; the smallest real shape covers about 90
_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)
_PALETTE_NAMES = list(COLORS)
_POSITION_CENTERS = np.array(list(POSITIONS.values()), dtype=np.float32)
_POSITION_NAMES = list(POSITIONS)


@dataclass(frozen=True)
class Reading:
    """What the judge sees in one image."""

    color: str
    shape: str
    position: str
    size: str
    area: float  # pixels of coverage
    centroid: tuple[float, float]  # (x, y) in pixels


def _coverage(image: np.ndarray, background: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Each pixel's place between the background (0) and foreground (1) colours, unclipped."""
    direction = foreground - background
    return (image - background) @ direction / float(direction @ direction)


@functools.cache
def _area_per_squared_radius(shape: str) -> float:
    """Rendered area of `shape` divided by the square of its radius (SIZES holds radii)."""
    radius = SIZES["large"]
    return float(_template(shape, 32.0, 32.0, radius).sum()) / radius**2


def _template(shape: str, x: float, y: float, radius: float) -> np.ndarray:
    """The coverage map of `shape` of circumscribed `radius` centred at (x, y), drawn by the data set's renderer."""
    center_x, center_y = POSITIONS["in the center"]
    attrs = Attributes("large", "red", shape, "in the center", "black")
    image = np.asarray(render(attrs, x - center_x, y - center_y, radius / SIZES["large"]), dtype=np.float32)
    return _coverage(image, np.array(BACKGROUNDS["black"], np.float32), np.array(COLORS["red"], np.float32))


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Soft intersection over union of two coverage maps."""
    return float(np.minimum(a, b).sum() / np.maximum(a, b).sum())


@functools.cache
def _size_threshold() -> float:
    """The area between the largest small shape and the smallest large shape at nominal radius (geometric mean)."""
    factors = [_area_per_squared_radius(shape) for shape in SHAPES]
    return math.sqrt(max(factors) * SIZES["small"] ** 2 * min(factors) * SIZES["large"] ** 2)


def read(image: Image.Image) -> Reading | None:
    """The attributes `image` shows, or None when it shows no single shape on a uniform background."""
    pixels = np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX), np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    background = np.median(border, axis=0)
    distance = np.linalg.norm(pixels - background, axis=2)
    smoothed = np.linalg.norm(ndimage.uniform_filter(pixels, size=(3, 3, 1)) - background, axis=2)  # tames noise
    labels, count = ndimage.label(smoothed > FOREGROUND_DISTANCE)
    if count == 0:
        return None
    region = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    near = ndimage.binary_dilation(region, iterations=3)
    if region.mean() > MAX_REGION or np.mean(smoothed[~near] <= FOREGROUND_DISTANCE) < MIN_BACKGROUND_SHARE:
        return None

    inside = distance[region]
    core = region & (distance >= np.percentile(inside, 75))
    foreground = np.median(pixels[core], axis=0)
    # Unclipped coverage keeps noise zero-mean, so area and centroid stay unbiased; the overlap uses clipped.
    coverage = _coverage(pixels, background, foreground) * near
    area = float(coverage.sum())
    if area < MIN_AREA:
        return None
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5  # pixel centres, as the renderer places them
    x, y = float((coverage * xs).sum() / area), float((coverage * ys).sum() / area)
    coverage = np.clip(coverage, 0.0, 1.0)

    color = _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE - foreground, axis=1)))]
    position = _POSITION_NAMES[int(np.argmin(np.linalg.norm(_POSITION_CENTERS - [x, y], axis=1)))]
    size = "large" if area > _size_threshold() else "small"
    overlaps = {}
    for shape in SHAPES:
        template = _template(shape, x, y, math.sqrt(area / _area_per_squared_radius(shape)))
        overlaps[shape] = max(_overlap(coverage, ndimage.gaussian_filter(template, sigma)) for sigma in BLURS)
    shape = max(overlaps, key=overlaps.get)
    return Reading(color, shape, position, size, area, (x, y))


def judge(images: Sequence[Image.Image], attrs: Sequence[Attributes]) -> dict[str, list[bool]]:
    """Per image, whether it shows the asked colour, shape, position and size, and all four at once.

    An image the judge cannot read (see `read`) is wrong on every attribute.
    """
    if len(images) != len(attrs):
        raise ValueError(f"got {len(images)} images for {len(attrs)} attribute sets")
    verdicts: dict[str, list[bool]] = {name: [] for name in (*ATTRIBUTES, "all")}
    for image, asked in zip(images, attrs):
        seen = read(image)
        right = [seen is not None and getattr(seen, name) == getattr(asked, name) for name in ATTRIBUTES]
        for name, ok in zip(ATTRIBUTES, right):
            verdicts[name].append(ok)
        verdicts["all"].append(all(right))
    return verdicts


def attribute_accuracy(images: Sequence[Image.Image], captions: Sequence[str]) -> dict[str, float]:
    """The share of images right on each of colour, shape, position, size, and on all four at once.

    Every caption must be a captioned-shapes caption (see prunekit.data.shapes.parse_caption).
    """
    attrs = [parse_caption(caption) for caption in captions]
    unknown = [caption for caption, parsed in zip(captions, attrs) if parsed is None]
    if unknown:
        raise ValueError(f"not a captioned-shapes caption: {unknown[0]!r}")
    if not images:
        raise ValueError("attribute accuracy needs at least one image")
    verdicts = judge(images, attrs)
    return {name: sum(ok) / len(ok) for name, ok in verdicts.items()}
