"""Model aliases, local directories, fingerprints, and fast clear failure when the hub is out of reach."""
import json
import time

import pytest
import torch
from diffusers import UNet2DConditionModel

from prunekit import models
from prunekit.card import FILE as CARD_FILE
from prunekit.card import SD_GUIDANCE, ModelCard
from prunekit.errors import PrunekitError
from prunekit.guidance_tuning import TunedGuidance

SMALL = {"block_out_channels": [32, 64], "norm_num_groups": 8, "cross_attention_dim": 16, "attention_head_dim": 4,
         "sample_size": 8, "layers_per_block": 1,
         "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}


def test_aliases_build_on_meta_without_download():
    unet = models.load_unet("sd-v1-4")
    assert next(unet.parameters()).device.type == "meta"
    assert models.unet_config("sd-v2-1")["sample_size"] == 96


def test_fingerprint_is_stable_and_tells_architectures_apart():
    a = models.fingerprint(models.unet_config("sd-v1-4"))
    assert a == models.fingerprint(models.load_unet("sd-v1-5"))  # same architecture
    assert a != models.fingerprint(models.unet_config("sd-v2-1-base"))
    assert a.startswith("sha256:")
    # defaults filled in: an explicit default value does not change the fingerprint
    assert models.fingerprint({**SMALL, "act_fn": "silu"}) == models.fingerprint(SMALL)


def test_local_config_only_directories(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "config.json").write_text(json.dumps(SMALL))
    (tmp_path / "pipe" / "unet").mkdir(parents=True)
    (tmp_path / "pipe" / "unet" / "config.json").write_text(json.dumps(SMALL))
    for folder in ("flat", "pipe"):
        assert list(models.load_unet(str(tmp_path / folder)).config.block_out_channels) == [32, 64]
    with pytest.raises(PrunekitError, match="no denoiser config"):
        models.unet_config(str(tmp_path))


def test_local_weights_load(tmp_path):
    unet = UNet2DConditionModel(**SMALL)
    unet.save_pretrained(tmp_path / "unet")
    loaded = models.load_unet(str(tmp_path), weights=True)
    assert torch.equal(loaded.conv_in.weight, unet.conv_in.weight)


def test_unknown_model_is_a_user_error():
    with pytest.raises(PrunekitError, match="unknown model"):
        models.locate("no-such-model")


@pytest.mark.parametrize("offline", ["1", ""])
def test_hub_weights_fail_fast_and_clearly_offline(monkeypatch, tmp_path, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    for load in (lambda: models.load_unet("sd-v1-4", weights=True), lambda: models.resolve_model("sd-v1-4").pipeline(),
                 lambda: models.unet_config("someone/some-model")):
        start = time.perf_counter()
        with pytest.raises(PrunekitError, match="local directory"):
            load()
        assert time.perf_counter() - start < 10


def test_the_card_gives_guidance_from_the_pipeline_directory(tmp_path):
    assert models.resolve_model("sd-v1-4").card.guidance == SD_GUIDANCE == 7.5  # hub models: SD's scale
    assert ModelCard.read(tmp_path).guidance == 7.5  # a directory without prunekit.json
    ModelCard(guidance=1.5).write(tmp_path)
    assert ModelCard.read(tmp_path).guidance == 1.5
    # a model resolved once carries its card: a pipeline rebuilt from its parts is sampled by it, not by a guess
    assert models.resolve_model(str(tmp_path)).card.guidance == 1.5
    for bad, message in (('{"guidance_scale": 0.5}', "guidance_scale of at least 1"),
                         ('{"guidance": 2}', "unknown key.*guidance:"), ("[2]", "guidance_scale of at least 1"),
                         ("not json", "guidance_scale of at least 1"), ('{"prompts": 3}', "prompts must be text")):
        (tmp_path / CARD_FILE).write_text(bad)
        with pytest.raises(PrunekitError, match=message):
            ModelCard.read(tmp_path)


def test_guidance_tuning_is_recorded_beside_the_scale_and_kept_when_the_scale_changes(tmp_path):
    assert ModelCard.read(tmp_path).tuned is None and models.resolve_model("sd-v1-4").card.tuned is None
    ModelCard(guidance=7.5, tuned=TunedGuidance(7.5, 3.0), prompts="shapes").write(tmp_path)
    ModelCard.read(tmp_path).with_guidance(5.0).write(tmp_path)  # a guidance sweep records another scale
    card = ModelCard.read(tmp_path)
    assert card.guidance == 5.0 and card.tuned == TunedGuidance(7.5, 3.0) and card.prompts == "shapes"
    for bad in ('{"guidance_scale": 2, "tuned_guidance": {"scale": 7.5}}',
                '{"guidance_scale": 2, "tuned_guidance": 7.5}'):
        (tmp_path / CARD_FILE).write_text(bad)
        with pytest.raises(PrunekitError, match="tuned_guidance must be an object"):
            ModelCard.read(tmp_path)
    with pytest.raises(PrunekitError, match="scale above 1"):
        TunedGuidance(1.0, 1.0)


def test_a_tuned_target_makes_the_tuned_scale_sample_as_the_ordinary_one():
    noise, unguided = torch.randn(2, 8, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    target = TunedGuidance(7.5, 3.0).target(noise, unguided)
    assert torch.allclose(unguided + 7.5 * (target - unguided), unguided + 3.0 * (noise - unguided), atol=1e-5)
    assert torch.allclose(TunedGuidance(2.0, 2.0).target(noise, unguided), noise)
