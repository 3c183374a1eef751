"""Diffusion transformers as families of units: exact published counts on the meta device, ablation that
passes streams through, and surgery to plain diffusers students equal to the ablated teacher."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from prunekit.ablation import ablate
from prunekit.cli import main
from prunekit.costs import denoiser_costs, example_inputs
from prunekit.errors import PrunekitError
from prunekit.families import family_of
from prunekit.graph import all_units, enumerate_units
from prunekit.models import ALIASES, unet_config
from prunekit.plan import Plan, make_plan, make_preset, preset_remove, presets_for
from prunekit.surgery import build_student, derive
from stand_ins import TRANSFORMERS

# Parameter counts of diffusers' own classes built from each alias's config (meta device): SD3-medium's and
# FLUX.1-dev's are the published 2,028,328,000 and 11,901,408,320.
PUBLISHED = {"sd3-medium": 2_028_328_000, "sd3.5-large": 8_056_627_520, "flux-dev": 11_901_408_320,
             "flux-schnell": 11_891_178_560, "pixart-sigma": 610_856_096, "sana-1.6b": 1_604_462_752}
BLOCKS = {"sd3-medium": 24, "sd3.5-large": 38, "flux-dev": 19 + 38, "flux-schnell": 19 + 38, "pixart-sigma": 28,
          "sana-1.6b": 20}


@pytest.mark.parametrize("alias", sorted(PUBLISHED))
def test_inspect_gives_each_alias_its_exact_count_offline(alias, capsys):
    main(["inspect", alias])
    out = capsys.readouterr().out
    assert f"{PUBLISHED[alias]:,} params" in out
    config = unet_config(alias)
    units = enumerate_units(config, costs=False)
    blocks = [u for u in units if u.kind == "block"]
    assert len(blocks) == BLOCKS[alias]
    assert {u.parent for u in units if u.parent} == {u.name for u in blocks}  # every block has its parts
    assert denoiser_costs(config, full=False).params == PUBLISHED[alias]


def test_unit_names_follow_the_modules():
    names = list(all_units(unet_config("flux-dev"), costs=False))
    assert names[:3] == ["joint0", "joint0.attn", "joint0.ff"] and "single37.ff" in names
    sd3 = all_units(unet_config("sd3-medium"), costs=False)
    assert sd3["block23.ff"].modules == ("transformer_blocks.23.ff",)  # the last block has no text feed-forward
    assert sd3["block0.ff"].modules == ("transformer_blocks.0.ff", "transformer_blocks.0.ff_context")
    pixart = all_units(unet_config("pixart-sigma"), costs=False)
    assert [pixart[f"block0.{p}"].modules[0] for p in ("attn", "cross", "ff")] == [
        "transformer_blocks.0.attn1", "transformer_blocks.0.attn2", "transformer_blocks.0.ff"]


def test_block_costs_add_up_to_the_model():
    config = unet_config("sd3-medium")
    units = all_units(config)
    total = denoiser_costs(config)
    blocks = sum(u.params for u in units.values() if u.kind == "block")
    assert blocks == 23 * 84_980_736 + 54_294_528  # 23 joint blocks, and the last one, text-free
    assert units["block0"].params == units["block0.attn"].params + units["block0.ff"].params + 2 * 14_164_992
    assert 0.99 < sum(u.macs for u in units.values() if u.kind == "block") / total.macs <= 1


def _model(name: str):
    config = TRANSFORMERS[name]
    torch.manual_seed(0)
    model = family_of(config).model_class(config).from_config(config).eval()
    generator = torch.Generator().manual_seed(1)
    inputs = {k: (torch.randn(v.shape, generator=generator) if isinstance(v, torch.Tensor) and v.is_floating_point()
                  and k not in ("img_ids", "txt_ids", "timestep", "guidance") else v)
              for k, v in example_inputs(config, batch=2, tokens=5, device="cpu").items()}
    return model, inputs


def _run(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def _without(model, attr: str, drop: set[int]):
    """The same model with blocks `drop` deleted from its ModuleList (diffusers' forward loops over the list)."""
    blocks = getattr(model, attr)
    setattr(model, attr, torch.nn.ModuleList(b for k, b in enumerate(blocks) if k not in drop))
    return blocks


@pytest.mark.parametrize("name,unit,attr,index", [("sd3", "block1", "transformer_blocks", 1),
                                                  ("sd3", "block3", "transformer_blocks", 3),
                                                  ("flux", "joint1", "transformer_blocks", 1),
                                                  ("flux", "single2", "single_transformer_blocks", 2),
                                                  ("pixart", "block1", "transformer_blocks", 1),
                                                  ("sana", "block2", "transformer_blocks", 2)])
def test_an_ablated_block_passes_every_stream_through(name, unit, attr, index):
    model, inputs = _model(name)
    intact = _run(model, inputs)
    with ablate(model, [unit]):
        ablated = _run(model, inputs)
    assert torch.equal(_run(model, inputs), intact)  # put back bit for bit
    blocks = _without(model, attr, {index})
    assert torch.allclose(ablated, _run(model, inputs), atol=1e-6)  # as if diffusers had no such block
    setattr(model, attr, blocks)
    assert not torch.allclose(ablated, intact)
    if name == "sd3":  # diffusers' own skip_layers agrees
        with torch.no_grad():
            assert torch.allclose(ablated, model(**inputs, skip_layers=[index], return_dict=False)[0], atol=1e-6)


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_every_part_ablates_and_changes_the_output(name):
    model, inputs = _model(name)
    intact = _run(model, inputs)
    parts = [u for u in all_units(model, costs=False).values() if u.parent]
    assert parts
    for part in parts:
        with ablate(model, [part.name]):
            out = _run(model, inputs)
        assert out.shape == intact.shape and torch.isfinite(out).all()
        assert not torch.allclose(out, intact), part.name
    assert torch.equal(_run(model, inputs), intact)


@pytest.mark.parametrize("name,remove", [("sd3", ["block1"]), ("sd3", ["block3"]), ("sd3", ["block0", "block3"]),
                                         ("sd3.5", ["block0", "block3"]), ("flux", ["joint0", "single1", "single3"]),
                                         ("pixart", ["block2"]), ("sana", ["block0", "block1"])])
def test_the_student_equals_the_ablated_teacher_and_reloads_with_diffusers(name, remove, tmp_path):
    teacher, inputs = _model(name)
    student, report = build_student(teacher, remove)
    assert report.ok and report.copied == len(student.state_dict())
    with ablate(teacher, remove):
        expected = _run(teacher, inputs)
    assert torch.allclose(_run(student.eval(), inputs), expected, atol=1e-5)
    student.save_pretrained(tmp_path)
    reloaded = type(teacher).from_pretrained(tmp_path).eval()  # plain diffusers, no prunekit
    assert torch.equal(_run(reloaded, inputs), _run(student, inputs))


def test_sd3_keeps_its_last_block_text_free_and_renumbers_dual_attention():
    config, weight_map = derive(TRANSFORMERS["sd3.5"], ["block1", "block3"], "diffusers")
    assert config["num_layers"] == 2 and config["dual_attention_layers"] == [0]
    # the new last block (teacher block 2) takes the scale and shift rows of its text normalisation
    assert weight_map["transformer_blocks.1.norm1_context.linear.weight"] == \
        "transformer_blocks.2.norm1_context.linear.weight#chunks=6:1,0"
    kept_last = derive(TRANSFORMERS["sd3"], ["block1"], "diffusers")[1]
    assert not any("#" in source for source in kept_last.values())  # the teacher's own last block: copied whole


def test_presets_by_rule():
    flux = unet_config("flux-dev")
    assert presets_for(flux) == ["half-depth", "flux-lite-like"]
    lite = make_preset("flux-lite-like", "flux-dev", flux)
    assert lite.remove == [f"joint{k}" for k in range(8, 19)]
    assert lite.student_config["num_layers"] == 8 and lite.student_config["num_single_layers"] == 38
    assert lite.predicted["params"] == 8_163_264_064  # Flux.1-Lite's 8B
    half = preset_remove("half-depth", unet_config("sd3-medium"))
    assert half == [f"block{k}" for k in range(1, 24, 2)]
    assert presets_for(unet_config("pixart-sigma")) == ["half-depth"]
    sd3 = make_preset("flux-lite-like", "sd3-medium", unet_config("sd3-medium"))  # SD3's blocks are all MMDiT
    assert sd3.remove == [f"block{k}" for k in range(10, 24)] and sd3.student_config["num_layers"] == 10
    with pytest.raises(PrunekitError, match="preset bk-small does not fit this SD3Transformer2DModel: use half-depth"):
        preset_remove("bk-small", unet_config("sd3-medium"))
    with pytest.raises(PrunekitError, match="preset flux-lite-like does not fit this SanaTransformer2DModel"):
        preset_remove("flux-lite-like", unet_config("sana-1.6b"))


def test_a_plan_round_trips_and_checks_its_teacher(tmp_path):
    config = unet_config("sana-1.6b")
    made = make_plan("sana-1.6b", config, ["block3", "block7"], "by hand")
    made.save(tmp_path / "plan.json")
    again = Plan.load(tmp_path / "plan.json", config)
    assert again.student_config == made.student_config and again.student_config["num_layers"] == 18
    with pytest.raises(PrunekitError, match="made for another U-Net"):
        Plan.load(tmp_path / "plan.json", unet_config("pixart-sigma"))


@pytest.mark.parametrize("remove,message", [
    (["joint2.attn"], "cannot drop joint2.attn alone"),
    ([f"single{k}" for k in range(38)], "removes every single block"),
    (["block99"], "lacks: block99"),
])
def test_plans_diffusers_cannot_express_are_refused_in_one_sentence(remove, message):
    config = unet_config("flux-dev") if "block99" not in remove else unet_config("sd3-medium")
    with pytest.raises(PrunekitError, match=message):
        make_plan("m", config, remove, "by hand")


def test_free_plans_are_for_u_nets():
    with pytest.raises(PrunekitError, match="free plans are made for U-Nets only"):
        derive(unet_config("sd3-medium"), ["block1"], "free")


def test_the_cli_makes_a_transformer_preset_and_refuses_a_u_net_one(tmp_path, capsys):
    main(["plan", "--model", "sd3-medium", "--preset", "half-depth", "--out", str(tmp_path / "p.json")])
    assert "params 1,008,559,168" in capsys.readouterr().out
    assert main(["plan", "--model", "pixart-sigma", "--preset", "bk-base", "--out", str(tmp_path / "q.json")]) == 2
    assert "preset bk-base does not fit this PixArtTransformer2DModel: use half-depth" in capsys.readouterr().err
    assert ALIASES["flux-schnell"].unet_config["guidance_embeds"] is False


def test_a_local_transformer_config_is_read_and_a_garbled_one_refused(tmp_path, capsys):
    import json

    (tmp_path / "ok" / "transformer").mkdir(parents=True)
    (tmp_path / "ok" / "transformer" / "config.json").write_text(json.dumps(TRANSFORMERS["flux"]))
    assert main(["inspect", str(tmp_path / "ok")]) == 0
    assert "joint2.ff" in capsys.readouterr().out
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**TRANSFORMERS["sd3"], "num_layers": "four"}))
    assert main(["inspect", str(tmp_path / "bad")]) == 2
    assert "has num_layers='four': it must be a whole number" in capsys.readouterr().err
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"_class_name": "HunyuanDiT2DModel"}))
    assert main(["inspect", str(tmp_path / "odd")]) == 2
    assert "not of a denoiser prunekit prunes" in capsys.readouterr().err
    assert main(["inspect", "flux-dev", "--granularity", "stage"]) == 2
    assert "use one of block, pair" in capsys.readouterr().err
    assert main(["inspect", "flux-dev", "--granularity", "pair"]) == 0  # whole blocks only
    out = capsys.readouterr().out
    assert "single37 " in out and "single37.ff" not in out


@pytest.mark.parametrize("name", ["sd3", "sd3.5", "flux", "pixart"])
def test_the_block_space_costs_every_plan_as_its_built_student(name):
    """Costs add up over blocks, and SD3's correction makes them exact where the new last block is text-free,
    dual-attention ones included."""
    from prunekit.planner.space import make_space

    config = TRANSFORMERS[name]
    space = make_space("diffusers", config)
    assert space.size() == math.prod(2 ** len(names) - 1 for names in space.stacks.values())
    for state in itertools.islice(space.states(), 0, None, 3):
        made = make_plan("m", config, space.remove(state), "by hand")
        for metric in ("params", "macs"):
            assert space.fraction(state, metric) == pytest.approx(made.predicted[f"{metric}_fraction"], abs=1e-12)
    smallest = space.smallest("params")
    assert all(sum(name not in smallest for name in names) == 1 for names in space.stacks.values())
