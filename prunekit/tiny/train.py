"""Retrain tiny-clip and tiny-sd from scratch: `python -m prunekit.tiny.train --out DIR [--preset smoke]`.

Stages, all seeded: render shapes images once; train tiny-clip contrastively (saved to DIR/tiny-clip);
train the VAE and set its scaling_factor from the latents' standard deviation; encode the latent pool
once; train the U-Net and its text encoder jointly, saving the pipeline to DIR/tiny-sd every few minutes
and at the end. DIR/train_args.json records the resolved arguments, DIR/metrics.json what was measured.

`--init PIPELINE` continues a saved tiny-sd instead: its VAE is kept (tiny-clip is not retrained), the
latent pool is encoded with it, and its U-Net and text encoder train for --unet-steps more steps;
with `--fresh-unet` only the VAE and text encoder are kept and a new U-Net trains from scratch.
`--decoder-steps N` fine-tunes the VAE's decoder alone before the U-Net stage; its encoder stays fixed,
so a continued U-Net's latents keep their meaning. `--decoder-overshoot S` and `--unet-overshoot S` show the
decoder and the U-Net latents pushed away from the mean latent, as classifier-free guidance pushes them.
`--tune-guidance G --tune-guidance-like S` trains the U-Net so that guidance G samples as an ordinary model
at S, and records that in the pipeline's prunekit.json (prunekit.guidance_tuning).
`--sdxl --init TINY_SD --clip TINY_CLIP` makes tiny-sdxl instead: tiny-sd's VAE, tokenizer and text encoder and
tiny-clip's text tower with its projection, frozen, around a new U-Net of SDXL's topology, which alone trains
(saved to DIR/tiny-sdxl); `--init` of a saved tiny-sdxl continues its U-Net.
`--sd3 --init TINY_SD --clip TINY_CLIP` makes tiny-sd3: the same VAE and tokenizer, tiny-clip's text tower and
tiny-sd's text encoder (given an identity projection) as SD3's two CLIP encoders, frozen, no T5, and a new
transformer of SD3-medium's topology trained with flow matching (saved to DIR/tiny-sd3); `--init` of a saved
tiny-sd3 continues its transformer.
The shipped models come from two runs of this command each: prunekit.tiny.recipe.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel
from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTextModel, CLIPTextModelWithProjection

from prunekit.conditioning import Conditioning, encode
from prunekit.guidance_tuning import TunedGuidance
from prunekit.card import ModelCard
from prunekit.schedules import FlowMatching
from prunekit.tiny import architecture, stages
from prunekit.tiny.tokenizer import build_tokenizer, save_tokenizer

CARD = ModelCard(prompts="shapes", data="shapes", clip_model="tiny-clip")  # tiny-sd's world (prunekit.shapes)
PRESETS = {
    "full": {
        "images": 20_000, "heldout_images": 1_000,
        "clip_steps": 200, "clip_batch": 128, "clip_lr": 1e-3,
        "vae_steps": 1_000, "vae_batch": 16, "vae_lr": 2e-3, "vae_kl": 1e-6, "vae_shape_weight": 3.0,
        "unet_steps": 1_500, "unet_batch": 64, "unet_lr": 1e-3, "unet_warmup": 100,
        "snapshot_minutes": 5.0, "log_every": 25,
    },
    "smoke": {
        "images": 128, "heldout_images": 32,
        "clip_steps": 2, "clip_batch": 16, "clip_lr": 1e-3,
        "vae_steps": 2, "vae_batch": 8, "vae_lr": 1e-3, "vae_kl": 1e-6, "vae_shape_weight": 3.0,
        "unet_steps": 3, "unet_batch": 8, "unet_lr": 1e-3, "unet_warmup": 1,
        "snapshot_minutes": 5.0, "log_every": 1,
    },
}
DEFAULTS = {
    "init": None, "fresh_unet": False, "sdxl": False, "sd3": False, "clip": None, "seed": 0, "device": "cpu",
    "precision": "fp32",
    "threads": None,
    "unet_widths": "32,64,64,64", "text_width": 128, "text_layers": 3,
    "caption_dropout": 0.1, "min_snr_gamma": 5.0, "ema_decay": 0.998, "probe_weight": 0.0, "unet_overshoot": 1.0,
    "unet_overshoot_shape_only": False, "offset_noise": 0.0,
    "tune_guidance": None, "tune_guidance_like": 1.0, "card_guidance": None,
    "max_unet_minutes": None, "unet_stop_step": None,
    "decoder_steps": 0, "decoder_lr": 5e-4, "decoder_overshoot": 1.0,
}


def parse_args(argv: list[str] | None = None) -> dict:
    """The command's arguments: the preset's values, overridden by any given explicitly."""
    parser = argparse.ArgumentParser(prog="python -m prunekit.tiny.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory (tiny-sd/, tiny-clip/, train_args.json)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full", help="full (default) or smoke (CI)")
    parser.add_argument("--init", help="a saved tiny-sd pipeline to continue: only its U-Net and text encoder train")
    parser.add_argument("--fresh-unet", action="store_true", default=None,
                        help="with --init: keep its VAE and text encoder but train a new U-Net from scratch")
    parser.add_argument("--sdxl", action="store_true", default=None,
                        help="make tiny-sdxl: --init's tiny-sd parts and --clip's text tower around a new SDXL U-Net")
    parser.add_argument("--sd3", action="store_true", default=None,
                        help="make tiny-sd3: --init's tiny-sd parts and --clip's text tower around a new SD3 "
                             "transformer, trained with flow matching")
    parser.add_argument("--clip", help="with --sdxl or --sd3: the tiny-clip whose text tower the model reads")
    parser.add_argument("--seed", type=int, help="seed of every random choice (default 0)")
    parser.add_argument("--device", help="cpu (default) or cuda")
    parser.add_argument("--precision", choices=["bf16", "fp32"], help="fp32 (default; faster on CPU) or bf16 autocast")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--images", type=int, help="train images rendered: the VAE, CLIP and latent pool data")
    parser.add_argument("--heldout-images", type=int, help="held-out images for the CLIP and VAE checks")
    for stage in ("clip", "vae", "unet"):
        parser.add_argument(f"--{stage}-steps", type=int, help=f"{stage} optimizer steps")
        parser.add_argument(f"--{stage}-batch", type=int, help=f"{stage} batch size")
        parser.add_argument(f"--{stage}-lr", type=float, help=f"{stage} peak learning rate (AdamW)")
    parser.add_argument("--decoder-steps", type=int, help="then fine-tune the VAE's decoder alone for this many "
                                                          "steps (the encoder, latents and U-Net stay valid; default 0)")
    parser.add_argument("--decoder-lr", type=float, help="peak learning rate of the decoder fine-tuning (5e-4)")
    parser.add_argument("--unet-overshoot", type=float,
                        help="train the U-Net on every other latent pushed up to this many times further from the "
                             "mean latent, so guided samples stay among latents it knows (default 1: off)")
    parser.add_argument("--unet-overshoot-shape-only", action="store_true", default=None,
                        help="push only the latent pixels around each shape, not the background")
    parser.add_argument("--offset-noise", type=float,
                        help="add this many standard deviations of one value per latent channel to the U-Net's "
                             "training noise, so it learns white and black backgrounds (default 0: off)")
    parser.add_argument("--tune-guidance", type=float,
                        help="train captioned predictions so that sampling at this guidance scale behaves as an "
                             "ordinary model does at --tune-guidance-like (default: off)")
    parser.add_argument("--tune-guidance-like", type=float,
                        help="the guidance scale that --tune-guidance's scale should behave like (default 1)")
    parser.add_argument("--card-guidance", type=float,
                        help="the guidance scale the model card recommends for an untuned model (default SD's 7.5)")
    parser.add_argument("--decoder-overshoot", type=float,
                        help="teach the fine-tuned decoder latents pushed up to this many times further from the "
                             "mean latent, as classifier-free guidance pushes them (default 1: off)")
    parser.add_argument("--vae-kl", type=float, help="weight of the VAE's KL term")
    parser.add_argument("--vae-shape-weight", type=float, help="VAE loss weight of shape pixels over background")
    parser.add_argument("--unet-warmup", type=int, help="U-Net learning-rate warmup steps")
    parser.add_argument("--unet-widths", help="U-Net block_out_channels, comma-separated (default 32,64,64,64)")
    parser.add_argument("--text-width", type=int, help="text encoder hidden size = cross_attention_dim (128)")
    parser.add_argument("--text-layers", type=int, help="text encoder layers (3)")
    parser.add_argument("--caption-dropout", type=float, help="fraction of empty captions (0.1)")
    parser.add_argument("--min-snr-gamma", type=float, help="min-SNR loss weighting gamma (5)")
    parser.add_argument("--ema-decay", type=float, help="EMA decay of the saved U-Net weights; 0 disables (0.998)")
    parser.add_argument("--probe-weight", type=float, help="weight of the text encoder's attribute-probe loss, "
                                                           "which keeps captions' words apart (default 0: off)")
    parser.add_argument("--snapshot-minutes", type=float, help="minutes between pipeline snapshots")
    parser.add_argument("--max-unet-minutes", type=float, help="stop the U-Net early after this long (a safety)")
    parser.add_argument("--unet-stop-step", type=int, help="stop the U-Net after this many steps, keeping the "
                                                           "learning-rate schedule of --unet-steps (replays a run "
                                                           "stopped part-way)")
    parser.add_argument("--log-every", type=int, help="steps between progress lines")
    given = {key: value for key, value in vars(parser.parse_args(argv)).items() if value is not None}
    for flag in ("sdxl", "sd3"):
        if given.get(flag) and not ("init" in given and "clip" in given):
            parser.error(f"--{flag} needs --init (the tiny-sd whose VAE and text encoder it takes) and --clip "
                         "(tiny-clip)")
    if given.get("sdxl") and given.get("sd3"):
        parser.error("--sdxl and --sd3 make different models: give one of them")
    if given.get("fresh_unet") and "init" not in given:
        parser.error("--fresh-unet needs --init: it keeps that pipeline's VAE and text encoder")
    if given.get("unet_overshoot_shape_only") and given.get("unet_overshoot", 1.0) <= 1:
        parser.error("--unet-overshoot-shape-only needs --unet-overshoot above 1: it says where that push applies")
    if "tune_guidance_like" in given and "tune_guidance" not in given:
        parser.error("--tune-guidance-like needs --tune-guidance: it says which guidance scale is tuned")
    if "card_guidance" in given and ("tune_guidance" in given or given["card_guidance"] < 1):
        parser.error("--card-guidance is at least 1, for an untuned model (a tuned one's card takes its tuned scale)")
    if given.get("tune_guidance", 2.0) <= 1 or given.get("tune_guidance_like", 1.0) < 1:
        parser.error("--tune-guidance must be above 1 and --tune-guidance-like at least 1")
    if "init" in given and not (Path(given["init"]) / "model_index.json").is_file():
        parser.error(f"--init {given['init']} is not a saved tiny-sd pipeline (it has no model_index.json)")
    return {**DEFAULTS, **PRESETS[given["preset"]], **given}


def save_replacing(directory: Path, save) -> None:
    """Call save(tmp) then swap tmp into `directory`, so a reader never sees a half-written model."""
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def save_clip(model, tokenizer, directory: Path) -> None:
    """tiny-clip with its tokenizer and a processor whose normalisation matches shapes.to_tensor."""
    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                                   image_mean=[0.5] * 3, image_std=[0.5] * 3)

    def save(path: Path) -> None:
        model.save_pretrained(path)
        CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(path)
        save_tokenizer(tokenizer, path)

    save_replacing(directory, save)


def save_pipeline(pipe, tokenizer, directory: Path, card: ModelCard) -> None:
    """The pipeline's directory (safetensors), each tokenizer with vocab.json and merges.txt, and its model card
    (prunekit.card)."""
    def save(path: Path) -> None:
        pipe.save_pretrained(path, safe_serialization=True)
        for folder in ("tokenizer", "tokenizer_2"):
            if getattr(pipe, folder, None) is not None:
                save_tokenizer(tokenizer, path / folder)
        card.write(path)

    save_replacing(directory, save)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sdxl_parts(args: dict, device: torch.device, tokenizer):
    """tiny-sdxl's frozen VAE (on `device`), its pipeline builder (U-Net -> pipeline) and its U-Net: a new one
    (--sdxl, around tiny-sd's parts and tiny-clip's text tower) or the saved tiny-sdxl's that --init names."""
    source = Path(args["init"])
    if args["sdxl"]:
        vae, text_model, _ = load_parts(source, device)
        text_model_2 = CLIPTextModelWithProjection.from_pretrained(args["clip"])
        torch.manual_seed(args["seed"] + 6)
        unet = architecture.sdxl_unet((text_model.config.hidden_size, text_model_2.config.hidden_size),
                                      text_model_2.config.projection_dim)
    else:
        vae, text_model, unet = load_parts(source, device)
        text_model_2 = CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2")
    texts = [model.eval().requires_grad_(False) for model in (text_model, text_model_2)]
    return vae, lambda denoiser: architecture.sdxl_pipeline(vae, *texts, tokenizer, denoiser), unet


def sd3_parts(args: dict, device: torch.device, tokenizer):
    """tiny-sd3's frozen VAE (on `device`), its pipeline builder (transformer -> pipeline) and its transformer: a
    new one (--sd3, around tiny-sd's VAE, tiny-clip's text tower and tiny-sd's text encoder) or the saved
    tiny-sd3's that --init names."""
    source = Path(args["init"])
    if args["sd3"]:
        vae, tiny_sd_text, _ = load_parts(source, device)
        vae.register_to_config(shift_factor=0.0)  # SD3's pipeline shifts latents; tiny-sd's VAE needs none
        texts = (CLIPTextModelWithProjection.from_pretrained(args["clip"]),
                 architecture.with_identity_projection(tiny_sd_text))
        torch.manual_seed(args["seed"] + 6)
        transformer = architecture.sd3_transformer(tuple(t.config.hidden_size for t in texts),
                                                   sum(t.config.projection_dim for t in texts))
    else:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae").to(device).eval()
        texts = tuple(CLIPTextModelWithProjection.from_pretrained(source, subfolder=folder)
                      for folder in ("text_encoder", "text_encoder_2"))
        transformer = SD3Transformer2DModel.from_pretrained(source, subfolder="transformer")
    texts = [model.eval().requires_grad_(False) for model in texts]
    return vae, lambda denoiser: architecture.sd3_pipeline(vae, *texts, tokenizer, denoiser), transformer


def frozen_conditioning(pipe, captions: list[str]) -> Conditioning:
    """Each caption's conditioning as the pipeline encodes it (its frozen text encoders), then the
    unconditional branch's."""
    captioned = encode(pipe, captions, negative=False, device=torch.device("cpu"))[0]
    unconditional = encode(pipe, [""], negative=True, device=torch.device("cpu"))[1]
    return Conditioning(*(None if a is None else torch.cat([a, b]) for a, b in zip(
        (captioned.embeds, captioned.pooled, captioned.time_ids),
        (unconditional.embeds, unconditional.pooled, unconditional.time_ids))))


def pipeline_class(directory: str | None) -> str | None:
    """The pipeline class a saved pipeline directory names (None without one)."""
    if directory is None:
        return None
    return json.loads((Path(directory) / "model_index.json").read_text()).get("_class_name")


def load_parts(pipeline_dir: Path, device: torch.device):
    """The VAE (on `device`), text encoder and U-Net of a saved tiny-sd pipeline."""
    return (AutoencoderKL.from_pretrained(pipeline_dir, subfolder="vae").to(device).eval(),
            CLIPTextModel.from_pretrained(pipeline_dir, subfolder="text_encoder"),
            UNet2DConditionModel.from_pretrained(pipeline_dir, subfolder="unet"))


def train_from_scratch(args: dict, tokenizer, train_images, heldout_images, out: Path, device, bf16: bool, log):
    """tiny-clip (saved to out/tiny-clip), then the VAE; returns the VAE, a fresh text encoder and U-Net,
    the unscaled latent pool and the VAE's scaling factor."""
    seed = args["seed"]
    torch.manual_seed(seed + 2)
    clip = architecture.tiny_clip(tokenizer)
    stages.train_clip(clip, tokenizer, train_images, args["clip_steps"], args["clip_batch"], args["clip_lr"],
                      seed + 3, device, bf16, args["log_every"])
    save_clip(clip, tokenizer, out / "tiny-clip")
    retrieval = stages.clip_retrieval(clip, tokenizer, heldout_images, device)
    log("tiny-clip", params=count(clip), heldout_retrieval=retrieval)
    del clip

    torch.manual_seed(seed + 4)
    vae = architecture.vae()
    stages.train_vae(vae, train_images, args["vae_steps"], args["vae_batch"], args["vae_lr"], args["vae_kl"],
                     args["vae_shape_weight"], seed + 5, device, bf16, args["log_every"])
    pool = stages.encode_pool(vae, train_images, device)
    scaling = 1.0 / pool.std().item()
    vae.register_to_config(scaling_factor=scaling)
    log("vae", params=count(vae), scaling_factor=scaling, heldout=stages.vae_check(vae, heldout_images, device))

    torch.manual_seed(seed + 6)
    text_model = architecture.text_encoder(tokenizer, args["text_width"], args["text_layers"])
    return vae, text_model, new_unet(args, text_model.config.hidden_size), pool, scaling


def new_unet(args: dict, text_width: int) -> UNet2DConditionModel:
    """A freshly initialised U-Net of --unet-widths attending to a text encoder `text_width` wide."""
    widths = tuple(int(w) for w in args["unet_widths"].split(","))
    return architecture.unet(text_width, widths)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    device, bf16, seed = torch.device(args["device"]), args["precision"] == "bf16", args["seed"]
    versions = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
                "transformers": transformers.__version__, "threads": torch.get_num_threads(), "argv": sys.argv}
    (out / "train_args.json").write_text(json.dumps({"args": args, "versions": versions}, indent=2))
    metrics, started = {}, time.perf_counter()

    def log(stage: str, **values) -> None:
        metrics[stage] = {**values, "minutes": round((time.perf_counter() - started) / 60, 2)}
        print(f"[{stage}] {json.dumps(metrics[stage])}", flush=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    train_images = stages.Images("train", args["images"], seed)
    heldout_images = stages.Images("heldout", args["heldout_images"], seed + 1)
    log("images", train=len(train_images), heldout=len(heldout_images))

    family = args["init"] and pipeline_class(args["init"])
    name = ("tiny-sd3" if args["sd3"] or family == "StableDiffusion3Pipeline" else
            "tiny-sdxl" if args["sdxl"] or family == "StableDiffusionXLPipeline" else "tiny-sd")
    frozen = build = noising = None
    if name != "tiny-sd":
        vae, build, unet = (sd3_parts if name == "tiny-sd3" else sdxl_parts)(args, device, tokenizer)
        pool = stages.encode_pool(vae, train_images, device)
        scaling = vae.config.scaling_factor
        vae.to("cpu")
        if name == "tiny-sd3":
            noising = FlowMatching(architecture.flow_scheduler())
        frozen = frozen_conditioning(build(unet), train_images.captions)
        vae.to(device)
        log("init", source=args["init"], model=name, denoiser_params=count(unet))
    elif args["init"]:
        vae, text_model, unet = load_parts(Path(args["init"]), device)
        pool = stages.encode_pool(vae, train_images, device)
        scaling = vae.config.scaling_factor
        if args["fresh_unet"]:
            torch.manual_seed(seed + 6)
            unet = new_unet(args, text_model.config.hidden_size)
        log("init", source=args["init"], fresh_unet=args["fresh_unet"], unet_params=count(unet))
    else:
        vae, text_model, unet, pool, scaling = train_from_scratch(args, tokenizer, train_images, heldout_images,
                                                                  out, device, bf16, log)
    if args["decoder_steps"]:
        before = stages.vae_check(vae, heldout_images, device)
        stages.train_vae(vae, train_images, args["decoder_steps"], args["vae_batch"], args["decoder_lr"], 0.0,
                         args["vae_shape_weight"], seed + 8, device, bf16, args["log_every"], decoder_only=True,
                         overshoot=args["decoder_overshoot"])
        log("vae decoder", heldout_before=before, heldout=stages.vae_check(vae, heldout_images, device))
    vae.to("cpu")

    tuned = TunedGuidance(args["tune_guidance"], args["tune_guidance_like"]) if args["tune_guidance"] else None
    # the shapes world's prompts, data and CLIP model; a tuned model's card records its tuning and takes its scale
    card = (replace(CARD, guidance=tuned.scale, tuned=tuned) if tuned else
            CARD.with_guidance(args["card_guidance"]) if args["card_guidance"] else CARD)

    def assemble(denoiser, text):
        """The pipeline around a trained denoiser (and tiny-sd's trained text encoder)."""
        return build(denoiser) if build else architecture.pipeline(vae, text or text_model, tokenizer, denoiser)

    def snapshot(unet_model, text, step: int) -> None:
        save_pipeline(assemble(unet_model, text), tokenizer, out / name, card)
        print(f"[unet] snapshot of step {step} saved to {out / name}", flush=True)

    unet_start = time.perf_counter()
    unet, trained_text = stages.train_unet(
        unet, None if build else text_model, tokenizer, pool * scaling, train_images, frozen=frozen, noising=noising,
        steps=args["unet_steps"],
        batch_size=args["unet_batch"], lr=args["unet_lr"], warmup=args["unet_warmup"],
        caption_dropout=args["caption_dropout"], min_snr_gamma=args["min_snr_gamma"], ema_decay=args["ema_decay"],
        probe_weight=args["probe_weight"], overshoot=args["unet_overshoot"],
        overshoot_shape_only=args["unet_overshoot_shape_only"], offset_noise=args["offset_noise"],
        tuned=tuned, seed=seed + 7, device=device, bf16=bf16,
        log_every=args["log_every"], snapshot=snapshot, snapshot_minutes=args["snapshot_minutes"],
        max_minutes=args["max_unet_minutes"], stop_step=args["unet_stop_step"])
    unet_minutes = (time.perf_counter() - unet_start) / 60
    save_pipeline(assemble(unet.to("cpu"), trained_text and trained_text.to("cpu")), tokenizer, out / name, card)
    log("unet", unet_params=count(unet), unet_minutes=round(unet_minutes, 2),
        **({} if build else {"text_encoder_params": count(trained_text or text_model)}))
    print(f"done: {out / name}" + ("" if args["init"] else f" and {out / 'tiny-clip'}"), flush=True)
    return metrics


if __name__ == "__main__":
    main()
