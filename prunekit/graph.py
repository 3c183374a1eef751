"""Units: the removable pieces of a diffusers UNet2DConditionModel, with their names and costs.

Names follow DESIGN.md: `down{s}.res{i}`, `down{s}.attn{i}`, `down{s}.pair{i}`, `down{s}.downsample`,
`mid`, `mid.res{i}`, `mid.attn0`, `up{s}.…`, `stage{k}` (k-th innermost level), and `{attn}.t{k}` for the
transformer layers of an attention that holds more than one. Down and up stages are numbered in the order the
U-Net runs them (down0 and the last up stage are outermost); `stage{k}` from the innermost; `depth` says how
deep any of them lies.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from prunekit.errors import PrunekitError

GRANULARITIES = ("block", "pair", "stage")


@dataclass(frozen=True)
class Unit:
    """A removable piece of a U-Net: its modules and what they cost."""

    name: str
    kind: str  # res | attn | pair | transformer | downsample | upsample | mid | stage
    stage: str  # down{s} | mid | up{s} | stage{k}
    modules: tuple[str, ...]
    params: int
    macs: int  # paper MACs of one U-Net step at the config's sample size (convolutions and linears)
    full_macs: int  # MACs with the attention matmuls counted too
    channels_in: int
    channels_out: int
    skip_channels: int  # channels of the skip connection an up-path resnet concatenates to its input
    resolution: int  # side of the latent the unit works on
    parent: str | None = None  # the unit this one lies inside (transformer layers)

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


def _config(unet_or_config) -> dict:
    return unet_or_config if isinstance(unet_or_config, dict) else dict(unet_or_config.config)


def _meta_unet(unet_or_config) -> nn.Module:
    """The U-Net whose units are listed: a module as it is, or a config's architecture (a free student's config
    gives its teacher's: units are the teacher's)."""
    from prunekit.models import build_unet_meta

    if isinstance(unet_or_config, nn.Module):
        return unet_or_config
    return build_unet_meta({k: v for k, v in unet_or_config.items() if not k.startswith("_")})


class _Builder:
    """Collects units for one U-Net, filling costs from its modules and a per-module MAC table."""

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


def _resnet_channels(resnet, skip: int) -> tuple[int, int, int]:
    return resnet.in_channels - skip, resnet.out_channels, skip


def _skip_channels(unet) -> list[list[int]]:
    """For each up block, the skip channels each of its resnets concatenates (diffusers' order)."""
    skips = [unet.conv_in.out_channels]
    for block in unet.down_blocks:
        skips += [r.out_channels for r in block.resnets]
        if block.downsamplers is not None:
            skips.append(block.resnets[-1].out_channels)
    per_block = []
    for block in unet.up_blocks:
        n = len(block.resnets)
        per_block.append(list(reversed(skips[-n:])))
        skips = skips[:-n]
    return per_block


def _attention_depth(attention) -> int:
    return len(attention.transformer_blocks)


def _add_block_units(b: _Builder, prefix: str, stage: str, path: str, block, resolution: int, skips, pair: bool):
    attentions = getattr(block, "attentions", None) or []
    for i, resnet in enumerate(block.resnets):
        skip = skips[i] if skips else 0
        c_in, c_out, skip = _resnet_channels(resnet, skip)
        res_path = f"{path}.resnets.{i}"
        if pair and i < len(attentions):
            b.add(f"{prefix}.pair{i}", "pair", stage, [res_path, f"{path}.attentions.{i}"], c_in, c_out, resolution, skip)
            continue
        b.add(f"{prefix}.res{i}", "res", stage, [res_path], c_in, c_out, resolution, skip)
        if not pair and i < len(attentions):
            _add_attention(b, f"{prefix}.attn{i}", stage, f"{path}.attentions.{i}", attentions[i], c_out, resolution)


def _add_attention(b: _Builder, name: str, stage: str, path: str, attention, channels: int, resolution: int):
    b.add(name, "attn", stage, [path], channels, channels, resolution)
    depth = _attention_depth(attention)
    if depth > 1:
        for k in range(depth):
            b.add(f"{name}.t{k}", "transformer", stage, [f"{path}.transformer_blocks.{k}"],
                  channels, channels, resolution, parent=name)


def depth(stage: str, levels: int) -> int:
    """How many levels in from the U-Net's input and output stage `stage` lies, for a U-Net of `levels` down
    blocks: 0 for down0 and up{levels-1} (outermost), levels - 1 for the innermost down and up stages, levels
    for mid; stage{k} holds the level levels - 1 - k."""
    kind, number = stage.rstrip("0123456789"), stage[len(stage.rstrip("0123456789")):]
    if kind == "mid":
        return levels
    index = int(number)
    return {"down": index, "up": levels - 1 - index, "stage": levels - 1 - index}[kind]


def _stage_units(b: _Builder, unet, sizes) -> None:
    n = len(unet.down_blocks)
    for k in range(n - 1):  # the outermost level holds the U-Net's input and output: it cannot go
        down, up = n - 1 - k, k
        paths = [f"down_blocks.{down}", f"up_blocks.{up}"]
        if unet.down_blocks[down - 1].downsamplers is not None:
            paths.append(f"down_blocks.{down - 1}.downsamplers.0")
        c_in = unet.down_blocks[down].resnets[0].in_channels
        b.add(f"stage{k}", "stage", f"stage{k}", paths, c_in, c_in, sizes[down])


def _mid_units(b: _Builder, unet, resolution: int, granular: bool) -> None:
    mid = unet.mid_block
    if mid is None:
        return
    channels = mid.resnets[0].in_channels
    if not granular:
        b.add("mid", "mid", "mid", ["mid_block"], channels, channels, resolution)
        return
    attentions = getattr(mid, "attentions", None) or []
    for i, _ in enumerate(mid.resnets):
        b.add(f"mid.res{i}", "res", "mid", [f"mid_block.resnets.{i}"], channels, channels, resolution)
        if i < len(attentions):
            _add_attention(b, f"mid.attn{i}", "mid", f"mid_block.attentions.{i}", attentions[i], channels, resolution)


def enumerate_units(unet_or_config, granularity: str = "block", tokens: int = 77, costs: bool = True) -> list[Unit]:
    """The units of a U-Net (a module, on any device, or its config) at `granularity`, in forward order.

    MACs are those of one step at the config's sample size, batch 1, `tokens` text tokens; with
    `costs=False` they are left at 0 (names and modules only, without counting).
    """
    from prunekit.costs import full_macs, module_macs

    if granularity not in GRANULARITIES:
        raise PrunekitError(f"unknown granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}.")
    unet = _meta_unet(unet_or_config)
    config = _config(unet)
    tables = (module_macs(config, tokens), full_macs(config, tokens)) if costs else ({}, {})
    b = _Builder(unet, *tables)
    sample = int(unet.config.sample_size)
    sizes = [sample // 2 ** s for s in range(len(unet.down_blocks))]
    if granularity == "stage":
        _mid_units(b, unet, sizes[-1], granular=False)
        _stage_units(b, unet, sizes)
        return b.units
    pair = granularity == "pair"
    for s, block in enumerate(unet.down_blocks):
        _add_block_units(b, f"down{s}", f"down{s}", f"down_blocks.{s}", block, sizes[s], None, pair)
        if block.downsamplers is not None:
            c = block.resnets[-1].out_channels
            b.add(f"down{s}.downsample", "downsample", f"down{s}", [f"down_blocks.{s}.downsamplers.0"], c, c, sizes[s])
    _mid_units(b, unet, sizes[-1], granular=not pair)
    skips = _skip_channels(unet)
    for s, block in enumerate(unet.up_blocks):
        resolution = sizes[len(sizes) - 1 - s]
        _add_block_units(b, f"up{s}", f"up{s}", f"up_blocks.{s}", block, resolution, skips[s], pair)
        if block.upsamplers is not None:
            c = block.resnets[-1].out_channels
            b.add(f"up{s}.upsample", "upsample", f"up{s}", [f"up_blocks.{s}.upsamplers.0"], c, c, resolution)
    return b.units


def all_units(unet_or_config, tokens: int = 77, costs: bool = True) -> dict[str, Unit]:
    """Every unit of every granularity by name: what a plan may name."""
    unet = _meta_unet(unet_or_config)
    units: dict[str, Unit] = {}
    for granularity in GRANULARITIES:
        for unit in enumerate_units(unet, granularity, tokens, costs):
            units.setdefault(unit.name, unit)
    return units


def top_level(units: list[Unit]) -> list[Unit]:
    """The units that lie inside no other listed unit: their costs add up without double counting."""
    return [u for u in units if u.parent is None]
