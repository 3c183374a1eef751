"""Surgery: student configs (BK-SDM's, on the real SD configs on the meta device) and weight copying
(on small random-initialised U-Nets): bit-identical tensors, forward passes, plain diffusers save/reload."""
import copy

import pytest
import torch
from diffusers import UNet2DConditionModel

import stand_ins
from prunekit.errors import PrunekitError
from prunekit.models import build_meta, unet_config
from prunekit.plan import make_preset, preset_remove
from prunekit.surgery import build_student, derive

TINY = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [32, 64, 64, 64], "norm_num_groups": 8, "cross_attention_dim": 32, "attention_head_dim": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
PRESETS = ("bk-base", "bk-small", "bk-tiny")


def params(config: dict) -> int:
    return sum(p.numel() for p in build_meta(config).parameters())


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(TINY).eval()


def inputs(batch: int = 2):
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 4, 16, 16, generator=generator), torch.tensor([7, 500]),
            torch.randn(batch, 5, 32, generator=generator))


@pytest.mark.parametrize("model, expected", [
    ("sd-v1-4", (579_384_964, 482_346_884, 323_384_964)),
    ("sd-v2-1-base", (583_480_964, 485_787_524, 326_825_604)),
])
def test_preset_students_have_bk_sdm_params(model, expected):
    teacher_config = unet_config(model)
    for preset, count in zip(PRESETS, expected):
        config, _ = derive(teacher_config, preset_remove(preset, teacher_config), "diffusers")
        assert params(config) == count, preset


def test_students_match_bk_sdm_published_configs():
    sd = unet_config("sd-v1-4")
    base, small, tiny = (derive(sd, preset_remove(p, sd), "diffusers")[0] for p in PRESETS)
    for config in (base, small, tiny):
        assert config["layers_per_block"] == 1
    assert base["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    assert base["block_out_channels"] == small["block_out_channels"] == [320, 640, 1280, 1280]
    assert small["mid_block_type"] is None and tiny["mid_block_type"] is None
    assert tiny["block_out_channels"] == [320, 640, 1280]
    assert tiny["down_block_types"] == ["CrossAttnDownBlock2D"] * 3
    assert tiny["up_block_types"] == ["CrossAttnUpBlock2D"] * 3
    unet = build_meta(base)
    assert [len(b.resnets) for b in unet.down_blocks] == [1, 1, 1, 1]
    assert [len(b.resnets) for b in unet.up_blocks] == [2, 2, 2, 2]


def test_weight_maps_follow_the_presets():
    sd = unet_config("sd-v1-4")
    _, base = derive(sd, preset_remove("bk-base", sd), "diffusers")
    assert base["up_blocks.1.resnets.1"] == "up_blocks.1.resnets.2"
    assert base["up_blocks.1.attentions.1"] == "up_blocks.1.attentions.2"
    assert base["down_blocks.2.downsamplers.0"] == "down_blocks.2.downsamplers.0"
    assert base["mid_block"] == "mid_block"
    _, tiny = derive(sd, preset_remove("bk-tiny", sd), "diffusers")
    assert tiny["up_blocks.0.resnets.1"] == "up_blocks.1.resnets.2"
    assert tiny["up_blocks.0.upsamplers.0"] == "up_blocks.1.upsamplers.0"
    assert "mid_block" not in tiny and "down_blocks.2.downsamplers.0" not in tiny


@pytest.mark.parametrize("preset", PRESETS)
def test_student_tensors_are_the_teachers_bit_for_bit(teacher, preset, tmp_path):
    student, report = build_student(teacher, preset_remove(preset, TINY))
    assert report.ok and report.copied == len(student.state_dict()) and report.dropped > 0
    _, weight_map = derive(TINY, preset_remove(preset, TINY), "diffusers")
    teacher_state = teacher.state_dict()
    for key, tensor in student.state_dict().items():
        source = next(weight_map[p] + key[len(p):] for p in weight_map if key.startswith(p + "."))
        assert torch.equal(tensor, teacher_state[source]), key
    sample, timestep, text = inputs()
    with torch.no_grad():
        out = student.eval()(sample, timestep, text).sample
    assert out.shape == sample.shape and torch.isfinite(out).all()
    student.save_pretrained(tmp_path / "student")
    again = UNet2DConditionModel.from_pretrained(tmp_path / "student").eval()
    with torch.no_grad():
        assert torch.equal(again(sample, timestep, text).sample, out)


def test_per_stage_layers_and_plain_blocks(teacher):
    remove = ["down0.pair1", "up3.pair1", "down1.attn0", "down1.attn1", "up2.attn0", "up2.attn1", "up2.attn2"]
    student, report = build_student(teacher, remove)
    assert report.ok
    assert student.config.layers_per_block == [1, 2, 2, 2]
    assert student.config.down_block_types[1] == "DownBlock2D" and student.config.up_block_types[2] == "UpBlock2D"
    assert [len(b.resnets) for b in student.up_blocks] == [3, 3, 3, 2]
    sample, timestep, text = inputs()
    with torch.no_grad():
        assert student(sample, timestep, text).sample.shape == sample.shape


def test_student_follows_the_teachers_device_and_dtype(teacher):
    meta_student, report = build_student(build_meta(TINY), preset_remove("bk-small", TINY))
    assert report.ok and meta_student.device.type == "meta"
    half, _ = build_student(copy.deepcopy(teacher).to(torch.bfloat16), preset_remove("bk-base", TINY))
    assert half.dtype == torch.bfloat16


def test_plan_is_applied_and_a_foreign_map_refused(teacher):
    plan = make_preset("bk-tiny", "tiny", TINY)
    student, _ = build_student(teacher, plan)
    assert student.config.block_out_channels == [32, 64, 64]
    plan.weight_map["up_blocks.0.resnets.1"] = "up_blocks.3.resnets.1"  # a 32-channel resnet in a 64 one
    with pytest.raises(PrunekitError, match="weight map does not fit"):
        build_student(teacher, plan)
    _, report = build_student(teacher, plan, strict=False)
    assert report.mismatched and report.mismatched[0].startswith("up_blocks.0.resnets.1.")


@pytest.mark.parametrize("remove, message", [
    (["down0.pair1"], "one more than"),
    (["mid.attn0"], "from the mid block has no diffusers U-Net"),
    (["mid.res0"], "from the mid block has no diffusers U-Net"),
    (["stage1"], "inside out"),
    (["down0.attn1"], "remove each attention with its resnet"),
    (["down0.downsample"], "alone"),
    (["up1.upsample"], "alone"),
    (["down0.pair0", "down0.pair1"], "whole stage"),
    (["down9.pair1", "mid.res7"], "down9.pair1, mid.res7"),
])
def test_removals_without_a_standard_student_are_refused(remove, message):
    with pytest.raises(PrunekitError, match=message):
        derive(TINY, remove, "diffusers")


SDXL = stand_ins.SDXL_UNET
THIN = ["down2.attn1.t1", "up0.attn0.t0", "up0.attn2.t2", "up1.attn1.t1"]  # transformer layers of four attentions


def sdxl_inputs():
    generator = torch.Generator().manual_seed(1)
    return {"sample": torch.randn(2, 4, 16, 16, generator=generator), "timestep": torch.tensor([7, 500]),
            "encoder_hidden_states": torch.randn(2, 5, 32, generator=generator),
            "added_cond_kwargs": {"text_embeds": torch.randn(2, 16, generator=generator),
                                  "time_ids": torch.randn(2, 6, generator=generator)}}


def _built_like_the_ablated_teacher(teacher, remove, tmp_path):
    """The plan's student: plain diffusers, copied exactly, of the predicted size, equal in output to the teacher
    with `remove` ablated, and reloaded tensor for tensor by from_pretrained."""
    from prunekit.ablation import ablate
    from prunekit.plan import make_plan

    plan = make_plan("tiny-sdxl-shaped", dict(teacher.config), remove, "test")
    assert plan.kind == "diffusers"
    student, report = build_student(teacher, plan)
    assert report.ok and type(student) is UNet2DConditionModel
    assert sum(p.numel() for p in student.parameters()) == plan.predicted["params"]
    with torch.no_grad():
        got = student(**sdxl_inputs()).sample
        with ablate(teacher, remove):
            want = teacher(**sdxl_inputs()).sample
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    student.save_pretrained(tmp_path / "student")
    again = UNet2DConditionModel.from_pretrained(tmp_path / "student")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), student.state_dict().values()))
    return plan, student


def test_transformer_layers_go_into_a_plain_diffusers_student(tmp_path):
    """A plan that drops single transformer layers is a plain UNet2DConditionModel with per-layer depths."""
    torch.manual_seed(0)
    teacher = UNet2DConditionModel.from_config(SDXL).eval()
    plan, student = _built_like_the_ablated_teacher(teacher, THIN, tmp_path)
    assert plan.student_config["transformer_layers_per_block"] == [1, [2, 2], [3, 2]]
    assert plan.student_config["reverse_transformer_layers_per_block"] == [[2, 3, 2], [2, 1, 2], 1]
    # up0.attn0 lost its layer 0: its first layer is the teacher's second
    assert torch.equal(student.up_blocks[0].attentions[0].transformer_blocks[0].ff.net[2].weight,
                       teacher.up_blocks[0].attentions[0].transformer_blocks[1].ff.net[2].weight)


@pytest.mark.parametrize("remove, mid_type, mid_depth", [
    (["down2.attn0.t2", "mid.attn0.t2"], "UNetMidBlock2DCrossAttn", 2),  # thinned alike (KOALA-1B's mid block)
    (["down2.attn0.t0", "mid.attn0.t1"], "UNetMidBlock2DCrossAttn", 2),  # any layers, as many
    (["mid.attn0", "mid.res1"], "UNetMidBlock2D", None),  # one resnet (SSD-1B's mid block)
    (["mid.attn0", "mid.res0", "down2.attn0.t1"], "UNetMidBlock2D", None),  # the other resnet; the tie is gone
])
def test_the_mid_block_thins_or_keeps_one_resnet(tmp_path, remove, mid_type, mid_depth):
    torch.manual_seed(0)
    teacher = UNet2DConditionModel.from_config(SDXL).eval()
    plan, student = _built_like_the_ablated_teacher(teacher, remove, tmp_path)
    assert type(student.mid_block).__name__ == mid_type
    attentions = getattr(student.mid_block, "attentions", None)
    assert (len(attentions[0].transformer_blocks) if attentions else None) == mid_depth


@pytest.mark.parametrize("remove, message", [
    (["down2.attn0.t1"], "gives the mid block the depth of down_blocks.2.attentions.0"),
    (["mid.attn0.t1"], "gives the mid block the depth of down_blocks.2.attentions.0"),
    (["mid.attn0.t1", "down2.attn0.t1", "down2.attn0.t2"], "would be 1, not the 2"),
    (["down1.attn0.t0", "down1.attn0.t1"], "every transformer layer of down_blocks.1.attentions.0 would go"),
])
def test_transformer_layers_without_a_diffusers_student_are_refused(remove, message):
    with pytest.raises(PrunekitError, match=message):
        derive(SDXL, remove, "diffusers")


def test_the_innermost_attention_may_thin_when_the_mid_block_goes():
    config, _ = derive(SDXL, ["down2.attn0.t1", "mid"], "diffusers")
    assert config["mid_block_type"] is None and config["transformer_layers_per_block"][2] == [2, 3]


def test_sdxl_base_loses_transformer_layers_at_their_exact_cost():
    """Five depth-10 layers at 1,280 channels (34,755,840 parameters each) and one at 640 (10,005,120)."""
    config = unet_config("sdxl-base")
    remove = [f"down2.attn1.t{k}" for k in range(5, 10)] + ["up1.attn2.t1"]
    student, _ = derive(config, remove, "diffusers")
    assert params(student) == params(config) - 5 * 34_755_840 - 10_005_120 == 2_383_679_364
