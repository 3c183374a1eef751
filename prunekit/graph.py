"""The units of a denoiser with their costs, at each granularity: what inspect, sweeps and plans read.

Which units a denoiser has, and what they are called, is its family's (prunekit.families): a U-Net's
`down1.pair1`, `mid`, `stage0`, a transformer's `joint3`, `single10.attn`, `block7.ff`; what a unit is, is
prunekit.units'. This module lists them for a module or a config (`enumerate_units`, `all_units`), with
each unit's parameters and MACs counted at a number of text tokens.
"""
from __future__ import annotations

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.units import Unit, UnitBuilder

GRANULARITIES = ("block", "pair", "stage")


def _meta_module(module_or_config) -> nn.Module:
    """The denoiser whose units are listed: a module as it is, or a config's architecture (a free student's
    config gives its teacher's: units are the teacher's)."""
    from prunekit.families import config_of, family_of

    if isinstance(module_or_config, nn.Module):
        return module_or_config
    config = config_of(module_or_config)
    return family_of(config).build_meta(config)


def enumerate_units(model_or_config, granularity: str = "block", tokens: int | None = None,
                    costs: bool = True) -> list[Unit]:
    """The units of a denoiser (a module, on any device, or its config) at `granularity`, in forward order.

    MACs are those of one step at the config's sample size, batch 1, `tokens` text tokens (None: its family's
    default); with `costs=False` they are left at 0 (names and modules only, without counting).
    """
    from prunekit.costs import full_macs, module_macs
    from prunekit.families import config_of, family_of

    module = _meta_module(model_or_config)
    config = config_of(module)
    family = family_of(config)
    if granularity not in family.granularities:
        raise PrunekitError(f"unknown granularity {granularity!r} for a {family.classes[0]}: use one of "
                            f"{', '.join(family.granularities)}.")
    tables = (module_macs(config, tokens), full_macs(config, tokens)) if costs else ({}, {})
    b = UnitBuilder(module, *tables)
    family.add_units(b, module, granularity)
    return b.units


def all_units(model_or_config, tokens: int | None = None, costs: bool = True) -> dict[str, Unit]:
    """Every unit of every granularity by name: what a plan may name (without costs: its family's `units`)."""
    from prunekit.families import config_of, family_of

    module = _meta_module(model_or_config)
    family = family_of(config_of(module))
    if not costs:
        return family.units(module)
    units: dict[str, Unit] = {}
    for granularity in family.granularities:
        for unit in enumerate_units(module, granularity, tokens):
            units.setdefault(unit.name, unit)
    return units
