"""The sweep's pipeline: the model's trained one, or (`--init random`) one of the same U-Net with random weights.

The random pipeline exists to time the sweep at full scale without downloading anything: the U-Net is built
from the model's config (the aliases carry theirs in code) directly on the chosen device; the VAE has
SD's configuration, the text encoder SD-1.x's depth at the U-Net's cross-attention width, the scheduler SD's
PNDM, and the tokenizer the bundled tiny-sd's (its byte-level fallback reads any prompt) padded to SD's 77 tokens.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from prunekit.errors import PrunekitError
from prunekit.models import bundled_tokenizer
from prunekit.sensitivity.settings import Settings

SD_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2, "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32, "scaling_factor": 0.18215,
}
SD_TEXT_LAYERS = 12
SD_TOKENS = 77
SD_PNDM = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
           "skip_prk_steps": True, "steps_offset": 1, "set_alpha_to_one": False}


def random_pipeline(config: dict, device: str, seed: int) -> StableDiffusionPipeline:
    """A StableDiffusionPipeline around a randomly initialised U-Net of `config` (see the module docstring)."""
    tokenizer = CLIPTokenizer.from_pretrained(bundled_tokenizer(), model_max_length=SD_TOKENS)
    width = int(config["cross_attention_dim"])
    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width,
                          num_hidden_layers=SD_TEXT_LAYERS, num_attention_heads=max(1, width // 64),
                          projection_dim=width, max_position_embeddings=SD_TOKENS, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config)
        vae = AutoencoderKL(sample_size=8 * int(config["sample_size"]), **SD_VAE)
        text_encoder = CLIPTextModel(text)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(**SD_PNDM), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def load(settings: Settings, device: str) -> StableDiffusionPipeline:
    """The sweep's pipeline in eval mode on `device` in the settings' dtype, its own progress bar off."""
    if settings.init == "random":
        pipe = random_pipeline(settings.config, device, settings.seed)
    else:
        pipe = settings.model.pipeline(settings.torch_dtype)
    if not isinstance(pipe, StableDiffusionPipeline):
        raise PrunekitError(f"{settings.model.name} loads as a {type(pipe).__name__}; the sweep runs "
                            "StableDiffusionPipeline models (SD-1.x, SD-2.x, tiny-sd).")
    pipe.to(device)
    if pipe.unet.dtype != settings.torch_dtype:  # random weights are made in float32
        pipe.to(dtype=settings.torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval()
    return pipe
