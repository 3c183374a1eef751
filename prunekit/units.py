"""Units as data: the removable pieces of a diffusers denoiser, what they cover and what they cost.

A Unit is a name, the module paths it covers, its parameters and MACs; which units a denoiser has is its
family's (prunekit.families), which fills a `UnitBuilder`. `Removed` answers which module paths a set of
removed units covers, `inside` whether one module path lies in another, `outermost` and `top_level` which
units to count without counting one twice. prunekit.graph lists a denoiser's units with their costs.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Unit:
    """A removable piece of a denoiser: its modules and what they cost."""

    name: str
    kind: str  # U-Net: res | attn | pair | transformer | downsample | upsample | mid | stage; DiT: block | attn | ff
    # | cross
    stage: str  # U-Net: down{s} | mid | up{s} | stage{k}; DiT: the stack (joint | single | block)
    modules: tuple[str, ...]
    params: int
    macs: int  # paper MACs of one step at the config's sample size (convolutions and linears)
    full_macs: int  # MACs with the attention matmuls counted too
    channels_in: int
    channels_out: int
    skip_channels: int  # channels of the skip connection an up-path resnet concatenates to its input
    resolution: int  # side of the latent (or token grid) the unit works on
    parent: str | None = None  # the unit this one lies inside (transformer layers, a block's parts)

    def holds(self, path: str) -> bool:
        """Whether module `path` lies inside one of this unit's modules (or is one)."""
        return any(inside(path, module) for module in self.modules)

    def contains(self, other: "Unit") -> bool:
        """Whether `other` is another unit whose every module lies inside this one's: removing this removes it."""
        return other.name != self.name and all(self.holds(path) for path in other.modules)

    def overlap(self, other: "Unit") -> str | None:
        """The outermost module path the two units share (one lies inside the other's), or None."""
        for mine in self.modules:
            for theirs in other.modules:
                if inside(mine, theirs) or inside(theirs, mine):
                    return min(mine, theirs, key=len)
        return None


def inside(path: str, container: str) -> bool:
    """Whether module path `path` is `container` or lies inside it ("down_blocks.1.resnets.0" in "down_blocks.1")."""
    return path == container or path.startswith(container + ".")


@dataclass(frozen=True)
class Removed:
    """The module paths a set of removed units covers."""

    paths: frozenset[str]

    @classmethod
    def of(cls, units) -> "Removed":
        return cls(frozenset(path for unit in units for path in unit.modules))

    def covers(self, path: str) -> bool:
        """Whether module `path` is gone: it lies inside a removed module."""
        return any(inside(path, removed) for removed in self.paths)

    def state(self, unit: Unit) -> str:
        """'removed' when every module of `unit` is gone, 'partial' when a removed module lies strictly inside one
        of its modules (transformer layers of an attention), else 'kept'."""
        if all(self.covers(path) for path in unit.modules):
            return "removed"
        return "partial" if any(path.startswith(module + ".") for path in self.paths for module in unit.modules) \
            else "kept"


def outermost(units: list[Unit]) -> list[Unit]:
    """`units` without those another of them contains (removing the container removes them), order kept."""
    return [u for u in units if not any(other.contains(u) for other in units)]


def top_level(units: list[Unit]) -> list[Unit]:
    """The units that lie inside no other listed unit: their costs add up without double counting."""
    return [u for u in units if u.parent is None]


class UnitBuilder:
    """Collects units for one denoiser, filling costs from its modules and a per-module MAC table."""

    def __init__(self, unet: nn.Module, module_macs: dict[str, int], full_macs: dict[str, int]):
        self.unet, self.module_macs, self.full_macs = unet, module_macs, full_macs
        self.modules = dict(unet.named_modules())
        self.units: list[Unit] = []

    def params(self, paths) -> int:
        return sum(p.numel() for path in paths for p in self.modules[path].parameters())

    def macs(self, paths) -> int:
        prefixes = tuple(paths)
        return sum(m for name, m in self.module_macs.items()
                   if name in prefixes or name.startswith(tuple(p + "." for p in prefixes)))

    def add(self, name, kind, stage, paths, c_in, c_out, resolution, skip=0, parent=None) -> None:
        paths = tuple(paths)
        full = sum(self.full_macs.get(path, 0) for path in paths)
        self.units.append(Unit(name, kind, stage, paths, self.params(paths), self.macs(paths), full,
                               int(c_in), int(c_out), int(skip), int(resolution), parent))


def unit_table(module: nn.Module, add_units, granularities) -> dict[str, Unit]:
    """Every unit of `module` at every one of `granularities` by name, the first listing winning, without
    MACs: `add_units(builder, module, granularity)` is the family's lister."""
    table: dict[str, Unit] = {}
    for granularity in granularities:
        builder = UnitBuilder(module, {}, {})
        add_units(builder, module, granularity)
        for unit in builder.units:
            table.setdefault(unit.name, unit)
    return table
