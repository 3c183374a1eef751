"""Plans: the BK-SDM presets and their predicted costs (BK-SDM's table), plan.json round trips and the
one-sentence refusal of each kind of bad plan."""
import json

import pytest

from prunekit.errors import PrunekitError
from prunekit.models import build_unet_meta, unet_config
from prunekit.plan import FORMAT, Plan, load, make_preset, preset_remove

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
    assert plan.method == f"preset:{preset}" and plan.space == "standard"


def test_sdxl_has_its_params_but_no_presets():
    config = unet_config("sdxl-base")
    assert sum(p.numel() for p in build_unet_meta(config).parameters()) == 2_567_463_684
    for preset in ("bk-base", "bk-small", "bk-tiny"):
        with pytest.raises(PrunekitError, match="SD-1/SD-2-like"):
            preset_remove(preset, config)


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
    assert data["student"]["space"] == "standard" and data["student"]["unet_config"]["mid_block_type"] is None
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
