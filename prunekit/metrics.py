"""Metrics of generated images, on torchmetrics: CLIP score, FID, teacher-relative error, attribute accuracy.

- `clip`: torchmetrics' CLIPScore (100 x cosine of CLIP image and caption embeddings, floored at 0),
  with a CLIP model loaded here: `tiny-clip` (bundled, for tiny-sd), a local directory, or a hub id
  (default `openai/clip-vit-large-patch14`, for real Stable Diffusion models).
- `fid`: torchmetrics' FrechetInceptionDistance against reference images, on Inception-v3 features when
  torch-fidelity can provide them, otherwise on a CLIP image tower (the result says which).
- `teacher`: error against the teacher's (the intact model's) outputs for the same noise: latent MSE,
  and PSNR and SSIM of the decoded images.
- the judges of prunekit.worlds (`attributes`: captioned-shapes attribute accuracy) join them by name.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.multimodal.clip_score import CLIPScore
from transformers import CLIPModel, CLIPProcessor

from prunekit import worlds
from prunekit.card import ModelCard
from prunekit.errors import PrunekitError
from prunekit.models import from_hub, is_hub_id, locate_clip

METRICS = {
    "clip": "CLIP score of each image against its prompt (higher is better)",
    "fid": "Frechet distance of the images' features to reference images' (lower is better)",
    "teacher": "latent MSE, PSNR and SSIM against the intact model's outputs for the same noise",
    **{name: judge.description for name, judge in worlds.judges().items()},
}
DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def check_metrics(names: str | Iterable[str]) -> list[str]:
    """`names` (a list, or one comma-separated string) as a list, each a known metric, else a PrunekitError."""
    names = [name.strip() for name in names.split(",")] if isinstance(names, str) else list(names)
    for name in names:
        if name not in METRICS:
            raise PrunekitError(f"unknown metric {name!r}: choose from {', '.join(METRICS)}.")
    return names


def choose_clip(explicit: str | None, card: ModelCard, texts: Sequence[str]) -> str:
    """The CLIP model that scores a model's images of `texts`: the one asked for, else the model card's, else
    the one the texts' world prefers, else DEFAULT_CLIP."""
    return explicit or card.clip_model or worlds.clip_model_for(texts) or DEFAULT_CLIP


def _load_clip_files(where: str | Path, local_files_only: bool) -> tuple[CLIPModel, CLIPProcessor]:
    return (CLIPModel.from_pretrained(where, local_files_only=local_files_only),
            CLIPProcessor.from_pretrained(where, local_files_only=local_files_only))


def load_clip(name: str | Path) -> tuple[CLIPModel, CLIPProcessor]:
    """A CLIP model (eval mode) and its processor, from a bundled one (`tiny-clip`), a local directory or a hub id.

    A hub id is read from the local cache when the hub cannot be reached; offline and not cached, it
    fails within seconds with a PrunekitError that says to pass a local directory.
    """
    name = str(name)
    name = locate_clip(name) or name
    if os.path.isdir(name):
        try:
            return _load_clip_files(name, local_files_only=True)
        except (OSError, ValueError) as error:
            raise PrunekitError(
                f"{name} holds no loadable CLIP model and processor ({error.__class__.__name__}): pass a directory "
                "saved by CLIPModel.save_pretrained and CLIPProcessor.save_pretrained.") from None
    if is_hub_id(name):
        return from_hub(lambda local: _load_clip_files(name, local_files_only=local), name)
    raise PrunekitError(f"no CLIP model {name!r}: pass 'tiny-clip' (bundled), a local CLIP directory, "
                        f"or a hub id such as {DEFAULT_CLIP!r}.")


def _tensor(output) -> torch.Tensor:
    """The embeddings from a get_*_features result: a tensor (transformers 4) or an output object (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class _ClipFeatures(torch.nn.Module):
    """A CLIPModel whose `get_image_features` / `get_text_features` return the projected embeddings.

    torchmetrics 1.9 expects tensors there; transformers 5 returns output objects holding them in
    `pooler_output`. Nothing else changes, so the score is torchmetrics' own computation.
    """

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def clip_score_metric(clip: str | Path, device: str | torch.device = "cpu") -> CLIPScore:
    """torchmetrics' CLIPScore on the CLIP model `clip` (see load_clip), made to work with transformers 5."""
    model, processor = load_clip(clip)
    # sync_on_compute=False: each process scores its own images (under torch.distributed torchmetrics would
    # otherwise gather across processes, and wait forever for those that score nothing)
    return CLIPScore(model_name_or_path=lambda: (_ClipFeatures(model), processor), sync_on_compute=False).to(device)


@torch.no_grad()
def clip_scores(images: Sequence[Image.Image], captions: Sequence[str], clip: CLIPScore,
                batch_size: int = 64) -> torch.Tensor:
    """The CLIP score of each image against its caption (100 x cosine, not floored), as CLIPScore computes it.

    torchmetrics sums these per-image scores inside `update` and keeps only the sum; its own update function
    gives them one by one (their mean, floored at 0, is `clip_score`).
    """
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update

    scores = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`max_length` is ignored when `padding`=`True`")
        for start in range(0, len(images), batch_size):
            batch = _uint8(images[start:start + batch_size]).to(clip.device)
            score, _ = _clip_score_update(list(batch), list(captions[start:start + batch_size]), clip.model,
                                          clip.processor)
            scores.append(score.float().cpu())
    return torch.cat(scores)


def _uint8(images: Sequence[Image.Image]) -> torch.Tensor:
    """PIL images as one Nx3xHxW uint8 tensor."""
    return torch.from_numpy(np.stack([np.asarray(image.convert("RGB")) for image in images])).permute(0, 3, 1, 2)


@torch.no_grad()
def clip_score(images: Sequence[Image.Image], captions: Sequence[str],
               clip: CLIPScore | str | Path, batch_size: int = 64) -> float:
    """The mean CLIP score of `images` against their `captions`; `clip` is a CLIPScore metric or a CLIP model name."""
    if len(images) != len(captions) or not images:
        raise ValueError(f"CLIP score needs as many images as captions, at least one; got {len(images)} and "
                         f"{len(captions)}")
    metric = clip if isinstance(clip, CLIPScore) else clip_score_metric(clip)
    metric.reset()
    with warnings.catch_warnings():
        # torchmetrics tokenizes with padding=True, which transformers 5 warns makes max_length moot: it does
        warnings.filterwarnings("ignore", message="`max_length` is ignored when `padding`=`True`")
        for start in range(0, len(images), batch_size):
            batch = _uint8(images[start:start + batch_size]).to(metric.device)
            metric.update(list(batch), list(captions[start:start + batch_size]))
    return float(metric.compute())


class _ClipImageFeatures(torch.nn.Module):
    """A CLIP image tower as a torchmetrics FID feature extractor: Nx3xHxW uint8 images -> N x projection_dim."""

    def __init__(self, model: CLIPModel, processor: CLIPProcessor):
        super().__init__()
        self.model, self.processor = model, processor
        self.num_features = model.config.projection_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.processor(images=list(images.cpu()), return_tensors="pt")["pixel_values"]
        return _tensor(self.model.get_image_features(pixel_values=pixels.to(images.device)))


def _fid_metric(clip: str | Path) -> tuple[FrechetInceptionDistance, str]:
    """FID on Inception-v3 (2048 features) if torch-fidelity and its weights are at hand, else on CLIP's image tower."""
    try:
        return FrechetInceptionDistance(feature=2048, sync_on_compute=False), "inception-v3"
    except (ModuleNotFoundError, OSError):  # torch-fidelity missing, or its weights not downloadable
        return (FrechetInceptionDistance(feature=_ClipImageFeatures(*load_clip(clip)), sync_on_compute=False),
                f"clip:{clip}")


@torch.no_grad()
def fid(images: Sequence[Image.Image], reference: Sequence[Image.Image], clip: str | Path,
        batch_size: int = 64, device: str | torch.device = "cpu") -> dict:
    """FID of `images` against `reference` images: {"fid": float, "features": "inception-v3" or "clip:NAME"}.

    Both sets need at least two images; with fewer images than feature dimensions the covariances are
    rank-deficient and FID is only comparable between runs with the same number of images.
    """
    if len(images) < 2 or len(reference) < 2:
        raise ValueError("FID needs at least two images and two reference images")
    metric, features = _fid_metric(clip)
    metric.to(device)
    for group, real in ((reference, True), (images, False)):
        for start in range(0, len(group), batch_size):
            metric.update(_uint8(group[start:start + batch_size]).to(device), real=real)
    return {"fid": float(metric.compute()), "features": features}


def _unit_range(images: Sequence[Image.Image]) -> torch.Tensor:
    return _uint8(images).float() / 255.0


@torch.no_grad()
def teacher_error(latents: torch.Tensor, teacher_latents: torch.Tensor, images: Sequence[Image.Image],
                  teacher_images: Sequence[Image.Image]) -> dict[str, float]:
    """Error of a model's final latents and decoded images against the teacher's for the same noise and prompts.

    Returns {"latent_mse", "psnr" (dB over all pixels, images in [0, 1]; inf when identical), "ssim"}; PSNR
    and SSIM are torchmetrics'.
    """
    if latents.shape != teacher_latents.shape or len(images) != len(teacher_images):
        raise ValueError("teacher error compares outputs of the same prompts and noise: shapes differ")
    pixels, teacher_pixels = _unit_range(images), _unit_range(teacher_images)
    return {
        "latent_mse": float(torch.nn.functional.mse_loss(latents.float(), teacher_latents.float())),
        "psnr": float(peak_signal_noise_ratio(pixels, teacher_pixels, data_range=1.0)),
        "ssim": float(structural_similarity_index_measure(pixels, teacher_pixels, data_range=1.0)),
    }
