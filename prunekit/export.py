"""Export: a distilled student as one safetensors checkpoint in the original Stable Diffusion (LDM) key layout.

ComfyUI and AUTOMATIC1111 load such single files: the U-Net under `model.diffusion_model.`, the VAE under
`first_stage_model.` and, for SD-1.x's CLIP text encoder, the text encoder under `cond_stage_model.transformer.`.
The U-Net's keys follow its diffusers config, so a pruned student keeps the layout of its own stages:
`input_blocks` count each down stage's layers plus its downsampler, `output_blocks` each up stage's layers,
`middle_block` is absent when the mid block went. diffusers' single-file converters
(diffusers.loaders.single_file_utils) read the file back; tests/test_export.py checks that every tensor comes
back unchanged. An SDXL student's U-Net exports the same way (its added embedding as `label_emb`); its two text
encoders have no layout here, so only `--unet-only` is offered for it. A free plan's student keeps prunekit's
stand-ins, which no other tool knows: it is refused.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from prunekit.errors import PrunekitError

if TYPE_CHECKING:  # the command line imports FORMATS without torch
    import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
FORMATS = ("single-file",)

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def unet_modules(unet) -> dict[str, tuple[str, tuple]]:
    """Each U-Net module that holds tensors: its LDM name and the renames of its inner tensors."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    layers = dict(DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"])
    if unet.config.addition_embed_type == "text_time":  # SDXL's pooled-text and time-id embedding: label_emb
        layers |= DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]
    names = {key.rsplit(".", 1)[0]: (ldm.rsplit(".", 1)[0], ()) for key, ldm in layers.items()}
    index = 1
    for d, block in enumerate(unet.down_blocks):
        for j in range(len(block.resnets)):
            names[f"down_blocks.{d}.resnets.{j}"] = (f"input_blocks.{index}.0", _RESNET)
            if getattr(block, "attentions", None):
                names[f"down_blocks.{d}.attentions.{j}"] = (f"input_blocks.{index}.1", ())
            index += 1
        if block.downsamplers:
            names[f"down_blocks.{d}.downsamplers.0.conv"] = (f"input_blocks.{index}.0.op", ())
            index += 1
    if unet.mid_block is not None:
        for j in range(len(unet.mid_block.resnets)):
            names[f"mid_block.resnets.{j}"] = (f"middle_block.{2 * j}", _RESNET)
        for j in range(len(getattr(unet.mid_block, "attentions", []) or [])):
            names[f"mid_block.attentions.{j}"] = (f"middle_block.{2 * j + 1}", ())
    index = 0
    for u, block in enumerate(unet.up_blocks):
        attentions = bool(getattr(block, "attentions", None))
        for j in range(len(block.resnets)):
            names[f"up_blocks.{u}.resnets.{j}"] = (f"output_blocks.{index}.0", _RESNET)
            if attentions:
                names[f"up_blocks.{u}.attentions.{j}"] = (f"output_blocks.{index}.1", ())
            index += 1
        if block.upsamplers:
            names[f"up_blocks.{u}.upsamplers.0.conv"] = (f"output_blocks.{index - 1}.{1 + attentions}.conv", ())
    return names


def vae_modules(vae) -> dict[str, tuple[str, tuple]]:
    """Each VAE module that holds tensors: its LDM name and the renames of its inner tensors."""
    names = {name: (name, ()) for name in ("quant_conv", "post_quant_conv")}
    for side in ("encoder", "decoder"):
        coder = getattr(vae, side)
        for name in ("conv_in", "conv_out"):
            names[f"{side}.{name}"] = (f"{side}.{name}", ())
        names[f"{side}.conv_norm_out"] = (f"{side}.norm_out", ())
        for j in range(len(coder.mid_block.resnets)):
            names[f"{side}.mid_block.resnets.{j}"] = (f"{side}.mid.block_{j + 1}", (("conv_shortcut", "nin_shortcut"),))
        names[f"{side}.mid_block.attentions.0"] = (f"{side}.mid.attn_1", _VAE_ATTENTION)
        blocks = coder.down_blocks if side == "encoder" else coder.up_blocks
        for i, block in enumerate(blocks):
            level = f"{side}.down.{i}" if side == "encoder" else f"{side}.up.{len(blocks) - 1 - i}"
            path = f"{side}.{'down' if side == 'encoder' else 'up'}_blocks.{i}"
            for j in range(len(block.resnets)):
                names[f"{path}.resnets.{j}"] = (f"{level}.block.{j}", (("conv_shortcut", "nin_shortcut"),))
            for sampler, ldm in (("downsamplers", "downsample"), ("upsamplers", "upsample")):
                if getattr(block, sampler, None):
                    names[f"{path}.{sampler}.0"] = (f"{level}.{ldm}", ())
    return names


def renamed(state: dict[str, torch.Tensor], modules: dict[str, tuple[str, tuple]], prefix: str,
            attention_to_conv: bool = False) -> dict[str, torch.Tensor]:
    """`state` (a diffusers state dict) under LDM names: each tensor's longest module in `modules` renamed;
    a tensor no module claims is an error (it would be lost)."""
    out = {}
    for key, tensor in state.items():
        owner = max((name for name in modules if key.startswith(name + ".")), key=len, default=None)
        if owner is None:
            raise PrunekitError(f"the exporter has no LDM name for {key}: this model's layout is not SD's.")
        ldm, inner = modules[owner]
        rest = key[len(owner) + 1:]
        for old, new in inner:
            if rest.startswith(old + "."):
                rest = new + rest[len(old):]
                break
        if attention_to_conv and inner is _VAE_ATTENTION and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's VAE attention projects with 1x1 convolutions
        out[prefix + ldm + "." + rest] = tensor.contiguous()
    return out


def _student(source: Path):
    """The student pipeline of `source` (a distill output folder or its student/) with its final U-Net (the EMA
    weights where they were kept)."""
    from prunekit.students import MANIFEST, load_student, load_student_unet

    folder = source / "student" if (source / "student" / MANIFEST).is_file() else source
    if not (folder / MANIFEST).is_file():
        raise PrunekitError(f"{source} is not a student saved by `prunekit distill` (no {MANIFEST} there or in "
                            f"{source / 'student'}): pass the distill output folder or its student/.")
    if json.loads((folder / MANIFEST).read_text())["kind"] == "free":
        raise PrunekitError(f"{folder} is a free plan's student, whose stand-ins only prunekit knows: a single "
                            "file needs a plan of kind diffusers (prunekit plan --space diffusers).")
    pipe = load_student(folder)
    if "unet" not in pipe.components:
        raise PrunekitError(f"{folder} holds a {type(pipe.transformer).__name__} student; prunekit writes U-Net "
                            "checkpoints in the original SD layouts only: the student folder is a plain diffusers "
                            "pipeline, load it with from_pretrained.")
    ema = folder.parent / "student_ema"
    if folder.name == "student" and (ema / MANIFEST).is_file():
        pipe.unet = load_student_unet(ema)
    return pipe


def single_file(pipe, unet_only: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of `pipe` (an SD pipeline) in the LDM layout; the U-Net's alone when `unet_only`."""
    tensors = renamed(pipe.unet.state_dict(), unet_modules(pipe.unet), UNET_PREFIX)
    if unet_only:
        return tensors
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise PrunekitError("an SDXL checkpoint holds two text encoders in a layout prunekit does not write: pass "
                            "--unet-only for the U-Net alone.")
    text = pipe.text_encoder
    if type(text).__name__ != "CLIPTextModel" or text.config.hidden_act != "quick_gelu":
        raise PrunekitError("the text encoder is not SD-1.x's CLIP, whose layout a single file needs: pass "
                            "--unet-only for the U-Net alone.")
    tensors.update(renamed(pipe.vae.state_dict(), vae_modules(pipe.vae), VAE_PREFIX, attention_to_conv=True))
    tensors.update({TEXT_PREFIX + key: value.contiguous() for key, value in text.state_dict().items()})
    return tensors


def export(student: str | Path, out: str | Path, format: str = "single-file", unet_only: bool = False) -> Path:
    """Write the student saved by `prunekit distill` at `student` (its output folder, or its student/) to `out`
    as one safetensors file in the original SD layout (U-Net, VAE and text encoder; the U-Net alone with
    `unet_only`). Returns the path written."""
    from safetensors.torch import save_file

    from prunekit.options import check_choice

    check_choice("format", format, FORMATS)
    out = Path(out)
    if out.suffix != ".safetensors":
        raise PrunekitError(f"{out} should end in .safetensors, the format ComfyUI and A1111 load.")
    tensors = single_file(_student(Path(student)), unet_only)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    save_file(tensors, str(partial), metadata={"format": "pt", "prunekit": "student"})
    umask = os.umask(0)
    os.umask(umask)
    partial.chmod(0o666 & ~umask)  # safetensors writes 0600; a checkpoint is shared like any other file
    partial.replace(out)  # a finished file or none
    return out
