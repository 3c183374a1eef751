"""The sweep's pipeline: the model's trained one, or (`--init random`) one of the same U-Net with random weights.

The random pipeline exists to time the sweep at full scale without downloading anything: the U-Net is built
from the model's config (the aliases carry theirs in code) directly on the chosen device; the VAE has
SD's configuration, the text encoder SD-1.x's depth at the U-Net's cross-attention width, the scheduler SD's
PNDM, and the tokenizer the bundled tiny-sd's (its byte-level fallback reads any prompt) padded to SD's 77 tokens.
An SDXL U-Net gets an SDXL pipeline: two such text encoders, the second with the projection whose width the
U-Net's added embedding implies (their widths add up to its cross-attention width), and Euler sampling.
An SD3 transformer gets an SD3 pipeline without T5: two such text encoders with projections whose widths add
up to its pooled width, a VAE of its latent channels (SD3's scaling and shift), flow-matching Euler sampling.
"""
from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, PNDMScheduler,
                       SD3Transformer2DModel, StableDiffusion3Pipeline, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from prunekit.conditioning import is_sdxl
from prunekit.errors import PrunekitError
from prunekit.families import denoiser_of
from prunekit.models import bundled_tokenizer
from prunekit.sensitivity.settings import Settings

SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2, "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32, "scaling_factor": 0.18215,
}
SDXL_SCALING = 0.13025
SD_TEXT_LAYERS = 12
SD_TOKENS = 77
SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
               "steps_offset": 1}
SD_PNDM = {**SD_SCHEDULE, "skip_prk_steps": True, "set_alpha_to_one": False}
SD3_VAE = {"latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609}
PIPELINES = (StableDiffusionPipeline, StableDiffusionXLPipeline, StableDiffusion3Pipeline)


def _text_encoder(tokenizer: CLIPTokenizer, width: int, projection: int | None = None):
    """A random CLIP text tower `width` wide (with a `projection`-wide projection, SDXL's second encoder)."""
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                          num_hidden_layers=SD_TEXT_LAYERS, num_attention_heads=max(1, width // 64),
                          projection_dim=projection or width, max_position_embeddings=SD_TOKENS,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModelWithProjection(text) if projection else CLIPTextModel(text)


def _random_sd3(config: dict, tokenizer: CLIPTokenizer) -> StableDiffusion3Pipeline:
    pooled = int(config.get("pooled_projection_dim", 2048))
    first, second = (_text_encoder(tokenizer, width, projection=width) for width in (pooled // 2, pooled - pooled // 2))
    vae = AutoencoderKL(sample_size=8 * int(config["sample_size"]),
                        **{**SD_VAE, **SD3_VAE, "latent_channels": int(config.get("in_channels", 16))})
    return StableDiffusion3Pipeline(transformer=SD3Transformer2DModel.from_config(config), vae=vae,
                                    scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), text_encoder=first,
                                    tokenizer=tokenizer, text_encoder_2=second, tokenizer_2=tokenizer,
                                    text_encoder_3=None, tokenizer_3=None)


def random_pipeline(config: dict, device: str, seed: int):
    """A StableDiffusionPipeline (SDXL's for an SDXL U-Net, SD3's for an SD3 transformer) around a randomly
    initialised denoiser of `config` (see the module docstring)."""
    tokenizer = CLIPTokenizer.from_pretrained(bundled_tokenizer(), model_max_length=SD_TOKENS)
    if config.get("_class_name") == "SD3Transformer2DModel":
        torch.manual_seed(seed)
        with torch.device(device):
            return _random_sd3(config, tokenizer)
    width = int(config["cross_attention_dim"])
    sdxl = is_sdxl(config)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config)
        vae = AutoencoderKL(sample_size=8 * int(config["sample_size"]),
                            **{**SD_VAE, "scaling_factor": SDXL_SCALING if sdxl else SD_VAE["scaling_factor"]})
        if not sdxl:
            return StableDiffusionPipeline(vae=vae, text_encoder=_text_encoder(tokenizer, width), tokenizer=tokenizer,
                                           unet=unet, scheduler=PNDMScheduler(**SD_PNDM), safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
        pooled = int(config["projection_class_embeddings_input_dim"]) - 6 * int(config["addition_time_embed_dim"])
        second = _text_encoder(tokenizer, pooled, projection=pooled)
        first = _text_encoder(tokenizer, width - pooled)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=first, text_encoder_2=second, tokenizer=tokenizer,
                                     tokenizer_2=tokenizer, unet=unet, scheduler=EulerDiscreteScheduler(**SD_SCHEDULE),
                                     add_watermarker=False)


def load(settings: Settings, device: str):
    """The sweep's pipeline in eval mode on `device` in the settings' dtype, its own progress bar off."""
    if settings.init == "random":
        pipe = random_pipeline(settings.config, device, settings.seed)
    else:
        pipe = settings.model.pipeline(settings.torch_dtype)
    if not isinstance(pipe, PIPELINES):
        raise PrunekitError(f"{settings.model.name} loads as a {type(pipe).__name__}; the sweep runs "
                            "StableDiffusionPipeline, StableDiffusionXLPipeline and StableDiffusion3Pipeline models "
                            "(SD-1.x, SD-2.x, SDXL, SD3).")
    pipe.to(device)
    if denoiser_of(pipe).dtype != settings.torch_dtype:  # random weights are made in float32
        pipe.to(dtype=settings.torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    for module in (denoiser_of(pipe), pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.eval()
    return pipe
