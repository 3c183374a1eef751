"""The U-Net's plain diffusers student: the `UNet2DConditionModel` config and weight map that removing units leaves.

What a diffusers config can express:
- a down block keeps k >= 1 resnets, each with its attention or all attentions of the block gone;
  its mirror up block then keeps k + 1 (diffusers feeds each up resnet one skip connection);
- a kept attention of a down or up block may lose transformer layers (`down2.attn0.t3`: SDXL's depth-10
  attentions), at least one staying: per-layer `transformer_layers_per_block` and
  `reverse_transformer_layers_per_block`. diffusers gives the mid block the depth of the innermost down
  stage's first attention, so that one keeps the mid block's depth unless the mid block goes;
- the whole mid block may go; or its attention and one resnet (`mid.attn0` and `mid.res1`: a one-resnet
  `UNetMidBlock2D`, as Segmind's SSD-1B has); or transformer layers of its attention, where the innermost
  down stage's first attention keeps as many (diffusers ties the two depths);
- whole stages may go from the inside out (`stage0`, then `stage1`, ...), down and up together;
- down/up samplers stay.

Anything else raises a PrunekitError, as does a removal whose kept modules no longer fit their new place
(every mapped tensor must keep its shape). The weight map names, for every student module that holds
tensors, the one teacher module its tensors come from: "up_blocks.1.resnets.1" <- "up_blocks.1.resnets.2".
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.families import canonical_config
from prunekit.units import Removed
from prunekit.weightmap import check_map

_PLAIN = {"CrossAttnDownBlock2D": "DownBlock2D", "CrossAttnUpBlock2D": "UpBlock2D"}
# Config entries holding one value per stage, in down order and in up order.
_DOWN_KEYS = ("block_out_channels", "down_block_types", "attention_head_dim", "num_attention_heads",
              "cross_attention_dim", "transformer_layers_per_block", "only_cross_attention")
_UP_KEYS = ("up_block_types", "reverse_transformer_layers_per_block")


@dataclass
class _Kept:
    """What the student keeps of one teacher block: teacher indices of its resnets and attentions."""

    path: str  # teacher module path, e.g. "up_blocks.1"
    resnets: list[int]
    attentions: list[int]
    had_attentions: bool
    layers: list[list[int]] = field(default_factory=list)  # per kept attention: the transformer layers it keeps
    thinned: bool = False  # a kept attention lost transformer layers


def _refuse_partial(removed: Removed) -> None:
    for path in sorted(removed.paths):
        if path.startswith("up_blocks") and path.endswith("upsamplers.0"):
            raise PrunekitError(f"removing {path} alone has no diffusers U-Net: keep the upsamplers.")


@dataclass
class _Mid:
    """What the student keeps of the teacher's mid block: all of it, none, one resnet, or fewer transformer
    layers in its attention."""

    kind: str  # "whole", "none", "resnet" (a one-resnet UNetMidBlock2D) or "thinned"
    resnet: int = 0  # the teacher resnet a one-resnet mid block keeps
    layers: list[int] = field(default_factory=list)  # the transformer layers its attention keeps (whole, thinned)


def _kept_mid(teacher: nn.Module, removed: Removed) -> _Mid:
    mid = teacher.mid_block
    if mid is None or removed.covers("mid_block"):
        return _Mid("none")
    parts = [path for path in removed.paths if path.startswith("mid_block.")]
    attentions = getattr(mid, "attentions", None) or []
    if not parts:
        return _Mid("whole", layers=list(range(_depth(attentions[0]))) if attentions else [])
    resnets = [i for i in range(len(mid.resnets)) if not removed.covers(f"mid_block.resnets.{i}")]
    if len(attentions) == 1 and removed.covers("mid_block.attentions.0") and len(resnets) == 1:
        return _Mid("resnet", resnet=resnets[0])
    if len(attentions) == 1 and len(resnets) == len(mid.resnets) and not removed.covers("mid_block.attentions.0"):
        layers = [k for k in range(_depth(attentions[0]))
                  if not removed.covers(f"mid_block.attentions.0.transformer_blocks.{k}")]
        if layers:
            return _Mid("thinned", layers=layers)
    raise PrunekitError(f"removing {', '.join(sorted(parts))} from the mid block has no diffusers U-Net: remove the "
                        "whole `mid`, its attention with one resnet (mid.attn0 and mid.res1), some of its "
                        "transformer layers, or nothing of it.")


def _stages_removed(teacher: nn.Module, removed: Removed) -> int:
    """How many innermost stages go; refuses stages that are not innermost or not removed both ways."""
    n = len(teacher.down_blocks)
    down = [d for d in range(n) if removed.covers(f"down_blocks.{d}")]
    up = [s for s in range(n) if removed.covers(f"up_blocks.{s}")]
    m = len(down)
    if down != list(range(n - m, n)) or up != list(range(m)):
        raise PrunekitError("only whole stages from the inside out (stage0, then stage1, ...) can go from a "
                            "diffusers U-Net: remove stage units, innermost first.")
    if m >= n:
        raise PrunekitError("a U-Net needs at least one stage: keep the outermost one.")
    for d in range(n - m - 1):
        if removed.covers(f"down_blocks.{d}.downsamplers.0"):
            raise PrunekitError(f"removing down{d}.downsample alone has no diffusers U-Net: "
                                "remove its whole stage instead.")
    return m


def _kept(block: nn.Module, path: str, removed: Removed) -> _Kept:
    attentions = getattr(block, "attentions", None) or []
    resnets = [i for i in range(len(block.resnets)) if not removed.covers(f"{path}.resnets.{i}")]
    attns = [i for i in range(len(attentions)) if not removed.covers(f"{path}.attentions.{i}")]
    layers, thinned = [], False
    for i in attns:
        depth = len(attentions[i].transformer_blocks)
        layers.append([k for k in range(depth) if not removed.covers(f"{path}.attentions.{i}.transformer_blocks.{k}")])
        thinned |= len(layers[-1]) < depth
        if not layers[-1]:
            raise PrunekitError(f"every transformer layer of {path}.attentions.{i} would go: remove its pair, or "
                                "keep one layer.")
    kept = _Kept(path, resnets, attns, bool(attentions), layers, thinned)
    if not resnets:
        raise PrunekitError(f"every resnet of {path} would go: remove its whole stage instead.")
    if attns and attns != resnets:
        raise PrunekitError(f"{path} keeps attentions {attns} with resnets {resnets}: remove each attention with its "
                            "resnet (pairs), or all attentions of the block.")
    return kept


def _per_stage(value, keep: list[int], layers: list[list[int]] | None = None):
    """`value` restricted to the kept stages when it is a per-stage list (per-layer lists restricted too)."""
    if not isinstance(value, (list, tuple)):
        return value
    picked = [value[i] for i in keep]
    if layers is not None:
        picked = [[v[j] for j in kept] if isinstance(v, (list, tuple)) else v for v, kept in zip(picked, layers)]
    return picked


def _student_types(types: list[str], blocks: list[_Kept]) -> list[str]:
    out = []
    for kind, kept in zip(types, blocks):
        if kept.had_attentions and not kept.attentions:
            if kind not in _PLAIN:
                raise PrunekitError(f"{kind} has no attention-free diffusers twin: keep the attentions of {kept.path}.")
            kind = _PLAIN[kind]
        out.append(kind)
    return out


def _config_and_blocks(teacher: nn.Module, removed: Removed):
    _refuse_partial(removed)
    n = len(teacher.down_blocks)
    m = _stages_removed(teacher, removed)
    keep_down, keep_up = list(range(n - m)), list(range(m, n))
    down = [_kept(teacher.down_blocks[d], f"down_blocks.{d}", removed) for d in keep_down]
    up = [_kept(teacher.up_blocks[s], f"up_blocks.{s}", removed) for s in keep_up]
    for j, kept in enumerate(up):
        mirror = down[len(down) - 1 - j]
        if len(kept.resnets) != len(mirror.resnets) + 1:
            raise PrunekitError(f"{kept.path} would keep {len(kept.resnets)} resnets but needs one more than "
                                f"{mirror.path}'s {len(mirror.resnets)} (one per skip connection): remove as many "
                                "pairs from each up stage as from its mirror down stage.")
    config = canonical_config(dict(teacher.config))
    down_layers, up_layers = [k.resnets for k in down], [k.resnets for k in up]
    for key in _DOWN_KEYS:
        config[key] = _per_stage(config[key], keep_down, down_layers if key == "transformer_layers_per_block" else None)
    for key in _UP_KEYS:
        config[key] = _per_stage(config[key], keep_up, up_layers)
    config["down_block_types"] = _student_types(config["down_block_types"], down)
    config["up_block_types"] = _student_types(config["up_block_types"], up)
    layers = [len(k.resnets) for k in down]
    config["layers_per_block"] = layers[0] if len(set(layers)) == 1 else layers
    mid = _kept_mid(teacher, removed)
    if mid.kind != "whole" and mid.kind != "thinned":
        config["mid_block_type"] = None if mid.kind == "none" else "UNetMidBlock2D"
    if any(kept.thinned for kept in down + up):
        stages = config["transformer_layers_per_block"]
        stages = [stages] * len(down) if isinstance(stages, int) else stages
        reverse = config.get("reverse_transformer_layers_per_block") or list(reversed(stages))
        config["transformer_layers_per_block"] = _depths(down, stages)
        config["reverse_transformer_layers_per_block"] = _depths(up, reverse)
    return config, down, up, mid


def _depths(blocks: list[_Kept], before) -> list:
    """Per-layer transformer depths of the kept `blocks` (diffusers' per-layer form); a block without
    attentions keeps its entry of `before`, which diffusers ignores."""
    return [[len(layers) for layers in kept.layers] if kept.attentions else entry
            for kept, entry in zip(blocks, before)]


def _depth(attention) -> int:
    return len(attention.transformer_blocks)


def _check_depths(student: nn.Module, down: list[_Kept], up: list[_Kept], mid: _Mid) -> None:
    """Each student attention has the depth the plan keeps, the mid block's included: diffusers sets the mid
    block's depth from the innermost down stage's first attention, so a plan that thins one of the two alone
    has no diffusers U-Net."""
    for side, blocks in (("down", down), ("up", up)):
        for j, kept in enumerate(blocks):
            for r, layers in enumerate(kept.layers):
                if _depth(getattr(student, f"{side}_blocks")[j].attentions[r]) != len(layers):
                    raise PrunekitError(f"no diffusers config keeps {len(layers)} transformer layers in "
                                        f"{kept.path}.attentions.{kept.attentions[r]}: remove other units.")
    if mid.kind in ("whole", "thinned") and getattr(student.mid_block, "attentions", None):
        got = _depth(student.mid_block.attentions[0])
        want = len(mid.layers)
        if want != got:
            raise PrunekitError(f"diffusers gives the mid block the depth of {down[-1].path}.attentions.0, which "
                                f"would be {got}, not the {want} the plan keeps in the mid block: thin the two "
                                "alike, or remove the mid block.")


def _block_map(side: str, j: int, kept: _Kept, student_block: nn.Module) -> dict[str, str]:
    prefix = f"{side}_blocks.{j}"
    pairs = {f"{prefix}.resnets.{r}": f"{kept.path}.resnets.{t}" for r, t in enumerate(kept.resnets)}
    if getattr(student_block, "attentions", None):
        for r, (t, layers) in enumerate(zip(kept.attentions, kept.layers)):
            pairs[f"{prefix}.attentions.{r}"] = f"{kept.path}.attentions.{t}"
            if layers != list(range(len(layers))):  # layers went: each kept one maps to its own teacher layer
                pairs.update({f"{prefix}.attentions.{r}.transformer_blocks.{q}":
                              f"{kept.path}.attentions.{t}.transformer_blocks.{k}" for q, k in enumerate(layers)})
    for sampler in ("downsamplers", "upsamplers"):
        if getattr(student_block, sampler, None) is not None:
            pairs[f"{prefix}.{sampler}.0"] = f"{kept.path}.{sampler}.0"
    return pairs


def _mid_map(mid: _Mid) -> dict[str, str]:
    if mid.kind == "resnet":
        return {"mid_block.resnets.0": f"mid_block.resnets.{mid.resnet}"}
    pairs = {"mid_block": "mid_block"}
    if mid.kind == "thinned":
        pairs.update({f"mid_block.attentions.0.transformer_blocks.{q}": f"mid_block.attentions.0.transformer_blocks.{k}"
                      for q, k in enumerate(mid.layers)})
    return pairs


def _weight_map(student: nn.Module, down: list[_Kept], up: list[_Kept], mid: _Mid) -> dict[str, str]:
    weight_map = {}
    for name, module in student.named_children():
        if name == "down_blocks":
            for j, kept in enumerate(down):
                weight_map.update(_block_map("down", j, kept, module[j]))
        elif name == "up_blocks":
            for j, kept in enumerate(up):
                weight_map.update(_block_map("up", j, kept, module[j]))
        elif name == "mid_block":
            weight_map.update(_mid_map(mid))
        elif module.state_dict():
            weight_map[name] = name  # conv_in, time_embedding, conv_out, ...: same place
    return weight_map


def plain_student(teacher: nn.Module, removed: Removed) -> tuple[dict, dict[str, str]]:
    """The diffusers config of the student left by removing `removed` from `teacher` (a U-Net on any device),
    and its weight map; a PrunekitError where the removal has no diffusers equivalent."""
    config, down, up, mid = _config_and_blocks(teacher, removed)
    with torch.device("meta"):
        student = UNet2DConditionModel.from_config(config)
    _check_depths(student, down, up, mid)
    weight_map = _weight_map(student, down, up, mid)
    report, _ = check_map(student, teacher, weight_map)
    if not report.ok:
        raise PrunekitError(f"this removal leaves modules that no longer fit a diffusers U-Net "
                            f"({report.problems()}): remove other units.")
    return config, weight_map
