"""What a U-Net costs: exact parameters, and MACs of one step counted on the meta device.

`paper` MACs count convolutions and linears the way torch-pruning's `count_ops_and_params` does, which is
how BK-SDM counted (SD-v1.4: 338.7G at 512 px). `full` MACs also count the attention matmuls, through
torch's FlopCounterMode (FLOPs / 2).
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

DEFAULT_TOKENS = 77


def scale(largest: float) -> tuple[float, str]:
    """The divisor and suffix (G, M, k or none) that suit counts up to `largest`."""
    return next(((d, s) for d, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if largest >= d), (1.0, ""))


def human(value: float) -> str:
    """A parameter or MAC count with a suffix that suits it: 859.52M, 338.83G, 10.73M, 512."""
    divisor, suffix = scale(value)
    return f"{value / divisor:,.2f}{suffix}" if suffix else f"{value:,.0f}"


def example_inputs(config: dict, batch: int = 1, tokens: int = DEFAULT_TOKENS, device="meta") -> dict:
    """Inputs for one U-Net step of `config` at its sample size: latents, a timestep, text states."""
    size = int(config.get("sample_size") or 64)
    inputs = {
        "sample": torch.zeros(batch, config.get("in_channels", 4), size, size, device=device),
        "timestep": torch.tensor([10], device=device),
        "encoder_hidden_states": torch.zeros(batch, tokens, config["cross_attention_dim"], device=device),
    }
    if config.get("addition_embed_type") == "text_time":
        time_ids = 6
        text_dim = config["projection_class_embeddings_input_dim"] - time_ids * config["addition_time_embed_dim"]
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(batch, text_dim, device=device),
            "time_ids": torch.zeros(batch, time_ids, device=device),
        }
    return inputs


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=list)


@functools.lru_cache(maxsize=32)
def _module_macs(key: str, tokens: int) -> tuple[tuple[str, int], ...]:
    import torch_pruning as tp

    from prunekit.models import build_unet_meta

    config = json.loads(key)
    unet = build_unet_meta(config)
    with contextlib.redirect_stdout(io.StringIO()):  # torch-pruning prints a warning about keyword inputs
        _, _, per_module, _ = tp.utils.count_ops_and_params(unet, example_inputs(config, tokens=tokens), layer_wise=True)
    return tuple((name, int(per_module.get(module) or 0))
                 for name, module in unet.named_modules() if not any(True for _ in module.children()))


def module_macs(config: dict, tokens: int = DEFAULT_TOKENS) -> dict[str, int]:
    """Paper MACs of one step for every leaf module of the U-Net of `config`, by module path."""
    return dict(_module_macs(_key(config), tokens))


@functools.lru_cache(maxsize=32)
def _full_macs(key: str, tokens: int) -> tuple[tuple[str, int], ...]:
    from prunekit.models import build_unet_meta

    config = json.loads(key)
    unet = build_unet_meta(config)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(**example_inputs(config, tokens=tokens))
    root = type(unet).__name__
    return tuple((name.removeprefix(root).removeprefix("."), int(sum(ops.values()) // 2))
                 for name, ops in counter.get_flop_counts().items() if name != "Global")


def full_macs(config: dict, tokens: int = DEFAULT_TOKENS) -> dict[str, int]:
    """Full MACs (attention matmuls included) of one step, for the whole U-Net ("") and every module path."""
    return dict(_full_macs(_key(config), tokens))


@dataclass(frozen=True)
class Costs:
    """The cost of one U-Net: parameters and MACs of one step at its sample size, batch 1."""

    params: int
    macs: int  # paper
    full_macs: int

    def fraction_of(self, teacher: "Costs") -> dict[str, float]:
        return {"params": self.params / teacher.params, "macs": self.macs / teacher.macs,
                "full_macs": self.full_macs / teacher.full_macs}


def unet_costs(config: dict, tokens: int = DEFAULT_TOKENS, full: bool = True) -> Costs:
    """Parameters and MACs of the U-Net of `config` (counted on the meta device; no weights needed)."""
    from prunekit.models import build_unet_meta

    params = sum(p.numel() for p in build_unet_meta(config).parameters())
    macs = sum(module_macs(config, tokens).values())
    return Costs(params, macs, full_macs(config, tokens)[""] if full else 0)
