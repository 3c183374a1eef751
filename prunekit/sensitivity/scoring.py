"""Full-mode scores of one generation: against the prompts (CLIP score, the prompts' judge), as values and
changes from the baseline's, and against the baseline's own outputs for the same noise (latent MSE, PSNR,
SSIM, FID), which need no change column.

Scores are means over the prompts of per-prompt values (the CLIP score's too, not floored at 0 as
torchmetrics' CLIPScore floors its mean: a sweep compares scores, it does not report them). A generation
may cover any subset of the sweep's prompts (a racing sweep scores a unit on its first prompts
only); its columns then compare it with the baseline on the same prompts. Besides the columns, `score` gives
the loss of each prompt by the sweep's rule (what its `sensitivity` column averages), from which the
confidence interval of a unit's sensitivity is drawn (prunekit.sensitivity.intervals).
"""
from __future__ import annotations

import torch
from PIL import Image
from torchmetrics.multimodal.clip_score import CLIPScore

from prunekit.metrics import clip_scores, fid, teacher_error
from prunekit.worlds import Judge


class Scorer:
    """Scores generations of fixed `prompts` by `metrics` (names of prunekit.metrics.METRICS; `judge` scores
    the one that is a judge's) and by the rule of the sweep's `sensitivity` column."""

    def __init__(self, metrics: tuple[str, ...], prompts: list[str], clip: CLIPScore | None, clip_model: str | None,
                 judge: Judge | None = None, rule: str | None = None):
        self.metrics, self.prompts, self.clip, self.clip_model, self.judge = metrics, prompts, clip, clip_model, judge
        self.rule = rule
        self.base: dict[str, torch.Tensor] = {}  # per-prompt baseline values
        self.base_latents: torch.Tensor | None = None
        self.base_images: list[Image.Image] = []

    def _per_prompt(self, images: list[Image.Image], indices: list[int]) -> dict[str, torch.Tensor]:
        """The scores against the prompts of every image: CLIP score and the judge's verdicts."""
        texts = [self.prompts[i] for i in indices]
        values = {}
        if "clip" in self.metrics:
            values["clip_score"] = clip_scores(images, texts, self.clip)
        if self.judge is not None and self.judge.metric in self.metrics:
            for key, verdicts in self.judge.verdicts(images, texts).items():
                values[f"{self.judge.prefix}{key}"] = torch.tensor(verdicts, dtype=torch.float64)
        return values

    def set_baseline(self, latents: torch.Tensor, images: list[Image.Image]) -> dict:
        """Keep the baseline's outputs; its scores for run.json (with the features FID used, if it is computed)."""
        self.base_latents, self.base_images = latents, images
        self.base = self._per_prompt(images, list(range(len(images))))
        baseline = {name: float(values.mean()) for name, values in self.base.items()}
        if "fid" in self.metrics:
            baseline["fid_features"] = fid(images, images, self.clip_model)["features"]
        return baseline

    def score(self, latents: torch.Tensor, images: list[Image.Image],
              indices: list[int] | None = None) -> tuple[dict[str, float], torch.Tensor | None]:
        """The metric columns (sensitivity.csv's names) of one generation of the prompts at `indices` (default
        all), and each prompt's loss by the rule (None where the rule is set-level, as FID is)."""
        indices = list(range(len(self.prompts))) if indices is None else list(indices)
        values = self._per_prompt(images, indices)
        row = {}
        for name, per in values.items():
            base = self.base[name][indices]
            row[name], row[f"delta_{name}"] = float(per.mean()), float(per.mean()) - float(base.mean())
        per_prompt = {name: per - self.base[name][indices] for name, per in values.items()}
        base_latents = self.base_latents[indices]
        if "teacher" in self.metrics:
            row.update(teacher_error(latents, base_latents, images, [self.base_images[i] for i in indices]))
            per_prompt["latent_mse"] = ((latents.float() - base_latents.float()) ** 2).flatten(1).mean(1).double()
        if "fid" in self.metrics:
            row["fid"] = fid(images, [self.base_images[i] for i in indices], self.clip_model)["fid"]
        return row, self._losses(per_prompt)

    def _losses(self, per_prompt: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Each prompt's loss by the rule: "-delta_M" is minus M's change, anything else M itself."""
        if self.rule is None:
            return None
        name = self.rule.removeprefix("-").removeprefix("delta_")
        if name not in per_prompt:
            return None
        return -per_prompt[name] if self.rule.startswith("-") else per_prompt[name]

