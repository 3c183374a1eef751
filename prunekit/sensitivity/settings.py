"""A sweep's settings: every argument checked and every default filled in before anything is loaded.

Also what the settings write: the columns of sensitivity.csv, the rule of its `sensitivity` column, and
run.json's record (notes/run-directory.md).
"""
from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass

import torch

from prunekit.errors import PrunekitError
from prunekit.graph import GRANULARITIES, Unit, enumerate_units
from prunekit.metrics import BUNDLED_CLIP, DEFAULT_CLIP, check_metrics
from prunekit.models import build_unet_meta, fingerprint, recommended_guidance, unet_config
from prunekit.sensitivity import prompts as prompt_sets

MODES = ("full", "proxy")
INITS = ("pretrained", "random")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PROXY_LATENTS = ("baseline", "rendered")
ATTRIBUTE_KEYS = ("color", "shape", "position", "size", "all")
UNIT_COLUMNS = ["unit", "kind", "stage", "params", "macs", "full_macs", "seconds"]
# the full-mode `sensitivity` column: the rule of the first of these metrics (in this order) that is computed
SENSITIVITY_RULES = (("clip", "-delta_clip_score"), ("teacher", "latent_mse"), ("attributes", "-delta_attr_all"),
                     ("fid", "fid"))


@dataclass(frozen=True)
class Settings:
    """A checked sweep: what to ablate, how to generate and how to score."""

    model: str
    out: str
    granularity: str
    mode: str
    metrics: tuple[str, ...]  # empty in proxy mode
    prompt_source: str
    prompts: tuple[str, ...]
    steps: int
    guidance: float
    seed: int
    batch_size: int | None
    device: str
    dtype: str
    init: str
    units: tuple[Unit, ...]
    units_given: bool  # a --units list, rather than every unit of the granularity
    timesteps: int
    proxy_latents: str | None
    clip_model: str | None
    config: dict  # the U-Net's config

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def columns(self) -> list[str]:
        """sensitivity.csv's columns, in order."""
        columns = list(UNIT_COLUMNS)
        for metric in self.metrics:
            if metric == "clip":
                columns += ["clip_score", "delta_clip_score"]
            elif metric == "attributes":
                columns += [name for key in ATTRIBUTE_KEYS for name in (f"attr_{key}", f"delta_attr_{key}")]
            elif metric == "teacher":
                columns += ["latent_mse", "psnr", "ssim"]
            else:
                columns += ["fid"]
        if self.mode == "proxy":
            columns.append("eps_mse")
        if self.init == "random":
            columns.append("init")
        return columns + ["sensitivity"]

    def sensitivity_rule(self) -> str:
        """What the `sensitivity` column holds (larger = more harmful to remove)."""
        if self.mode == "proxy":
            return "eps_mse"
        return next(rule for metric, rule in SENSITIVITY_RULES if metric in self.metrics)

    def args(self) -> dict:
        """The arguments as run.json records them (those that do not apply to the mode are None)."""
        proxy = self.mode == "proxy"
        return {"model": self.model, "granularity": self.granularity, "mode": self.mode,
                "metrics": None if proxy else list(self.metrics), "prompts": self.prompt_source,
                "num_prompts": len(self.prompts), "steps": self.steps, "guidance": self.guidance, "seed": self.seed,
                "batch_size": self.batch_size, "device": self.device, "dtype": self.dtype, "init": self.init,
                "units": [unit.name for unit in self.units] if self.units_given else None,
                "timesteps": self.timesteps if proxy else None, "proxy_latents": self.proxy_latents,
                "clip_model": self.clip_model}

    def notes(self) -> list[str]:
        notes = [f"sensitivity = {self.sensitivity_rule()} (larger = more harmful to remove)."]
        if self.init == "random":
            notes.append("random weights (--init random): for timing only; the scores mean nothing.")
        if self.mode == "proxy":
            source = ("the baseline's generations" if self.proxy_latents == "baseline"
                      else "the prompts' own captioned-shapes images, VAE-encoded")
            notes.append(f"proxy mode: eps_mse is the mean squared difference of the ablated and intact U-Nets' noise "
                         f"predictions on {source}, each noised at one of {self.timesteps} fixed timesteps "
                         "(LAPTOP-Diff's output criterion); no images are generated per unit.")
        if {"teacher", "fid"} & set(self.metrics):
            notes.append("latent_mse, psnr, ssim and fid compare each ablation with the baseline's outputs for the "
                         "same noise, so they have no delta column.")
        return notes

    def record(self) -> dict:
        """run.json before the baseline is measured."""
        return {"command": "sensitivity", "args": self.args(), "versions": versions(),
                "model": {"name": self.model, "unet_fingerprint": fingerprint(self.config)},
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "baseline": {}, "init": self.init, "notes": self.notes(), "sensitivity": self.sensitivity_rule(),
                "prompts_sha256": prompt_sets.digest(list(self.prompts))}


def versions() -> dict:
    import accelerate
    import diffusers
    import torchmetrics
    import transformers

    import prunekit

    return {"prunekit": prunekit.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "torchmetrics": torchmetrics.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise PrunekitError(f"unknown {name} {value!r}: use one of {', '.join(choices)}.")


def _names(units) -> list[str] | None:
    if units is None:
        return None
    names = [name.strip() for name in units.split(",")] if isinstance(units, str) else [str(u) for u in units]
    names = list(dict.fromkeys(name for name in names if name))
    if not names:
        raise PrunekitError("--units names no unit: give unit names separated by commas, or leave it out.")
    return names


def _units(config: dict, granularity: str, names: list[str] | None) -> tuple[Unit, ...]:
    from prunekit.ablation import resolve

    if names is None:
        return tuple(enumerate_units(config, granularity))
    return tuple(resolve(build_unet_meta(config), names))


def _check_unet(model: str, config: dict) -> None:
    if config.get("addition_embed_type") or config.get("class_embed_type"):
        raise PrunekitError(f"{model}'s U-Net takes added conditioning (SDXL-style), which the sweep does not "
                            "support yet: use an SD-1.x or SD-2.x-style model.")


def _metrics(metrics, mode: str, init: str, shapes_prompts: bool) -> tuple[str, ...]:
    if mode == "proxy":
        if metrics is not None:
            raise PrunekitError("proxy mode scores by noise-prediction error (eps_mse) only: leave out --metrics, "
                                "or use --mode full.")
        return ()
    if metrics is None:
        if init == "random":
            return ("teacher",)
        return ("clip", "teacher") + ("attributes",) * shapes_prompts
    names = tuple(dict.fromkeys(check_metrics(metrics)))
    if not names:
        raise PrunekitError("--metrics names no metric: give one or more of clip, fid, teacher, attributes.")
    return names


def resolve(model: str = "tiny-sd", out: str = "runs/sensitivity", granularity: str = "pair", mode: str = "full",
            metrics=None, prompts: str | None = None, num_prompts: int = 32, steps: int = 25, guidance: float | None = None,
            seed: int = 0, batch_size: int | None = None, device: str = "cpu", dtype: str = "float32",
            init: str = "pretrained", units=None, timesteps: int = 4, proxy_latents: str | None = None,
            clip_model: str | None = None) -> Settings:
    """Settings from the arguments of prunekit.sensitivity.sensitivity (see there), or a PrunekitError."""
    _check_choice("mode", mode, MODES)
    _check_choice("init", init, INITS)
    _check_choice("dtype", dtype, tuple(DTYPES))
    _check_choice("granularity", granularity, GRANULARITIES)
    if min(num_prompts, steps, timesteps, batch_size or 1) < 1:
        raise PrunekitError("num_prompts, steps, timesteps and batch_size must each be at least 1.")
    try:
        torch.device(device)
    except RuntimeError:
        raise PrunekitError(f"unknown device {device!r}: use cpu, cuda or cuda:N.") from None
    source = prompts or prompt_sets.default_source(model)
    texts = prompt_sets.load(source, num_prompts, seed)
    shapes_prompts = prompt_sets.are_shapes(texts)
    chosen = _metrics(metrics, mode, init, shapes_prompts)
    if "attributes" in chosen and not shapes_prompts:
        raise PrunekitError("the attributes metric judges captioned-shapes images only: use the shapes prompts, "
                            "or leave attributes out of --metrics.")
    if "fid" in chosen and len(texts) < 2:
        raise PrunekitError("FID needs at least 2 prompts: raise --num-prompts.")
    if mode == "proxy":
        proxy_latents = proxy_latents or ("rendered" if shapes_prompts else "baseline")
        _check_choice("proxy latents", proxy_latents, PROXY_LATENTS)
        if proxy_latents == "rendered" and not shapes_prompts:
            raise PrunekitError("rendered proxy latents exist for captioned-shapes prompts only: use baseline.")
        if timesteps > len(texts):
            raise PrunekitError(f"each prompt's latent is noised at one of the {timesteps} timesteps: give at least "
                                f"{timesteps} prompts, or fewer --timesteps.")
    else:
        proxy_latents = None
    if {"clip", "fid"} & set(chosen):
        clip_model = clip_model or (BUNDLED_CLIP if model == "tiny-sd" or shapes_prompts else DEFAULT_CLIP)
    else:
        clip_model = None
    config = unet_config(model)
    _check_unet(model, config)
    selected = _units(config, granularity, _names(units))
    guidance = recommended_guidance(model) if guidance is None else float(guidance)
    return Settings(model, str(out), granularity, mode, chosen, source, tuple(texts), steps, guidance, seed,
                    batch_size, device, dtype, init, selected, units is not None, timesteps, proxy_latents,
                    clip_model, config)
