"""The prompts of a sweep: the built-in sets, or a file of one prompt per line.

- `shapes`: held-out captioned-shapes prompts (combinations tiny-sd never saw in training), for tiny-sd.
- `everyday`: prunekit/prompts/everyday.txt, everyday captions written for this project, for real SD models.
- any other value is the path of a UTF-8 file with one prompt per line.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from prunekit.data import shapes
from prunekit.evaluate import read_prompts

SHAPES = "shapes"
EVERYDAY = "everyday"
EVERYDAY_FILE = Path(__file__).resolve().parents[1] / "prompts" / "everyday.txt"


def default_source(model: str) -> str:
    """The built-in prompt set for `model`: shapes prompts for tiny-sd, everyday captions for any other."""
    return SHAPES if model == "tiny-sd" else EVERYDAY


def load(source: str, num_prompts: int, seed: int) -> list[str]:
    """The first `num_prompts` prompts of `source` (shapes prompts in the order `seed` gives them)."""
    if source == SHAPES:
        return shapes.prompts("heldout", num_prompts, seed)
    return read_prompts(EVERYDAY_FILE if source == EVERYDAY else source)[:num_prompts]


def are_shapes(prompts: list[str]) -> bool:
    """Whether every prompt is a captioned-shapes caption (so attribute accuracy can judge its image)."""
    return all(shapes.parse_caption(prompt) is not None for prompt in prompts)


def digest(prompts: list[str]) -> str:
    """A hash of the prompt texts in order: a resumed run must use the very same prompts."""
    return "sha256:" + hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
