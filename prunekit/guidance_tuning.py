"""Guidance-tuned models: trained so that classifier-free guidance at one scale samples as an ordinary model
does at another.

An ordinary model's captioned prediction c estimates the noise; guidance at scale G samples with
u + G (c - u), u being the empty caption's prediction. A model tuned (G, S) learns c towards
u + S / G (noise - u) instead, so that at G it samples as an ordinary one at S. A model that fits its data
tightly (tiny-sd) needs a low S, while SD's protocol samples at 7.5; tuning reconciles the two. Its
distilled students must keep the same target, or their task loss pulls them back to ordinary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.errors import PrunekitError


@dataclass(frozen=True)
class TunedGuidance:
    """Guidance at `scale` samples as an ordinary model's at `like`."""
    scale: float
    like: float

    def __post_init__(self):
        if not self.scale > 1 or not self.like >= 1:
            raise PrunekitError(f"a tuned guidance needs a scale above 1 and a like of at least 1, not "
                                f"{self.scale} and {self.like}.")

    def target(self, noise: torch.Tensor, unguided: torch.Tensor) -> torch.Tensor:
        """The captioned prediction to train towards, given the `noise` target and the empty caption's
        prediction `unguided` for the same noisy input."""
        return unguided + self.like / self.scale * (noise - unguided)

    def to_json(self) -> dict:
        return {"scale": self.scale, "like": self.like}
