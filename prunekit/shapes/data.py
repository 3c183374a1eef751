"""The synthetic captioned-shapes data set: one filled shape on a uniform background, with a caption.

Everything is generated from a seed, so no files are needed and every image can be rebuilt exactly.
Prompts are split at the level of attribute combinations: a held-out combination never appears in
training, whatever the seed.
"""
from __future__ import annotations

import functools
import itertools
import math
import re
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 20),
    "purple": (140, 40, 200),
    "orange": (250, 130, 10),
    "cyan": (20, 210, 220),
    "pink": (250, 110, 190),
}
BACKGROUNDS = {
    "white": (225, 225, 220),
    "gray": (128, 128, 128),
    "black": (30, 30, 30),
    "brown": (110, 85, 60),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": 9.0, "large": 17.0}  # radius of the shape's circumscribed circle, in pixels
POSITIONS = {
    "in the center": (32.0, 32.0),
    "in the top left": (19.0, 19.0),
    "in the top right": (45.0, 19.0),
    "in the bottom left": (19.0, 45.0),
    "in the bottom right": (45.0, 45.0),
}
HELDOUT_FRACTION = 0.15
SPLIT_SEED = 1234
POSITION_JITTER = 2.5  # pixels, uniform in each axis
SIZE_JITTER = 0.08  # relative, uniform


@dataclass(frozen=True)
class Attributes:
    """What a caption says about its image."""

    size: str
    color: str
    shape: str
    position: str
    background: str

    def caption(self) -> str:
        return f"a {self.size} {self.color} {self.shape} {self.position} on a {self.background} background"

    def as_dict(self) -> dict:
        return asdict(self)


_CAPTION = re.compile(
    r"^a (?P<size>\w+) (?P<color>\w+) (?P<shape>\w+) (?P<position>in the [\w ]+?) on a (?P<background>\w+) background$"
)


def parse_caption(caption: str) -> Attributes | None:
    """The attributes a shapes caption names, or None for any other text."""
    match = _CAPTION.match(caption.strip().lower())
    if not match:
        return None
    attrs = Attributes(**match.groupdict())
    known = (attrs.size in SIZES and attrs.color in COLORS and attrs.shape in SHAPES
             and attrs.position in POSITIONS and attrs.background in BACKGROUNDS)
    return attrs if known else None


def all_combinations() -> list[Attributes]:
    """Every attribute combination, in a fixed order."""
    return [Attributes(*combo) for combo in itertools.product(SIZES, COLORS, SHAPES, POSITIONS, BACKGROUNDS)]


@functools.cache  # every example drawn looks its split up: computed once, not per example
def split_combinations(split: str) -> tuple[Attributes, ...]:
    """The combinations of `split` ("train" or "heldout"); the two never overlap."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}: use 'train' or 'heldout'")
    combos = all_combinations()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(combos))
    n_heldout = round(len(combos) * HELDOUT_FRACTION)
    chosen = sorted(order[:n_heldout]) if split == "heldout" else sorted(order[n_heldout:])
    return tuple(combos[i] for i in chosen)


def prompts(split: str = "heldout", n: int | None = None, seed: int = 0) -> list[str]:
    """`n` captions of `split` in a seeded order (all of them when n is None); cycles if n exceeds them."""
    combos = split_combinations(split)
    order = np.random.default_rng(seed).permutation(len(combos))
    captions = [combos[i].caption() for i in order]
    if n is None:
        return captions
    return [captions[i % len(captions)] for i in range(n)]


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        h = r / math.sqrt(2)
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy - r * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy - radius * math.sin(angle)))
        return points
    return None


def render(attrs: Attributes, dx: float = 0.0, dy: float = 0.0, scale: float = 1.0) -> Image.Image:
    """A 64x64 RGB image of `attrs`, the shape offset by (dx, dy) pixels and its size scaled, anti-aliased."""
    s = SUPERSAMPLE
    canvas = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), BACKGROUNDS[attrs.background])
    draw = ImageDraw.Draw(canvas)
    cx, cy = POSITIONS[attrs.position]
    cx, cy, r = (cx + dx) * s, (cy + dy) * s, SIZES[attrs.size] * scale * s
    color = COLORS[attrs.color]
    polygon = _polygon(attrs.shape, cx, cy, r)
    if polygon is None:
        draw.ellipse([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=color)
    else:
        draw.polygon(polygon, fill=color)
    return canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def sample(split: str, index: int, seed: int = 0) -> tuple[Image.Image, Attributes]:
    """The `index`-th example of `split` for `seed`: always the same image and attributes."""
    combos = split_combinations(split)
    rng = np.random.default_rng([seed, index])
    attrs = combos[int(rng.integers(len(combos)))]
    dx, dy = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
    scale = 1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)
    return render(attrs, float(dx), float(dy), float(scale)), attrs
