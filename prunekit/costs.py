"""What a denoiser costs: exact parameters, and MACs of one step counted on the meta device.

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



def scale(largest: float) -> tuple[float, str]:
    """The divisor and suffix (G, M, k or none) that suit counts up to `largest`."""
    return next(((d, s) for d, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if largest >= d), (1.0, ""))


def human(value: float) -> str:
    """A parameter or MAC count with a suffix that suits it: 859.52M, 338.83G, 10.73M, 512."""
    divisor, suffix = scale(value)
    return f"{value / divisor:,.2f}{suffix}" if suffix else f"{value:,.0f}"


def example_inputs(config: dict, batch: int = 1, tokens: int | None = None, device="meta") -> dict:
    """Inputs for one step of the denoiser of `config` at its sample size (its family's: latents, a timestep,
    text states, and what else it is conditioned on); `tokens` text tokens, None for the family's default."""
    from prunekit.families import family_of

    family = family_of(config)
    return family.example_inputs(config, batch, family.tokens if tokens is None else tokens, device)


def _build(config: dict):
    from prunekit.families import family_of

    return family_of(config).build_meta(config)


def _key(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=list)


@functools.lru_cache(maxsize=32)
def _module_macs(key: str, tokens: int | None) -> tuple[tuple[str, int], ...]:
    import torch_pruning as tp

    config = json.loads(key)
    unet = _build(config)
    with contextlib.redirect_stdout(io.StringIO()):  # torch-pruning prints a warning about keyword inputs
        _, _, per_module, _ = tp.utils.count_ops_and_params(unet, example_inputs(config, tokens=tokens), layer_wise=True)
    return tuple((name, int(per_module.get(module) or 0))
                 for name, module in unet.named_modules() if not any(True for _ in module.children()))


def module_macs(config: dict, tokens: int | None = None) -> dict[str, int]:
    """Paper MACs of one step for every leaf module of the denoiser of `config`, by module path."""
    return dict(_module_macs(_key(config), tokens))


@functools.lru_cache(maxsize=32)
def _full_macs(key: str, tokens: int | None) -> tuple[tuple[str, int], ...]:
    config = json.loads(key)
    unet = _build(config)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(**example_inputs(config, tokens=tokens))
    root = type(unet).__name__
    return tuple((name.removeprefix(root).removeprefix("."), int(sum(ops.values()) // 2))
                 for name, ops in counter.get_flop_counts().items() if name != "Global")


def full_macs(config: dict, tokens: int | None = None) -> dict[str, int]:
    """Full MACs (attention matmuls included) of one step, for the whole denoiser ("") and every module path."""
    return dict(_full_macs(_key(config), tokens))


@dataclass(frozen=True)
class Costs:
    """The cost of one denoiser: parameters and MACs of one step at its sample size, batch 1."""

    params: int
    macs: int  # paper
    full_macs: int

    def fraction_of(self, teacher: "Costs") -> dict[str, float]:
        return {"params": self.params / teacher.params, "macs": self.macs / teacher.macs,
                "full_macs": self.full_macs / teacher.full_macs}


def denoiser_costs(config: dict, tokens: int | None = None, full: bool = True) -> Costs:
    """Parameters and MACs of the denoiser of `config` (counted on the meta device; no weights needed)."""
    params = sum(p.numel() for p in _build(config).parameters())
    macs = sum(module_macs(config, tokens).values())
    return Costs(params, macs, full_macs(config, tokens)[""] if full else 0)
