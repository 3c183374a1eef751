"""The bundled tiny-sd3: shipped, offline, sd3-medium's unit graph, the transformer presets apply, the sizes, the
text length its MACs are counted at, and the loop."""
import pytest

from prunekit.graph import enumerate_units
from prunekit.models import ASSETS, resolve_model, unet_config
from prunekit.plan import make_preset, presets_for

MB = 1024 * 1024


def test_tiny_sd3_is_shipped_within_its_size_limits():
    files = [path for path in (ASSETS / "tiny-sd3").rglob("*") if path.is_file()]
    assert max(path.stat().st_size for path in files) < 16 * 10**6  # each file under 16 MB
    assert sum(path.stat().st_size for path in files) < 40 * MB  # the package grows by at most 40 MB
    guidance = resolve_model("tiny-sd3").card.guidance
    assert f"recommended guidance: {guidance:g}" in (ASSETS / "tiny-sd3" / "README.md").read_text()


@pytest.mark.parametrize("granularity", ["block", "pair"])
def test_tiny_sd3_has_exactly_sd3_mediums_units(granularity):
    tiny = [u.name for u in enumerate_units(unet_config("tiny-sd3"), granularity, costs=False)]
    assert tiny == [u.name for u in enumerate_units(unet_config("sd3-medium"), granularity, costs=False)]


@pytest.mark.parametrize("preset", ["half-depth", "flux-lite-like"])
def test_transformer_presets_apply_to_tiny_sd3_as_to_sd3_medium(preset):
    assert presets_for(unet_config("tiny-sd3")) == ["half-depth", "flux-lite-like"]
    tiny, medium = (make_preset(preset, name, unet_config(name)) for name in ("tiny-sd3", "sd3-medium"))
    assert tiny.remove == medium.remove and 0 < tiny.predicted["params_fraction"] < 1


def test_its_macs_are_counted_at_its_33_text_tokens():
    """Two CLIP tokenizers of 32 tokens, and one zero token in the absent T5's place."""
    assert resolve_model("tiny-sd3").tokens == 33


def test_loads_and_generates_offline_with_plain_diffusers(generates_offline):
    generates_offline("StableDiffusion3Pipeline", ASSETS / "tiny-sd3", load=", text_encoder_3=None, tokenizer_3=None",
                      call=", max_sequence_length=1",
                      checks=("assert type(pipe.scheduler).__name__ == 'FlowMatchEulerDiscreteScheduler'",
                              "assert type(pipe.transformer).__name__ == 'SD3Transformer2DModel'"))


@pytest.mark.slow
def test_the_loop_runs_on_tiny_sd3(tmp_path):
    """sweep (blocks and their attention and feed-forward) -> plan at half-depth's cost -> distill -> a plain SD3
    pipeline whose transformer has the plan's parameters."""
    from diffusers import StableDiffusion3Pipeline

    from prunekit.distill import distill
    from prunekit.planner import plan
    from prunekit.sensitivity import sensitivity

    sensitivity("tiny-sd3", out=str(tmp_path / "run"), mode="mse", granularity="block", num_prompts=2, timesteps=2,
                progress=False)
    made = plan("tiny-sd3", budget="half-depth", sensitivity=str(tmp_path / "run"), method="optuna", trials=40,
                progress=False)
    half = make_preset("half-depth", "tiny-sd3", unet_config("tiny-sd3"), 33).predicted
    assert made.predicted["params_fraction"] <= half["params_fraction"] + 1e-4 and made.predicted["tokens"] == 33
    summary = distill(tmp_path / "run" / "plan.json", out=tmp_path / "out", steps=2, batch_size=4, num_examples=16,
                      eval_num_prompts=0, cache_latents=True, progress=False)
    student = StableDiffusion3Pipeline.from_pretrained(summary["student"], local_files_only=True, text_encoder_3=None,
                                                       tokenizer_3=None)
    assert sum(p.numel() for p in student.transformer.parameters()) == made.predicted["params"]
