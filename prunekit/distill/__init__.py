"""Distillation retraining (BK-SDM): a plan's student learns from the intact teacher.

- `data`: captioned images (shapes generator, image folder, hub dataset), resized, cropped, flipped;
- `cache`: the teacher's frozen encoders, and the `--cache-latents` cache of their outputs;
- `losses`: task, output-KD and feature-KD losses;
- `features`: forward hooks keyed by module path, and teacher/student stage matching;
- `checkpoints`: where checkpoints live and what a resume must agree with;
- `trainer`: the accelerate training loop;
- `api`: `distill(plan, data, out, ...)`, what `prunekit distill` runs.
"""
from prunekit.distill.api import distill

__all__ = ["distill"]
