"""The bundled tiny-sdxl: shipped, offline, sdxl-base's unit graph, the SDXL presets apply, the sizes, the loop."""
import pytest

from prunekit.graph import GRANULARITIES, enumerate_units
from prunekit.models import ASSETS, resolve_model, unet_config
from prunekit.plan import make_preset, presets_for

MB = 1024 * 1024


def test_tiny_sdxl_is_shipped_within_its_size_limits():
    files = [path for path in (ASSETS / "tiny-sdxl").rglob("*") if path.is_file()]
    assert max(path.stat().st_size for path in files) < 16 * 10**6  # each file under 16 MB
    assert sum(path.stat().st_size for path in files) < 40 * MB  # the package grows by at most 40 MB
    assert (ASSETS / "tiny-sdxl" / "README.md").is_file()
    guidance = resolve_model("tiny-sdxl").card.guidance
    assert f"recommended guidance: {guidance:g}" in (ASSETS / "tiny-sdxl" / "README.md").read_text()


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_tiny_sdxl_has_exactly_sdxl_base_units(granularity):
    tiny = [u.name for u in enumerate_units(unet_config("tiny-sdxl"), granularity, costs=False)]
    assert tiny == [u.name for u in enumerate_units(unet_config("sdxl-base"), granularity, costs=False)]


@pytest.mark.parametrize("preset", ["koala-like", "ssd-like"])
def test_sdxl_presets_apply_to_tiny_sdxl_as_to_sdxl_base(preset):
    assert presets_for(unet_config("tiny-sdxl")) == ["koala-like", "ssd-like"]
    tiny, base = (make_preset(preset, name, unet_config(name)) for name in ("tiny-sdxl", "sdxl-base"))
    assert tiny.remove == base.remove and 0 < tiny.predicted["params_fraction"] < 1


def test_loads_and_generates_offline_with_plain_diffusers(generates_offline):
    generates_offline("StableDiffusionXLPipeline", ASSETS / "tiny-sdxl",
                      checks=("assert type(pipe.scheduler).__name__ == 'EulerDiscreteScheduler'",
                              "assert type(pipe.text_encoder_2).__name__ == 'CLIPTextModelWithProjection'"))


@pytest.mark.slow
def test_the_loop_runs_on_tiny_sdxl(tmp_path):
    """sweep (transformer layers included) -> plan at koala-like's cost -> distill -> a plain SDXL pipeline."""
    from diffusers import StableDiffusionXLPipeline

    from prunekit.distill import distill
    from prunekit.planner import plan
    from prunekit.sensitivity import sensitivity

    units = ["down2.attn0.t9", "down2.attn1.t9", "mid.attn0.t9", "up0.attn0.t9", "up0.attn1.t9", "up0.attn2.t9"]
    sensitivity("tiny-sdxl", out=str(tmp_path / "run"), granularity="block", num_prompts=2, steps=4, progress=False)
    made = plan("tiny-sdxl", budget=0.8, sensitivity=str(tmp_path / "run"), method="optuna", trials=40,
                progress=False)
    assert made.predicted["params_fraction"] <= 0.8 and any(name in made.remove for name in units + ["mid"])
    summary = distill(tmp_path / "run" / "plan.json", out=tmp_path / "out", steps=2, batch_size=4, num_examples=16,
                      eval_num_prompts=0, feat_layers="self-attn", cache_latents=True, progress=False)
    student = StableDiffusionXLPipeline.from_pretrained(summary["student"], local_files_only=True)
    assert sum(p.numel() for p in student.unet.parameters()) == made.predicted["params"]
