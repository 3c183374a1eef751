"""The bundled tiny-sd and tiny-clip: shipped, offline, SD-v1.4's unit graph, presets apply, sizes."""
import subprocess
import sys

import pytest

from prunekit.graph import GRANULARITIES, enumerate_units
from prunekit.models import ASSETS, resolve_model, unet_config
from prunekit.plan import make_preset, presets_for

MB = 1024 * 1024


def test_assets_are_shipped_in_safetensors_within_size_limits():
    files = [path for path in ASSETS.rglob("*") if path.is_file()]
    weights = [path for path in files if path.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(path.suffix == ".safetensors" for path in weights)
    assert max(path.stat().st_size for path in files) < 16 * MB
    tiny_sd = [path for path in files if path.parts[len(ASSETS.parts)] in ("tiny-sd", "tiny-clip")]
    assert sum(path.stat().st_size for path in tiny_sd) < 40 * MB
    assert (ASSETS / "tiny-sd" / "model_index.json").is_file() and (ASSETS / "tiny-sd" / "README.md").is_file()


def test_tiny_sd_samples_by_default_at_the_guidance_its_model_card_states():
    guidance = resolve_model("tiny-sd").card.guidance  # from prunekit/assets/tiny-sd/prunekit.json
    assert f"recommended guidance: {guidance:g}" in (ASSETS / "tiny-sd" / "README.md").read_text()


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_tiny_sd_has_exactly_sd_v1_4_units(granularity):
    tiny = [u.name for u in enumerate_units(unet_config("tiny-sd"), granularity, costs=False)]
    sd = [u.name for u in enumerate_units(unet_config("sd-v1-4"), granularity, costs=False)]
    assert tiny == sd


@pytest.mark.parametrize("preset", presets_for(unet_config("sd-v1-4")))
def test_bk_presets_apply_to_tiny_sd(preset):
    plan = make_preset(preset, "tiny-sd", unet_config("tiny-sd"))
    sd_plan = make_preset(preset, "sd-v1-4", unet_config("sd-v1-4"))
    assert plan.remove == sd_plan.remove
    assert 0 < plan.predicted["params_fraction"] < 1


def test_loads_and_generates_offline_with_plain_diffusers(tmp_path):
    code = (
        "import torch; from diffusers import StableDiffusionPipeline; from transformers import CLIPModel\n"
        f"pipe = StableDiffusionPipeline.from_pretrained({str(ASSETS / 'tiny-sd')!r}, local_files_only=True)\n"
        "pipe.set_progress_bar_config(disable=True)\n"
        "image = pipe('a large red circle in the center on a white background', num_inference_steps=2,"
        " generator=torch.Generator().manual_seed(0)).images[0]\n"
        "assert image.size == (64, 64), image.size\n"
        "assert type(pipe.scheduler).__name__ == 'PNDMScheduler' and pipe.safety_checker is None\n"
        f"CLIPModel.from_pretrained({str(ASSETS / 'tiny-clip')!r}, local_files_only=True)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
