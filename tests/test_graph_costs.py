"""Unit graph and cost model on the real SD configs (meta device) and on other layouts."""
import time

import pytest

from prunekit.costs import full_macs, denoiser_costs
from prunekit.errors import PrunekitError
from prunekit.graph import all_units, enumerate_units
from prunekit.units import top_level
from prunekit.models import build_meta, resolve_model, unet_config

SD14_BLOCK_UNITS = (
    [f"down{s}.{kind}{i}" for s in range(3) for i in range(2) for kind in ("res", "attn")]
    + ["down3.res0", "down3.res1", "mid.res0", "mid.attn0", "mid.res1", "up0.res0", "up0.res1", "up0.res2"]
    + [f"up{s}.{kind}{i}" for s in range(1, 4) for i in range(3) for kind in ("res", "attn")]
    + [f"down{s}.downsample" for s in range(3)] + [f"up{s}.upsample" for s in range(3)]
)


@pytest.mark.parametrize("model, params", [
    ("sd-v1-4", 859_520_964), ("sd-v1-5", 859_520_964), ("sd-v2-1-base", 865_910_724),
    ("sd-v2-1", 865_910_724), ("sdxl-base", 2_567_463_684),
])
def test_parameter_counts_are_exact(model, params):
    assert denoiser_costs(unet_config(model), full=False).params == params


def test_sd14_paper_macs_within_half_a_percent():
    assert denoiser_costs(unet_config("sd-v1-4"), full=False).macs == pytest.approx(338.7e9, rel=0.005)


def test_sdxl_full_macs_count_is_fast_and_includes_attention():
    config = unet_config("sdxl-base")
    start = time.perf_counter()
    costs = denoiser_costs(config)
    assert time.perf_counter() - start < 10
    assert costs.full_macs > costs.macs


@pytest.mark.parametrize("model, tokens", [("tiny-sd", 32), ("tiny-sdxl", 32), ("sd-v1-4", 77), ("sdxl-base", 77),
                                           ("sd3-medium", 77 + 256), ("flux-dev", 512)])
def test_a_model_counts_its_macs_at_its_pipelines_text_length(model, tokens):
    assert resolve_model(model).tokens == tokens


def test_the_text_length_is_what_the_pipeline_hands_its_denoiser(pipe_dir, sd3_dir):
    """For a local pipeline, Model.tokens is the length of its own prompt encoding (SD3 without T5: the CLIP
    tokens and one zero token in T5's place)."""
    from prunekit.conditioning import encode

    for directory in (pipe_dir, sd3_dir):
        model = resolve_model(directory)
        positive, _ = encode(model.pipeline(), ["a red circle"])
        assert positive.embeds.shape[1] == model.tokens
    assert resolve_model(sd3_dir).tokens == resolve_model(pipe_dir).tokens + 1


def test_inspect_and_plans_count_macs_at_the_models_text_length(capsys):
    from prunekit.cli import main
    from prunekit.inspect import inspect_model
    from prunekit.plan import make_preset

    inspection = inspect_model("tiny-sd")
    config = inspection.config
    assert inspection.tokens == 32
    assert inspection.total.macs == denoiser_costs(config, 32).macs < denoiser_costs(config, 77).macs
    made = make_preset("bk-small", "tiny-sd", config, 32)
    assert made.predicted["tokens"] == 32 and made.predicted["teacher_macs"] == inspection.total.macs
    assert make_preset("bk-small", "tiny-sd", config).predicted["tokens"] == 77  # no length given: SD's
    main(["inspect", "tiny-sd"])
    assert "at 32 text tokens" in capsys.readouterr().out


def test_sd14_block_units_have_design_names():
    names = [u.name for u in enumerate_units(unet_config("sd-v1-4"), "block")]
    assert sorted(names) == sorted(SD14_BLOCK_UNITS)
    assert names[:5] == ["down0.res0", "down0.attn0", "down0.res1", "down0.attn1", "down0.downsample"]


def test_pair_and_stage_granularity():
    config = unet_config("sd-v1-4")
    pairs = [u.name for u in enumerate_units(config, "pair")]
    assert "down0.pair1" in pairs and "down3.res1" in pairs and "mid" in pairs and "up0.res2" in pairs
    assert "down0.res0" not in pairs
    assert [u.name for u in enumerate_units(config, "stage")] == ["mid", "stage0", "stage1", "stage2"]
    stage0 = next(u for u in enumerate_units(config, "stage") if u.name == "stage0")
    assert set(stage0.modules) == {"down_blocks.3", "up_blocks.0", "down_blocks.2.downsamplers.0"}


def test_units_know_channels_resolution_and_skips():
    units = {u.name: u for u in enumerate_units(unet_config("sd-v1-4"), "block")}
    assert (units["down1.res0"].channels_in, units["down1.res0"].channels_out) == (320, 640)
    assert units["down1.res0"].resolution == 32 and units["down3.res0"].resolution == 8
    assert (units["up2.res0"].channels_in, units["up2.res0"].skip_channels, units["up2.res0"].channels_out) == (1280, 640, 640)
    assert units["up3.res2"].skip_channels == 320 and units["up3.res2"].resolution == 64
    assert units["down0.attn0"].full_macs > units["down0.attn0"].macs > 0


def test_sdxl_lists_transformer_layers_as_sub_units():
    units = {u.name: u for u in enumerate_units(unet_config("sdxl-base"), "block")}
    assert [f"down2.attn0.t{k}" for k in range(10)] == [n for n in units if n.startswith("down2.attn0.t")]
    assert units["down1.attn0.t1"].parent == "down1.attn0"
    assert "down0.attn0" not in units  # SDXL's outermost stage has no attention
    assert sum(units[f"up0.attn1.t{k}"].params for k in range(10)) < units["up0.attn1"].params


@pytest.mark.parametrize("model", ["sd-v1-4", "sd-v2-1-base", "sdxl-base"])
def test_top_level_units_and_the_rest_add_up_to_the_whole(model):
    config = unet_config(model)
    unet = build_meta(config)
    rest = sum(p.numel() for name, p in unet.named_parameters()
               if not name.startswith(("down_blocks", "up_blocks", "mid_block")))
    for granularity in ("block", "pair"):
        units = top_level(enumerate_units(unet, granularity))
        assert sum(u.params for u in units) + rest == denoiser_costs(config, full=False).params


def test_full_macs_table_has_whole_and_modules():
    table = full_macs(unet_config("sd-v1-4"))
    assert table[""] > table["down_blocks.0"] > table["down_blocks.0.attentions.0"] > 0


@pytest.mark.parametrize("channels, layers", [((32, 64), 1), ((32, 64, 64), 3), ((16, 32, 32, 64, 64), 2)])
def test_other_layouts(channels, layers):
    n = len(channels)
    config = {
        "block_out_channels": list(channels), "layers_per_block": layers, "norm_num_groups": 8,
        "cross_attention_dim": 32, "attention_head_dim": 4, "sample_size": 32,
        "down_block_types": ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1),
    }
    units = enumerate_units(config, "block")
    names = {u.name for u in units}
    assert f"down{n - 1}.res{layers - 1}" in names and f"up{n - 1}.attn{layers}" in names
    assert len(all_units(config)) > len(units)
    assert [u.name for u in enumerate_units(config, "stage")] == ["mid"] + [f"stage{k}" for k in range(n - 1)]


def test_unknown_granularity_is_a_user_error():
    with pytest.raises(PrunekitError, match="granularity"):
        enumerate_units(unet_config("sd-v1-4"), "layer")
