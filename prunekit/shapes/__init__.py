"""The captioned-shapes world that tiny-sd is trained on: its prompts, its judge, its reference images and its
training data, as prunekit.worlds registers them.

- `data`: the seeded generator of images and captions (held-out attribute combinations never seen in training);
- `judge`: reads colour, shape, position and size off an image, with no learned model to trust;
- this module: those pieces in the forms general code asks for (prompt sets, a judge, reference images, a
  training source).
"""
from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from prunekit.shapes import data, judge

SPLITS = {"shapes": "heldout", "shapes-train": "train"}  # prompt set -> split
CLIP_MODEL = "tiny-clip"  # the CLIP model trained on this world (bundled)


def prompts(split: str):
    """The prompt set of `split`: (count, seed) -> that many captions in a seeded order."""
    return lambda count, seed: data.prompts(split, count, seed)


def accepts(texts: Sequence[str]) -> bool:
    """Whether every text is a captioned-shapes caption (so the judge can score its image)."""
    return bool(texts) and all(data.parse_caption(text) is not None for text in texts)


def reference(text: str) -> Image.Image:
    """The real image of a caption: its shape at the canonical position and size."""
    return data.render(data.parse_caption(text))


class Judge:
    """Attribute accuracy: the share of images right on colour, shape, position, size and all four at once."""

    metric = "attributes"  # its name in --metrics
    prefix = "attr_"  # sensitivity.csv's columns: attr_color, ..., and delta_attr_color, ...
    result = "attribute_accuracy"  # its key in prunekit.evaluate's result
    keys = ("color", "shape", "position", "size", "all")
    headline = "all"
    description = "captioned-shapes attribute accuracy: colour, shape, position, size, all four"
    scope = "captioned-shapes images"  # what it can judge

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> dict[str, float]:
        return judge.attribute_accuracy(images, texts)

    def verdicts(self, images: Sequence[Image.Image], texts: Sequence[str]) -> dict[str, list[bool]]:
        """Per image, whether it is right on each key (`score` is their mean)."""
        return judge.judge(images, [data.parse_caption(text) for text in texts])


class TrainingSource:
    """The first `length` training examples of the generator for `seed`: (image, caption) by index."""

    flip = False  # a mirrored image would contradict its caption's left or right

    def __init__(self, length: int, seed: int):
        self.length, self.seed = length, seed
        self.skipped: list[str] = []
        self.description = f"shapes (train split, {length} examples, seed {seed})"

    def __len__(self) -> int:
        return self.length

    def item(self, index: int) -> tuple[Image.Image, str]:
        image, attributes = data.sample("train", index, self.seed)
        return image, attributes.caption()
