"""Distillation retraining (BK-SDM): a plan's student learns from the intact teacher.

- `data`: captioned images (a world's named data, image folder, hub dataset), resized, cropped, flipped;
- `cache`: the teacher's frozen encoders, and the `--cache-latents` cache of their outputs;
- `losses`: task, output-KD and feature-KD losses;
- `features`: forward hooks keyed by module path, and teacher/student stage matching;
- `checkpoints`: where checkpoints live and what a resume must agree with;
- `teacher_memo`: the teacher's outputs by input, shared between runs that feed it the same inputs;
- `trainer`: the accelerate training loop (with a hook for the task target);
- `api`: `DistillOptions` and `distill(plan, data, out, ...)`, what `prunekit distill` runs, `describe`, its
  eval.json as terminal lines, and `final_student`, the entry that judges it.
"""
from prunekit.distill.api import RECOVERY, DistillOptions, describe, distill, final_student

__all__ = ["RECOVERY", "DistillOptions", "describe", "distill", "final_student"]
