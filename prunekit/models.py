"""Models: the registry of aliases, and a MODEL resolved once into a `Model` that is passed down.

A MODEL is an alias (`sd-v1-4`, ..., and the bundled `tiny-sd`, `tiny-sdxl`, `tiny-sd3`), a Hugging Face hub id, or a local directory holding a
whole diffusers pipeline, a `unet/` folder, or just a U-Net `config.json`. This module is the only place
that knows the aliases: everything else asks a `Model` for its location, U-Net config, fingerprint, card
(prunekit.card: guidance, tuning, prompt set, data, CLIP model) and pipeline.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from diffusers import UNet2DConditionModel

from prunekit.card import ModelCard
from prunekit.errors import PrunekitError

ASSETS = Path(__file__).parent / "assets"

_SD1 = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
_SD2 = {**_SD1, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "use_linear_projection": True}
_SDXL = {
    **_SD2,
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}
# Diffusion transformers (configs as published on each model's hub page, `transformer/config.json`).
_SD3_MEDIUM = {"_class_name": "SD3Transformer2DModel", "sample_size": 128, "patch_size": 2, "in_channels": 16,
               "out_channels": 16, "num_layers": 24, "attention_head_dim": 64, "num_attention_heads": 24,
               "joint_attention_dim": 4096, "caption_projection_dim": 1536, "pooled_projection_dim": 2048,
               "pos_embed_max_size": 192}
_SD35_LARGE = {**_SD3_MEDIUM, "num_layers": 38, "num_attention_heads": 38, "caption_projection_dim": 2432,
               "qk_norm": "rms_norm"}
_FLUX_DEV = {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64, "out_channels": None,
             "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24,
             "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
             "axes_dims_rope": [16, 56, 56]}
_PIXART_SIGMA = {"_class_name": "PixArtTransformer2DModel", "sample_size": 128, "patch_size": 2, "in_channels": 4,
                 "out_channels": 8, "num_layers": 28, "num_attention_heads": 16, "attention_head_dim": 72,
                 "cross_attention_dim": 1152, "caption_channels": 4096, "attention_bias": True,
                 "activation_fn": "gelu-approximate", "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_single",
                 "norm_elementwise_affine": False, "norm_eps": 1e-6, "interpolation_scale": 2,
                 "use_additional_conditions": False}
_SANA_1600M = {"_class_name": "SanaTransformer2DModel", "in_channels": 32, "out_channels": 32, "sample_size": 32,
               "patch_size": 1, "num_layers": 20, "num_attention_heads": 70, "attention_head_dim": 32,
               "num_cross_attention_heads": 20, "cross_attention_head_dim": 112, "cross_attention_dim": 2240,
               "caption_channels": 2304, "mlp_ratio": 2.5, "interpolation_scale": None}


@dataclass(frozen=True)
class Alias:
    """A short model name: where its weights live and, for hub models, its denoiser's config."""

    name: str
    hub_id: str | None
    unet_config: dict | None  # the denoiser's (a U-Net's or a transformer's); None: read from the bundled directory
    bundled: str | None = None  # folder under prunekit/assets


ALIASES = {
    "sd-v1-4": Alias("sd-v1-4", "CompVis/stable-diffusion-v1-4", _SD1),
    "sd-v1-5": Alias("sd-v1-5", "stable-diffusion-v1-5/stable-diffusion-v1-5", _SD1),
    "sd-v2-1-base": Alias("sd-v2-1-base", "stabilityai/stable-diffusion-2-1-base", _SD2),
    "sd-v2-1": Alias("sd-v2-1", "stabilityai/stable-diffusion-2-1", {**_SD2, "sample_size": 96}),
    "sdxl-base": Alias("sdxl-base", "stabilityai/stable-diffusion-xl-base-1.0", _SDXL),
    "sd3-medium": Alias("sd3-medium", "stabilityai/stable-diffusion-3-medium-diffusers", _SD3_MEDIUM),
    "sd3.5-large": Alias("sd3.5-large", "stabilityai/stable-diffusion-3.5-large", _SD35_LARGE),
    "flux-dev": Alias("flux-dev", "black-forest-labs/FLUX.1-dev", _FLUX_DEV),
    "flux-schnell": Alias("flux-schnell", "black-forest-labs/FLUX.1-schnell", {**_FLUX_DEV, "guidance_embeds": False}),
    "pixart-sigma": Alias("pixart-sigma", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", _PIXART_SIGMA),
    "sana-1.6b": Alias("sana-1.6b", "Efficient-Large-Model/Sana_1600M_1024px_diffusers", _SANA_1600M),
    "tiny-sd": Alias("tiny-sd", None, None, bundled="tiny-sd"),
    "tiny-sdxl": Alias("tiny-sdxl", None, None, bundled="tiny-sdxl"),
    "tiny-sd3": Alias("tiny-sd3", None, None, bundled="tiny-sd3"),
}
CLIP_ALIASES = {"tiny-clip": "tiny-clip"}  # CLIP models shipped in the package: alias -> folder under assets


def bundled_path(folder: str) -> Path:
    """The directory of a model shipped inside the package."""
    path = ASSETS / folder
    if not path.is_dir():
        raise PrunekitError(f"the bundled model {folder!r} is missing from {ASSETS}: reinstall prunekit.")
    return path


def bundled_tokenizer() -> Path:
    """A CLIP tokenizer shipped in the package that reads any text: tiny-sd's (its byte-level fallback never
    gives an unknown token)."""
    return bundled_path(ALIASES["tiny-sd"].bundled) / "tokenizer"


def is_hub_id(name: str) -> bool:
    """Whether `name` has the form of a hub id (owner/name) rather than of a path."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and all(name.split("/"))


def locate(model: str) -> str:
    """Where MODEL `model`'s files live: a local directory path or a hub id."""
    alias = ALIASES.get(model)
    if alias is not None:
        return str(bundled_path(alias.bundled)) if alias.bundled else alias.hub_id
    if os.path.isdir(model):
        return model
    if os.path.exists(model):
        raise PrunekitError(f"{model} is a file, not a model: give an alias, a hub id or a diffusers directory.")
    if is_hub_id(model):
        return model
    known = ", ".join(ALIASES)
    raise PrunekitError(f"unknown model {model!r}: give an alias ({known}), a hub id or a local diffusers directory.")


def locate_clip(name: str) -> str | None:
    """The directory of a bundled CLIP model named `name` (None when `name` is not one)."""
    folder = CLIP_ALIASES.get(name)
    return str(bundled_path(folder)) if folder else None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection within `timeout` seconds (and offline mode is off)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def from_hub(load, model: str):
    """Run `load(local_files_only)` against the hub, or its local cache when the hub cannot be reached.

    huggingface_hub retries for half a minute when offline; probing first makes failure take seconds.
    """
    try:
        return load(not hub_reachable())
    except (OSError, ValueError) as error:  # huggingface_hub raises OSError subclasses when offline
        raise PrunekitError(
            f"could not fetch {model!r} from the Hugging Face Hub or its local cache ({type(error).__name__}): "
            "this machine may be offline; download the model elsewhere and pass its local directory."
        ) from None


def check_unet_config(config, source: str) -> dict:
    """`config` if diffusers can build the denoiser it describes (a U-Net, or a transformer prunekit knows), else
    a PrunekitError naming `source`."""
    from prunekit.families import _registry, family_of

    if not isinstance(config, dict):
        raise PrunekitError(f"{source} holds a JSON {type(config).__name__}, not a denoiser config object: pass a "
                            "diffusers U-Net's or transformer's config.json.")
    kind = config.get("_class_name")
    if kind is not None and kind not in _registry():
        raise PrunekitError(f"{source} is the config of {kind}, not of a denoiser prunekit prunes "
                            f"({', '.join(sorted(_registry()))}): pass a pipeline's unet/ or transformer/ folder.")
    family_of(config).check_config(config, source)
    return config


def build_meta(config: dict):
    """The denoiser of `config` (its family's class) on the meta device."""
    from prunekit.families import family_of

    return family_of(config).build_meta(config)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PrunekitError(f"{path} is not UTF-8 text: pass a diffusers config.json.") from None
    except json.JSONDecodeError as error:
        raise PrunekitError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}): fix it or "
                            "pass another model.") from None
    except OSError as error:
        raise PrunekitError(f"cannot read {path} ({type(error).__name__}): check the path.") from None


def _local_unet_dir(path: Path) -> Path:
    """The folder of a local model's denoiser: its pipeline's unet/ or transformer/, or the folder itself."""
    for folder in ("unet", "transformer"):
        if (path / folder / "config.json").is_file():
            return path / folder
    if (path / "config.json").is_file():
        return path
    raise PrunekitError(f"{path} holds no denoiser config: expected unet/config.json, transformer/config.json or "
                        "config.json there.")


def unet_config(model: str) -> dict:
    """The U-Net config of MODEL `model`, without loading weights (aliases carry theirs in code)."""
    alias = ALIASES.get(model)
    if alias is not None and alias.unet_config is not None:
        return dict(alias.unet_config)
    where = locate(model)
    if os.path.isdir(where):
        path = _local_unet_dir(Path(where)) / "config.json"
        return check_unet_config(_read_json(path), str(path))
    config = from_hub(lambda local: UNet2DConditionModel.load_config(where, subfolder="unet", local_files_only=local),
                      model)
    return check_unet_config(dict(config), f"{model}'s unet/config.json")


def load_unet(model: str, weights: bool = False, dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """`model`'s U-Net: on the meta device when `weights` is False, else with its trained weights on the CPU."""
    if not weights:
        return build_meta(unet_config(model))
    return resolve_model(model).unet(dtype)


def fingerprint(unet_or_config) -> str:
    """A hash of the denoiser's canonical config: two denoisers of the same architecture share it."""
    from prunekit.families import canonical_config, config_of

    config = config_of(unet_or_config)
    text = json.dumps(canonical_config(config), sort_keys=True, default=list)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class Model:
    """A MODEL resolved once: where it lives, its card, and (loaded on first use) its U-Net config and pipeline.

    `name` is what the user gave (recorded in run.json and plan.json); `location` a local directory or a hub id.
    """

    def __init__(self, name: str, location: str, card: ModelCard, config: dict | None = None):
        self.name, self.location, self.card = name, location, card
        self._config = config

    def __repr__(self) -> str:
        return f"Model({self.name!r})"

    @property
    def local(self) -> bool:
        return os.path.isdir(self.location)

    @property
    def config(self) -> dict:
        """The U-Net's config (from code for aliases; read, and checked, otherwise)."""
        if self._config is None:
            self._config = unet_config(self.name)
        return dict(self._config)

    @functools.cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.config)

    @functools.cached_property
    def tokens(self) -> int:
        """Text tokens of one denoising step as the model's pipeline encodes a prompt, which its MACs are counted
        at: from a local pipeline's first tokenizer (tiny-sd: 32), else its family's published length (SD: 77)."""
        from prunekit.families import family_of

        family = family_of(self.config)
        folder = Path(self.location)
        tokenizer = folder / "tokenizer" / "tokenizer_config.json"
        if not (self.local and (folder / "model_index.json").is_file() and tokenizer.is_file()):
            return family.tokens
        settings = _read_json(tokenizer)
        length = settings.get("model_max_length") if isinstance(settings, dict) else None
        if not isinstance(length, int) or isinstance(length, bool) or not 0 < length <= 100_000:
            return family.tokens  # a tokenizer without a usable length: the family's
        return family.pipeline_tokens(_read_json(folder / "model_index.json"), length)

    def unet(self, dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
        """The U-Net with its trained weights, on the CPU."""
        if self.local:
            folder = _local_unet_dir(Path(self.location))
            return _loading(lambda: UNet2DConditionModel.from_pretrained(
                folder, dtype=dtype, local_files_only=True, use_safetensors=True), str(folder))
        return from_hub(lambda local: UNet2DConditionModel.from_pretrained(
            self.location, subfolder="unet", dtype=dtype, local_files_only=local, use_safetensors=True), self.name)

    def pipeline(self, dtype: torch.dtype = torch.float32):
        """The whole diffusers pipeline (bundled models offline from the package; others local or hub)."""
        from diffusers import DiffusionPipeline

        kwargs = {"dtype": dtype, "use_safetensors": True}  # never torch.load a pickle
        if self.local:
            index = _check_pipeline_dir(Path(self.location))
            _ = self.config  # a garbled U-Net config is refused in one sentence before diffusers reads it
            kwargs.update(absent_components(index))
            if "safety_checker" in index:  # prunekit scores images itself: never load a safety checker
                kwargs["safety_checker"] = None
            return _loading(lambda: DiffusionPipeline.from_pretrained(self.location, local_files_only=True, **kwargs),
                            self.location)
        return from_hub(lambda local: DiffusionPipeline.from_pretrained(self.location, local_files_only=local,
                                                                        **kwargs), self.name)


def absent_components(index: dict) -> dict:
    """The components a pipeline's model_index.json saves as absent (a safety checker, SD3's T5 and its
    tokenizer), as None: diffusers loads such a pipeline only when they are passed so."""
    return {name: None for name, entry in index.items() if entry == [None, None]}


def _check_pipeline_dir(path: Path) -> dict:
    """Refuse a directory that is no diffusers pipeline, or whose model_index.json names code to run; its index."""
    index = path / "model_index.json"
    if not index.is_file():
        raise PrunekitError(f"{path} is not a diffusers pipeline directory (no model_index.json).")
    data = _read_json(index)
    if not isinstance(data, dict) or not isinstance(data.get("_class_name"), str):
        raise PrunekitError(f"{index} names no pipeline class: save the pipeline with diffusers' save_pretrained.")
    import diffusers

    if not hasattr(diffusers, data["_class_name"]):
        raise PrunekitError(f"{index} names the pipeline class {data['_class_name']!r}, which diffusers does not "
                            "have: prunekit runs no custom pipeline code; pass a standard diffusers pipeline.")
    for component, entry in data.items():
        if component.startswith("_") or not isinstance(entry, list):
            continue
        library = entry[0] if entry else None
        if library is not None and str(library).split(".")[0] not in ("diffusers", "transformers", "prunekit"):
            raise PrunekitError(f"{index} loads its {component} from {library!r}: prunekit loads components from "
                                "diffusers, transformers and prunekit only.")
    return data

def _loading(load, where: str):
    """`load()`, with the errors diffusers and transformers raise on a broken folder as one PrunekitError."""
    try:
        return load()
    except PrunekitError:
        raise
    except Exception as error:  # noqa: BLE001 - a broken folder makes the loaders raise anything; say so in one line
        detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise PrunekitError(f"cannot load {where} ({detail}): pass a directory saved by diffusers' "
                            "save_pretrained with safetensors weights.") from None


def resolve_model(model: str | Model) -> Model:
    """MODEL `model` (or an already resolved Model) as a Model: located and its card read; nothing loaded."""
    if isinstance(model, Model):
        return model
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str) or not model.strip():
        raise PrunekitError("no model given: pass an alias, a hub id or a local diffusers directory.")
    location = locate(model)
    alias = ALIASES.get(model)
    config = dict(alias.unet_config) if alias is not None and alias.unet_config is not None else None
    card = ModelCard.read(location) if os.path.isdir(location) else ModelCard()
    return Model(model, location, card, config)
