"""The U-Net presets. Each is defined by topology, so that it fits a kind of U-Net.

The BK-SDM presets fit SD-1/SD-2-like U-Nets (SD-v1.x, SD-v2.x, tiny-sd): at least 3 stages, every down
block a CrossAttnDownBlock2D except a plain innermost DownBlock2D, up blocks mirroring them (UpBlock2D then
CrossAttnUpBlock2D), a UNetMidBlock2DCrossAttn mid block and 2 layers per block.

- bk-base: every down stage keeps only pair 0, every up stage keeps pairs 0 and 2 (pair 1 goes);
- bk-small: bk-base without the mid block;
- bk-tiny: bk-small without the innermost stage (`stage0`: down_blocks[-1], the downsampler feeding it and
  up_blocks[0]); student up_blocks.s then takes teacher up_blocks.s+1.

The SDXL presets fit SDXL-like U-Nets (sdxl-base, tiny-sdxl): a plain outermost DownBlock2D then
CrossAttnDownBlock2Ds, up blocks mirroring them, a UNetMidBlock2DCrossAttn mid block, 2 layers per block and
transformer layers in the innermost stage. They follow the kind of cut each published student made
(KOALA, arXiv 2312.04005; Segmind's SSD-1B, arXiv 2401.02677), as read off the students' configs, with each
depth a share of the teacher's so that they scale to any such U-Net:

- koala-like: every down stage keeps only layer 0 and every up stage loses layer 1 (as bk-base), and the
  innermost stage's attentions and the mid block keep 60% of their transformer layers (6 of SDXL's 10);
- ssd-like: every resnet stays but the mid block keeps one (no mid attention); the innermost down stage's
  attentions keep 40% of their layers, as do the innermost up stage's but its last; the next up stage's
  attentions but its first keep half.

An attention keeps its first layers.
"""
from __future__ import annotations

PRESETS = ("bk-base", "bk-small", "bk-tiny", "koala-like", "ssd-like")
_SDXL_PRESETS = ("koala-like", "ssd-like")


def _layers(config: dict) -> list:
    layers = config.get("layers_per_block", 2)
    return [layers] * len(config["down_block_types"]) if isinstance(layers, int) else list(layers)


def _family_problem(config: dict, family: str) -> str | None:
    """Why `family`'s presets ("sd" or "sdxl") cannot apply to the U-Net of `config` (None when they can)."""
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    n = len(down)
    if n < 3:
        return f"{n} stages, not at least 3"
    if family == "sd":
        want_down = ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"]
        want_up = ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1)
    else:
        want_down = ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1)
        want_up = ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"]
    where = "a plain innermost" if family == "sd" else "a plain outermost"
    if down != want_down or up != want_up:
        return f"blocks {down} / {up}, not cross-attention blocks with {where} DownBlock2D / UpBlock2D"
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        return f"mid block {config.get('mid_block_type')}, not UNetMidBlock2DCrossAttn"
    if _layers(config) != [2] * n:
        return f"layers_per_block {config.get('layers_per_block')}, not 2"
    if family == "sdxl" and _stage_depth(config, -1) < 2:
        return "one transformer layer per attention of the innermost stage, not several"
    return None


def _stage_depth(config: dict, d: int) -> int:
    """Transformer layers per attention of down stage `d` (the fewest, where its layers differ)."""
    depth = config.get("transformer_layers_per_block", 1)
    depth = depth[d] if isinstance(depth, (list, tuple)) else depth
    return depth if isinstance(depth, int) else min(depth)


def presets(config: dict) -> dict[str, list[str]]:
    """The U-Net presets that fit the U-Net of `config`, each with the units it removes."""
    return {name: _unet_remove(name, config) for name in PRESETS
            if _family_problem(config, _family(name)) is None}


def _family(name: str) -> str:
    return "sdxl" if name in _SDXL_PRESETS else "sd"


def _thin(attentions: list[str], depth: int, share: float) -> list[str]:
    """The transformer layers `attentions` (each `depth` deep) lose when they keep `share` of them (at least one)."""
    keep = max(1, round(depth * share))
    return [f"{name}.t{k}" for name in attentions for k in range(keep, depth)]


def _sdxl_remove(name: str, config: dict) -> list[str]:
    n, depth = len(config["down_block_types"]), _stage_depth(config, -1)
    inner_down = f"down{n - 1}"
    if name == "koala-like":
        return (["down0.res1"] + [f"down{d}.pair1" for d in range(1, n)] + _thin([f"{inner_down}.attn0", "mid.attn0"],
                depth, 0.6) + [f"up{s}.pair1" for s in range(n - 1)] + _thin(["up0.attn0", "up0.attn2"], depth, 0.6)
                + [f"up{n - 1}.res1"])
    return (_thin([f"{inner_down}.attn0", f"{inner_down}.attn1"], depth, 0.4) + ["mid.attn0", "mid.res1"]
            + _thin(["up0.attn0", "up0.attn1"], depth, 0.4)
            + _thin(["up1.attn1", "up1.attn2"], _stage_depth(config, -2), 0.5))


def preset_problem(name: str, config: dict) -> str:
    """Why U-Net preset `name` does not fit the U-Net of `config` (a clause: "needs ... but this one has ...")."""
    if name not in PRESETS:
        return "is not a U-Net preset"
    family = _family(name)
    kind = "an SDXL-like" if family == "sdxl" else "an SD-1/SD-2-like"
    return f"needs {kind} U-Net but this one has {_family_problem(config, family)}"


def _unet_remove(name: str, teacher_config: dict) -> list[str]:
    """The units U-Net preset `name` removes from a U-Net its rule fits."""
    if _family(name) == "sdxl":
        return _sdxl_remove(name, teacher_config)
    n = len(teacher_config["down_block_types"])
    tiny = name == "bk-tiny"
    down = [f"down{d}.pair1" for d in range(n - 1)] + ([] if tiny else [f"down{n - 1}.res1"])
    up = ([] if tiny else ["up0.res1"]) + [f"up{s}.pair1" for s in range(1, n)]
    mid = [] if name == "bk-base" else ["mid"]
    return down + mid + up + (["stage0"] if tiny else [])
