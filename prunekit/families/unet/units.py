"""The U-Net's units: `down{s}.res{i}`, `down{s}.attn{i}`, `down{s}.pair{i}`, `down{s}.downsample`, `mid`,
`mid.res{i}`, `mid.attn0`, `up{s}.…`, `stage{k}` (the k-th innermost level), and `{attn}.t{k}` for the
transformer layers of an attention that holds more than one (docs/design.md has the table).

Down and up stages are numbered in the order the U-Net runs them (down0 and the last up stage are outermost),
`stage{k}` from the innermost; `depth` says how deep any of them lies.
"""
from __future__ import annotations

from prunekit.standins import (AttentionPassthrough, AveragePoolDownsample, ChannelInterpolation, NearestUpsample,
                               Passthrough)
from prunekit.units import inside

GRANULARITIES = ("block", "pair", "stage")


def add_units(b, unet, granularity: str) -> None:
    """Add the units of `unet` at `granularity` (block, pair or stage) to `b` (a prunekit.units.UnitBuilder),
    in forward order."""
    sample = int(unet.config.sample_size)
    sizes = [sample // 2 ** s for s in range(len(unet.down_blocks))]
    if granularity == "stage":
        _mid_units(b, unet, sizes[-1], granular=False)
        _stage_units(b, unet, sizes)
        return
    pair = granularity == "pair"
    for s, block in enumerate(unet.down_blocks):
        _add_block_units(b, f"down{s}", f"down{s}", f"down_blocks.{s}", block, sizes[s], None, pair)
        if block.downsamplers is not None:
            c = block.resnets[-1].out_channels
            b.add(f"down{s}.downsample", "downsample", f"down{s}", [f"down_blocks.{s}.downsamplers.0"], c, c,
                  sizes[s])
    _mid_units(b, unet, sizes[-1], granular=not pair)
    skips = _skip_channels(unet)
    for s, block in enumerate(unet.up_blocks):
        resolution = sizes[len(sizes) - 1 - s]
        _add_block_units(b, f"up{s}", f"up{s}", f"up_blocks.{s}", block, resolution, skips[s], pair)
        if block.upsamplers is not None:
            c = block.resnets[-1].out_channels
            b.add(f"up{s}.upsample", "upsample", f"up{s}", [f"up_blocks.{s}.upsamplers.0"], c, c, resolution)


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


def _add_block_units(b, prefix: str, stage: str, path: str, block, resolution: int, skips, pair: bool):
    attentions = getattr(block, "attentions", None) or []
    for i, resnet in enumerate(block.resnets):
        skip = skips[i] if skips else 0
        c_in, c_out, skip = _resnet_channels(resnet, skip)
        res_path = f"{path}.resnets.{i}"
        if pair and i < len(attentions):
            b.add(f"{prefix}.pair{i}", "pair", stage, [res_path, f"{path}.attentions.{i}"], c_in, c_out, resolution,
                  skip)
            continue
        b.add(f"{prefix}.res{i}", "res", stage, [res_path], c_in, c_out, resolution, skip)
        if not pair and i < len(attentions):
            _add_attention(b, f"{prefix}.attn{i}", stage, f"{path}.attentions.{i}", attentions[i], c_out, resolution)


def _add_attention(b, name: str, stage: str, path: str, attention, channels: int, resolution: int):
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


def _stage_units(b, unet, sizes) -> None:
    n = len(unet.down_blocks)
    for k in range(n - 1):  # the outermost level holds the U-Net's input and output: it cannot go
        down, up = n - 1 - k, k
        paths = [f"down_blocks.{down}", f"up_blocks.{up}"]
        if unet.down_blocks[down - 1].downsamplers is not None:
            paths.append(f"down_blocks.{down - 1}.downsamplers.0")
        c_in = unet.down_blocks[down].resnets[0].in_channels
        b.add(f"stage{k}", "stage", f"stage{k}", paths, c_in, c_in, sizes[down])


def _mid_units(b, unet, resolution: int, granular: bool) -> None:
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


def standins(unet, unit, table: dict) -> list:
    """(module path, stand-in) for every module of `unet` that ablating `unit` swaps; `table` is every unit by
    name (a stage's stand-ins are those of the blocks in it)."""
    if unit.kind != "stage":
        return [(path, _leaf_standin(unit, path)) for path in unit.modules]
    blocks = [path for path in unit.modules if ".downsamplers." not in path]
    swaps = [(path, Passthrough()) for path in unit.modules if path not in blocks]  # the entering downsampler
    for part in table.values():
        if part.kind in ("res", "attn", "downsample", "upsample") and any(
                inside(part.modules[0], block) for block in blocks):
            for path in part.modules:  # the up block's upsampler leaves the level: the identity too
                swaps.append((path, Passthrough() if part.kind == "upsample" else _leaf_standin(part, path)))
    return swaps


def _leaf_standin(unit, path: str):
    """The stand-in for one module of a res/attn/pair/transformer/sampler/mid unit."""
    if ".resnets." in path:
        return ChannelInterpolation(unit.channels_in, unit.channels_out)
    if ".downsamplers." in path:
        return AveragePoolDownsample()
    if ".upsamplers." in path:
        return NearestUpsample()
    if ".attentions." in path and ".transformer_blocks." not in path:
        return AttentionPassthrough()
    return Passthrough()  # a transformer layer or the whole mid block
