"""Plans: the BK-SDM presets and their predicted costs (BK-SDM's table), plan.json round trips and the
one-sentence refusal of each kind of bad plan."""
import json

import pytest

import stand_ins
from prunekit.errors import PrunekitError
from prunekit.models import build_meta, unet_config
from prunekit.plan import FORMAT, Plan, load, make_plan, make_preset, preset_remove, presets_for

TINY = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [32, 64, 64, 64], "norm_num_groups": 8, "cross_attention_dim": 32, "attention_head_dim": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}


@pytest.fixture(scope="module")
def sd():
    return unet_config("sd-v1-4")


@pytest.mark.parametrize("preset, params, macs", [
    ("bk-base", 579_384_964, 223.8e9),
    ("bk-small", 482_346_884, 217.7e9),
    ("bk-tiny", 323_384_964, 205.0e9),
])
def test_presets_predict_bk_sdm_costs(sd, preset, params, macs):
    plan = make_preset(preset, "sd-v1-4", sd)
    assert plan.predicted["params"] == params
    assert plan.predicted["macs"] == pytest.approx(macs, rel=0.005)
    assert plan.predicted["teacher_params"] == 859_520_964
    assert plan.predicted["teacher_macs"] == pytest.approx(338.7e9, rel=0.005)
    assert plan.predicted["params_fraction"] == pytest.approx(params / 859_520_964)
    assert plan.method == f"preset:{preset}" and plan.kind == "diffusers"


def test_sdxl_takes_its_own_presets_and_refuses_bk_sdms():
    """koala-like and ssd-like on sdxl-base: 1,161,184,324 and 1,331,334,404 parameters, the sizes of KOALA-1B's
    and SSD-1B's U-Net configs as ComfyUI's loader reads them (the papers say about 1.16B and 1.3B)."""
    config = unet_config("sdxl-base")
    assert sum(p.numel() for p in build_meta(config).parameters()) == 2_567_463_684
    assert presets_for(config) == ["koala-like", "ssd-like"]
    koala, ssd = (make_preset(name, "sdxl-base", config) for name in ("koala-like", "ssd-like"))
    assert koala.predicted["params"] == 1_161_184_324 and ssd.predicted["params"] == 1_331_334_404
    assert koala.student_config["layers_per_block"] == 1
    assert koala.student_config["transformer_layers_per_block"][1:] == [[2], [6]]
    assert koala.student_config["reverse_transformer_layers_per_block"][:2] == [[6, 6], [2, 2]]
    assert ssd.student_config["mid_block_type"] == "UNetMidBlock2D"
    assert ssd.student_config["transformer_layers_per_block"][1:] == [[2, 2], [4, 4]]
    assert ssd.student_config["reverse_transformer_layers_per_block"][:2] == [[4, 4, 10], [2, 1, 1]]
    for preset in ("bk-base", "bk-small", "bk-tiny"):
        with pytest.raises(PrunekitError, match="SD-1/SD-2-like U-Net .* use koala-like, ssd-like, or"):
            preset_remove(preset, config)
    with pytest.raises(PrunekitError, match="needs an SDXL-like U-Net .* use bk-base, bk-small, bk-tiny, or"):
        preset_remove("koala-like", unet_config("sd-v1-4"))


def test_sdxl_presets_scale_with_the_depths():
    """On an SDXL topology 3 layers deep inside, koala-like keeps 2 of them and ssd-like 1."""
    koala, ssd = (make_preset(name, "small", stand_ins.SDXL_UNET) for name in ("koala-like", "ssd-like"))
    assert koala.student_config["transformer_layers_per_block"][2] == [2]
    assert ssd.student_config["transformer_layers_per_block"][2] == [1, 1]
    assert ssd.student_config["reverse_transformer_layers_per_block"][:2] == [[1, 1, 3], [2, 1, 1]]


def test_presets_are_defined_by_topology(sd):
    assert preset_remove("bk-small", sd) == preset_remove("bk-small", TINY) == [
        "down0.pair1", "down1.pair1", "down2.pair1", "down3.res1", "mid",
        "up0.res1", "up1.pair1", "up2.pair1", "up3.pair1"]
    assert preset_remove("bk-tiny", TINY) == [
        "down0.pair1", "down1.pair1", "down2.pair1", "mid", "up1.pair1", "up2.pair1", "up3.pair1", "stage0"]
    three = {**TINY, "block_out_channels": [32, 64, 64], "down_block_types": TINY["down_block_types"][1:],
             "up_block_types": TINY["up_block_types"][:3]}
    assert make_preset("bk-tiny", "three", three).student_config["block_out_channels"] == [32, 64]


@pytest.mark.parametrize("change, why", [
    ({"layers_per_block": 3}, "layers_per_block 3"),
    ({"mid_block_type": None}, "mid block None"),
    ({"block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
      "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}, "2 stages"),
])
def test_presets_refuse_other_layouts(change, why):
    with pytest.raises(PrunekitError, match=why):
        preset_remove("bk-base", {**TINY, **change})


def test_unknown_preset_is_refused():
    with pytest.raises(PrunekitError, match="unknown preset 'bk-huge'"):
        preset_remove("bk-huge", TINY)


@pytest.fixture(scope="module")
def plan():
    return make_preset("bk-small", "tiny", TINY)


def test_plan_json_round_trips(plan, tmp_path):
    path = plan.save(tmp_path / "run" / "plan.json")
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["model"] == {"name": "tiny", "unet_fingerprint": plan.unet_fingerprint}
    assert data["student"]["kind"] == "diffusers" and data["student"]["unet_config"]["mid_block_type"] is None
    assert set(data["predicted"]) >= {"params", "params_fraction", "macs", "macs_fraction"}
    assert set(data["provenance"]) >= {"prunekit", "created"}
    again = load(path, teacher_config=TINY)
    assert again == plan and Plan.load(path).to_dict() == data


def write(tmp_path, data) -> str:
    path = tmp_path / "plan.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def one_sentence(error) -> str:
    text = str(error.value)
    assert "\n" not in text and text.endswith(".")
    return text


def test_bad_plans_are_refused_one_sentence_each(plan, tmp_path):
    good = plan.to_dict()
    cases = [
        ('{"format": "prunekit.plan/1", ', "not valid JSON"),
        ({**good, "format": "prunekit.plan/0"}, "format 'prunekit.plan/0'"),
        ([1, 2], "format 'list'"),
        ({**good, "student": {"weight_map": {}}}, "student.unet_config"),
        ({**good, "model": ["sd-v1-4"]}, "garbles model, model.name, model.unet_fingerprint"),
        ({**good, "remove": ["down0.pair1", "down0.blob", "mid.res"]}, "unknown unit.*down0.blob, mid.res:"),
    ]
    for data, message in cases:
        with pytest.raises(PrunekitError, match=message) as error:
            load(write(tmp_path, data))
        one_sentence(error)
    with pytest.raises(PrunekitError, match="cannot read") as error:
        load(tmp_path / "missing.json")
    one_sentence(error)


def test_plans_for_another_unet_are_refused(plan, tmp_path, sd):
    path = plan.save(tmp_path / "plan.json")
    with pytest.raises(PrunekitError, match="made for another U-Net") as error:
        load(path, teacher_config={**TINY, "cross_attention_dim": 48})
    one_sentence(error)
    foreign = {**plan.to_dict(), "remove": ["down0.pair1", "down7.pair1", "stage5"]}
    with pytest.raises(PrunekitError, match="lacks: down7.pair1, stage5;") as error:
        load(write(tmp_path, foreign), teacher_config=TINY)
    one_sentence(error)


FREE_REMOVE = ["down1.attn1", "mid", "up2.res1"]  # no diffusers config can drop these: a free plan


@pytest.mark.parametrize("kind, remove", [("diffusers", preset_remove("bk-small", TINY)), ("free", FREE_REMOVE)])
def test_every_kind_of_plan_builds_the_student_it_predicts(kind, remove, tmp_path):
    from prunekit.costs import denoiser_costs
    from prunekit.surgery import build_student

    made = make_plan("tiny", TINY, remove, "test", kind=kind)
    student, report = build_student(build_meta(TINY), Plan.load(made.save(tmp_path / "p.json"), TINY))
    params = sum(p.numel() for p in student.parameters())
    assert report.ok and params == made.predicted["params"] == denoiser_costs(made.student_config).params
    assert params < made.predicted["teacher_params"]
    assert type(student).__name__ == ("UNet2DConditionModel" if kind == "diffusers" else "FreeUNet2DConditionModel")


def test_a_free_plan_predicts_the_teachers_cost_less_its_units():
    from prunekit.graph import all_units

    made = make_plan("tiny", TINY, FREE_REMOVE, "test", kind="free")
    units = all_units(TINY)
    assert made.predicted["params"] == made.predicted["teacher_params"] - sum(units[n].params for n in FREE_REMOVE)
    assert 0.8 < made.predicted["params_fraction"] < 0.9


@pytest.mark.parametrize("change, message", [
    ({"remove": ["mid", "mid.res0"]}, "overlap"),
    ({"remove": ["mid", "mid"]}, "more than once"),
    ({"remove": ["down0.res0", "down0.res0"]}, "more than once"),
    ({"kind": "diffusers"}, "keeps attentions"),  # a free plan relabelled: no diffusers student removes these
    ({"weight_map": {"conv_in": "conv_out"}}, "weight map does not follow"),
    ({"unet_config": {"block_out_channels": [32, 64]}}, "student config does not follow"),
    ({"kind": "sideways"}, "student.kind"),
], ids=["overlap", "twice", "twice-res", "kind", "map", "config", "unknown-kind"])
def test_a_plan_whose_student_does_not_follow_from_its_remove_list_is_refused(change, message, tmp_path):
    data = make_plan("tiny", TINY, FREE_REMOVE, "test", kind="free").to_dict()
    student = data["student"]
    if "remove" in change:
        data["remove"] = change["remove"]
    for key in ("kind", "weight_map"):
        if key in change:
            student[key] = change[key]
    if "unet_config" in change:
        student["unet_config"] = {**student["unet_config"], **change["unet_config"]}
    with pytest.raises(PrunekitError, match=message) as error:
        load(write(tmp_path, data), teacher_config=TINY)
    one_sentence(error)


def test_a_plan_that_removes_every_unit_is_refused(tmp_path):
    from prunekit.graph import enumerate_units
    from prunekit.units import top_level

    everything = [u.name for u in top_level(enumerate_units(TINY, "block", costs=False))]
    with pytest.raises(PrunekitError, match="removes every unit") as error:
        make_plan("tiny", TINY, everything, "test", kind="free")
    one_sentence(error)
    data = make_plan("tiny", TINY, FREE_REMOVE, "test", kind="free").to_dict()
    data["remove"] = everything
    with pytest.raises(PrunekitError, match="removes every unit"):
        load(write(tmp_path, data), teacher_config=TINY)


def test_a_plan_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "plan.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PrunekitError, match="not UTF-8") as error:
        load(path)
    one_sentence(error)


def test_the_sdxl_presets_script_writes_its_table(tmp_path, analysis_script):
    frame = analysis_script("sdxl_presets").main(["--out", str(tmp_path)])
    assert list(frame["unet"]) == ["teacher", "koala-like", "ssd-like"]
    table = (tmp_path / "presets.md").read_text()
    assert "| koala-like | 1,161,184,324 | 0.4523 |" in table and "1.3B (Segmind, arXiv 2401.02677)" in table
