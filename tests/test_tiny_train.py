"""The tiny-sd tokenizer and the shortened (smoke) form of its training command."""
import json
import math

import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPModel, CLIPTokenizer

from prunekit.guidance_tuning import TunedGuidance
from prunekit.card import ModelCard
from prunekit.tiny import architecture
from prunekit.tiny.stages import AttributeProbe, Images, overshoot_latents, shape_masks, training_noise
from prunekit.tiny.tokenizer import build_tokenizer, grammar_words, save_tokenizer
from prunekit.tiny.train import main

CAPTION = "a small red circle in the top left on a white background"


def test_tokenizer_has_one_token_per_grammar_word():
    tokenizer = build_tokenizer()
    for word in grammar_words():
        assert tokenizer.tokenize(word) == [word + "</w>"]
    ids = tokenizer(CAPTION, padding="max_length").input_ids
    assert len(ids) == tokenizer.model_max_length == 32
    assert ids[0] == tokenizer.bos_token_id and ids[13] == tokenizer.eos_token_id


def test_tokenizer_splits_unknown_words_without_unknown_tokens():
    tokenizer = build_tokenizer()
    ids = tokenizer("An astronaut riding a horse, 3 times!").input_ids[1:-1]
    assert tokenizer.eos_token_id not in ids
    assert tokenizer.decode(ids) == "an astronaut riding a horse , 3 times !"


@pytest.mark.parametrize("drop", [None, "tokenizer.json"])
def test_tokenizer_round_trips(tmp_path, drop):
    """From tokenizer.json, or from the project's own vocab.json and merges.txt alone."""
    tokenizer = build_tokenizer()
    save_tokenizer(tokenizer, tmp_path)
    if drop:
        (tmp_path / drop).unlink()
    loaded = CLIPTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert loaded.model_max_length == 32
    assert loaded(CAPTION, padding="max_length").input_ids == tokenizer(CAPTION, padding="max_length").input_ids


def test_unet_has_sd_v1_4_block_topology():
    config = architecture.unet(cross_attention_dim=128).config
    assert config.down_block_types == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert config.mid_block_type == "UNetMidBlock2DCrossAttn"
    assert config.up_block_types == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert config.layers_per_block == 2 and len(config.block_out_channels) == 4


def _one_thread_main(argv: list[str]) -> dict:
    """The training command on one thread (the smoke models are tiny: one thread is fastest)."""
    threads = torch.get_num_threads()
    try:
        return main(argv + ["--threads", "1"])
    finally:
        torch.set_num_threads(threads)


def test_smoke_training_saves_loadable_models(tmp_path):
    _one_thread_main(["--out", str(tmp_path), "--preset", "smoke"])
    args = json.loads((tmp_path / "train_args.json").read_text())["args"]
    assert args["preset"] == "smoke" and args["unet_steps"] == 3
    for path in tmp_path.rglob("*"):
        assert path.suffix not in (".bin", ".pt", ".pth")
        assert path.stat().st_size < 16 * 2**20

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "tiny-sd", local_files_only=True)
    assert pipe.vae.config.scaling_factor != 0.18215
    image = pipe(CAPTION, num_inference_steps=2, guidance_scale=7.5, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3)

    clip = CLIPModel.from_pretrained(tmp_path / "tiny-clip", local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "tiny-clip", local_files_only=True)
    with torch.no_grad():
        out = clip(input_ids=tokenizer([CAPTION], padding="max_length", return_tensors="pt").input_ids,
                   pixel_values=torch.zeros(1, 3, 64, 64))
    assert out.logits_per_image.shape == (1, 1)


def test_init_continues_a_saved_pipeline_keeping_its_vae(tmp_path, capsys):
    _one_thread_main(["--out", str(tmp_path / "first"), "--preset", "smoke"])
    metrics = _one_thread_main(["--out", str(tmp_path / "more"), "--preset", "smoke", "--seed", "1",
                                "--init", str(tmp_path / "first" / "tiny-sd"), "--probe-weight", "0.05",
                                "--unet-overshoot", "4", "--unet-overshoot-shape-only",
                                "--offset-noise", "0.1", "--tune-guidance", "7.5", "--tune-guidance-like", "3",
                                "--unet-steps", "6", "--unet-stop-step", "2"])
    log = capsys.readouterr().out
    assert " probe " in log and "step 2/6" in log and "step 3/6" not in log  # stopped early, on a 6-step schedule
    assert set(metrics) == {"images", "init", "unet"} and not (tmp_path / "more" / "tiny-clip").exists()
    first, more = (StableDiffusionPipeline.from_pretrained(tmp_path / run / "tiny-sd", local_files_only=True)
                   for run in ("first", "more"))
    assert more.vae.config.scaling_factor == first.vae.config.scaling_factor
    assert torch.equal(more.vae.decoder.conv_out.weight, first.vae.decoder.conv_out.weight)
    assert not torch.equal(more.unet.conv_in.weight, first.unet.conv_in.weight)
    assert ModelCard.read(tmp_path / "more" / "tiny-sd").guidance == 7.5
    assert ModelCard.read(tmp_path / "more" / "tiny-sd").tuned == TunedGuidance(7.5, 3.0)

    # fine-tuning the decoder alone leaves the encoder, so the continued U-Net's latents, untouched
    _one_thread_main(["--out", str(tmp_path / "decoder"), "--preset", "smoke", "--init",
                      str(tmp_path / "more" / "tiny-sd"), "--unet-steps", "0", "--decoder-steps", "2",
                      "--decoder-overshoot", "4"])
    tuned = StableDiffusionPipeline.from_pretrained(tmp_path / "decoder" / "tiny-sd", local_files_only=True)
    assert all(torch.equal(a, b) for a, b in zip(tuned.vae.encoder.parameters(), more.vae.encoder.parameters()))
    assert not torch.equal(tuned.vae.decoder.conv_out.weight, more.vae.decoder.conv_out.weight)
    assert torch.equal(tuned.unet.conv_in.weight, more.unet.conv_in.weight)

    # --fresh-unet keeps the VAE and text encoder and starts the U-Net from a seeded initialisation
    _one_thread_main(["--out", str(tmp_path / "fresh"), "--preset", "smoke", "--init",
                      str(tmp_path / "more" / "tiny-sd"), "--fresh-unet", "--unet-steps", "0"])
    fresh = StableDiffusionPipeline.from_pretrained(tmp_path / "fresh" / "tiny-sd", local_files_only=True)
    torch.manual_seed(6)
    initial = architecture.unet(more.text_encoder.config.hidden_size)
    assert all(torch.equal(a, b) for a, b in zip(fresh.unet.parameters(), initial.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(fresh.text_encoder.parameters(), more.text_encoder.parameters()))
    assert torch.equal(fresh.vae.encoder.conv_in.weight, more.vae.encoder.conv_in.weight)


def test_overshoot_moves_every_other_latent_away_from_the_center_only():
    latents, center = torch.randn(64, 4, 2, 2), torch.randn(1, 4, 2, 2)
    moved = overshoot_latents(latents, center, 3.0, torch.Generator().manual_seed(0))
    assert torch.allclose(moved[::2], latents[::2], atol=1e-6)
    factor = ((moved - center) / (latents - center)).flatten(1)
    assert torch.allclose(factor, factor[:, :1].expand_as(factor), atol=1e-4)  # the same direction, only longer
    assert factor[1::2].min() >= 1 and factor[1::2].max() <= 3 and factor[1::2].std() > 0.3


def test_shape_only_overshoot_leaves_the_background_where_it_was():
    latents, center = torch.randn(8, 4, 2, 2), torch.randn(1, 4, 2, 2)
    where = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).expand(8, 1, 2, 2)
    everywhere = overshoot_latents(latents, center, 3.0, torch.Generator().manual_seed(0))
    moved = overshoot_latents(latents, center, 3.0, torch.Generator().manual_seed(0), where)
    assert torch.equal(moved[..., 0, 0], everywhere[..., 0, 0])
    assert torch.allclose(moved[..., 1:, :], latents[..., 1:, :], atol=1e-6)
    assert torch.allclose(moved[..., 0, 1], latents[..., 0, 1], atol=1e-6)


def test_shape_masks_cover_each_shape_and_little_else():
    images = Images("train", 16, seed=0)
    masks = shape_masks(images, 16)
    shape = (images.pixels.short() - images.pixels[:, :, :1, :1].short()).abs().amax(1, keepdim=True) > 0
    covered = masks.repeat_interleave(4, 2).repeat_interleave(4, 3) > 0
    assert covered[shape].all() and shape.any()
    assert 0 < masks.mean() < 0.5 and masks.flatten(1).min(dim=1).values.eq(0).all()


def test_attribute_probe_loss_falls_only_by_separating_captions():
    left, right = CAPTION, CAPTION.replace("left", "right")
    torch.manual_seed(0)
    probe = AttributeProbe(width=16, captions=[left, right]).requires_grad_(False)
    assert probe.classes.tolist() == [[0, 0, 0, 1, 0], [0, 0, 0, 2, 0]]
    # captions that differ in their column only, encoded alike: the position head cannot beat a coin toss
    hidden = torch.randn(1, 5, 16).repeat(2, 1, 1).requires_grad_(True)
    labels = torch.tensor([0, 1])
    coin_toss = math.log(2) / len(AttributeProbe.FIELDS)
    before = probe(hidden, labels).item()
    assert before >= coin_toss
    optimizer = torch.optim.Adam([hidden], lr=0.05)
    for _ in range(50):
        optimizer.zero_grad()
        probe(hidden, labels).backward()
        optimizer.step()
    assert probe(hidden, labels).item() < before - coin_toss / 2
    assert torch.nn.functional.cosine_similarity(*hidden.mean(dim=1), dim=0).item() < 0.9


def test_init_must_be_a_saved_pipeline(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--init", str(tmp_path)])
    assert exit_info.value.code == 2 and "is not a saved tiny-sd pipeline" in capsys.readouterr().err


def test_fresh_unet_needs_init(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--fresh-unet"])
    assert exit_info.value.code == 2 and "--fresh-unet needs --init" in capsys.readouterr().err


def test_offset_noise_shifts_each_latent_channel_as_a_whole():
    shape = torch.Size([512, 4, 16, 16])
    plain = training_noise(shape, 0.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    offset = training_noise(shape, 0.5, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(plain, training_noise(shape, 0.0, torch.Generator().manual_seed(0), torch.device("cpu")))
    shift = offset - plain
    assert torch.allclose(shift, shift[..., :1, :1].expand_as(shift), atol=1e-5)  # one value per latent channel
    assert abs(shift[..., 0, 0].std().item() - 0.5) < 0.05 and plain.mean(dim=(2, 3)).std() < 0.1


def test_shape_only_overshoot_needs_an_overshoot(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--unet-overshoot-shape-only"])
    assert exit_info.value.code == 2 and "needs --unet-overshoot above 1" in capsys.readouterr().err


@pytest.mark.parametrize("arguments, message", [
    (["--tune-guidance-like", "3"], "--tune-guidance-like needs --tune-guidance"),
    (["--tune-guidance", "1"], "--tune-guidance must be above 1"),
    (["--tune-guidance", "7.5", "--tune-guidance-like", "0.5"], "--tune-guidance-like at least 1"),
    (["--card-guidance", "0.5"], "--card-guidance is at least 1"),
    (["--card-guidance", "4", "--tune-guidance", "7.5"], "a tuned one's card takes its tuned scale"),
    (["--sdxl", "--sd3", "--init", ".", "--clip", "."], "--sdxl and --sd3 make different models"),
])
def test_tune_guidance_rejects_bad_scales(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path)] + arguments)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
