"""A model's card: what prunekit needs to know to sample and score it, kept in `prunekit.json` beside
`model_index.json`.

    {"guidance_scale": 7.5,                          # the classifier-free guidance scale it samples best at
     "tuned_guidance": {"scale": 7.5, "like": 3.0},  # how it was guidance-tuned (prunekit.guidance_tuning)
     "prompts": "shapes", "data": "shapes",          # its prompt set and training data (prunekit.worlds)
     "clip_model": "tiny-clip"}                      # the CLIP model that scores it

Every key is optional: a hub model has no such file and gets SD's defaults (7.5, not tuned, the everyday
prompts, no training data named, the CLIP model its prompt set prefers). A distilled student carries its
teacher's card, so it is sampled and scored as its teacher is.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.guidance_tuning import TunedGuidance

FILE = "prunekit.json"
SD_GUIDANCE = 7.5  # the classifier-free guidance scale SD-v1.x is sampled at
DEFAULT_PROMPTS = "everyday"
_TEXT_KEYS = ("prompts", "data", "clip_model")


@dataclass(frozen=True)
class ModelCard:
    """How a model samples and what scores it (see the module docstring)."""

    guidance: float = SD_GUIDANCE
    tuned: TunedGuidance | None = None
    prompts: str = DEFAULT_PROMPTS
    data: str | None = None
    clip_model: str | None = None  # None: the prompt set's preferred CLIP model, else prunekit.metrics.DEFAULT_CLIP

    @classmethod
    def read(cls, directory: str | Path | None) -> "ModelCard":
        """The card in `directory`/prunekit.json; the defaults when there is none (or no directory)."""
        path = Path(directory) / FILE if directory is not None else None
        if path is None or not path.is_file():
            return cls()
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            record = None
        if not isinstance(record, dict):
            raise PrunekitError(f"{path} must hold a JSON object with a number guidance_scale of at least 1.")
        return cls._from_record(record, path)

    @classmethod
    def _from_record(cls, record: dict, path: Path) -> "ModelCard":
        unknown = sorted(set(record) - {"guidance_scale", "tuned_guidance", *_TEXT_KEYS})
        if unknown:
            raise PrunekitError(f"{path} has unknown key(s) {', '.join(unknown)}: a card holds guidance_scale, "
                                f"tuned_guidance, {', '.join(_TEXT_KEYS)}.")
        guidance = record.get("guidance_scale", SD_GUIDANCE)
        if not _number(guidance) or guidance < 1:
            raise PrunekitError(f"{path} must hold a JSON object with a number guidance_scale of at least 1.")
        tuned = record.get("tuned_guidance")
        if tuned is not None:
            try:
                tuned = TunedGuidance(float(tuned["scale"]), float(tuned["like"]))
            except (TypeError, KeyError, ValueError):
                raise PrunekitError(f"{path}'s tuned_guidance must be an object with numbers scale and like.") from None
        texts = {key: record.get(key) for key in _TEXT_KEYS}
        wrong = [key for key, value in texts.items() if value is not None and not isinstance(value, str)]
        if wrong:
            raise PrunekitError(f"{path}'s {', '.join(wrong)} must be text (a name or a path).")
        return cls(float(guidance), tuned, texts["prompts"] or DEFAULT_PROMPTS, texts["data"], texts["clip_model"])

    def to_record(self) -> dict:
        record = {"guidance_scale": self.guidance}
        if self.tuned is not None:
            record["tuned_guidance"] = self.tuned.to_json()
        if self.prompts != DEFAULT_PROMPTS:
            record["prompts"] = self.prompts
        record.update({key: getattr(self, key) for key in ("data", "clip_model") if getattr(self, key) is not None})
        return record

    def write(self, directory: str | Path) -> Path:
        """Save the card as `directory`/prunekit.json (what the file held besides is kept)."""
        path = Path(directory) / FILE
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        record.update(self.to_record())
        path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return path

    def with_guidance(self, guidance: float) -> "ModelCard":
        return replace(self, guidance=float(guidance))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
