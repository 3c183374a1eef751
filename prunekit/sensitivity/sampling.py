"""Generation for a sweep: the prompts encoded once, every generation batched across prompts from the same noise.

The pipeline samples as usual (its own scheduler and classifier-free guidance), given the prompt embeddings
instead of the prompts. Image i's initial noise comes from its own CPU generator seeded `seeds[i]`
(prunekit.generate.image_seeds), so the baseline and every ablation start from identical noise and no image
depends on the batch it ran in.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from prunekit.generate import decode


class Sampler:
    """Final latents and images of fixed prompts and noise, under whatever the U-Net is at the time of the call."""

    def __init__(self, pipe: StableDiffusionPipeline, prompts: Sequence[str], seeds: Sequence[int], steps: int,
                 guidance: float, batch_size: int | None = None):
        self.pipe, self.seeds, self.steps, self.guidance = pipe, list(seeds), steps, guidance
        self.batch_size = batch_size or len(prompts)
        with torch.no_grad():
            self.embeds, self.negative = pipe.encode_prompt(list(prompts), pipe.device, 1, guidance > 1)

    @torch.no_grad()
    def latents(self) -> torch.Tensor:
        """The final latents (N x C x h x w, on the CPU), in batches of `batch_size` prompts."""
        latents = []
        for start in range(0, len(self.seeds), self.batch_size):
            batch = slice(start, start + self.batch_size)
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in self.seeds[batch]]
            output = self.pipe(prompt_embeds=self.embeds[batch],
                               negative_prompt_embeds=None if self.negative is None else self.negative[batch],
                               num_inference_steps=self.steps, guidance_scale=self.guidance, generator=generators,
                               output_type="latent")
            latents.append(output.images.cpu())
        return torch.cat(latents)

    def images(self, latents: torch.Tensor) -> list[Image.Image]:
        """`latents` decoded to PIL images by the pipeline's VAE."""
        return decode(self.pipe, latents, self.batch_size)
