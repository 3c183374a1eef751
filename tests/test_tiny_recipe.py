"""The one-command tiny-sd, tiny-sdxl and tiny-sd3 recipes: their smoke forms end to end, and their full arguments."""
import json

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from prunekit.guidance_tuning import TunedGuidance
from prunekit.card import ModelCard
from prunekit.tiny import recipe, train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_smoke_recipe_trains_from_scratch_then_tunes_the_result(tmp_path, capsys):
    model = recipe.main(["--out", str(tmp_path), "--smoke", "--threads", "1"])
    assert model == tmp_path / "2-tuned" / "tiny-sd" and f"recipe done: {model}" in capsys.readouterr().out
    base_metrics = json.loads((tmp_path / "1-base" / "metrics.json").read_text())
    assert {"tiny-clip", "vae", "vae decoder", "unet"} <= set(base_metrics)
    assert (tmp_path / "1-base" / "tiny-clip" / "model.safetensors").is_file()
    tuning_args = json.loads((tmp_path / "2-tuned" / "train_args.json").read_text())["args"]
    assert tuning_args["init"] == str(tmp_path / "1-base" / "tiny-sd") and tuning_args["threads"] == 1

    base, tuned = (StableDiffusionPipeline.from_pretrained(tmp_path / run / "tiny-sd", local_files_only=True)
                   for run in ("1-base", "2-tuned"))
    assert ModelCard.read(model).tuned == TunedGuidance(7.5, 3.0)
    assert ModelCard.read(tmp_path / "1-base" / "tiny-sd").tuned is None
    assert torch.equal(tuned.vae.decoder.conv_out.weight, base.vae.decoder.conv_out.weight)
    assert not torch.equal(tuned.unet.conv_in.weight, base.unet.conv_in.weight)


def test_full_recipe_arguments_are_the_model_cards(tmp_path):
    (tmp_path / "1-base" / "tiny-sd").mkdir(parents=True)
    (tmp_path / "1-base" / "tiny-sd" / "model_index.json").write_text("{}")  # the tuning run's --init check
    base, tuning = (train.parse_args(argv) for argv in recipe.run_arguments(tmp_path, "full", ["--threads", "2"]))
    (sd3,) = (train.parse_args(argv) for argv in recipe.run_arguments(tmp_path, "full", [], "tiny-sd3"))
    assert sd3["sd3"] and sd3["out"] == str(tmp_path / "1-base") and sd3["card_guidance"] == 1.0
    assert (sd3["unet_steps"], sd3["unet_stop_step"], sd3["unet_batch"], sd3["unet_lr"]) == (2000, 1000, 128, 1e-3)
    assert (base["preset"], base["init"], base["threads"]) == ("full", None, 2)
    assert (base["decoder_steps"], base["decoder_overshoot"], base["vae_shape_weight"]) == (2500, 8.0, 5.0)
    assert (base["unet_steps"], base["unet_stop_step"], base["unet_batch"], base["offset_noise"]) == (2000, 1000, 128, 0.2)
    assert base["unet_overshoot_shape_only"] and base["probe_weight"] == 0.05
    assert tuning["init"] == str(tmp_path / "1-base" / "tiny-sd") and tuning["seed"] != base["seed"]
    assert (tuning["tune_guidance"], tuning["tune_guidance_like"], tuning["unet_steps"]) == (7.5, 3.0, 400)


def test_smoke_tiny_sdxl_recipe_builds_an_sdxl_pipeline_around_tiny_sds_parts(tmp_path):
    """tiny-sdxl: tiny-sd's VAE and text encoder and tiny-clip's text tower, frozen, around a new U-Net of SDXL's
    topology (every unit name of sdxl-base); the tuning run changes the U-Net alone."""
    from prunekit.graph import enumerate_units
    from prunekit.models import ASSETS, unet_config

    model = recipe.main(["--model", "tiny-sdxl", "--out", str(tmp_path), "--smoke", "--threads", "1"])
    assert model == tmp_path / "2-tuned" / "tiny-sdxl"
    base, tuned = (StableDiffusionXLPipeline.from_pretrained(tmp_path / run / "tiny-sdxl", local_files_only=True)
                   for run in ("1-base", "2-tuned"))
    sd = StableDiffusionPipeline.from_pretrained(ASSETS / "tiny-sd", local_files_only=True)
    mine, theirs = tuned.text_encoder.state_dict(), sd.text_encoder.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine)
    assert torch.equal(tuned.vae.decoder.conv_out.weight, sd.vae.decoder.conv_out.weight)
    assert tuned.text_encoder_2.config.projection_dim == tuned.unet.config.projection_class_embeddings_input_dim - 48
    assert not torch.equal(tuned.unet.conv_in.weight, base.unet.conv_in.weight)
    assert ModelCard.read(model).tuned == TunedGuidance(7.5, 3.0)
    names = lambda config: [u.name for u in enumerate_units(config, "block", costs=False)]  # noqa: E731
    assert names(dict(tuned.unet.config)) == names(unet_config("sdxl-base"))


def test_smoke_tiny_sd3_recipe_builds_an_sd3_pipeline_without_t5_trained_with_flow_matching(tmp_path):
    """tiny-sd3: tiny-sd's VAE, tiny-clip's text tower and tiny-sd's text encoder (an identity projection), frozen,
    no T5, around a new transformer of SD3-medium's topology (every unit name of sd3-medium)."""
    from diffusers import StableDiffusion3Pipeline

    from prunekit.families import canonical_config
    from prunekit.graph import enumerate_units
    from prunekit.models import ASSETS, resolve_model, unet_config

    model = recipe.main(["--model", "tiny-sd3", "--out", str(tmp_path), "--smoke", "--threads", "1"])
    assert model == tmp_path / "1-base" / "tiny-sd3"
    pipe = resolve_model(str(model)).pipeline()
    assert ModelCard.read(model).guidance == 1.0 and ModelCard.read(model).tuned is None
    assert type(pipe) is StableDiffusion3Pipeline and pipe.text_encoder_3 is None
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    sd = StableDiffusionPipeline.from_pretrained(ASSETS / "tiny-sd", local_files_only=True)
    mine, theirs = pipe.text_encoder_2.text_model.state_dict(), sd.text_encoder.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine)
    assert torch.equal(pipe.text_encoder_2.text_projection.weight, torch.eye(128))
    assert pipe.vae.config.shift_factor == 0.0
    assert canonical_config(dict(pipe.transformer.config)) == canonical_config(unet_config("tiny-sd3"))  # bundled
    names = lambda config: [u.name for u in enumerate_units(config, "block", costs=False)]  # noqa: E731
    assert names(dict(pipe.transformer.config, _class_name="SD3Transformer2DModel")) == names(unet_config("sd3-medium"))
