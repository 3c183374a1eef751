"""`prunekit distill PLAN.json`: build a plan's student from its teacher and retrain it by distillation.

Writes to `out`: logs.csv, tensorboard/, checkpoints/, cache/ (with cache_latents), student/ (a pipeline
directory: the teacher's text encoder, tokenizer, VAE and scheduler with the student U-Net, its manifest
prunekit_student.json and the teacher's card; a diffusers plan's student loads with plain
StableDiffusionPipeline.from_pretrained, either kind with prunekit.students.load_student), student_ema/ (the
EMA U-Net, with ema), eval.json (the teacher, the student before and after training, scored by
prunekit.evaluate, and the U-Net step latency of teacher and student) and images/ (each of those models' first
EVAL_IMAGES evaluation images, from the same prompts and seeds).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from prunekit import worlds
from prunekit.conditioning import check_supported
from prunekit.distill import checkpoints
from prunekit.distill.cache import CachedDataset, Encoder, build_cache, cache_key
from prunekit.distill.data import Captioned, open_source
from prunekit.distill.features import LAYERS, feature_pairs
from prunekit.distill.losses import FEAT_NORMS, Weights
from prunekit.distill.teacher_memo import TeacherMemo
from prunekit.distill.trainer import DTYPES, Distiller, TrainConfig
from prunekit.errors import PrunekitError
from prunekit.families import denoiser_of
from prunekit.evaluate import EvalOptions, evaluate
from prunekit.models import Model, resolve_model
from prunekit.options import check_choice, check_count, check_number, check_output_dir, merged
from prunekit.plan import Plan
from prunekit.rundir import write_atomically
from prunekit.students import pipeline_with, write_manifest

EVAL_KEYS = ("clip_score", "clip_score_real", "clip_score_ratio", "seconds_per_image")
LR_SCHEDULES = ("constant", "cosine", "linear")
EVAL_IMAGES = 4  # evaluation images kept per model, for the report's teacher / before / after grid


@dataclass(frozen=True)
class DistillOptions:
    """How `distill` trains and evaluates (see there); every value is checked here."""

    steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 5e-5
    lr_schedule: str = "constant"
    warmup: int = 0
    schedule_steps: int | None = None
    lambda_task: float = 1.0
    lambda_out: float = 1.0
    lambda_feat: float = 1.0
    feat_norm: str = "none"
    feat_layers: str = "block-out"  # prunekit.distill.features.LAYERS
    caption_dropout: float = 0.0
    ema: bool = False
    ema_decay: float = 0.9999
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    cache_latents: bool = False
    cache_dir: str | None = None  # where the latent cache lives (default OUT/cache): runs may share one
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: bool = False
    seed: int = 0
    num_examples: int | None = None
    num_workers: int = 0
    eval_prompts: str | None = None
    eval_num_prompts: int = 200
    eval_steps: int = 25
    eval_clip_model: str | None = None
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "eval_steps"):
            check_count(name, getattr(self, name))
        check_count("num_examples", self.num_examples, optional=True)
        for name in ("seed", "num_workers", "eval_num_prompts", "warmup"):
            check_count(name, getattr(self, name), minimum=0)
        check_count("schedule_steps", self.schedule_steps, minimum=self.steps, optional=True)
        check_number("lr", self.lr, above=0)
        check_number("ema_decay", self.ema_decay, above=0)
        if self.ema_decay >= 1:
            raise PrunekitError(f"--ema-decay must be below 1, not {self.ema_decay:g}.")
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        lambdas = (self.lambda_task, self.lambda_out, self.lambda_feat)
        for name, value in zip(("lambda_task", "lambda_out", "lambda_feat"), lambdas):
            check_number(name, value, minimum=0)
        if not any(lambdas):
            raise PrunekitError("the loss weights --lambda-task, --lambda-out and --lambda-feat are all 0: give at "
                                "least one a weight.")
        check_choice("feat_norm", self.feat_norm, FEAT_NORMS)
        check_choice("feat_layers", self.feat_layers, LAYERS)
        check_number("caption_dropout", self.caption_dropout, minimum=0)
        if self.caption_dropout >= 1:
            raise PrunekitError(f"--caption-dropout must be below 1, not {self.caption_dropout:g}.")
        check_choice("mixed_precision", self.mixed_precision, tuple(DTYPES))

    def train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, grad_accum=self.grad_accum, lr=self.lr,
                           lr_schedule=self.lr_schedule, warmup=self.warmup, schedule_steps=self.schedule_steps,
                           weights=Weights(self.lambda_task, self.lambda_out, self.lambda_feat),
                           feat_norm=self.feat_norm, feat_layers=self.feat_layers,
                           caption_dropout=self.caption_dropout, ema=self.ema,
                           ema_decay=self.ema_decay,
                           gradient_checkpointing=self.gradient_checkpointing, checkpoint_every=self.checkpoint_every,
                           keep_checkpoints=self.keep_checkpoints, seed=self.seed, num_workers=self.num_workers,
                           progress=self.progress)


# The recipe that recovers tiny-sd's bk-small student (reports/recovery): BK-SDM's three losses with feature KD
# normalised by the teacher (LAPTOP-Diff), a warmed-up cosine learning rate ten times BK-SDM's, the EMA, and
# 10% empty captions so that the unconditional branch guidance needs is distilled too. The CLI's defaults stay
# BK-SDM's own.
RECOVERY = DistillOptions(steps=600, batch_size=32, lr=5e-4, lr_schedule="cosine", warmup=50, ema=True,
                          ema_decay=0.999, caption_dropout=0.1, feat_norm="teacher", cache_latents=True)


def _teacher(plan_path, teacher: str | Model | None) -> tuple[Plan, Model]:
    """The plan and its teacher, the plan checked against the teacher's U-Net (nothing loaded yet)."""
    plan = Plan.load(plan_path)
    model = resolve_model(teacher or plan.model_name)
    check_supported(model.config, model.name)
    plan.check_teacher(model.config, str(plan_path))
    return plan, model


def _evaluate(model: Model, pipe, options: EvalOptions, images: Path) -> tuple[dict, dict]:
    """The metrics of `pipe` sampled as `model`'s card says (for eval.json), and the settings they were measured
    with; its first images go to `images`."""
    result = evaluate(model, replace(options, images=str(images), num_images=EVAL_IMAGES), pipeline=pipe)
    keys = [key for key in result if key in EVAL_KEYS or isinstance(result[key], dict)]
    return {key: result[key] for key in keys}, {key: value for key, value in result.items() if key not in keys}


def _eval_prompts(options: DistillOptions, data: str, dataset, out: Path) -> str:
    """The evaluation's prompt set: the one asked for; else the one of the data's world; else a file of the
    data's first captions."""
    if options.eval_prompts is not None:
        return options.eval_prompts
    world = next((world for world in worlds.WORLDS if data in world.data), None)
    if world is not None:
        return world.eval_prompts
    path = out / "eval_prompts.txt"
    count = min(options.eval_num_prompts, len(dataset))
    path.write_text("\n".join(dataset.source.item(i)[1] for i in range(count)) + "\n")
    return str(path)


class _Evaluation:
    """eval.json, filled as its entries are measured (a resumed run keeps the ones already there)."""

    def __init__(self, path: Path, enabled: bool, run):
        self.path, self.enabled, self.run = path, enabled, run  # run(name, pipe) -> (metrics, settings)
        self.data = json.loads(path.read_text()) if enabled and path.is_file() else {}

    def add(self, name: str, pipe_factory) -> None:
        if not self.enabled or name in self.data:
            return
        self.data.pop("settings", None)
        self.data[name], settings = self.run(name, pipe_factory())
        self.data["settings"] = settings  # last: the measured entries first, in the order measured
        write_atomically(self.path, json.dumps(self.data, indent=2) + "\n")

    def add_latency(self, plan: Plan, config: dict, device) -> None:
        """The U-Net step latency of the teacher and of the plan's student on `device` (prunekit.latency:
        random weights, as latency does not depend on them)."""
        if not self.enabled or "latency" in self.data:
            return
        from prunekit.latency import LatencyMeter

        meter = LatencyMeter(config, str(device), tokens=plan.predicted.get("tokens"))
        timing = meter.describe()
        student_ms = 1000 * meter.seconds(plan.remove, plan.kind)
        self.data = {"latency": {**timing, "student_ms": student_ms, "speedup": timing["teacher_ms"] / student_ms},
                     **self.data}
        write_atomically(self.path, json.dumps(self.data, indent=2) + "\n")


def final_student(evaluation: dict | None) -> str | None:
    """eval.json's entry for the distillation's final student: the EMA weights' where they were kept (None before
    any student was scored after training)."""
    return next((name for name in ("student_after_ema", "student_after") if name in (evaluation or {})), None)


def describe(evaluation: dict | None) -> list[str]:
    """eval.json as lines for a terminal: each model's headline numbers, then the latency."""
    from prunekit.evaluate import headline

    lines = []
    for name, result in (evaluation or {}).items():
        if name not in ("settings", "latency"):
            lines.append(f"{name:>17}  " + "  ".join(f"{key} {value:.3f}" for key, value in headline(result).items()))
    latency = (evaluation or {}).get("latency")
    if latency:
        lines.append(f"{'U-Net step':>17}  teacher {latency['teacher_ms']:.2f} ms, student {latency['student_ms']:.2f} "
                     f"ms: {latency['speedup']:.2f}x ({latency['device']}, {latency['timing']}, batch "
                     f"{latency['batch']})")
    return lines


def _accelerator(out: Path, mixed_precision: str):
    """The run's Accelerator (TensorBoard logs in out/tensorboard); refuses processes that cannot see each other."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    accelerator = Accelerator(mixed_precision=mixed_precision, log_with="tensorboard",
                              project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out)),
                              step_scheduler_with_optimizer=False)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise PrunekitError(f"{launched} processes were launched but accelerate runs each alone: on a machine "
                            "without GPUs set ACCELERATE_USE_CPU=1 for `accelerate launch --multi_gpu`.")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    return accelerator


def _save_student(directory: Path, save, plan: Plan, unet, model: Model) -> None:
    """`save(directory)` (a pipeline's or a U-Net's save_pretrained), then the manifest and the teacher's card."""
    save(directory)
    write_manifest(directory, plan, sum(p.numel() for p in unet.parameters()))
    model.card.write(directory)


def _save(out: Path, plan: Plan, model: Model, trained, ema_model, evaluation: _Evaluation) -> dict:
    """Write out/student (and out/student_ema), score them into eval.json; returns the summary's entries."""
    final = model.pipeline()  # the teacher's parts as saved (float32), not as cast for training
    unet = trained.to("cpu", torch.float32)
    student_pipe = pipeline_with(final, unet)
    _save_student(out / "student", lambda d: student_pipe.save_pretrained(d, safe_serialization=True), plan, unet,
                  model)
    evaluation.add("student_after", lambda: student_pipe)
    saved = {"student_ema": None}
    if ema_model is not None:
        ema_unet = type(trained).from_config(trained.config)
        ema_model.copy_to(ema_unet.parameters())
        _save_student(out / "student_ema", lambda d: ema_unet.save_pretrained(d, safe_serialization=True), plan,
                      ema_unet, model)
        saved["student_ema"] = str(out / "student_ema")
        evaluation.add("student_after_ema", lambda: pipeline_with(final, ema_unet))
    return {**saved, "eval": evaluation.data or None}


def distill(plan: str | Path, data: str | None = None, out: str | Path = "distill", teacher: str | Model | None = None,
            options: DistillOptions | None = None, memo: TeacherMemo | None = None, **changes) -> dict:
    """Retrain the student of `plan` from its teacher by BK-SDM's distillation; returns a summary dict.

    Args:
        plan: a plan.json (prunekit plan) of either kind; it must have been made for the teacher's U-Net.
        data: a world's named data (`shapes`), an imagefolder directory (metadata.jsonl/csv with file_name and
            text) or a hub dataset; default: the data the teacher's card names.
        out: the output directory (see the module docstring).
        teacher: the teacher MODEL (default: the plan's model).
        options: DistillOptions; `changes` are applied to them (`distill(plan, out=..., steps=200)`):
            steps, batch_size (per process), grad_accum, lr: optimizer steps, micro-batch size, micro-batches per
            step, AdamW learning rate (weight decay 1e-2, gradient clipping at 1.0);
            lr_schedule, warmup, schedule_steps: constant (BK-SDM's), cosine or linear decay after `warmup` linear
            warm-up steps, over `schedule_steps` (default `steps`; a longer one stops a run part-way through it);
            lambda_task, lambda_out, lambda_feat, feat_norm: loss weights and feature normalisation
            (prunekit.distill.losses); lambda_out = lambda_feat = 0 is plain fine-tuning, without the teacher;
            feat_layers: the features matched, each stage's output (`block-out`, BK-SDM's) or each kept
            self-attention's (`self-attn`, KOALA's choice for SDXL; prunekit.distill.features);
            caption_dropout: the share of examples trained on the empty caption, so that the unconditional
            prediction classifier-free guidance needs is distilled too;
            ema, ema_decay: keep an exponential moving average of the student's weights (saved to out/student_ema),
            its decay warming up as 1 - (1 + step) ** (-2/3) to at most `ema_decay`;
            mixed_precision: 'no', 'fp16' or 'bf16' (the frozen models run in that dtype; the student trains in
            float32 master weights under autocast); gradient_checkpointing: recompute activations in backward;
            cache_latents, cache_dir: encode images and captions once into `cache_dir` (default out/cache; a
            cache made from other data, teacher or precision is rebuilt) and train from there;
            checkpoint_every, keep_checkpoints, resume: checkpoint interval, how many of the newest are kept;
            continue from the newest;
            seed: seeds data order, flips, noise and timesteps (and a world's generator);
            num_examples: use the first N examples of the data (a world's data: how many to generate);
            num_workers: data-loader worker processes;
            eval_prompts, eval_num_prompts, eval_steps, eval_clip_model: the evaluation of eval.json
            (prunekit.evaluate; default prompts: the data's world's, else the data's first captions);
            eval_num_prompts=0 skips it; progress: show progress bars.
        memo: the teacher's outputs shared with other runs of this teacher (prunekit.distill.teacher_memo): runs
            of one recipe and seed, whatever their plans, then run it once per step between them.

    Returns:
        {"out", "student", "student_ema", "steps", "seconds", "pairs", "data", "skipped_images", "eval"}.
    """
    from prunekit.surgery import build_student

    options = merged(DistillOptions, options, changes)
    out = check_output_dir(out, "distillation")
    plan_obj, model = _teacher(plan, teacher)
    data = data or model.card.data
    if data is None:
        raise PrunekitError(f"{model.name}'s card names no training data: pass --data (an image folder with "
                            "metadata.jsonl, a Hugging Face dataset, or named data such as shapes).")
    source = open_source(data, options.num_examples, options.seed)
    pipe = model.pipeline()
    teacher_net = denoiser_of(pipe)
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    dataset = Captioned(source, teacher_net.config.sample_size * vae_scale, flip=getattr(source, "flip", True),
                        seed=options.seed)
    accelerator = _accelerator(out, options.mixed_precision)
    main = accelerator.is_main_process
    if main and source.skipped:
        print(f"prunekit: skipped {len(source.skipped)} unreadable image(s) of {data} (first: {source.skipped[0]}).",
              file=sys.stderr)
    config = options.train_config()
    checkpoints.check_start(out / "checkpoints", options.resume, config.settings(accelerator))
    accelerator.init_trackers("tensorboard")
    student, _ = build_student(teacher_net, plan_obj)
    pairs = feature_pairs(student, teacher_net, plan_obj.weight_map, layers=options.feat_layers) \
        if options.lambda_feat else []

    enabled = main and options.eval_num_prompts > 0
    prompts = _eval_prompts(options, data, dataset, out) if enabled else None
    scoring = EvalOptions(prompts=prompts, num_prompts=max(1, options.eval_num_prompts), seed=options.seed,
                          steps=options.eval_steps, device=str(accelerator.device),
                          clip_model=options.eval_clip_model, progress=False)
    # teacher and students are all sampled as the teacher's card says
    evaluation = _Evaluation(out / "eval.json", enabled,
                             lambda name, p: _evaluate(model, p, scoring, out / "images" / name))
    evaluation.add("teacher", lambda: pipe)
    evaluation.add("student_before", lambda: pipeline_with(pipe, student))
    evaluation.add_latency(plan_obj, model.config, accelerator.device)
    pipe.to("cpu")  # the evaluation ran on the device in float32; training places and casts what it needs
    accelerator.wait_for_everyone()

    dtype = DTYPES[options.mixed_precision]
    encoder = Encoder(pipe, accelerator.device, dtype)
    empty = encoder.unconditional()  # the unconditional branch's, before a cache takes the encoder
    if options.cache_latents:
        cache = Path(options.cache_dir) if options.cache_dir else out / "cache"
        if main:
            build_cache(cache, dataset, encoder, cache_key(dataset, model.name, dtype), progress=options.progress)
        accelerator.wait_for_everyone()
        encoder.offload()  # not needed while training from the cache
        dataset, encoder = CachedDataset(cache, options.seed), None

    distiller = Distiller(accelerator, student, teacher_net, pipe.scheduler, encoder, dataset, pairs,
                          pipe.vae.config.scaling_factor, config, out, empty,
                          model.card.tuned,  # a tuned student keeps its teacher's target
                          shift_factor=pipe.vae.config.get("shift_factor") or 0.0, memo=memo)
    state = distiller.run(options.resume)
    summary = {"out": str(out), "student": str(out / "student"), "student_ema": None, "steps": state.step,
               "seconds": state.seconds, "pairs": pairs, "data": source.description,
               "skipped_images": len(source.skipped), "eval": None}
    if main:
        summary.update(_save(out, plan_obj, model, *distiller.trained(), evaluation))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary
