"""Full-mode scores of one generation: against the prompts (CLIP score, the prompts' judge), as values and
changes from the baseline's, and against the baseline's own outputs for the same noise (latent MSE, PSNR,
SSIM, FID), which need no change column."""
from __future__ import annotations

import torch
from PIL import Image
from torchmetrics.multimodal.clip_score import CLIPScore

from prunekit.metrics import clip_score, fid, teacher_error
from prunekit.worlds import Judge


class Scorer:
    """Scores generations of fixed `prompts` by `metrics` (names of prunekit.metrics.METRICS; `judge` scores
    the one that is a judge's)."""

    def __init__(self, metrics: tuple[str, ...], prompts: list[str], clip: CLIPScore | None, clip_model: str | None,
                 judge: Judge | None = None):
        self.metrics, self.prompts, self.clip, self.clip_model, self.judge = metrics, prompts, clip, clip_model, judge
        self.reference: dict = {}
        self.base_latents: torch.Tensor | None = None
        self.base_images: list[Image.Image] = []

    def _absolute(self, images: list[Image.Image]) -> dict[str, float]:
        values = {}
        for metric in self.metrics:
            if metric == "clip":
                values["clip_score"] = clip_score(images, self.prompts, self.clip)
            elif self.judge is not None and metric == self.judge.metric:
                scores = self.judge.score(images, self.prompts)
                values.update({f"{self.judge.prefix}{key}": value for key, value in scores.items()})
        return values

    def set_baseline(self, latents: torch.Tensor, images: list[Image.Image]) -> dict:
        """Keep the baseline's outputs; its scores for run.json (with the features FID used, if it is computed)."""
        self.base_latents, self.base_images = latents, images
        self.reference = self._absolute(images)
        baseline = dict(self.reference)
        if "fid" in self.metrics:
            baseline["fid_features"] = fid(images, images, self.clip_model)["features"]
        return baseline

    def score(self, latents: torch.Tensor, images: list[Image.Image]) -> dict[str, float]:
        """The metric columns of one generation of the prompts (sensitivity.csv's names)."""
        row = {}
        for name, value in self._absolute(images).items():
            row[name], row[f"delta_{name}"] = value, value - self.reference[name]
        if "teacher" in self.metrics:
            row.update(teacher_error(latents, self.base_latents, images, self.base_images))
        if "fid" in self.metrics:
            row["fid"] = fid(images, self.base_images, self.clip_model)["fid"]
        return row
