"""SANA (`SanaTransformer2DModel`): one stack of blocks, `block{k}`.

A block updates only the image stream: linear self-attention (`attn`), cross-attention to the text (`cross`)
and a convolutional feed-forward (GLUMBConv, `ff`, which works on the token grid: its stand-in returns zeros of
its input's shape).
"""
from __future__ import annotations

import torch

from prunekit.families.blocks import BlockFamily, Part, Stack

_STACK = Stack("block", "transformer_blocks", "num_layers",
               (Part("attn", (("attn1", "zeros"),)), Part("cross", (("attn2", "zeros"),)),
                Part("ff", (("ff", "zeros"),))), streams=1)


class SanaFamily(BlockFamily):
    def example_inputs(self, config: dict, batch: int, tokens: int, device) -> dict:
        size = int(config.get("sample_size") or 32)
        return {"hidden_states": torch.zeros(batch, config.get("in_channels", 32), size, size, device=device),
                "encoder_hidden_states": torch.zeros(batch, tokens, config.get("caption_channels", 2304),
                                                     device=device),
                "timestep": torch.ones(batch, device=device)}


# SANA's Gemma text is 300 tokens (SanaPipeline's max_sequence_length).
SANA = SanaFamily("sana", "SanaTransformer2DModel", (_STACK,), tokens=300)
