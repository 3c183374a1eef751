"""BK-SDM's three losses: the task loss, output distillation and feature distillation.

- task: MSE between the student's prediction and the training target (prunekit.schedules: the noise, velocity
  or clean latents its DDPM scheduler's prediction type says; flow matching's velocity for SD3);
- out: MSE between the student's and the teacher's predictions for the same noisy input;
- feat: the sum, over matched (student, teacher) feature pairs, of the MSE between the two features;
  with `feat_norm="teacher"` each term is divided by the teacher feature's mean square (LAPTOP-Diff).

Every loss is computed in float32, whatever the dtype of its inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prunekit.errors import PrunekitError

FEAT_NORMS = ("none", "teacher")


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error of two tensors of one shape, in float32."""
    return F.mse_loss(a.float(), b.float())


def feature_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                 pairs: list[tuple[str, str]], feat_norm: str = "none") -> torch.Tensor:
    """The sum over `pairs` (student path, teacher path) of the MSE between their features.

    With `feat_norm="teacher"`, each term is divided by the mean square of the teacher's feature, so that
    stages of large activations do not dominate the sum.
    """
    if feat_norm not in FEAT_NORMS:
        raise PrunekitError(f"unknown feature normalisation {feat_norm!r}: use one of {', '.join(FEAT_NORMS)}.")
    terms = []
    for student_path, teacher_path in pairs:
        target = teacher[teacher_path].float()
        term = mse(student[student_path], target)
        if feat_norm == "teacher":
            term = term / target.pow(2).mean().clamp_min(torch.finfo(torch.float32).tiny)
        terms.append(term)
    return torch.stack(terms).sum()


@dataclass(frozen=True)
class Weights:
    """The lambdas of the three losses."""

    task: float = 1.0
    out: float = 1.0
    feat: float = 1.0

    @property
    def needs_teacher(self) -> bool:
        return self.out != 0 or self.feat != 0


@dataclass
class Losses:
    """The weighted total and its three unweighted parts (0 where a part was not computed)."""

    total: torch.Tensor
    task: torch.Tensor
    out: torch.Tensor
    feat: torch.Tensor

    def detached(self) -> torch.Tensor:
        """The four values as one detached float32 tensor: total, task, out, feat."""
        return torch.stack([self.total, self.task, self.out, self.feat]).detach().float()


def distill_losses(prediction: torch.Tensor, target: torch.Tensor, weights: Weights,
                   teacher_prediction: torch.Tensor | None = None,
                   student_features: dict | None = None, teacher_features: dict | None = None,
                   pairs: list[tuple[str, str]] = (), feat_norm: str = "none") -> Losses:
    """The task, output-KD and feature-KD losses, and their sum weighted by `weights`.

    The teacher's prediction and features are needed only where their weight is not zero.
    """
    zero = prediction.new_zeros((), dtype=torch.float32)
    task = mse(prediction, target)
    out = mse(prediction, teacher_prediction) if weights.out else zero
    feat = feature_loss(student_features, teacher_features, pairs, feat_norm) if weights.feat and pairs else zero
    total = weights.task * task + weights.out * out + weights.feat * feat
    return Losses(total, task, out, feat)
