"""Models: aliases with their U-Net configs in code, loading (bundled / local / hub), U-Net fingerprints.

A MODEL is an alias (`sd-v1-4`, ..., `tiny-sd`), a Hugging Face hub id, or a local directory holding a
whole diffusers pipeline, a `unet/` folder, or just a U-Net `config.json`.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from diffusers import UNet2DConditionModel

from prunekit.errors import PrunekitError
from prunekit.guidance_tuning import TunedGuidance

ASSETS = Path(__file__).parent / "assets"
SD_GUIDANCE = 7.5  # the classifier-free guidance scale SD-v1.x is sampled at
SAMPLING_FILE = "prunekit.json"  # beside model_index.json: {"guidance_scale": G}, the scale a model samples best at

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


@dataclass(frozen=True)
class Alias:
    """A short model name: where its weights live and, for hub models, its U-Net config."""

    name: str
    hub_id: str | None
    unet_config: dict | None  # None: read from the bundled directory
    bundled: str | None = None  # folder under prunekit/assets


ALIASES = {
    "sd-v1-4": Alias("sd-v1-4", "CompVis/stable-diffusion-v1-4", _SD1),
    "sd-v1-5": Alias("sd-v1-5", "stable-diffusion-v1-5/stable-diffusion-v1-5", _SD1),
    "sd-v2-1-base": Alias("sd-v2-1-base", "stabilityai/stable-diffusion-2-1-base", _SD2),
    "sd-v2-1": Alias("sd-v2-1", "stabilityai/stable-diffusion-2-1", {**_SD2, "sample_size": 96}),
    "sdxl-base": Alias("sdxl-base", "stabilityai/stable-diffusion-xl-base-1.0", _SDXL),
    "tiny-sd": Alias("tiny-sd", None, None, bundled="tiny-sd"),
}


def bundled_path(name: str) -> Path:
    """The directory of a model shipped inside the package (`tiny-sd`, `tiny-clip`)."""
    path = ASSETS / name
    if not path.is_dir():
        raise PrunekitError(f"the bundled model {name!r} is missing from {ASSETS}: reinstall prunekit.")
    return path


def resolve(model: str) -> str:
    """Where `model`'s files live: a local directory path or a hub id."""
    alias = ALIASES.get(model)
    if alias is not None:
        return str(bundled_path(alias.bundled)) if alias.bundled else alias.hub_id
    if os.path.isdir(model):
        return model
    if model.count("/") == 1 and not model.startswith((".", "/")):
        return model
    known = ", ".join(ALIASES)
    raise PrunekitError(f"unknown model {model!r}: give an alias ({known}), a hub id or a local diffusers directory.")


def _local_unet_dir(path: Path) -> Path:
    if (path / "unet" / "config.json").is_file():
        return path / "unet"
    if (path / "config.json").is_file():
        return path
    raise PrunekitError(f"{path} holds no U-Net config: expected unet/config.json or config.json there.")


def unet_config(model: str) -> dict:
    """The U-Net config of `model`, without loading weights (aliases carry theirs in code)."""
    alias = ALIASES.get(model)
    if alias is not None and alias.unet_config is not None:
        return dict(alias.unet_config)
    where = resolve(model)
    if os.path.isdir(where):
        return json.loads((_local_unet_dir(Path(where)) / "config.json").read_text())
    return from_hub(lambda local: UNet2DConditionModel.load_config(where, subfolder="unet", local_files_only=local),
                     model)


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


def build_unet_meta(config: dict) -> UNet2DConditionModel:
    """The U-Net of `config` on the meta device: shapes and costs, no memory for weights."""
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


def load_unet(model: str, weights: bool = False, dtype: torch.dtype = torch.float32) -> UNet2DConditionModel:
    """`model`'s U-Net: on the meta device when `weights` is False, else with its trained weights on the CPU."""
    if not weights:
        return build_unet_meta(unet_config(model))
    where = resolve(model)
    if os.path.isdir(where):
        folder = _local_unet_dir(Path(where))
        return UNet2DConditionModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return from_hub(lambda local: UNet2DConditionModel.from_pretrained(
        where, subfolder="unet", dtype=dtype, local_files_only=local), model)


def _sampling_record(model) -> tuple[Path | None, dict]:
    """The prunekit.json of `model` (a MODEL or a loaded pipeline) and what it holds ({} without one)."""
    where = model if isinstance(model, str) else getattr(model, "name_or_path", None)
    if where in ALIASES:
        where = resolve(where)
    path = Path(where) / SAMPLING_FILE if where and os.path.isdir(where) else None
    if path is None or not path.is_file():
        return None, {}
    try:
        record = json.loads(path.read_text())
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise PrunekitError(f"{path} must hold a JSON object with a number guidance_scale of at least 1.")
    return path, record


def recommended_guidance(model) -> float:
    """The classifier-free guidance scale to sample `model` (a MODEL or a loaded pipeline) at by default.

    A pipeline directory carries its own in prunekit.json when it was measured to differ (tiny-sd's is in its
    model card); any other model gets SD's 7.5.
    """
    path, record = _sampling_record(model)
    if path is None:
        return SD_GUIDANCE
    guidance = record.get("guidance_scale")
    if not isinstance(guidance, (int, float)) or isinstance(guidance, bool) or guidance < 1:
        raise PrunekitError(f"{path} must hold a JSON object with a number guidance_scale of at least 1.")
    return float(guidance)


def tuned_guidance(model) -> TunedGuidance | None:
    """How `model` was guidance-tuned (prunekit.guidance_tuning), from its prunekit.json; None if ordinary."""
    path, record = _sampling_record(model)
    tuned = record.get("tuned_guidance")
    if tuned is None:
        return None
    try:
        return TunedGuidance(float(tuned["scale"]), float(tuned["like"]))
    except (TypeError, KeyError, ValueError):
        raise PrunekitError(f"{path}'s tuned_guidance must be an object with numbers scale and like.") from None


def write_recommended_guidance(directory: str | Path, guidance: float, tuned: TunedGuidance | None = None) -> None:
    """Record `guidance` as the default scale of the pipeline in `directory` (see recommended_guidance) and,
    if given, how it was guidance-tuned; what its prunekit.json held otherwise stays."""
    path = Path(directory) / SAMPLING_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    record["guidance_scale"] = guidance
    if tuned is not None:
        record["tuned_guidance"] = tuned.to_json()
    path.write_text(json.dumps(record, indent=2) + "\n")


def load_pipeline(model: str, dtype: torch.dtype = torch.float32):
    """The whole diffusers pipeline of `model` (tiny-sd offline from the package; others local or hub)."""
    from diffusers import DiffusionPipeline

    where = resolve(model)
    kwargs = {"dtype": dtype, "safety_checker": None} if "xl" not in model else {"dtype": dtype}
    if os.path.isdir(where):
        if not (Path(where) / "model_index.json").is_file():
            raise PrunekitError(f"{where} is not a diffusers pipeline directory (no model_index.json).")
        return DiffusionPipeline.from_pretrained(where, local_files_only=True, **kwargs)
    return from_hub(lambda local: DiffusionPipeline.from_pretrained(where, local_files_only=local, **kwargs), model)


def canonical_config(config: dict) -> dict:
    """`config` with every default filled in and private keys dropped, as diffusers builds it."""
    full = build_unet_meta(config).config
    return {key: value for key, value in full.items() if not key.startswith("_")}


def fingerprint(unet_or_config) -> str:
    """A hash of the U-Net's canonical config: two U-Nets of the same architecture share it."""
    config = unet_or_config if isinstance(unet_or_config, dict) else dict(unet_or_config.config)
    text = json.dumps(canonical_config(config), sort_keys=True, default=list)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
