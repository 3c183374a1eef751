"""Run-time ablation on tiny random U-Nets of the SD-1, SD-2 and SDXL topologies, and on the real configs (meta)."""
import pytest
import torch
from diffusers import UNet2DConditionModel

import stand_ins
from prunekit.ablation import ablate, ablated_units, compatible_units, unit_table
from prunekit.standins import ChannelInterpolation
from prunekit.costs import example_inputs
from prunekit.errors import PrunekitError
from prunekit.models import build_meta, unet_config

_COMMON = dict(sample_size=16, layers_per_block=2, cross_attention_dim=32, norm_num_groups=8)
SD1 = dict(_COMMON, block_out_channels=(32, 64, 64, 64), attention_head_dim=8,
           down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
           up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD2 = dict(SD1, attention_head_dim=(2, 4, 8, 8), use_linear_projection=True)
SDXL = stand_ins.SDXL_UNET
TINY = {"sd1": SD1, "sd2": SD2, "sdxl": SDXL}


pytestmark = pytest.mark.usefixtures("one_thread")


def _random_inputs(config: dict, size: int | None = None) -> dict:
    generator = torch.Generator().manual_seed(0)
    inputs = example_inputs(dict(config, sample_size=size or config["sample_size"]), batch=2, tokens=5, device="cpu")

    def randomise(value):
        if isinstance(value, dict):
            return {key: randomise(v) for key, v in value.items()}
        return torch.randn(value.shape, generator=generator) if value.is_floating_point() else value

    return randomise(inputs)


class Case:
    """A tiny random U-Net, inputs and its intact output."""

    def __init__(self, config: dict):
        torch.manual_seed(0)
        self.unet = UNet2DConditionModel(**config).eval()
        self.inputs = _random_inputs(config)
        self.baseline = self.run()
        self.params = self.count_params()

    def run(self, inputs: dict | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.unet(**(inputs or self.inputs)).sample

    def count_params(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())


@pytest.fixture(scope="module", params=list(TINY))
def case(request) -> Case:
    return Case(TINY[request.param])


@pytest.fixture(scope="module")
def sd1() -> Case:
    return Case(SD1)


def test_every_unit_alone_runs_changes_the_output_and_restores_exactly(case):
    modules = list(case.unet.named_modules())
    for unit in unit_table(case.unet).values():
        with ablate(case.unet, unit):
            assert ablated_units(case.unet) == (unit.name,)
            assert case.count_params() == case.params - unit.params, unit.name  # stand-ins hold no weights
            out = case.run()
        assert out.shape == case.baseline.shape and torch.isfinite(out).all(), unit.name
        assert not torch.equal(out, case.baseline), unit.name
    assert ablated_units(case.unet) == ()
    assert list(case.unet.named_modules()) == modules
    assert torch.equal(case.run(), case.baseline)


def test_several_units_at_once_and_nested(sd1):
    bk_small = ["down0.pair1", "down1.pair1", "down2.pair1", "down3.res1", "mid",
                "up0.res1", "up1.pair1", "up2.pair1", "up3.pair1"]
    with ablate(sd1.unet, bk_small) as units:
        assert [u.name for u in units] == bk_small
        assert sd1.count_params() == sd1.params - sum(u.params for u in units)
        together = sd1.run()
    assert torch.isfinite(together).all() and not torch.equal(together, sd1.baseline)
    with ablate(sd1.unet, bk_small[:4]), ablate(sd1.unet, bk_small[4:]):
        assert ablated_units(sd1.unet) == tuple(bk_small)
        assert torch.equal(sd1.run(), together)
    with ablate(sd1.unet, ["stage0", "down0.downsample", "up3.attn2"]):
        assert torch.isfinite(sd1.run()).all()
    assert torch.equal(sd1.run(), sd1.baseline)


def test_an_exception_inside_restores(sd1):
    with pytest.raises(RuntimeError, match="boom"), ablate(sd1.unet, ["stage1", "up3.pair2"]):
        raise RuntimeError("boom")
    assert ablated_units(sd1.unet) == ()
    assert torch.equal(sd1.run(), sd1.baseline)


@pytest.mark.parametrize("units, message", [
    (["mid", "mid.res0"], "overlap"), (["down1.pair0", "down1.res0"], "overlap"),
    (["stage0", "down3.res1"], "overlap"), (["stage0", "stage1"], "overlap"),  # they share down_blocks.2's downsampler
    (["up1.attn0", "up1.attn0"], "listed twice"), (["down1.pair9"], "no unit 'down1.pair9'.*did you mean"),
])
def test_refusals_are_clear(sd1, units, message):
    with pytest.raises(PrunekitError, match=message):
        with ablate(sd1.unet, units):
            pass
    assert ablated_units(sd1.unet) == ()


def test_a_nested_overlap_is_refused_before_anything_changes(sd1):
    with ablate(sd1.unet, "mid"):
        with pytest.raises(PrunekitError, match="overlap"):
            with ablate(sd1.unet, "mid.attn0"):
                pass
        assert ablated_units(sd1.unet) == ("mid",)
    assert torch.equal(sd1.run(), sd1.baseline)


def test_transformer_layers_overlap_their_attention():
    unet = build_meta(SDXL)
    with pytest.raises(PrunekitError, match="down2.attn0.t1 and down2.attn0 overlap"):
        with ablate(unet, ["down2.attn0.t1", "down2.attn0"]):
            pass
    names = {u.name for u in compatible_units(unet, ["down2.attn0.t1", "mid"])}
    assert "down2.attn0.t0" in names and "down2.res0" in names and "stage1" in names
    assert not names & {"down2.attn0.t1", "down2.attn0", "down2.pair0", "stage0", "mid", "mid.res0", "mid.attn0.t2"}


def test_channel_interpolation_is_linear_along_channels_and_drops_the_skip():
    x = torch.arange(2 * 5 * 4, dtype=torch.float32).reshape(2, 5, 2, 2)
    out = ChannelInterpolation(3, 5)(x)  # an up-path resnet: 3 hidden channels, 2 skip channels
    assert out.shape == (2, 5, 2, 2)
    assert torch.equal(out[:, 0], x[:, 0]) and torch.equal(out[:, 2], x[:, 1]) and torch.equal(out[:, 4], x[:, 2])
    assert torch.allclose(out[:, 1], (x[:, 0] + x[:, 1]) / 2)
    other_skip = torch.cat([x[:, :3], -x[:, 3:]], dim=1)
    assert torch.equal(ChannelInterpolation(3, 5)(other_skip), out)
    assert torch.equal(ChannelInterpolation(3, 3)(x), x[:, :3])


def test_a_removed_stage_runs_the_levels_inside_at_twice_their_resolution(sd1):
    sides = {}
    hook = sd1.unet.mid_block.register_forward_hook(lambda module, args, out: sides.update(mid=out.shape[-1]))
    try:
        sd1.run()
        assert sides["mid"] == 2
        with ablate(sd1.unet, "stage0"):
            sd1.run()
        assert sides["mid"] == 4
        with ablate(sd1.unet, "stage1"):
            assert sd1.run().shape == sd1.baseline.shape
        assert sides["mid"] == 4
    finally:
        hook.remove()


def test_samplers_and_stages_work_at_odd_latent_sizes(sd1):
    inputs = _random_inputs(SD1, size=14)  # 14 -> 7 -> 4 -> 2: diffusers forwards the upsample sizes
    for unit in unit_table(sd1.unet).values():
        if unit.kind in ("downsample", "upsample", "stage"):
            with ablate(sd1.unet, unit):
                assert sd1.run(inputs).shape == (2, 4, 14, 14), unit.name


@pytest.mark.parametrize("model", [
    "sd-v1-4", "tiny-sd",
    pytest.param("sd-v2-1-base", marks=pytest.mark.slow), pytest.param("sdxl-base", marks=pytest.mark.slow),
])
def test_every_unit_of_the_real_configs_can_be_ablated_on_meta(model):
    try:
        config = unet_config(model)
    except PrunekitError:
        pytest.skip(f"{model} is not bundled in this checkout")
    unet, inputs = build_meta(config), example_inputs(config)
    size = config["sample_size"]
    for unit in unit_table(unet).values():
        with ablate(unet, unit), torch.no_grad():
            assert unet(**inputs).sample.shape == (1, config["out_channels"], size, size), unit.name
