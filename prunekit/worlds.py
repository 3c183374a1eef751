"""Worlds: the prompt sets, judges, reference images and training data that general code asks for by name.

A world is what one domain brings: named prompt sets, a test of whether texts belong to it, a judge that
scores images of its prompts beyond CLIP, reference images of its prompts (prunekit.evaluate's real CLIP
score, the proxy sweep's rendered latents), the CLIP model that suits it, and named training data. The
registry below lists the built-in world, the captioned shapes (prunekit.shapes), and the prompt files
shipped in the package (`everyday`, captions for real SD models). A new bundled model's world is one more
entry in WORLDS; sensitivity/, planner/ and distill/ do not change.

A prompt set is a registered name or the path of a UTF-8 file of one prompt per line; texts from a file
that belong to a world (a file of shapes captions) are judged by that world as well.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image

from prunekit import shapes
from prunekit.errors import PrunekitError

PROMPT_FILES = {"everyday": Path(__file__).resolve().parent / "prompts" / "everyday.txt"}


class Judge(Protocol):
    """Scores images against their prompts by what it can read off them (prunekit.shapes.Judge)."""

    metric: str  # its name in --metrics
    prefix: str  # the prefix of its sensitivity.csv columns
    result: str  # its key in an evaluation
    keys: tuple[str, ...]  # what it scores; `headline` sums them up
    headline: str
    description: str
    scope: str  # what it can judge, for messages

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> dict[str, float]: ...

    def verdicts(self, images: Sequence[Image.Image], texts: Sequence[str]) -> dict[str, list[bool]]: ...


@dataclass(frozen=True)
class World:
    """One domain's prompt sets, judge, reference images, CLIP model and training data (see the module docstring)."""

    name: str
    accepts: Callable[[Sequence[str]], bool]  # whether texts all belong to this world
    judge: Judge | None
    reference: Callable[[str], Image.Image] | None  # the real image of one prompt
    clip_model: str | None
    prompt_sets: dict[str, Callable[[int, int], list[str]]] = field(default_factory=dict)  # (count, seed) -> texts
    data: dict[str, Callable[[int, int], object]] = field(default_factory=dict)  # (length, seed) -> a source
    eval_prompts: str | None = None  # the prompt set that scores a model trained on this world's data
    data_length: int = 10_000  # examples a named training source holds by default


WORLDS = (
    World("shapes", shapes.accepts, shapes.Judge(), shapes.reference, shapes.CLIP_MODEL,
          {name: shapes.prompts(split) for name, split in shapes.SPLITS.items()}, {"shapes": shapes.TrainingSource},
          eval_prompts="shapes"),
)


def prompt_set_names() -> list[str]:
    return [name for world in WORLDS for name in world.prompt_sets] + list(PROMPT_FILES)


def read_prompts(path: str | Path) -> list[str]:
    """The non-empty lines of a prompt file, one prompt per line."""
    path = Path(path)
    if path.is_dir():
        raise PrunekitError(f"the prompt file {path} is a directory: pass a UTF-8 text file with one prompt per line, "
                            f"or one of {', '.join(prompt_set_names())}.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PrunekitError(f"cannot read the prompt file {path} ({error.__class__.__name__}): pass a UTF-8 text "
                            f"file with one prompt per line, or one of {', '.join(prompt_set_names())}.") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise PrunekitError(f"the prompt file {path} holds no prompts: write one prompt per line.")
    return prompts


def prompts(source: str, count: int, seed: int = 0) -> list[str]:
    """`count` prompts of prompt set `source` (a registered name, in the order `seed` gives, or a file's first)."""
    for world in WORLDS:
        if source in world.prompt_sets:
            return world.prompt_sets[source](count, seed)
    return read_prompts(PROMPT_FILES.get(source, source))[:count]


def world_of(texts: Sequence[str]) -> World | None:
    """The world all `texts` belong to, or None."""
    return next((world for world in WORLDS if world.accepts(texts)), None)


def judge_for(texts: Sequence[str]) -> Judge | None:
    """The judge that can score images of `texts` (None when no world holds them)."""
    world = world_of(texts)
    return world.judge if world else None


def judges() -> dict[str, Judge]:
    """Every registered judge by its metric name."""
    return {world.judge.metric: world.judge for world in WORLDS if world.judge is not None}


def references(texts: Sequence[str]) -> list[Image.Image] | None:
    """Real images of `texts` where their world can draw them, else None."""
    world = world_of(texts)
    return [world.reference(text) for text in texts] if world and world.reference else None


def clip_model_for(texts: Sequence[str]) -> str | None:
    """The CLIP model that suits `texts`' world (None: no preference)."""
    world = world_of(texts)
    return world.clip_model if world else None


def data_source(name: str, length: int | None, seed: int):
    """The named training source `name` with `length` examples (its world's default when None), or None when
    no world names such data."""
    for world in WORLDS:
        if name in world.data:
            return world.data[name](length or world.data_length, seed)
    return None
