"""The training stages of tiny-sd: shapes images, tiny-clip, the VAE, the latent pool, the U-Net.

Each stage is a function of tensors and a seed, so the command in `prunekit.tiny.train` only wires
them together. Images are rendered once into a uint8 tensor and every stage samples batches from it.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from prunekit.shapes import judge as attributes
from prunekit.shapes import data as shapes
from prunekit.conditioning import Conditioning
from prunekit.families import config_of, family_of
from prunekit.guidance_tuning import TunedGuidance
from prunekit.schedules import DDPMNoising
from prunekit.tiny.architecture import train_scheduler


class Images:
    """`n` rendered examples of a split: uint8 pixels (n, 3, 64, 64), and caption labels into `captions`."""

    def __init__(self, split: str, n: int, seed: int):
        self.captions = [attrs.caption() for attrs in shapes.split_combinations(split)]
        index = {caption: i for i, caption in enumerate(self.captions)}
        self.pixels = torch.empty(n, 3, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, dtype=torch.uint8)
        self.labels = torch.empty(n, dtype=torch.long)
        for i in range(n):
            image, attrs = shapes.sample(split, i, seed)
            self.pixels[i] = torch.from_numpy(np.array(image)).permute(2, 0, 1)
            self.labels[i] = index[attrs.caption()]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Pixels of `index` as floats in [-1, 1] (the range of `shapes.to_tensor`) on `device`."""
        return self.pixels[index].to(device).float() / 127.5 - 1.0


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on `device` (AMX on recent CPUs), or nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def token_ids(tokenizer: CLIPTokenizer, texts: list[str], device: torch.device) -> torch.Tensor:
    """Token ids of `texts`, padded to the tokenizer's model_max_length."""
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warmup, then a cosine decay to a tenth of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class Progress:
    """Prints one line every `every` steps: stage, step, mean losses since the last line, s/step."""

    def __init__(self, stage: str, steps: int, every: int):
        self.stage, self.steps, self.every = stage, steps, every
        self.losses, self.start = {}, time.perf_counter()
        self.last = self.start

    def update(self, step: int, loss: float, **other_losses: float) -> None:
        for name, value in {"loss": loss, **other_losses}.items():
            self.losses.setdefault(name, []).append(value)
        if (step + 1) % self.every == 0 or step + 1 == self.steps:
            now, count = time.perf_counter(), len(self.losses["loss"])
            means = " ".join(f"{name} {sum(values) / len(values):.4f}" for name, values in self.losses.items())
            print(f"[{self.stage}] step {step + 1}/{self.steps} {means} {(now - self.last) / count:.3f} s/step "
                  f"elapsed {(now - self.start) / 60:.1f} min", flush=True)
            self.losses, self.last = {}, now


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params) -> None:
    """One optimizer step on `loss`, gradients clipped to norm 1."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def train_clip(model: CLIPModel, tokenizer: CLIPTokenizer, images: Images, steps: int, batch_size: int,
               lr: float, seed: int, device: torch.device, bf16: bool, log_every: int) -> None:
    """Contrastive training; images of the same caption in a batch count as positives of each other."""
    generator = torch.Generator().manual_seed(seed)
    ids = token_ids(tokenizer, images.captions, device)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    progress = Progress("tiny-clip", steps, log_every)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, steps, max(1, steps // 20))
        index = torch.randint(len(images), (batch_size,), generator=generator)
        labels = images.labels[index].to(device)
        with autocast(device, bf16):
            logits = model(input_ids=ids[labels], pixel_values=images.batch(index, device)).logits_per_image.float()
        same = (labels[:, None] == labels[None, :]).float()
        target = same / same.sum(dim=1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        optimizer_step(optimizer, loss, model.parameters())
        progress.update(step, loss.item())
    model.eval()


@torch.no_grad()
def clip_retrieval(model: CLIPModel, tokenizer: CLIPTokenizer, images: Images, device: torch.device) -> dict:
    """Per-attribute accuracy of the best-scoring caption among all shapes captions, over `images`."""
    captions = [attrs.caption() for attrs in shapes.all_combinations()]
    text = model.get_text_features(input_ids=token_ids(tokenizer, captions, device))
    text = F.normalize(getattr(text, "pooler_output", text), dim=-1)
    correct = {key: 0 for key in ("size", "color", "shape", "position", "background", "all")}
    for start in range(0, len(images), 256):
        index = torch.arange(start, min(start + 256, len(images)))
        image = model.get_image_features(pixel_values=images.batch(index, device))
        image = F.normalize(getattr(image, "pooler_output", image), dim=-1)
        best = (image @ text.t()).argmax(dim=1).tolist()
        for label, choice in zip(images.labels[index].tolist(), best):
            truth, guess = shapes.parse_caption(images.captions[label]), shapes.parse_caption(captions[choice])
            for key in correct:
                correct[key] += truth == guess if key == "all" else getattr(truth, key) == getattr(guess, key)
    return {key: round(value / len(images), 4) for key, value in correct.items()}


def foreground_weight(pixels: torch.Tensor, shape_weight: float) -> torch.Tensor:
    """Per-pixel loss weights (mean 1 per image): `shape_weight` times more on the shape than on the
    background, told apart by their distance from the top-left pixel (always background)."""
    foreground = ((pixels - pixels[:, :, :1, :1]).abs().amax(dim=1, keepdim=True) > 0.1).float()
    weight = 1 + (shape_weight - 1) * foreground
    return weight / weight.mean(dim=(2, 3), keepdim=True)


def train_vae(vae: AutoencoderKL, images: Images, steps: int, batch_size: int, lr: float, kl_weight: float,
              shape_weight: float, seed: int, device: torch.device, bf16: bool, log_every: int,
              decoder_only: bool = False, overshoot: float = 1.0) -> None:
    """Reconstruction (L1 + MSE, `shape_weight` times heavier on the shape) through the posterior
    mean, plus a small KL term. The shape covers 2-20% of an image: unweighted, a short run learns the
    background and leaves the shapes' colours washed out.

    Decoding the mean rather than a sample: with the posterior's initial unit variance, sampled
    latents drown the colour signal and a short run plateaus with wrong shape colours (measured:
    colour judged right on 13% of reconstructions after 700 steps). The U-Net learns the means too.

    `decoder_only` trains the decoder alone: the encoder, so the latents a U-Net learnt, stay as they are.
    With `overshoot` S > 1, half of its latents are first pushed away from the mean latent by a factor drawn
    from [1, S], still to be decoded as the same image: classifier-free guidance extrapolates along that very
    direction, and an untaught decoder reads the overshoot as another hue.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae.to(device).train()
    params = [p for name, p in vae.named_parameters()
              if not decoder_only or name.startswith(("decoder.", "post_quant_conv."))]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    progress = Progress("vae decoder" if decoder_only else "vae", steps, log_every)
    if overshoot > 1:
        with torch.no_grad():
            center = mean_latent(vae, images, device)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, steps, max(1, steps // 20))
        pixels = images.batch(torch.randint(len(images), (batch_size,), generator=generator), device)
        with autocast(device, bf16):
            with torch.no_grad() if decoder_only else nullcontext():
                posterior = vae.encode(pixels).latent_dist
                latents = posterior.mode()
                if overshoot > 1:
                    latents = overshoot_latents(latents, center, overshoot, generator)
            recon = vae.decode(latents).sample.float()
        error = (recon - pixels).abs() + (recon - pixels).pow(2)
        loss = (foreground_weight(pixels, shape_weight) * error).mean()
        if not decoder_only:
            loss = loss + kl_weight * posterior.kl().mean()
        optimizer_step(optimizer, loss, params)
        progress.update(step, loss.item())
    vae.eval()


def mean_latent(vae: AutoencoderKL, images: Images, device: torch.device, n: int = 2048) -> torch.Tensor:
    """The mean latent (1, C, h, w) of the first `n` images: what an unconditional prediction tends to."""
    return torch.cat([vae.encode(images.batch(torch.arange(start, min(start + 256, n, len(images))), device))
                      .latent_dist.mode() for start in range(0, min(n, len(images)), 256)]).mean(0, keepdim=True)


def overshoot_latents(latents: torch.Tensor, center: torch.Tensor, overshoot: float,
                      generator: torch.Generator, where: torch.Tensor | None = None) -> torch.Tensor:
    """`latents` with every other one moved away from `center` by a factor drawn uniformly from [1, overshoot];
    with `where` (n, 1, h, w) in [0, 1], only that part of each latent moves."""
    factor = 1 + (overshoot - 1) * torch.rand(len(latents), 1, 1, 1, generator=generator)
    factor[::2] = 1.0
    factor = factor.to(latents.device)
    if where is not None:
        factor = 1 + (factor - 1) * where
    return center + factor * (latents - center)


def training_noise(shape: torch.Size, offset: float, generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """Standard normal noise of `shape` (n, c, h, w), plus `offset` times one standard normal value per
    latent channel (offset noise) when `offset` > 0."""
    noise = torch.randn(shape, generator=generator, device=device)
    if offset > 0:
        noise = noise + offset * torch.randn(*shape[:2], 1, 1, generator=generator, device=device)
    return noise


def shape_masks(images: Images, latent_size: int) -> torch.Tensor:
    """Where each image's shape lies on the latent grid (n, 1, latent_size, latent_size): 1 on every latent
    pixel whose patch, or a neighbour's, holds a pixel unlike the image's corner (the uniform background)."""
    pixels = images.pixels.short()
    shape = (pixels - pixels[:, :, :1, :1]).abs().amax(dim=1, keepdim=True).gt(0).float()
    cells = F.adaptive_max_pool2d(shape, latent_size)
    return F.max_pool2d(cells, 3, stride=1, padding=1)


@torch.no_grad()
def vae_check(vae: AutoencoderKL, images: Images, device: torch.device, judged: int = 300) -> dict:
    """Reconstruction error of `images` through the latent mean (0-255 pixel units), and the attribute
    judge's accuracy on the first `judged` reconstructions against their captions."""
    abs_err, max_err, recons = [], [], []
    for start in range(0, len(images), 256):
        pixels = images.batch(torch.arange(start, min(start + 256, len(images))), device)
        recon = vae.decode(vae.encode(pixels).latent_dist.mode()).sample.clamp(-1, 1)
        err = (recon - pixels).abs() * 127.5
        abs_err.append(err.mean(dim=(1, 2, 3)))
        max_err.append(err.amax(dim=(1, 2, 3)))
        recons.append(((recon + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
    abs_err, max_err, recons = torch.cat(abs_err), torch.cat(max_err), torch.cat(recons)[:judged]
    captions = [images.captions[label] for label in images.labels[:judged].tolist()]
    accuracy = attributes.attribute_accuracy([Image.fromarray(r.numpy()) for r in recons], captions)
    return {"mean_abs": round(abs_err.mean().item(), 3), "p99_image_mean_abs": round(abs_err.quantile(0.99).item(), 3),
            "median_image_max_abs": round(max_err.median().item(), 1),
            "judged_attributes": {key: round(value, 4) for key, value in accuracy.items()}}


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, images: Images, device: torch.device) -> torch.Tensor:
    """Latent means of all `images` (unscaled), on the CPU: the U-Net's training set, encoded once."""
    latents = []
    for start in range(0, len(images), 512):
        pixels = images.batch(torch.arange(start, min(start + 512, len(images))), device)
        latents.append(vae.encode(pixels).latent_dist.mode().cpu())
    return torch.cat(latents)


class AttributeProbe(torch.nn.Module):
    """Cosine classifiers of each caption attribute from the mean of a text encoder's hidden states.

    Its loss can only fall by pulling apart the (normalised) mean hidden states of captions that differ
    in one attribute, so it keeps the text encoder from merging two words the U-Net has not learnt yet.
    """

    FIELDS = {"size": shapes.SIZES, "color": shapes.COLORS, "shape": shapes.SHAPES,
              "position": shapes.POSITIONS, "background": shapes.BACKGROUNDS}

    def __init__(self, width: int, captions: list[str], scale: float = 10.0):
        super().__init__()
        self.scale = scale
        self.heads = torch.nn.ModuleList(torch.nn.Linear(width, len(values), bias=False)
                                         for values in self.FIELDS.values())
        parsed = [shapes.parse_caption(caption).as_dict() for caption in captions]
        classes = [[list(values).index(attrs[field]) for field, values in self.FIELDS.items()] for attrs in parsed]
        self.register_buffer("classes", torch.tensor(classes, dtype=torch.long))

    def forward(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the attributes of captions `labels` (indices into `captions`)."""
        pooled = F.normalize(hidden.float().mean(dim=1), dim=-1)
        losses = [F.cross_entropy(self.scale * pooled @ F.normalize(head.weight, dim=-1).t(), self.classes[labels, i])
                  for i, head in enumerate(self.heads)]
        return torch.stack(losses).mean()


def train_unet(unet: torch.nn.Module, text_model: CLIPTextModel | None, tokenizer: CLIPTokenizer,
               latents: torch.Tensor, images: Images, *, frozen: Conditioning | None = None, noising=None, steps: int,
               batch_size: int, lr: float, warmup: int,
               caption_dropout: float, min_snr_gamma: float, ema_decay: float, probe_weight: float, seed: int,
               device: torch.device, overshoot: float = 1.0, overshoot_shape_only: bool = False,
               offset_noise: float = 0.0, tuned: TunedGuidance | None = None, bf16: bool, log_every: int,
               snapshot: Callable[[UNet2DConditionModel, CLIPTextModel, int], None], snapshot_minutes: float,
               max_minutes: float | None, stop_step: int | None = None) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Train the U-Net and its text encoder jointly from scratch with SD's noise schedule; or, with `frozen` (the
    conditioning of every caption and last of the unconditional branch, tiny-sdxl's and tiny-sd3's frozen text
    encoders) and no `text_model`, the denoiser alone (a U-Net or a transformer: its family calls it). `noising`
    (prunekit.schedules) is what it learns to predict: SD's DDPM noising by default, flow matching for tiny-sd3.

    `latents` are scaled latents, one per example of `images` (whose labels give the captions). A
    `caption_dropout` fraction of captions becomes the empty string, for classifier-free guidance. The
    per-sample loss is weighted by the noising's weights (DDPM: min(SNR, gamma) / SNR, Hang et al. 2023). With
    `probe_weight` > 0, an `AttributeProbe` loss on the captioned examples is added at that weight. With
    `overshoot` S > 1, every other clean latent is pushed from the mean latent by a factor in [1, S] before
    noising: guidance at 7.5 drives samples out there, and a U-Net that never saw such latents turns their
    hues (red into yellow) instead of keeping the caption's. `overshoot_shape_only` pushes only the latent
    pixels around the shape. `offset_noise` adds that many standard deviations of one random value per
    latent channel to the noise (Guttenberg 2023), so the U-Net learns to move a whole latent's mean, as a
    white or black background needs: SD's schedule leaves the mean of a noised latent almost intact even
    at its last step, so without it a U-Net takes the mean from the noise and draws mid-tone backgrounds.
    `tuned` trains captioned predictions towards its target (prunekit.guidance_tuning), the empty caption's
    prediction coming from the model being trained.
    Returns the exponential moving averages of both models' weights (the models themselves when
    `ema_decay` is 0); `snapshot` receives them every `snapshot_minutes`; training stops early once
    `max_minutes` have passed, or after `stop_step` steps of the `steps`-step learning-rate schedule.
    """
    noising = noising or DDPMNoising(train_scheduler())
    family = family_of(config_of(unet))
    generator = torch.Generator().manual_seed(seed)
    noise_generator = torch.Generator(device).manual_seed(seed + 1)
    ids = token_ids(tokenizer, images.captions + [""], device)
    empty = len(images.captions)
    latents = latents.to(device)
    center = latents.mean(0, keepdim=True)
    masks = shape_masks(images, latents.shape[-1]) if overshoot > 1 and overshoot_shape_only else None
    models = torch.nn.ModuleList([unet] + ([text_model] if text_model is not None else [])).to(device).train()
    averaged = copy.deepcopy(models).eval().requires_grad_(False) if ema_decay > 0 else models
    probe = AttributeProbe(text_model.config.hidden_size, images.captions).to(device) if probe_weight > 0 else None
    frozen = frozen.to(device) if frozen is not None else None

    def conditioning(rows: torch.Tensor) -> Conditioning:
        """The conditioning of caption rows (`empty` = the unconditional branch)."""
        if frozen is not None:
            return frozen[rows]
        return Conditioning(text_model(ids[rows]).last_hidden_state)
    params = [p for p in models.parameters() if p.requires_grad] + (list(probe.parameters()) if probe else [])
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    progress = Progress("unet", steps, log_every)
    start = last_snapshot = time.perf_counter()
    for step in range(steps if stop_step is None else min(steps, stop_step)):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, steps, warmup)
        index = torch.randint(len(latents), (batch_size,), generator=generator)
        labels = images.labels[index].clone()
        labels[torch.rand(batch_size, generator=generator) < caption_dropout] = empty
        timesteps = noising.sample(batch_size, generator)
        index, labels, timesteps = index.to(device), labels.to(device), timesteps.to(device)
        clean = latents[index]
        noise = training_noise(clean.shape, offset_noise, noise_generator, device)
        where = masks[index.cpu()].to(device) if masks is not None else None
        pushed = overshoot_latents(clean, center, overshoot, generator, where) if overshoot > 1 else clean
        noisy = noising.noisy(pushed, noise, timesteps)
        model_t = noising.model_timestep(timesteps)
        with autocast(device, bf16):
            context = conditioning(labels)
            pred = family.predict(unet, noisy, model_t, context).float()
        captioned = labels != empty
        target = noising.target(pushed, noise, timesteps)
        if tuned is not None and captioned.any():
            with torch.no_grad(), autocast(device, bf16):
                unconditional = conditioning(torch.full((int(captioned.sum()),), empty, device=device))
                unguided = family.predict(unet, noisy[captioned], model_t[captioned], unconditional).float()
            target = target.clone()
            target[captioned] = tuned.target(target[captioned], unguided)
        weight = noising.weight(timesteps, min_snr_gamma)
        loss = (weight * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
        probed = {}
        if probe is not None and captioned.any():
            probed["probe"] = probe(context.embeds[captioned], labels[captioned])
            loss = loss + probe_weight * probed["probe"]
        optimizer_step(optimizer, loss, params)
        if ema_decay > 0:
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(list(averaged.parameters()), list(models.parameters()), 1 - decay)
        progress.update(step, loss.item(), **{name: value.item() for name, value in probed.items()})
        now = time.perf_counter()
        if max_minutes is not None and now - start > max_minutes * 60:
            print(f"[unet] stopped after {step + 1} steps: --max-unet-minutes {max_minutes} reached", flush=True)
            break
        if step + 1 < steps and now - last_snapshot > snapshot_minutes * 60:
            snapshot(averaged[0], averaged[1] if text_model is not None else None, step + 1)
            last_snapshot = time.perf_counter()
    models.eval()
    return averaged[0], averaged[1] if text_model is not None else None
