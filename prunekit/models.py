"""Models: the registry of aliases, and a MODEL resolved once into a `Model` that is passed down.

A MODEL is an alias (`sd-v1-4`, ..., `tiny-sd`), a Hugging Face hub id, or a local directory holding a
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
UNET_CLASS = "UNet2DConditionModel"
UNET_CLASSES = (UNET_CLASS, "FreeUNet2DConditionModel")  # the second: a free plan's student (prunekit.students)

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
    "tiny-sdxl": Alias("tiny-sdxl", None, None, bundled="tiny-sdxl"),
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


def build_unet_meta(config: dict) -> UNet2DConditionModel:
    """The U-Net of `config` on the meta device: shapes and costs, no memory for weights. A config naming
    removed units (a free student's, prunekit.students) gives that student."""
    from prunekit.students import REMOVED_KEY, FreeUNet2DConditionModel

    kind = FreeUNet2DConditionModel if config.get(REMOVED_KEY) else UNet2DConditionModel
    with torch.device("meta"):
        return kind.from_config(config)


def check_unet_config(config, source: str) -> dict:
    """`config` if diffusers can build a UNet2DConditionModel of it, else a PrunekitError naming `source`."""
    if not isinstance(config, dict):
        raise PrunekitError(f"{source} holds a JSON {type(config).__name__}, not a U-Net config object: pass a "
                            "diffusers U-Net's config.json.")
    kind = config.get("_class_name", UNET_CLASS)
    if kind not in UNET_CLASSES:
        raise PrunekitError(f"{source} is the config of {kind}, not of a {UNET_CLASS}: pass a pipeline's "
                            "unet/ folder or its U-Net's config.json.")
    blocks = [config.get(key) for key in ("down_block_types", "up_block_types", "block_out_channels")]
    if not all(isinstance(value, list) and value for value in blocks) or len({len(value) for value in blocks}) != 1:
        raise PrunekitError(f"{source} must name its blocks: down_block_types, up_block_types and block_out_channels, "
                            "lists of one length.")
    numbers = [config.get("sample_size", 1), config.get("cross_attention_dim", 1), *blocks[2]]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
               for value in numbers for n in (value if isinstance(value, list) else [value])):
        raise PrunekitError(f"{source} has a size that is not a positive whole number (block_out_channels, "
                            "sample_size or cross_attention_dim): fix it or pass another model.")
    try:
        build_unet_meta(config)
    except Exception as error:  # noqa: BLE001 - diffusers raises anything on a garbled config; say which
        detail = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise PrunekitError(f"{source} is not a U-Net config diffusers can build ({detail}): fix it or pass "
                            "another model.") from None
    return config


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
    if (path / "unet" / "config.json").is_file():
        return path / "unet"
    if (path / "config.json").is_file():
        return path
    raise PrunekitError(f"{path} holds no U-Net config: expected unet/config.json or config.json there.")


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
        return build_unet_meta(unet_config(model))
    return resolve_model(model).unet(dtype)


def canonical_config(config: dict) -> dict:
    """`config` with every default filled in and private keys dropped, as diffusers builds it."""
    full = build_unet_meta(config).config
    return {key: value for key, value in full.items() if not key.startswith("_")}


def fingerprint(unet_or_config) -> str:
    """A hash of the U-Net's canonical config: two U-Nets of the same architecture share it."""
    config = unet_or_config if isinstance(unet_or_config, dict) else dict(unet_or_config.config)
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
            if "safety_checker" in index:
                kwargs["safety_checker"] = None
            return _loading(lambda: DiffusionPipeline.from_pretrained(self.location, local_files_only=True, **kwargs),
                            self.location)
        return from_hub(lambda local: DiffusionPipeline.from_pretrained(self.location, local_files_only=local,
                                                                        **kwargs), self.name)


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
