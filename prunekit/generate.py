"""Batched generation with one seed per image, so that an image never depends on the batch it ran in.

Every image's initial noise comes from its own CPU `torch.Generator`, seeded from (run seed, image
index): the baseline, each ablation and each student see identical noise for the same prompt, on
any device and at any batch size.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from prunekit.card import SD_GUIDANCE
from prunekit.conditioning import call_options


def image_seeds(seed: int, n: int) -> list[int]:
    """The noise seed of each of `n` images of a run seeded `seed` (image i's seed ignores n)."""
    return [int(np.random.SeedSequence([seed, index]).generate_state(1)[0]) for index in range(n)]


@torch.no_grad()
def generate_latents(pipe: StableDiffusionPipeline, prompts: Sequence[str], seeds: Sequence[int], steps: int = 25,
                     guidance: float = SD_GUIDANCE, batch_size: int = 32, progress: bool = True) -> torch.Tensor:
    """The final latents (N x C x h x w, on the CPU) of `prompts`, image i from noise seeded `seeds[i]`.

    Uses the pipeline's own scheduler (PNDM for SD-v1.x and tiny-sd) with `steps` steps and classifier-free
    `guidance` (callers pass the model card's, prunekit.card); the pipeline's own progress bar is switched off
    in favour of one over the images.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts for {len(seeds)} seeds")
    pipe.set_progress_bar_config(disable=True)
    latents = []
    with tqdm(total=len(prompts), desc="generating", unit="image", disable=not progress) as bar:
        for start in range(0, len(prompts), batch_size):
            batch_seeds = seeds[start:start + batch_size]
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in batch_seeds]
            output = pipe(prompt=list(prompts[start:start + batch_size]), num_inference_steps=steps,
                          guidance_scale=guidance, generator=generators, output_type="latent", **call_options(pipe))
            latents.append(output.images.cpu())
            bar.update(len(batch_seeds))
    return torch.cat(latents)


@torch.no_grad()
def decode(pipe: StableDiffusionPipeline, latents: torch.Tensor, batch_size: int = 32) -> list[Image.Image]:
    """PIL images of `latents`, decoded as the pipeline itself decodes them."""
    images = []
    for start in range(0, len(latents), batch_size):
        batch = latents[start:start + batch_size].to(pipe.device, pipe.vae.dtype)
        shift = pipe.vae.config.get("shift_factor") or 0.0  # SD3's VAE shifts its latents
        pixels = pipe.vae.decode(batch / pipe.vae.config.scaling_factor + shift, return_dict=False)[0]
        images += pipe.image_processor.postprocess(pixels, output_type="pil", do_denormalize=[True] * len(batch))
    return images


def generate(pipe: StableDiffusionPipeline, prompts: Sequence[str], seeds: Sequence[int], steps: int = 25,
             guidance: float = SD_GUIDANCE, batch_size: int = 32, progress: bool = True) -> list[Image.Image]:
    """PIL images of `prompts`, image i from noise seeded `seeds[i]` (see generate_latents)."""
    latents = generate_latents(pipe, prompts, seeds, steps, guidance, batch_size, progress)
    return decode(pipe, latents, batch_size)
