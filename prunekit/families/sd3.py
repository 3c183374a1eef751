"""SD3 and SD3.5 (`SD3Transformer2DModel`, MMDiT): one stack of joint blocks, `block{k}`.

Each joint block updates the image and the text stream, except the last (`context_pre_only`), which updates
only the image stream: its text side reads the text as keys and values, and its normalisation of the text
(`AdaLayerNormContinuous`: scale, shift) is the first two of the six modulations of an ordinary block's
(`AdaLayerNormZero`: shift, scale, gate, and three for the feed-forward it lacks). So when a plan removes the
last block, the student's new last block takes the kept block's text normalisation rows scale then shift
(`#chunks=6:1,0` in the weight map) and drops its text feed-forward and text output: exactly what the teacher
computes for the image with the blocks after it ablated. Dual-attention blocks (SD3.5-medium) keep their index
in `dual_attention_layers`, renumbered.
"""
from __future__ import annotations

import torch

from prunekit.families.blocks import BlockFamily, Part, Stack

NO_T5_TOKENS = 1  # zero tokens in T5's place for an SD3 pipeline without T5 (diffusers' default: 256)
T5_TOKENS = 256  # StableDiffusion3Pipeline's max_sequence_length

_STACK = Stack("block", "transformer_blocks", "num_layers",
               (Part("attn", (("attn", "zero-pair"), ("attn2", "zeros"))),
                Part("ff", (("ff", "zeros"), ("ff_context", "zeros")))), streams=2, mmdit=True)


class SD3Family(BlockFamily):
    runs_pipelines = True

    def example_inputs(self, config: dict, batch: int, tokens: int, device) -> dict:
        size = int(config.get("sample_size") or 128)
        return {"hidden_states": torch.zeros(batch, config.get("in_channels", 16), size, size, device=device),
                "encoder_hidden_states": torch.zeros(batch, tokens, config.get("joint_attention_dim", 4096),
                                                     device=device),
                "pooled_projections": torch.zeros(batch, config.get("pooled_projection_dim", 2048), device=device),
                "timestep": torch.ones(batch, device=device)}

    def pipeline_tokens(self, index: dict, tokenizer_length: int) -> int:
        """The CLIP tokens, then T5's: its 256, or prunekit's one zero token where the pipeline has no T5."""
        no_t5 = index.get("text_encoder_3") in (None, [None, None])
        return tokenizer_length + (NO_T5_TOKENS if no_t5 else T5_TOKENS)

    def predict(self, module, sample, timestep, conditioning):
        return module(hidden_states=sample, timestep=timestep, encoder_hidden_states=conditioning.embeds,
                      pooled_projections=conditioning.pooled).sample

    def student_config(self, config: dict, kept: dict[str, list[int]]) -> dict:
        student = super().student_config(config, kept)
        dual = set(config.get("dual_attention_layers") or ())
        if dual:
            student["dual_attention_layers"] = [j for j, k in enumerate(kept["block"]) if k in dual]
        return student

    def cost_correction(self, config: dict, remove: list[str], metric: str, units: dict) -> int:
        """Removing the last block makes the last kept one text-free: it loses what an ordinary block has beyond
        the teacher's text-free last one (its text feed-forward and output, four modulations), whether or not it
        is a dual-attention block."""
        count = int(config["num_layers"])
        last = f"block{count - 1}"
        if last not in remove:
            return 0
        dual = set(config.get("dual_attention_layers") or ())
        ordinary = [k for k in range(count - 1) if k not in dual]
        reference = ordinary[0] if ordinary else max(k for k in range(count) if f"block{k}" not in remove)
        return getattr(units[last], metric) - getattr(units[f"block{reference}"], metric)

    def block_map(self, stack: Stack, j: int, k: int, student_count: int, teacher_count: int) -> dict[str, str]:
        entries = super().block_map(stack, j, k, student_count, teacher_count)
        if j == student_count - 1 and k != teacher_count - 1:  # an ordinary block becomes the text-free last one
            source = f"{stack.attr}.{k}.norm1_context.linear"
            target = f"{stack.attr}.{j}.norm1_context.linear"
            entries.update({f"{target}.{t}": f"{source}.{t}#chunks=6:1,0" for t in ("weight", "bias")})
        return entries


# SD3's joint text is 77 CLIP tokens and 256 T5 tokens.
SD3 = SD3Family("sd3", "SD3Transformer2DModel", (_STACK,), tokens=77 + T5_TOKENS)
