"""PixArt-alpha and PixArt-Sigma (`PixArtTransformer2DModel`): one stack of blocks, `block{k}`.

A block (diffusers' BasicTransformerBlock with adaLN-single) updates only the image stream: self-attention
(`attn`), an ungated cross-attention to the text (`cross`) and a feed-forward (`ff`).
"""
from __future__ import annotations

import torch

from prunekit.families.blocks import BlockFamily, Part, Stack

_STACK = Stack("block", "transformer_blocks", "num_layers",
               (Part("attn", (("attn1", "zeros"),)), Part("cross", (("attn2", "zeros"),)),
                Part("ff", (("ff", "zeros"),))), streams=1)


class PixArtFamily(BlockFamily):
    def example_inputs(self, config: dict, batch: int, tokens: int, device) -> dict:
        size = int(config.get("sample_size") or 128)
        return {"hidden_states": torch.zeros(batch, config.get("in_channels", 4), size, size, device=device),
                "encoder_hidden_states": torch.zeros(batch, tokens, config.get("caption_channels") or 4096,
                                                     device=device),
                "timestep": torch.ones(batch, device=device),
                "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


# PixArt's T5 text is 300 tokens (PixArtSigmaPipeline's max_sequence_length).
PIXART = PixArtFamily("pixart", "PixArtTransformer2DModel", (_STACK,), tokens=300)
