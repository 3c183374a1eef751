"""What a denoiser is conditioned on, for the pipeline families prunekit runs: SD-1/SD-2, SDXL and SD3.

An SD-1/SD-2 U-Net reads one tensor, the text encoder's per-token states. An SDXL U-Net
(`addition_embed_type="text_time"`) reads the two text encoders' per-token states concatenated, and through
`added_cond_kwargs` the second encoder's pooled, projected embedding (`text_embeds`) and six micro-conditioning
numbers (`time_ids`: original size, crop corner, target size). SD3's transformer reads the two CLIP encoders'
states concatenated (then T5's) and both pooled embeddings (`pooled_projections`). An SD3 pipeline without T5
fills T5's place with zeros; prunekit gives it one zero token (`NO_T5_TOKENS`, tiny-sd3's training) where
diffusers' default is 256, in every encoding and every pipeline call (`call_options`). `Conditioning` holds all three for a batch, so a
sweep, the proxy and distillation hand a U-Net what its pipeline would, whatever the family; `encode` makes it
with the pipeline's own `encode_prompt`, and `pipe_kwargs` gives it back to the pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.errors import PrunekitError
from prunekit.families.sd3 import NO_T5_TOKENS


def is_sdxl(unet_config: dict) -> bool:
    """Whether a U-Net of `unet_config` takes SDXL's added conditioning (pooled text and time ids)."""
    return unet_config.get("addition_embed_type") == "text_time"


def check_supported(unet_config: dict, name: str) -> None:
    """Refuse a denoiser whose pipelines prunekit does not run (Flux, PixArt, SANA: architecture work only), or a
    U-Net conditioned on something prunekit cannot give it (class labels, image embeddings, ...)."""
    from prunekit.families import family_of

    family = family_of(unet_config)
    if not family.runs_pipelines:
        raise PrunekitError(f"prunekit does not yet sample, sweep or distil {family.classes[0]} pipelines ({name}): "
                            "inspect it, plan it by preset and build its students; SD3's pipelines it runs.")
    added = unet_config.get("addition_embed_type")
    if unet_config.get("class_embed_type") or added not in (None, "text_time"):
        kind = f"class embeddings ({unet_config['class_embed_type']})" if unet_config.get("class_embed_type") else \
            f"added conditioning {added!r}"
        raise PrunekitError(f"{name}'s U-Net takes {kind}, which prunekit cannot give it: use an SD-1.x, SD-2.x or "
                            "SDXL-style text-to-image model.")


@dataclass
class Conditioning:
    """A batch's conditioning: per-token text states (B x L x D); for SDXL also pooled text (B x P) and time ids
    (B x 6)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.embeds)

    def __getitem__(self, index) -> Conditioning:
        return Conditioning(*(None if t is None else t[index] for t in (self.embeds, self.pooled, self.time_ids)))

    def to(self, device, dtype=None) -> Conditioning:
        return Conditioning(*(None if t is None else t.to(device, dtype) for t in (self.embeds, self.pooled,
                                                                                     self.time_ids)))

    def added(self) -> dict | None:
        """The U-Net's `added_cond_kwargs` (None for SD-1/SD-2)."""
        if self.pooled is None:
            return None
        return {"text_embeds": self.pooled, "time_ids": self.time_ids}

    def unet_kwargs(self) -> dict:
        """Keyword arguments of a U-Net call besides the sample and the timestep."""
        added = self.added()
        return {"encoder_hidden_states": self.embeds, **({"added_cond_kwargs": added} if added else {})}

    def repeat(self, count: int) -> Conditioning:
        """One row repeated `count` times."""
        return Conditioning(*(None if t is None else t.expand(count, *t.shape[1:])
                              for t in (self.embeds, self.pooled, self.time_ids)))

    def where(self, mask: torch.Tensor, other: Conditioning) -> Conditioning:
        """This conditioning with the rows where `mask` (B booleans) holds taken from `other` (B rows)."""
        def pick(mine, theirs):
            if mine is None:
                return None
            return torch.where(mask.view(-1, *(1,) * (mine.dim() - 1)), theirs.to(mine.dtype), mine)
        return Conditioning(pick(self.embeds, other.embeds), pick(self.pooled, other.pooled),
                            pick(self.time_ids, other.time_ids))

def time_ids(pipe, count: int, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """SDXL's micro-conditioning for `count` images generated at the pipeline's default size (or height x width):
    original size = target size, crop corner (0, 0), as the pipeline uses by default."""
    scale = pipe.vae_scale_factor
    height = height or pipe.unet.config.sample_size * scale
    width = width or pipe.unet.config.sample_size * scale
    return torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32).repeat(count, 1)


def is_sd3(pipe) -> bool:
    """Whether `pipe` is an SD3 pipeline (a transformer and a third, T5, text-encoder slot)."""
    return hasattr(pipe, "transformer") and hasattr(pipe, "text_encoder_3")


def call_options(pipe) -> dict:
    """The pipeline-call arguments prunekit's conventions add: an SD3 pipeline without T5 gets NO_T5_TOKENS."""
    return {"max_sequence_length": NO_T5_TOKENS} if is_sd3(pipe) and pipe.text_encoder_3 is None else {}


@torch.no_grad()
def encode(pipe, texts: list[str], negative: bool = False, device=None) -> tuple[Conditioning, Conditioning | None]:
    """The conditioning of `texts` as the pipeline encodes them (on `device`, default the pipeline's), and with
    `negative` that of the unconditional branch classifier-free guidance adds (SDXL's pipeline uses zeros there
    unless configured otherwise)."""
    device = device or pipe.device
    if is_sd3(pipe):
        embeds, uncond, pooled, uncond_pooled = pipe.encode_prompt(list(texts), None, None, device=device,
                                                                   do_classifier_free_guidance=negative,
                                                                   **call_options(pipe))
        return Conditioning(embeds, pooled), (Conditioning(uncond, uncond_pooled) if negative else None)
    if not is_sdxl(dict(pipe.unet.config)):
        embeds, uncond = pipe.encode_prompt(list(texts), device, 1, negative)
        return Conditioning(embeds), (Conditioning(uncond) if negative else None)
    embeds, uncond, pooled, uncond_pooled = pipe.encode_prompt(list(texts), device=device,
                                                               do_classifier_free_guidance=negative)
    ids = time_ids(pipe, len(texts)).to(device)
    positive = Conditioning(embeds, pooled, ids)
    return positive, (Conditioning(uncond, uncond_pooled, ids) if negative else None)


def pipe_kwargs(positive: Conditioning, negative: Conditioning | None) -> dict:
    """The pipeline call's prompt arguments for encoded conditioning (the pipeline then encodes nothing)."""
    kwargs = {"prompt_embeds": positive.embeds, "negative_prompt_embeds": None if negative is None else negative.embeds}
    if positive.pooled is not None:
        kwargs |= {"pooled_prompt_embeds": positive.pooled,
                   "negative_pooled_prompt_embeds": None if negative is None else negative.pooled}
    return kwargs

