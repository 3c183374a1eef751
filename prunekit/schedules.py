"""What a denoiser is trained to predict, at which noise: the training side of its pipeline's scheduler.

`DDPMNoising` is SD's (SD-1.x, SD-2.x, SDXL): integer timesteps drawn uniformly, latents noised by the
scheduler's `alphas_cumprod`, the target its prediction type says (the noise for epsilon, the velocity for
v_prediction, the clean latents for sample), and min-SNR weights (Hang et al. 2023). `FlowMatching` is rectified flow's (SD3, Flux): a noise level sigma in (0, 1)
drawn logit-normally (SD3's choice, Esser et al. 2024) and shifted as the scheduler's `shift` says, latents
mixed as (1 - sigma) x + sigma noise, the velocity noise - x as the target, the timestep sigma * 1000 as the
model reads it, and equal weights. `noising_for(scheduler)` picks the one a pipeline's scheduler implies.
"""
from __future__ import annotations

import torch

from prunekit.errors import PrunekitError


class DDPMNoising:
    """SD's noising, from a DDPM-family scheduler (its betas, its prediction type)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.alphas = scheduler.alphas_cumprod
        self.prediction = scheduler.config.prediction_type
        if self.prediction not in ("epsilon", "v_prediction", "sample"):
            raise PrunekitError(f"the teacher's scheduler predicts {self.prediction!r}, which prunekit cannot train: "
                                "use a teacher with epsilon, v_prediction or sample prediction.")

    def sample(self, batch: int, generator: torch.Generator, device=None) -> torch.Tensor:
        """`batch` timesteps drawn from `generator` (on its device, `device`)."""
        return torch.randint(0, self.scheduler.config.num_train_timesteps, (batch,), generator=generator,
                             device=device)

    def levels(self, count: int) -> torch.Tensor:
        """`count` fixed timesteps at the centres of equal slices of the schedule (4 of 1000: 125, 375, ...)."""
        steps = int(self.scheduler.config.num_train_timesteps)
        return torch.tensor([(2 * k + 1) * steps // (2 * count) for k in range(count)])

    def noisy(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(clean, noise, t)

    def target(self, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction == "v_prediction":
            return self.scheduler.get_velocity(clean, noise, t)
        return clean if self.prediction == "sample" else noise

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def weight(self, t: torch.Tensor, min_snr_gamma: float | None) -> torch.Tensor:
        """Per-example loss weights: min(SNR, gamma) / SNR, or ones without a gamma."""
        if not min_snr_gamma:
            return torch.ones(len(t), device=t.device)
        alphas = self.alphas.to(t.device)[t]
        snr = alphas / (1 - alphas)
        return snr.clamp(max=min_snr_gamma) / snr


class FlowMatching:
    """Rectified flow's noising, from a FlowMatchEulerDiscreteScheduler (its shift and timestep count)."""

    def __init__(self, scheduler):
        self.shift = float(scheduler.config.get("shift", 1.0))
        self.timesteps = int(scheduler.config.num_train_timesteps)

    def sample(self, batch: int, generator: torch.Generator, device=None) -> torch.Tensor:
        """`batch` noise levels drawn from `generator` (on its device, `device`)."""
        sigma = torch.sigmoid(torch.randn(batch, generator=generator, device=device))
        return self.shift * sigma / (1 + (self.shift - 1) * sigma)

    def levels(self, count: int) -> torch.Tensor:
        """`count` fixed noise levels at the centres of equal slices of (0, 1), shifted as training draws them."""
        sigma = (2 * torch.arange(count, dtype=torch.float32) + 1) / (2 * count)
        return self.shift * sigma / (1 + (self.shift - 1) * sigma)

    @staticmethod
    def _view(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return sigma.to(like.device, like.dtype).view(-1, *(1,) * (like.dim() - 1))

    def noisy(self, clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = self._view(sigma, clean)
        return (1 - s) * clean + s * noise

    def target(self, clean: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return noise - clean

    def model_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma * self.timesteps

    def weight(self, sigma: torch.Tensor, min_snr_gamma: float | None) -> torch.Tensor:
        return torch.ones(len(sigma), device=sigma.device)


def noising_for(scheduler):
    """The training noising a pipeline's scheduler implies: flow matching for a flow-matching scheduler, else
    SD's DDPM noising (built on the scheduler's own config as a DDPMScheduler)."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return FlowMatching(scheduler)
    if not isinstance(scheduler, DDPMScheduler):
        scheduler = DDPMScheduler.from_config(scheduler.config)
    return DDPMNoising(scheduler)
