"""The distillation loop on accelerate: the same code on a CPU, one GPU, or `accelerate launch` over many.

One optimizer step: for each of `grad_accum` micro-batches, encode (or read from the cache) the latents
and captions, noise the latents at random timesteps, run the student and (when out- or feature-KD is
on) the frozen teacher on the same input, and back-propagate the weighted losses; then clip the
gradient norm, step AdamW and the LR scheduler, and update the EMA. Every random draw of the step
comes from one generator per process whose state is checkpointed, and the data order from
(seed, epoch), so a resumed run repeats the uninterrupted one exactly.

A step whose loss (averaged over processes) is NaN or infinite stops the run before the optimizer
applies it, keeping the last good checkpoint.
"""
from __future__ import annotations

import csv
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import UNet2DConditionModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from prunekit.conditioning import Conditioning
from prunekit.distill import checkpoints
from prunekit.distill.data import EpochSampler
from prunekit.distill.features import FeatureTaps
from prunekit.distill.losses import Weights, distill_losses
from prunekit.distill.teacher_memo import TeacherMemo
from prunekit.errors import PrunekitError
from prunekit.families import config_of, family_of
from prunekit.schedules import noising_for

LOG_COLUMNS = ("step", "loss", "loss_task", "loss_out", "loss_feat", "lr", "seconds")


class TaskTarget(Protocol):
    """Changes the task loss's target, given the student's prediction for the empty caption (see Distiller)."""

    def target(self, target: torch.Tensor, unguided: torch.Tensor) -> torch.Tensor: ...
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainConfig:
    """The hyper-parameters of one run (BK-SDM's defaults: AdamW 5e-5, constant, weight decay 1e-2, clipping 1.0)."""

    steps: int = 1000
    batch_size: int = 16  # per process
    grad_accum: int = 1
    lr: float = 5e-5
    lr_schedule: str = "constant"  # diffusers.optimization's: constant, cosine, linear, ...
    warmup: int = 0  # steps of linear warm-up
    schedule_steps: int | None = None  # the schedule's length (default `steps`): a run stopped early keeps it
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    weights: Weights = field(default_factory=Weights)
    feat_norm: str = "none"
    feat_layers: str = "block-out"  # which features the pairs match (prunekit.distill.features.LAYERS)
    caption_dropout: float = 0.0  # share of examples trained on the empty caption
    ema: bool = False
    ema_decay: float = 0.9999  # the EMA's largest decay, reached by diffusers' warm-up 1 - (1 + step) ** (-2/3)
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    seed: int = 0
    num_workers: int = 0
    progress: bool = True

    def settings(self, accelerator: Accelerator) -> dict:
        """What a resumed run must share with the run it continues."""
        return {"batch_size": self.batch_size, "grad_accum": self.grad_accum, "lr": self.lr,
                "lr_schedule": self.lr_schedule, "warmup": self.warmup, "schedule_steps": self.schedule_length,
                "weight_decay": self.weight_decay, "max_grad_norm": self.max_grad_norm,
                "lambda_task": self.weights.task, "lambda_out": self.weights.out, "lambda_feat": self.weights.feat,
                "feat_norm": self.feat_norm, "caption_dropout": self.caption_dropout, "ema": self.ema,
                "ema_decay": self.ema_decay if self.ema else None,
                "seed": self.seed, "mixed_precision": accelerator.mixed_precision,
                "num_processes": accelerator.num_processes,
                **({"feat_layers": self.feat_layers} if self.feat_layers != "block-out" else {})}  # older runs resume

    @property
    def schedule_length(self) -> int | None:
        """The LR schedule's length in optimizer steps (None for a constant schedule, which has none)."""
        if self.lr_schedule == "constant" and not self.warmup:
            return None
        return self.schedule_steps or self.steps


def noise_seed(seed: int, process: int) -> int:
    """The seed of process `process`'s noise generator in a run seeded `seed`."""
    return int(np.random.SeedSequence([seed, process]).generate_state(1)[0])


class Distiller:
    """A student trained from a frozen teacher on one data set: `run()` trains, `trained()` hands it back.

    Args:
        student: the student denoiser (U-Net or transformer), float32 (its trainable master weights).
        teacher: the teacher denoiser; it is frozen, put in eval mode and cast to the compute dtype here.
        scheduler: the teacher pipeline's scheduler; training noises as it implies (prunekit.schedules: a
            DDPMScheduler of its config, or flow matching).
        encoder: the frozen VAE and text encoder(s) (prunekit.distill.cache.Encoder), or None when `dataset`
            yields cached moments and text embeddings.
        dataset: examples of {"pixel_values", "text"} or of {"moments", "text_embeds"} (and "pooled" for SDXL).
        pairs: (student path, teacher path) of every feature to match (prunekit.distill.features).
        scaling_factor: the VAE's latent scaling (and shift: SD3's VAE shifts latents before scaling them).
        empty: the unconditional branch's conditioning (one row, prunekit.conditioning; SDXL's time ids, which
            every example shares, with it): a `caption_dropout` share of the examples train on it (student and
            teacher alike), so that the unconditional prediction guidance needs is distilled too.
        target_hook: a hook that changes the task loss's target of captioned examples: `hook.target(target,
            unguided)` gets the student's own empty-caption prediction for the same noisy input. A
            guidance-tuned teacher's card gives one (prunekit.guidance_tuning.TunedGuidance), so its students
            keep sampling at the teacher's scale as it does.
        memo: teacher outputs shared with other runs that feed the teacher the same inputs
            (prunekit.distill.teacher_memo); None runs the teacher at every step.
    """

    def __init__(self, accelerator: Accelerator, student: UNet2DConditionModel, teacher: UNet2DConditionModel,
                 scheduler, encoder, dataset, pairs: list[tuple[str, str]], scaling_factor: float,
                 config: TrainConfig, out: Path, empty: Conditioning, target_hook: TaskTarget | None = None,
                 shift_factor: float = 0.0, memo: TeacherMemo | None = None):
        self.accelerator, self.config, self.out = accelerator, config, Path(out)
        self.device, self.dtype = accelerator.device, DTYPES[accelerator.mixed_precision]
        self.noising = noising_for(scheduler)
        self.family = family_of(config_of(teacher))
        self.encoder, self.pairs = encoder, pairs
        self.scaling_factor, self.shift_factor = scaling_factor, shift_factor
        self.empty, self.target_hook = empty.to(self.device), target_hook
        self.teacher = teacher.to(self.device, self.dtype).eval().requires_grad_(False)
        if config.gradient_checkpointing:
            student.enable_gradient_checkpointing()
        student.train()
        features = bool(config.weights.feat) and bool(pairs)
        self.student_taps = FeatureTaps(student, [s for s, _ in pairs] if features else [])
        self.memo = memo
        tapped = [t for _, t in pairs] if features else []
        if memo is not None and features:  # every point any student may match: the memo serves them all
            tapped = sorted(set(tapped) | set(self.family.feature_points(self.teacher, config.feat_layers)))
        self.teacher_taps = FeatureTaps(self.teacher, tapped)
        self.ema = None
        if config.ema:
            self.ema = EMAModel(student.parameters(), decay=config.ema_decay, use_ema_warmup=True, power=2 / 3,
                                model_cls=type(student), model_config=student.config)
            self.ema.to(self.device)
        optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        name = "constant_with_warmup" if config.lr_schedule == "constant" and config.warmup else config.lr_schedule
        lr_scheduler = get_scheduler(name, optimizer, num_warmup_steps=config.warmup,
                                     num_training_steps=config.schedule_length or config.steps)
        self.sampler = EpochSampler(len(dataset), config.seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=self.sampler,
                                             drop_last=True, num_workers=config.num_workers,
                                             pin_memory=self.device.type == "cuda")
        self.student, self.optimizer, self.loader, self.lr_scheduler = accelerator.prepare(
            student, optimizer, loader, lr_scheduler)
        if len(self.loader) == 0:
            raise PrunekitError(f"the data holds {len(dataset)} examples, fewer than one batch of "
                                f"{config.batch_size} x {accelerator.num_processes} process(es): lower --batch-size.")
        self.generator = torch.Generator(self.device).manual_seed(noise_seed(config.seed, accelerator.process_index))
        self.checkpoints = self.out / "checkpoints"

    # -- one step -------------------------------------------------------------------------------------

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, Conditioning]:
        if "moments" not in batch:
            return self.encoder.moments(batch["pixel_values"]), self.encoder.text(batch["text"]).to(self.device,
                                                                                                  self.dtype)
        embeds = batch["text_embeds"].to(self.device, self.dtype)
        if "pooled" not in batch:
            return batch["moments"].to(self.device), Conditioning(embeds)
        ids = None if self.empty.time_ids is None else self.empty.time_ids.expand(len(embeds), -1)
        return batch["moments"].to(self.device), Conditioning(embeds, batch["pooled"].to(self.device, self.dtype), ids)

    def losses(self, batch: dict):
        """The losses of one micro-batch (prunekit.distill.losses.Losses), with the graph for backward."""
        moments, context = self._inputs(batch)
        latents = DiagonalGaussianDistribution(moments.float()).sample(self.generator)
        latents = (latents - self.shift_factor) * self.scaling_factor
        noise = torch.randn(latents.shape, generator=self.generator, device=self.device)
        drawn = self.noising.sample(len(latents), self.generator, self.device)
        noisy, timesteps = self.noising.noisy(latents, noise, drawn), self.noising.model_timestep(drawn)
        target = self.noising.target(latents, noise, drawn)
        empty = self.empty.to(self.device, self.dtype).repeat(len(latents))
        dropped = torch.zeros(len(latents), dtype=torch.bool, device=self.device)
        if self.config.caption_dropout:  # the unconditional branch that guidance needs is distilled too
            draws = torch.rand(len(latents), generator=self.generator, device=self.device)
            dropped = draws < self.config.caption_dropout
            context = context.where(dropped, empty)
        if self.target_hook is not None:
            with torch.no_grad():
                unguided = self.family.predict(self.student, noisy, timesteps, empty.to(self.device, torch.float32))
            tuned = self.target_hook.target(target, unguided.float())
            target = torch.where(dropped[:, None, None, None], target, tuned)  # empty captions keep the plain one
        weights = self.config.weights
        with self.student_taps.capture() as student_features:
            prediction = self.family.predict(self.student, noisy, timesteps, context.to(self.device, torch.float32))
        teacher_prediction, teacher_features = None, None
        if weights.needs_teacher:
            teacher_prediction, teacher_features = self._teacher(noisy.to(self.dtype), timesteps, context)
        return distill_losses(prediction, target, weights, teacher_prediction, student_features, teacher_features,
                              self.pairs, self.config.feat_norm)

    def _teacher(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: Conditioning):
        """The teacher's prediction and tapped features for these inputs: the memo's when it holds them."""
        key = None
        if self.memo is not None:
            key = self.memo.key(noisy, timesteps, context.embeds, context.pooled, context.time_ids)
            found = self.memo.get(key, self.teacher_taps.paths)
            if found is not None:
                return found
        with torch.no_grad(), self.teacher_taps.capture() as features:
            prediction = self.family.predict(self.teacher, noisy, timesteps, context)
        if key is not None:
            self.memo.put(key, prediction, features)
        return prediction, features

    def _step(self, batches, step: int) -> list[float]:
        """One optimizer step over `grad_accum` micro-batches; returns [loss, task, out, feat] averaged."""
        accumulate = self.config.grad_accum
        totals = torch.zeros(4, device=self.device)
        for micro in range(accumulate):
            sync = micro == accumulate - 1
            with nullcontext() if sync else self.accelerator.no_sync(self.student):
                losses = self.losses(next(batches))
                self.accelerator.backward(losses.total / accumulate)
            totals += losses.detached() / accumulate
        values = self.accelerator.reduce(totals, reduction="mean")
        if not torch.isfinite(values).all():
            self._diverged(step, values)
        self.accelerator.clip_grad_norm_(self.student.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.accelerator.unwrap_model(self.student).parameters())
        return values.tolist()

    def _diverged(self, step: int, values: torch.Tensor) -> None:
        found = checkpoints.complete(self.checkpoints)
        kept = (f"the last good checkpoint, {found[-1].name}, is kept for --resume" if found
                else "no checkpoint was kept")
        bad = "nan" if torch.isnan(values).any() else "inf"
        raise PrunekitError(f"the loss became {bad} at step {step + 1} and training stopped (it diverged); {kept}; "
                            "if it diverges again, start anew with a lower --lr (or bf16 instead of fp16).")

    # -- data -----------------------------------------------------------------------------------------

    def _batches(self, position: int):
        """Micro-batches from data position `position` (micro-batches already consumed by this process) on."""
        per_epoch = len(self.loader)
        epoch, offset = divmod(position, per_epoch)
        while True:
            self.loader.set_epoch(epoch)
            self.sampler.skip(offset * self.config.batch_size * self.accelerator.num_processes)
            yield from self.loader
            epoch, offset = epoch + 1, 0

    # -- checkpoints ----------------------------------------------------------------------------------

    def save(self, state: checkpoints.State) -> None:
        """Write a checkpoint of `state` (all processes take part) and keep the newest few."""
        accelerator = self.accelerator
        path = checkpoints.partial(self.checkpoints, state.step)
        accelerator.save_state(str(path))
        save_file({"state": self.generator.get_state()}, path / f"noise-{accelerator.process_index}.safetensors")
        if accelerator.is_main_process and self.ema is not None:
            self.ema.save_pretrained(path / "ema")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            checkpoints.write_state(path, state)
            checkpoints.finish(self.checkpoints, state.step, self.config.keep_checkpoints)
        accelerator.wait_for_everyone()

    def restore(self, settings: dict) -> checkpoints.State:
        """Load the newest checkpoint (model, optimizer, scheduler, RNG, EMA, noise generator) and its state."""
        path, state = checkpoints.newest(self.checkpoints, settings)
        self.accelerator.load_state(str(path))
        noise = path / f"noise-{self.accelerator.process_index}.safetensors"
        self.generator.set_state(load_file(noise)["state"])
        if self.ema is not None:
            student = self.accelerator.unwrap_model(self.student)
            self.ema = EMAModel.from_pretrained(path / "ema", model_cls=type(student))
            self.ema.to(self.device)
        return state

    # -- the loop -------------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> checkpoints.State:
        """Train to `config.steps` (from the newest checkpoint when `resume`); returns the final state."""
        config, accelerator = self.config, self.accelerator
        settings = config.settings(accelerator)
        checkpoints.check_start(self.checkpoints, resume, settings)
        if accelerator.is_main_process:
            checkpoints.clear_partials(self.checkpoints)
        accelerator.wait_for_everyone()
        state = self.restore(settings) if resume else checkpoints.State(settings=settings)
        log = _Log(self.out / "logs.csv", state.step, accelerator)
        batches = self._batches(state.batches)
        started, first = time.perf_counter(), state.step
        bar = tqdm(total=config.steps, initial=state.step, desc="distilling", unit="step",
                   disable=not (config.progress and accelerator.is_main_process))
        try:
            while state.step < config.steps:
                loss, task, out, feat = self._step(batches, state.step)
                state.step += 1
                state.batches += config.grad_accum
                seconds = state.seconds + time.perf_counter() - started
                log.write([state.step, loss, task, out, feat, self.lr_scheduler.get_last_lr()[0], round(seconds, 3)])
                bar.set_postfix(task=f"{task:.4f}", out=f"{out:.4f}", feat=f"{feat:.4f}")
                bar.update()
                if state.step % config.checkpoint_every == 0 or state.step == config.steps:
                    done = checkpoints.State(state.step, state.batches, round(seconds, 3), settings)
                    self.save(done)
        finally:
            bar.close()
            log.close()
        if state.step > first:
            state.seconds = round(state.seconds + time.perf_counter() - started, 3)
        return state

    def trained(self) -> tuple[UNet2DConditionModel, EMAModel | None]:
        """The trained student (unwrapped) and its EMA (None when off); hooks removed."""
        self.student_taps.remove()
        self.teacher_taps.remove()
        return self.accelerator.unwrap_model(self.student), self.ema


class _Log:
    """logs.csv (one row per optimizer step) and TensorBoard scalars, written by the main process only.

    Rows past `step` (left by a run killed after its last checkpoint) are dropped when resuming.
    """

    def __init__(self, path: Path, step: int, accelerator: Accelerator):
        self.accelerator = accelerator
        self.file = None
        if not accelerator.is_main_process:
            return
        rows = []
        if step and path.is_file():
            with path.open(newline="") as existing:
                rows = [row for row in csv.DictReader(existing) if int(row["step"]) <= step]
        self.file = path.open("w", newline="")
        self.writer = csv.DictWriter(self.file, LOG_COLUMNS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def write(self, values: list) -> None:
        row = dict(zip(LOG_COLUMNS, values))
        self.accelerator.log({key: value for key, value in row.items() if key not in ("step", "seconds")},
                             step=row["step"])
        if self.file is not None:
            self.writer.writerow(row)
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
