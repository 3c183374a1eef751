"""Generation for a sweep: the prompts encoded once, every generation batched across prompts from the same noise.

The pipeline samples as usual (its own scheduler and classifier-free guidance), given the prompts' conditioning
(prunekit.conditioning: SDXL's pooled embeddings too) instead of the prompts. Image i's initial noise comes
from its own CPU generator seeded `seeds[i]` (prunekit.generate.image_seeds), so the baseline and every
ablation start from identical noise and no image depends on the batch it ran in.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from tqdm.auto import tqdm

from prunekit.conditioning import encode, pipe_kwargs
from prunekit.generate import decode


class Sampler:
    """Final latents and images of fixed prompts and noise, under whatever the U-Net is at the time of the call."""

    def __init__(self, pipe: StableDiffusionPipeline, prompts: Sequence[str], seeds: Sequence[int], steps: int,
                 guidance: float, batch_size: int | None = None):
        self.pipe, self.seeds, self.steps, self.guidance = pipe, list(seeds), steps, guidance
        self.batch_size = batch_size or len(prompts)
        self.conditioning, self.negative = encode(pipe, list(prompts), negative=guidance > 1)

    @torch.no_grad()
    def latents(self, indices: list[int] | None = None, progress: bool = False) -> torch.Tensor:
        """The final latents (N x C x h x w, on the CPU) of the prompts at `indices` (default all), in batches of
        `batch_size` prompts; with `progress`, a bar over the sampling steps (the baseline's)."""
        indices = list(range(len(self.seeds))) if indices is None else list(indices)
        latents = []
        batches = range(0, len(indices), self.batch_size)
        bar = tqdm(total=len(batches) * self.steps, desc="baseline", unit="step", disable=not progress)

        def step_end(pipe, step, timestep, kwargs):
            bar.update()
            return kwargs
        for start in batches:
            batch = indices[start:start + self.batch_size]
            generators = [torch.Generator("cpu").manual_seed(self.seeds[i]) for i in batch]
            negative = None if self.negative is None else self.negative[batch]
            output = self.pipe(**pipe_kwargs(self.conditioning[batch], negative), num_inference_steps=self.steps,
                               guidance_scale=self.guidance, generator=generators, output_type="latent",
                               callback_on_step_end=step_end if progress else None)
            latents.append(output.images.cpu())
        bar.close()
        return torch.cat(latents)

    def images(self, latents: torch.Tensor) -> list[Image.Image]:
        """`latents` decoded to PIL images by the pipeline's VAE."""
        return decode(self.pipe, latents, self.batch_size)
