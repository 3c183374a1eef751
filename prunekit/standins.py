"""The parameter-free stand-ins that take a removed unit's place, at run time (prunekit.ablation) and in a free
plan's student (prunekit.students); which module gets which is its family's choice (prunekit.families).

- resnet: the identity where its channel count does not change, else `ChannelInterpolation`, linear
  interpolation along the channel axis (align_corners=True). An up-path resnet receives the hidden state and
  its skip connection concatenated (diffusers' up blocks concatenate before each resnet): the stand-in keeps
  the hidden state's channels and drops the skip.
- attention (Transformer2DModel), transformer layer (BasicTransformerBlock), mid block: the identity.
- downsampler: 2x2 average pooling; upsampler: nearest 2x. The resolution still changes, because the skip
  connections and the later blocks expect it to.
- a transformer's block (SD3, Flux, PixArt, SANA): the identity on every stream it carries (both of a joint
  block); its attention, cross-attention or feed-forward: zeros of the output's shape, so the block's gated
  residual adds nothing.
- stage{k}: the resolution level is cut out, as a U-Net built with one level fewer computes it. The
  resnets and attentions of its down and up blocks get the stand-ins above, so each block still pushes and
  pops the number of skip connections diffusers' forward counts on. The downsampler that enters the level
  and the up block's upsampler that leaves it become the identity: the level's resolution is gone, and the
  levels inside it (and the mid block) run at twice their resolution. The down block's own downsampler,
  which enters the next inner level, still halves.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn


class ChannelInterpolation(nn.Module):
    """A removed resnet that changes the channel count: keeps the first `channels_in` channels (an up-path
    resnet's input is [hidden, skip]: the skip goes) and interpolates them linearly to `channels_out`."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.channels_in, self.channels_out = channels_in, channels_out

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        hidden = hidden_states[:, : self.channels_in]
        if self.channels_in == self.channels_out:
            return hidden
        batch, _, height, width = hidden.shape
        along_channels = hidden.flatten(2).transpose(1, 2)  # (batch, pixels, channels): interpolate the last axis
        resized = F.interpolate(along_channels, size=self.channels_out, mode="linear", align_corners=True)
        return resized.transpose(1, 2).reshape(batch, self.channels_out, height, width)

    def extra_repr(self) -> str:
        return f"{self.channels_in} -> {self.channels_out}"


class Passthrough(nn.Module):
    """A removed module whose output has its input's shape: returns its first argument."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


class AttentionPassthrough(nn.Module):
    """A removed Transformer2DModel: its input, returned the way diffusers' blocks unpack it."""

    def forward(self, hidden_states: torch.Tensor, *args, return_dict: bool = True, **kwargs):
        return Transformer2DModelOutput(sample=hidden_states) if return_dict else (hidden_states,)


class StreamsPassthrough(nn.Module):
    """A removed joint transformer block (SD3, Flux): both streams returned unchanged, text first, as diffusers'
    blocks return them. It keeps the block's `context_pre_only`, which SD3's ControlNet branch reads."""

    def __init__(self, context_pre_only: bool = False):
        super().__init__()
        self.context_pre_only = context_pre_only

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor = None, *args, **kwargs):
        return encoder_hidden_states, hidden_states


def _first(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class ZeroOutput(nn.Module):
    """A removed attention or feed-forward inside a transformer block: zeros of its output's shape (its input's,
    or with `features` last), so the block's residual adds nothing."""

    def __init__(self, features: int | None = None):
        super().__init__()
        self.features = features

    def forward(self, *args, **kwargs) -> torch.Tensor:
        hidden = _first(args, kwargs)
        if self.features is None:
            return torch.zeros_like(hidden)
        return hidden.new_zeros(*hidden.shape[:-1], self.features)


class ZeroPair(nn.Module):
    """A removed joint attention (SD3, Flux double-stream): zeros for the image and for the text output."""

    def forward(self, *args, **kwargs):
        hidden = _first(args, kwargs)
        text = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]
        return torch.zeros_like(hidden), torch.zeros_like(text)


class AveragePoolDownsample(nn.Module):
    """A removed downsampler: 2x2 average pooling (an odd side rounds up, as the strided conv does)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return F.avg_pool2d(hidden_states, 2, ceil_mode=True)


class NearestUpsample(nn.Module):
    """A removed upsampler: nearest 2x, or to the size diffusers forwards for odd latent sizes."""

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        if output_size is None:
            return F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        return F.interpolate(hidden_states, size=output_size, mode="nearest")
