"""Proxy mode: score an ablation by how far it moves the U-Net's noise prediction (LAPTOP-Diff's output
criterion), with no sampling loop.

Clean latents (the baseline's generations, or the prompts' own images VAE-encoded) are noised with fixed
noise: latent i at the i mod K-th of K timesteps spread evenly over the training schedule, so K timesteps are
covered at the cost of one U-Net pass over the N latents. The intact U-Net runs once on them, block by block
(`BlockForward`), keeping each block's input: the hidden state and the skip connections pushed so far.
An ablation changes nothing before the first block that holds one of its modules, so its forward resumes
there from the kept activations. eps_mse is the mean squared difference of the two predictions.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from prunekit.conditioning import Conditioning
from prunekit.errors import PrunekitError
from prunekit.units import Unit, inside

State = tuple[torch.Tensor, tuple[torch.Tensor, ...]]  # a block's input: hidden state, skip connections so far
NOISE_STREAM = 1  # keeps the proxy's noise seeds apart from the generations' (prunekit.generate.image_seeds)


@dataclass(frozen=True)
class Context:
    """What every block of one U-Net call shares: the time embedding and the text conditioning."""

    emb: torch.Tensor
    encoder_hidden_states: torch.Tensor
    forward_upsample_size: bool


class BlockForward:
    """A UNet2DConditionModel's forward split at its blocks; it can keep each block's input and resume from it.

    The stages are conv_in, each down block, the mid block, each up block and the output head. Each calls the
    U-Net's current modules exactly as diffusers' forward does (so ablation stand-ins take effect), and a whole
    run equals `unet(...).sample` bit for bit. Only the text-to-image path: SDXL's added text and time
    embedding, but no class or image embeddings, attention masks, adapters or ControlNet residuals.
    """

    def __init__(self, unet: UNet2DConditionModel):
        if unet.class_embedding is not None or unet.config.addition_embed_type not in (None, "text_time"):
            raise PrunekitError("this U-Net takes class or image embeddings: proxy mode supports SD-1.x, SD-2.x "
                                "and SDXL-style U-Nets.")
        self.unet = unet
        self.stages: list[tuple[str, Callable[[Context, State], State]]] = [("conv_in", self._conv_in)]
        self.stages += [(f"down_blocks.{i}", self._down(i)) for i in range(len(unet.down_blocks))]
        if unet.mid_block is not None:
            self.stages.append(("mid_block", self._mid))
        self.stages += [(f"up_blocks.{i}", self._up(i)) for i in range(len(unet.up_blocks))]
        self.stages.append(("conv_out", self._out))

    def first_stage(self, unit: Unit) -> int:
        """The index of the first stage that holds one of `unit`'s modules."""
        names = [name for name, _ in self.stages]
        return min(i for path in unit.modules for i, name in enumerate(names) if inside(path, name))

    def context(self, sample: torch.Tensor, timestep: torch.Tensor, conditioning: Conditioning) -> Context:
        unet, states, added = self.unet, conditioning.embeds, conditioning.added()
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=states, added_cond_kwargs=added)
        if aug is not None:
            emb = emb + aug
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        states = unet.process_encoder_hidden_states(encoder_hidden_states=states, added_cond_kwargs=added)
        factor = 2 ** unet.num_upsamplers
        return Context(emb, states, any(size % factor != 0 for size in sample.shape[-2:]))

    @torch.no_grad()
    def run(self, context: Context, state: State, start: int = 0, keep: list[State] | None = None) -> torch.Tensor:
        """The noise prediction from stage `start` on, given that stage's input `state`; with `keep`, each stage's
        input is appended to it (index = stage)."""
        for _, stage in self.stages[start:]:
            if keep is not None:
                keep.append(state)
            state = stage(context, state)
        return state[0]

    def _conv_in(self, context: Context, state: State) -> State:
        sample = state[0]
        if self.unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        sample = self.unet.conv_in(sample)
        return sample, (sample,)

    def _down(self, index: int) -> Callable[[Context, State], State]:
        def stage(context: Context, state: State) -> State:
            block, (hidden, skips) = self.unet.down_blocks[index], state
            if getattr(block, "has_cross_attention", False):
                hidden, pushed = block(hidden_states=hidden, temb=context.emb,
                                       encoder_hidden_states=context.encoder_hidden_states, attention_mask=None,
                                       cross_attention_kwargs=None, encoder_attention_mask=None)
            else:
                hidden, pushed = block(hidden_states=hidden, temb=context.emb)
            return hidden, skips + pushed
        return stage

    def _mid(self, context: Context, state: State) -> State:
        block, (hidden, skips) = self.unet.mid_block, state
        if getattr(block, "has_cross_attention", False):
            hidden = block(hidden, context.emb, encoder_hidden_states=context.encoder_hidden_states,
                           attention_mask=None, cross_attention_kwargs=None, encoder_attention_mask=None)
        else:
            hidden = block(hidden, context.emb)
        return hidden, skips

    def _up(self, index: int) -> Callable[[Context, State], State]:
        def stage(context: Context, state: State) -> State:
            block, (hidden, skips) = self.unet.up_blocks[index], state
            count = len(block.resnets)
            popped, skips = skips[-count:], skips[:-count]
            final = index == len(self.unet.up_blocks) - 1
            size = skips[-1].shape[2:] if context.forward_upsample_size and not final else None
            if getattr(block, "has_cross_attention", False):
                hidden = block(hidden_states=hidden, temb=context.emb, res_hidden_states_tuple=popped,
                               encoder_hidden_states=context.encoder_hidden_states, cross_attention_kwargs=None,
                               upsample_size=size, attention_mask=None, encoder_attention_mask=None)
            else:
                hidden = block(hidden_states=hidden, temb=context.emb, res_hidden_states_tuple=popped,
                               upsample_size=size)
            return hidden, skips
        return stage

    def _out(self, context: Context, state: State) -> State:
        hidden, skips = state
        if self.unet.conv_norm_out:
            hidden = self.unet.conv_act(self.unet.conv_norm_out(hidden))
        return self.unet.conv_out(hidden), skips


def fixed_timesteps(count: int, train_steps: int) -> list[int]:
    """`count` timesteps at the centres of equal slices of the training schedule (4 of 1000: 125, 375, 625, 875)."""
    return [(2 * k + 1) * train_steps // (2 * count) for k in range(count)]


def latent_noise(seed: int, index: int, shape: torch.Size) -> torch.Tensor:
    """Calibration latent `index`'s fixed noise (seeded apart from the generations' noise)."""
    state = int(np.random.SeedSequence([seed, index, NOISE_STREAM]).generate_state(1)[0])
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(state))


class Proxy:
    """The intact U-Net's predictions and activations on fixed noisy latents, and each ablation's eps_mse."""

    def __init__(self, unet: UNet2DConditionModel, latents: torch.Tensor, conditioning: Conditioning, timesteps: int,
                 alphas_cumprod: torch.Tensor, seed: int, batch_size: int | None = None):
        self.forward = BlockForward(unet)
        grid = fixed_timesteps(timesteps, len(alphas_cumprod))
        self.timesteps = [grid[i % timesteps] for i in range(len(latents))]
        device, dtype = conditioning.embeds.device, unet.dtype
        self.batches: list[tuple[Context, list[State], torch.Tensor]] = []
        size = batch_size or len(latents)
        for start in range(0, len(latents), size):
            clean = latents[start:start + size].float().cpu()
            noise = torch.stack([latent_noise(seed, i, clean.shape[1:]) for i in range(start, start + len(clean))])
            steps = torch.tensor(self.timesteps[start:start + size])
            alpha = alphas_cumprod.float().cpu()[steps].view(-1, 1, 1, 1)
            noisy = (alpha.sqrt() * clean + (1 - alpha).sqrt() * noise).to(device, dtype)
            with torch.no_grad():
                context = self.forward.context(noisy, steps.to(device), conditioning[start:start + size])
            keep: list[State] = []
            intact = self.forward.run(context, (noisy, ()), keep=keep)
            self.batches.append((context, keep, intact))

    def eps_mse(self, unit: Unit) -> torch.Tensor:
        """Each latent's mean squared difference of the U-Net's prediction from the intact one (ablate `unit`
        around the call); their mean is the unit's eps_mse."""
        start = self.forward.first_stage(unit)
        errors = []
        for context, keep, intact in self.batches:
            predicted = self.forward.run(context, keep[start], start)
            errors.append(((predicted.float() - intact.float()) ** 2).flatten(1).mean(1).double().cpu())
        return torch.cat(errors)
