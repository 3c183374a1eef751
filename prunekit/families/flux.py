"""FLUX.1 (`FluxTransformer2DModel`): double-stream blocks `joint{k}`, then single-stream blocks `single{k}`.

Both kinds take and return the text and the image stream (a single block runs them as one sequence). A
single block's attention and MLP run in parallel into one output projection: its `attn` part zeroes the
attention and its `ff` part the MLP's input projection, each leaving the other branch (and the projection's
bias) in place. `flux-lite-like` (prunekit.families.blocks) removes the later double-stream blocks.
"""
from __future__ import annotations

import torch

from prunekit.families.blocks import BlockFamily, Part, Stack

_JOINT = Stack("joint", "transformer_blocks", "num_layers",
               (Part("attn", (("attn", "zero-pair"),)), Part("ff", (("ff", "zeros"), ("ff_context", "zeros")))),
               streams=2, mmdit=True)
_SINGLE = Stack("single", "single_transformer_blocks", "num_single_layers",
                (Part("attn", (("attn", "zeros"),)), Part("ff", (("proj_mlp", "zeros-out"),))), streams=2)


class FluxFamily(BlockFamily):
    def grid(self, config: dict) -> int:
        return int(config.get("sample_size") or 64)  # packed latents: 2x2 patches of a 128-wide latent at 1024 px

    def example_inputs(self, config: dict, batch: int, tokens: int, device) -> dict:
        side = self.grid(config)
        rows, cols = torch.meshgrid(torch.arange(side, device=device), torch.arange(side, device=device),
                                    indexing="ij")
        image_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
        inputs = {"hidden_states": torch.zeros(batch, side * side, config.get("in_channels", 64), device=device),
                  "encoder_hidden_states": torch.zeros(batch, tokens, config.get("joint_attention_dim", 4096),
                                                       device=device),
                  "pooled_projections": torch.zeros(batch, config.get("pooled_projection_dim", 768), device=device),
                  "timestep": torch.ones(batch, device=device), "img_ids": image_ids,
                  "txt_ids": torch.zeros(tokens, 3, device=device)}
        if config.get("guidance_embeds"):
            inputs["guidance"] = torch.full((batch,), 3.5, device=device)
        return inputs


# FLUX.1-dev's T5 text is 512 tokens (FluxPipeline's max_sequence_length).
FLUX = FluxFamily("flux", "FluxTransformer2DModel", (_JOINT, _SINGLE), tokens=512)
