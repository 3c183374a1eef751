"""`prunekit export`: a student as one single-file checkpoint, read back by diffusers' own converters."""
from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from diffusers.loaders import single_file_utils
from safetensors.torch import load_file

from prunekit.cli import main
from prunekit.errors import PrunekitError
from prunekit.export import TEXT_PREFIX, UNET_PREFIX, VAE_PREFIX, export
from prunekit.models import resolve_model
from prunekit.plan import make_preset
from prunekit.students import MANIFEST, pipeline_with, write_manifest
from prunekit.surgery import build_student


@pytest.fixture(scope="module")
def tiny():
    model = resolve_model("tiny-sd")
    return model, model.pipeline()


def saved_student(tiny, folder, preset: str, ema_seed: int | None = None):
    """A student of `preset` saved as distill saves one (folder/student, and folder/student_ema when
    `ema_seed` is given: the same U-Net with other weights)."""
    model, teacher = tiny
    plan = make_preset(preset, model.name, model.config)
    unet, _ = build_student(teacher.unet, plan)
    pipe = pipeline_with(teacher, unet)
    pipe.save_pretrained(folder / "student")
    params = sum(p.numel() for p in unet.parameters())
    write_manifest(folder / "student", plan, params)
    if ema_seed is not None:
        torch.manual_seed(ema_seed)
        ema = type(unet).from_config(unet.config)
        ema.save_pretrained(folder / "student_ema")
        write_manifest(folder / "student_ema", plan, params)
        return pipe, ema
    return pipe, unet


def same(converted: dict, state: dict) -> list[str]:
    """The keys where `converted` differs from `state` (missing, extra, another shape or value)."""
    keys = set(converted) | set(state)
    return sorted(k for k in keys if k not in converted or k not in state
                  or converted[k].shape != state[k].shape or not torch.equal(converted[k], state[k]))


@pytest.mark.parametrize("preset", ["bk-base", "bk-small", "bk-tiny"])
def test_single_file_round_trips_through_diffusers_converters(tiny, tmp_path, preset):
    pipe, final = saved_student(tiny, tmp_path / "distill", preset, ema_seed=1)
    out = export(tmp_path / "distill", tmp_path / "student.safetensors")
    checkpoint = load_file(out)
    assert {key.split(".")[0] for key in checkpoint} == {"model", "first_stage_model", "cond_stage_model"}
    assert all(key.startswith((UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)) for key in checkpoint)
    if final.mid_block is None:
        assert not any(".middle_block." in key for key in checkpoint)
    else:
        assert f"{UNET_PREFIX}middle_block.2.out_layers.3.weight" in checkpoint  # the mid block's second resnet
    unet = single_file_utils.convert_ldm_unet_checkpoint(checkpoint, dict(final.config))
    assert same(unet, final.state_dict()) == []  # the EMA weights, where distill kept them
    vae = single_file_utils.convert_ldm_vae_checkpoint(checkpoint, dict(pipe.vae.config))
    assert same(vae, pipe.vae.state_dict()) == []
    text = single_file_utils.convert_ldm_clip_checkpoint(checkpoint)
    assert same(text, pipe.text_encoder.state_dict()) == []


def test_unet_only_and_the_cli(tiny, tmp_path, capsys):
    pipe, unet = saved_student(tiny, tmp_path / "distill", "bk-small")
    out = tmp_path / "unet.safetensors"
    assert main(["export", str(tmp_path / "distill" / "student"), "-o", str(out), "--unet-only"]) == 0
    assert str(out) in capsys.readouterr().out
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # as any file the user writes, not 0600
    checkpoint = load_file(out)
    assert all(key.startswith(UNET_PREFIX) for key in checkpoint)
    assert same(single_file_utils.convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)), unet.state_dict()) == []


def test_what_cannot_be_exported_is_refused_in_one_sentence(tiny, tmp_path, capsys):
    with pytest.raises(PrunekitError, match="not a student saved by `prunekit distill`"):
        export(tmp_path, tmp_path / "x.safetensors")
    saved_student(tiny, tmp_path / "distill", "bk-small")
    with pytest.raises(PrunekitError, match="should end in .safetensors"):
        export(tmp_path / "distill", tmp_path / "x.ckpt")
    manifest = tmp_path / "distill" / "student" / MANIFEST
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "kind": "free"}))
    assert main(["export", str(tmp_path / "distill"), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "free plan's student" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("preset", ["koala-like", "ssd-like"])
def test_an_sdxl_students_unet_round_trips_and_its_whole_file_is_refused(sdxl_dir, tmp_path, preset):
    """SDXL's added embedding goes to label_emb; two text encoders have no layout here, so only --unet-only."""
    model = resolve_model(sdxl_dir)
    _, unet = saved_student((model, model.pipeline()), tmp_path / "distill", preset)
    checkpoint = load_file(export(tmp_path / "distill", tmp_path / "unet.safetensors", unet_only=True))
    assert f"{UNET_PREFIX}label_emb.0.0.weight" in checkpoint
    assert same(single_file_utils.convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)), unet.state_dict()) == []
    with pytest.raises(PrunekitError, match="two text encoders"):
        export(tmp_path / "distill", tmp_path / "all.safetensors")
