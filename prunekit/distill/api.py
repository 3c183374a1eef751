"""`prunekit distill PLAN.json`: build a plan's student from its teacher and retrain it by distillation.

Writes to `out`: logs.csv, tensorboard/, checkpoints/, cache/ (with cache_latents), student/ (a
diffusers pipeline directory: the teacher's text encoder, tokenizer, VAE and scheduler with the student
U-Net, loadable by StableDiffusionPipeline.from_pretrained without prunekit), student_ema/ (the EMA
U-Net, with ema) and eval.json (the teacher, the student before and after training, scored by
prunekit.evaluate).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from prunekit.distill import checkpoints
from prunekit.distill.cache import CachedDataset, Encoder, build_cache, cache_key
from prunekit.distill.data import SHAPES, Captioned, open_source
from prunekit.distill.features import feature_pairs
from prunekit.distill.losses import FEAT_NORMS, Weights
from prunekit.distill.trainer import DTYPES, Distiller, TrainConfig
from prunekit.errors import PrunekitError
from prunekit.models import load_pipeline, recommended_guidance, tuned_guidance, write_recommended_guidance

EVAL_KEYS = ("attribute_accuracy", "clip_score", "clip_score_real", "clip_score_ratio", "seconds_per_image")


def _check(steps, batch_size, grad_accum, checkpoint_every, feat_norm, mixed_precision, lambdas) -> None:
    for name, value in (("steps", steps), ("batch_size", batch_size), ("grad_accum", grad_accum),
                        ("checkpoint_every", checkpoint_every)):
        if value < 1:
            raise PrunekitError(f"{name} must be at least 1, not {value}.")
    if feat_norm not in FEAT_NORMS:
        raise PrunekitError(f"unknown feature normalisation {feat_norm!r}: use one of {', '.join(FEAT_NORMS)}.")
    if mixed_precision not in DTYPES:
        raise PrunekitError(f"unknown mixed precision {mixed_precision!r}: use one of {', '.join(DTYPES)}.")
    if any(value < 0 for value in lambdas) or not any(lambdas):
        raise PrunekitError("the loss weights must be non-negative and not all zero.")


def _teacher(plan_path, teacher: str | None):
    """The plan, checked against the teacher's U-Net, and the teacher pipeline (float32, CPU)."""
    from prunekit.plan import Plan

    plan = Plan.load(plan_path)
    model = teacher or plan.model_name
    pipe = load_pipeline(model)
    if getattr(pipe.unet.config, "addition_embed_type", None) is not None:
        raise PrunekitError(f"{model}'s U-Net takes added conditioning (SDXL-like), which distillation does not "
                            "support yet: use an SD-1/SD-2-like teacher.")
    plan.check_teacher(dict(pipe.unet.config), str(plan_path))
    return plan, pipe, model


def _evaluate(pipe, device, prompts, num_prompts: int, steps: int, guidance: float, clip_model,
              seed: int) -> tuple[dict, dict]:
    """The metrics of `pipe` (for eval.json) and the settings they were measured with."""
    from prunekit.evaluate import evaluate

    result = evaluate(pipe, prompts=prompts, num_prompts=num_prompts, seed=seed, steps=steps, guidance=guidance,
                      device=str(device), clip_model=clip_model, progress=False)
    settings = {key: value for key, value in result.items() if key not in EVAL_KEYS}
    return {key: result[key] for key in EVAL_KEYS if key in result}, settings


def _eval_prompts(prompts: str | None, data: str, dataset, out: Path, count: int) -> str:
    """`prompts` if given; else 'shapes' for shapes data, or a file of the data's first captions."""
    if prompts is not None:
        return prompts
    if data == SHAPES:
        return SHAPES
    path = out / "eval_prompts.txt"
    path.write_text("\n".join(dataset.source.item(i)[1] for i in range(min(count, len(dataset)))) + "\n")
    return str(path)


class _Evaluation:
    """eval.json, filled as its entries are measured (a resumed run keeps the ones already there)."""

    def __init__(self, path: Path, enabled: bool, run):
        self.path, self.enabled, self.run = path, enabled, run
        self.data = json.loads(path.read_text()) if enabled and path.is_file() else {}

    def add(self, name: str, pipe_factory) -> None:
        if not self.enabled or name in self.data:
            return
        self.data.pop("settings", None)
        self.data[name], settings = self.run(pipe_factory())
        self.data["settings"] = settings  # last: the measured entries first, in the order measured
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def _pipeline(teacher_pipe, unet):
    """A pipeline of the teacher's class, components and settings, with `unet` in place of its U-Net."""
    settings = {key: teacher_pipe.config[key] for key in ("requires_safety_checker",) if key in teacher_pipe.config}
    return type(teacher_pipe)(**{**teacher_pipe.components, "unet": unet}, **settings)


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


def _save(out: Path, teacher_name: str, trained, ema_model, evaluation: _Evaluation) -> dict:
    """Write out/student (and out/student_ema), score them into eval.json; returns the summary's entries."""
    final = load_pipeline(teacher_name)  # the teacher's parts as saved (float32), not as cast for training
    student_pipe = _pipeline(final, trained.to("cpu", torch.float32))
    student_pipe.save_pretrained(out / "student", safe_serialization=True)
    write_recommended_guidance(out / "student", recommended_guidance(teacher_name),  # sampled as its teacher
                               tuned_guidance(teacher_name))
    evaluation.add("student_after", lambda: student_pipe)
    saved = {"student_ema": None}
    if ema_model is not None:
        ema_unet = type(trained).from_config(trained.config)
        ema_model.copy_to(ema_unet.parameters())
        ema_unet.save_pretrained(out / "student_ema", safe_serialization=True)
        saved["student_ema"] = str(out / "student_ema")
        evaluation.add("student_after_ema", lambda: _pipeline(final, ema_unet))
    return {**saved, "eval": evaluation.data or None}


def distill(plan: str | Path, data: str = SHAPES, out: str | Path = "distill", teacher: str | None = None,
            steps: int = 1000, batch_size: int = 16, grad_accum: int = 1, lr: float = 5e-5,
            lambda_task: float = 1.0, lambda_out: float = 1.0, lambda_feat: float = 1.0, feat_norm: str = "none",
            ema: bool = False, mixed_precision: str = "no", gradient_checkpointing: bool = False,
            cache_latents: bool = False, checkpoint_every: int = 500, resume: bool = False, seed: int = 0,
            num_examples: int | None = None, num_workers: int = 0, eval_prompts: str | None = None,
            eval_num_prompts: int = 200, eval_steps: int = 25, eval_clip_model: str | None = None,
            progress: bool = True) -> dict:
    """Retrain the student of `plan` from its teacher by BK-SDM's distillation; returns a summary dict.

    Args:
        plan: a plan.json (prunekit plan); it must have been made for the teacher's U-Net.
        data: 'shapes', an imagefolder directory (metadata.jsonl/csv with file_name and text) or a hub dataset.
        out: the output directory (see the module docstring).
        teacher: the teacher MODEL (default: the plan's model).
        steps, batch_size (per process), grad_accum, lr: optimizer steps, micro-batch size, micro-batches per
            step, AdamW learning rate (weight decay 1e-2, gradient clipping at 1.0, constant schedule).
        lambda_task, lambda_out, lambda_feat, feat_norm: loss weights and feature normalisation
            (prunekit.distill.losses); lambda_out = lambda_feat = 0 is plain fine-tuning, without the teacher.
        ema: keep an exponential moving average of the student's weights (saved to out/student_ema).
        mixed_precision: 'no', 'fp16' or 'bf16' (the frozen models run in that dtype; the student trains in
            float32 master weights under autocast).
        gradient_checkpointing: recompute the student's activations in the backward pass to save memory.
        cache_latents: encode images and captions once into out/cache and train from there.
        checkpoint_every, resume: checkpoint interval (the newest 3 are kept); continue from the newest.
        seed: seeds data order, flips, noise and timesteps (and the shapes generator).
        num_examples: use the first N examples of the data (shapes: how many to generate, default 10,000).
        num_workers: data-loader worker processes.
        eval_prompts, eval_num_prompts, eval_steps, eval_clip_model: the evaluation of eval.json
            (prunekit.evaluate): prompts 'shapes' or a file (default: 'shapes' for shapes data, else the
            data's first captions); eval_num_prompts=0 skips it.
        progress: show progress bars.

    Returns:
        {"out", "student", "student_ema", "steps", "seconds", "pairs", "data", "skipped_images", "eval"}.
    """
    from prunekit.surgery import build_student

    _check(steps, batch_size, grad_accum, checkpoint_every, feat_norm, mixed_precision,
           (lambda_task, lambda_out, lambda_feat))
    out = Path(out)
    plan_obj, pipe, teacher_name = _teacher(plan, teacher)
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    source = open_source(data, num_examples, seed)
    dataset = Captioned(source, pipe.unet.config.sample_size * vae_scale, flip=data != SHAPES, seed=seed)
    accelerator = _accelerator(out, mixed_precision)
    main = accelerator.is_main_process
    if main and source.skipped:
        print(f"prunekit: skipped {len(source.skipped)} unreadable image(s) of {data} (first: {source.skipped[0]}).",
              file=sys.stderr)
    config = TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                         weights=Weights(lambda_task, lambda_out, lambda_feat), feat_norm=feat_norm, ema=ema,
                         gradient_checkpointing=gradient_checkpointing, checkpoint_every=checkpoint_every,
                         seed=seed, num_workers=num_workers, progress=progress)
    checkpoints.check_start(out / "checkpoints", resume, config.settings(accelerator))
    accelerator.init_trackers("tensorboard")
    student, _ = build_student(pipe.unet, plan_obj)
    pairs = feature_pairs(student, pipe.unet, plan_obj.weight_map) if lambda_feat else []

    enabled = main and eval_num_prompts > 0
    prompts = _eval_prompts(eval_prompts, data, dataset, out, eval_num_prompts) if enabled else None
    guidance = recommended_guidance(teacher_name)  # teacher and students are all sampled at the teacher's scale
    evaluation = _Evaluation(out / "eval.json", enabled, lambda p: _evaluate(
        p, accelerator.device, prompts, eval_num_prompts, eval_steps, guidance, eval_clip_model, seed))
    evaluation.add("teacher", lambda: pipe)
    evaluation.add("student_before", lambda: _pipeline(pipe, student))
    pipe.to("cpu")  # the evaluation ran on the device in float32; training places and casts what it needs
    accelerator.wait_for_everyone()

    dtype = DTYPES[mixed_precision]
    encoder = Encoder(pipe, accelerator.device, dtype)
    tuned = tuned_guidance(teacher_name)
    tuning = (tuned, encoder.text([""]).float()) if tuned else None  # a tuned student keeps its teacher's target
    if cache_latents:
        if main:
            build_cache(out / "cache", dataset, encoder, cache_key(dataset, str(teacher_name), dtype),
                        progress=progress)
        accelerator.wait_for_everyone()
        dataset, encoder = CachedDataset(out / "cache", seed), None
        pipe.vae.to("cpu")  # not needed while training from the cache
        pipe.text_encoder.to("cpu")

    distiller = Distiller(accelerator, student, pipe.unet, pipe.scheduler, encoder, dataset, pairs,
                          pipe.vae.config.scaling_factor, config, out, tuning)
    state = distiller.run(resume)
    summary = {"out": str(out), "student": str(out / "student"), "student_ema": None, "steps": state.step,
               "seconds": state.seconds, "pairs": pairs, "data": source.description,
               "skipped_images": len(source.skipped), "eval": None}
    if main:
        summary.update(_save(out, teacher_name, *distiller.trained(), evaluation))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary
