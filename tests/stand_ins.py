"""Small randomly initialised stand-ins for tiny-clip, tiny-sd and an SDXL pipeline, saved the way the real ones are."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, PNDMScheduler,
                       SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPTextModel
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

MAX_LENGTH = 80  # one token per character: a shapes caption is at most 64 characters
# SDXL's U-Net topology at small widths: transformer depths 1, 2, 3 by stage, micro-conditioning (6 time ids of 8
# channels and a 16-wide pooled text embedding), two 16-wide text encoders concatenated
SDXL_UNET = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 2, "block_out_channels": [32, 64, 96],
    "norm_num_groups": 8, "cross_attention_dim": 32, "attention_head_dim": [2, 4, 8], "use_linear_projection": True,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 3],
    "addition_embed_type": "text_time", "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 16 + 48,
}

# Each transformer family at small widths (random weights run on the CPU in milliseconds).
SD3 = {"_class_name": "SD3Transformer2DModel", "sample_size": 8, "patch_size": 2, "in_channels": 4,
       "out_channels": 4, "num_layers": 4, "attention_head_dim": 8, "num_attention_heads": 2,
       "joint_attention_dim": 16, "caption_projection_dim": 16, "pooled_projection_dim": 12, "pos_embed_max_size": 8}
SD35 = {**SD3, "dual_attention_layers": [0, 1], "qk_norm": "rms_norm"}
FLUX = {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 8, "num_layers": 3,
        "num_single_layers": 4, "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 16,
        "pooled_projection_dim": 12, "guidance_embeds": True, "axes_dims_rope": [2, 2, 4], "sample_size": 4}
PIXART = {"_class_name": "PixArtTransformer2DModel", "sample_size": 8, "patch_size": 2, "in_channels": 4,
          "out_channels": 8, "num_layers": 3, "num_attention_heads": 2, "attention_head_dim": 8,
          "cross_attention_dim": 16, "caption_channels": 12, "norm_type": "ada_norm_single",
          "norm_elementwise_affine": False, "norm_eps": 1e-6, "num_embeds_ada_norm": 1000,
          "use_additional_conditions": False, "activation_fn": "gelu-approximate", "attention_bias": True}
SANA = {"_class_name": "SanaTransformer2DModel", "in_channels": 4, "out_channels": 4, "sample_size": 4,
        "patch_size": 1, "num_layers": 3, "num_attention_heads": 2, "attention_head_dim": 8,
        "num_cross_attention_heads": 2, "cross_attention_head_dim": 8, "cross_attention_dim": 16,
        "caption_channels": 12, "mlp_ratio": 2.5, "interpolation_scale": None}
TRANSFORMERS = {"sd3": SD3, "sd3.5": SD35, "flux": FLUX, "pixart": PIXART, "sana": SANA}


def tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer: every lowercase letter, alone or word-final."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {token: i for i, token in enumerate(letters + [c + "</w>" for c in letters]
                                                + ["<|startoftext|>", "<|endoftext|>"])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_LENGTH)


def _text_config(tok: CLIPTokenizer, hidden: int) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=MAX_LENGTH, projection_dim=hidden,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def save_clip(directory: Path, with_processor: bool = True) -> Path:
    """A random CLIPModel for 64x64 images saved in `directory`, with its processor unless told otherwise."""
    torch.manual_seed(0)
    tok = tokenizer()
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 64, "patch_size": 16, "projection_dim": 16}
    config = CLIPConfig(text_config=_text_config(tok, 16).to_dict(), vision_config=vision, projection_dim=16)
    CLIPModel(config).save_pretrained(directory)
    if with_processor:  # normalised to [-1, 1] as tiny-clip's is
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                                                image_mean=[0.5] * 3, image_std=[0.5] * 3)
        CLIPProcessor(image_processor, tok).save_pretrained(directory)
    return directory


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        sample_size=64, norm_num_groups=4,
    )


def sdxl_pipeline() -> StableDiffusionXLPipeline:
    """A random StableDiffusionXLPipeline of SDXL_UNET for 64x64 images over 4x16x16 latents, Euler sampling."""
    torch.manual_seed(0)
    tok = tokenizer()
    return StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_text_config(tok, 16)),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tok, 16)), tokenizer=tok, tokenizer_2=tok,
        unet=UNet2DConditionModel(**SDXL_UNET), add_watermarker=False,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1))


def sd3_pipeline() -> StableDiffusion3Pipeline:
    """A random StableDiffusion3Pipeline without T5: SD3's transformer (4 joint blocks, the last text-free) over
    4x16x16 latents in 2x2 patches, two 16-wide CLIP encoders with projections, flow-matching Euler sampling."""
    torch.manual_seed(0)
    tok = tokenizer()
    vae = _vae()
    vae.register_to_config(shift_factor=0.0)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=4,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                        caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=8)
    return StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=CLIPTextModelWithProjection(_text_config(tok, 16)), tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tok, 16)), tokenizer_2=tok,
        text_encoder_3=None, tokenizer_3=None)


def pipeline() -> StableDiffusionPipeline:
    """A random StableDiffusionPipeline for 64x64 images over 4x16x16 latents, PNDM, no safety checker."""
    torch.manual_seed(0)
    tok = tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    )
    vae = _vae()
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(_text_config(tok, 16)), tokenizer=tok,
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
