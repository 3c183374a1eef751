"""The architectures of tiny-clip, tiny-sd and tiny-sdxl, and the assembly of the saved pipelines.

tiny-sd's U-Net keeps SD-v1.4's exact block topology (three CrossAttnDownBlock2D and a DownBlock2D, a
UNetMidBlock2DCrossAttn, an UpBlock2D and three CrossAttnUpBlock2D, two layers per block) at a small
width, so every unit name of SD-v1.4 exists in it. The VAE has three blocks: 64x64x3 images <-> 4x16x16
latents. The schedulers are SD-v1.4's.

tiny-sdxl's U-Net keeps SDXL's (a DownBlock2D then two CrossAttnDownBlock2D with 2 and 10 transformer layers,
the mirror up blocks, the mid block, linear projections, `text_time` micro-conditioning), so every unit name
of sdxl-base exists in it. It reads two text encoders concatenated, tiny-sd's and tiny-clip's text tower with
its projection (whose pooled output is the added text embedding), and samples with SDXL's Euler scheduler.

tiny-sd3's transformer keeps SD3-medium's (24 joint blocks, the last text-free, patch 2, sinusoidal positions,
pooled text through the time embedding), so every unit name of sd3-medium exists in it. It reads two CLIP
text encoders with projection, tiny-clip's text tower and tiny-sd's (given an identity projection), and no
T5; it trains and samples with flow matching (FlowMatchEulerDiscreteScheduler).
"""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, DDPMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
                       PNDMScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import (CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                          CLIPTokenizer)

from prunekit.shapes.data import IMAGE_SIZE

LATENT_SIZE = IMAGE_SIZE // 4
SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def text_config(tokenizer: CLIPTokenizer, hidden_size: int, layers: int, heads: int) -> CLIPTextConfig:
    """A CLIP text tower sized for `tokenizer`: its vocabulary, its special ids and its padded length."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, projection_dim=hidden_size,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def tiny_clip(tokenizer: CLIPTokenizer, width: int = 128, layers: int = 3, patch_size: int = 8) -> CLIPModel:
    """A small CLIPModel for 64x64 images (8x8 patches: 64 image tokens) and shapes captions."""
    vision = {"hidden_size": width, "intermediate_size": 4 * width, "num_hidden_layers": layers,
              "num_attention_heads": 4, "image_size": IMAGE_SIZE, "patch_size": patch_size, "projection_dim": width}
    config = CLIPConfig(text_config=text_config(tokenizer, width, layers, 4).to_dict(), vision_config=vision,
                        projection_dim=width)
    return CLIPModel(config)


def text_encoder(tokenizer: CLIPTokenizer, hidden_size: int = 128, layers: int = 3) -> CLIPTextModel:
    """The U-Net's text encoder, a CLIPTextModel; its hidden size is the U-Net's cross-attention dim."""
    return CLIPTextModel(text_config(tokenizer, hidden_size, layers, 4))


def vae(widths: tuple[int, ...] = (16, 32, 64), groups: int = 4) -> AutoencoderKL:
    """A three-block AutoencoderKL: 64x64x3 <-> 4x16x16 (scaling_factor is set after training).

    `groups` GroupNorm groups: as many groups as channels would normalise each channel on its own and
    wash out the absolute colours a shapes image is made of.
    """
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=widths, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * len(widths), up_block_types=("UpDecoderBlock2D",) * len(widths),
        sample_size=IMAGE_SIZE, norm_num_groups=groups,
    )


def unet(cross_attention_dim: int, widths: tuple[int, int, int, int] = (32, 64, 64, 64),
         heads: int = 2, groups: int = 8) -> UNet2DConditionModel:
    """SD-v1.4's U-Net topology at `widths` over 4x16x16 latents (`heads` attention heads per layer,
    `groups` GroupNorm groups: SD-v1.4 has 10 channels per group, 32 groups at width 32 would have 1)."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=widths,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=cross_attention_dim, attention_head_dim=heads, norm_num_groups=groups,
    )


SDXL_TIME_DIM = 8  # channels of each of the six time ids' sinusoidal embedding (SDXL's: 256)


def sdxl_unet(text_widths: tuple[int, int], pooled_width: int, widths: tuple[int, int, int] = (32, 48, 32),
              heads: tuple[int, int, int] = (1, 2, 2), groups: int = 8) -> UNet2DConditionModel:
    """SDXL's U-Net topology at `widths` over 4x16x16 latents, attending to two text encoders `text_widths` wide
    (concatenated) and conditioned on a `pooled_width`-wide pooled text embedding and six time ids."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=widths,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=sum(text_widths), attention_head_dim=heads, use_linear_projection=True,
        norm_num_groups=groups, addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_DIM,
        projection_class_embeddings_input_dim=6 * SDXL_TIME_DIM + pooled_width,
    )


def sdxl_pipeline(vae_model: AutoencoderKL, text_model: CLIPTextModel, text_model_2: CLIPTextModelWithProjection,
                  tokenizer: CLIPTokenizer, unet_model: UNet2DConditionModel) -> StableDiffusionXLPipeline:
    """A complete StableDiffusionXLPipeline around the parts (one tokenizer for both encoders, no watermark;
    the unconditional branch is zeros, as SDXL's)."""
    scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, prediction_type="epsilon", steps_offset=1,
                                       timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=vae_model, text_encoder=text_model, text_encoder_2=text_model_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet_model, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)


def sd3_transformer(text_widths: tuple[int, int], pooled_width: int, width: int = 64, heads: int = 2,
                    layers: int = 24) -> SD3Transformer2DModel:
    """SD3-medium's MMDiT topology (`layers` joint blocks, the last text-free) over 4x16x16 latents in 2x2
    patches, `width` wide in `heads` heads, attending to two text encoders `text_widths` wide (concatenated)
    and conditioned on their pooled embeddings (`pooled_width`, concatenated)."""
    return SD3Transformer2DModel(sample_size=LATENT_SIZE, patch_size=2, in_channels=4, out_channels=4,
                                 num_layers=layers, attention_head_dim=width // heads, num_attention_heads=heads,
                                 joint_attention_dim=sum(text_widths), caption_projection_dim=width,
                                 pooled_projection_dim=pooled_width, pos_embed_max_size=LATENT_SIZE // 2)


def flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """SD3's flow-matching Euler scheduler, unshifted (SD3 shifts by 3 at 1024 px; 64 px needs none)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def sd3_pipeline(vae_model: AutoencoderKL, text_model: CLIPTextModelWithProjection,
                 text_model_2: CLIPTextModelWithProjection, tokenizer: CLIPTokenizer,
                 transformer: SD3Transformer2DModel) -> StableDiffusion3Pipeline:
    """A complete StableDiffusion3Pipeline around the parts (one tokenizer for both encoders, no T5)."""
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=flow_scheduler(), vae=vae_model,
                                    text_encoder=text_model, tokenizer=tokenizer, text_encoder_2=text_model_2,
                                    tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)


def with_identity_projection(text_model: CLIPTextModel) -> CLIPTextModelWithProjection:
    """`text_model` as a CLIPTextModelWithProjection whose projection is the identity (pooled text as it is)."""
    projected = CLIPTextModelWithProjection(text_model.config)
    projected.text_model.load_state_dict(text_model.state_dict())
    with torch.no_grad():
        projected.text_projection.weight.copy_(torch.eye(*projected.text_projection.weight.shape))
    return projected


def train_scheduler() -> DDPMScheduler:
    """SD-v1.4's training noise schedule (epsilon prediction)."""
    return DDPMScheduler(**SD_SCHEDULE, prediction_type="epsilon")


def inference_scheduler() -> PNDMScheduler:
    """SD-v1.4's PNDM scheduler config."""
    return PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
                         prediction_type="epsilon")


def pipeline(vae_model: AutoencoderKL, text_model: CLIPTextModel, tokenizer: CLIPTokenizer,
             unet_model: UNet2DConditionModel) -> StableDiffusionPipeline:
    """A complete StableDiffusionPipeline (no safety checker) around the trained parts."""
    return StableDiffusionPipeline(
        vae=vae_model, text_encoder=text_model, tokenizer=tokenizer, unet=unet_model,
        scheduler=inference_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
