"""`prunekit eval`: generate images for a prompt set and score them.

Every prompt set gets the CLIP score. Prompts of a world with a judge (the captioned shapes) also get the
judge's accuracy, and where the world draws reference images, the CLIP score of those real images and the
ratio of the two (prunekit.worlds).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from prunekit import worlds
from prunekit.generate import generate, image_seeds
from prunekit.metrics import choose_clip, clip_score, clip_score_metric
from prunekit.models import Model, resolve_model
from prunekit.options import check_count, check_number, check_output_dir, merged, resolve_device
from prunekit.rundir import save_images, write_atomically


@dataclass(frozen=True)
class EvalOptions:
    """How `evaluate` samples and scores (see there); every value is checked here."""

    prompts: str | None = None  # None: the model card's prompt set
    num_prompts: int = 200
    seed: int = 0
    steps: int = 25
    guidance: float | None = None  # None: the model card's
    batch_size: int = 32
    device: str | None = None
    clip_model: str | None = None
    images: str | None = None  # a folder for the images (i.png) and their prompts (prompts.json)
    num_images: int | None = None  # how many of them to save (None: all)
    progress: bool = True

    def __post_init__(self):
        for name in ("num_prompts", "steps", "batch_size"):
            check_count(name, getattr(self, name))
        check_count("num_images", self.num_images, optional=True)
        if self.images is not None:
            check_output_dir(self.images, "images")
        check_count("seed", self.seed, minimum=0)
        check_number("guidance", self.guidance, minimum=1, optional=True)


def evaluate(model: str | Model, options: EvalOptions | None = None, pipeline=None, **changes) -> dict:
    """Generate `num_prompts` images with `model` and score them; returns a JSON-ready dict.

    Args:
        model: a MODEL (an alias such as `tiny-sd`, a local pipeline directory or a hub id) or a resolved Model:
            its card gives the default prompt set, guidance and CLIP model.
        options: EvalOptions; `changes` are applied to them (`evaluate("tiny-sd", num_prompts=8)`).
            prompts: a prompt set of prunekit.worlds (`shapes` for held-out captioned-shapes prompts,
            `shapes-train` for training combinations, `everyday`) or a file with one prompt per line.
            seed: orders the world's prompts and seeds each image's noise (prunekit.generate.image_seeds), so
            results do not depend on `batch_size` (nor, up to floating point, on the device).
            steps, guidance: sampling steps of the pipeline's own scheduler and the classifier-free guidance scale.
            clip_model: the CLIP model of the CLIP score (prunekit.metrics.choose_clip by default).
            images, num_images: save the first `num_images` images (all by default) as `images`/i.png, with
            their prompts in `images`/prompts.json: the same seeds give the same images for any model.
        pipeline: sample this loaded pipeline instead of the model's own (a student built from the model's parts).

    Returns:
        {"clip_score", "num_prompts", "steps", "guidance", "seed", "seconds_per_image" (generation wall time,
        decoding included), "prompts", "clip_model"}; for prompts of a world with a judge also its accuracy
        (shapes: "attribute_accuracy": {"color", "shape", "position", "size", "all"}); where the world draws
        reference images also "clip_score_real" and "clip_score_ratio" (generated / real; None if real is 0).
    """
    model = resolve_model(model)
    options = merged(EvalOptions, options, changes)
    device = resolve_device(options.device)
    source = options.prompts or model.card.prompts
    texts = worlds.prompts(source, options.num_prompts, options.seed)
    clip_model = choose_clip(options.clip_model, model.card, texts)
    pipe = pipeline if pipeline is not None else model.pipeline()
    metric = clip_score_metric(clip_model, device)  # before generating: a missing CLIP model fails fast
    pipe.to(device)
    guidance = model.card.guidance if options.guidance is None else options.guidance

    started = time.perf_counter()
    images = generate(pipe, texts, image_seeds(options.seed, len(texts)), options.steps, guidance,
                      options.batch_size, options.progress)
    seconds_per_image = (time.perf_counter() - started) / len(texts)
    if options.images is not None:
        kept = len(texts) if options.num_images is None else options.num_images
        save_images(Path(options.images), images[:kept])
        write_atomically(Path(options.images) / "prompts.json", json.dumps(texts[:kept], indent=1) + "\n")

    # CLIP scores in the metric's own fixed batches, so that no number depends on `batch_size`
    result = {"clip_score": clip_score(images, texts, metric)}
    judge, references = worlds.judge_for(texts), worlds.references(texts)
    if judge is not None:
        result = {judge.result: judge.score(images, texts), **result}
    if references is not None:
        real = clip_score(references, texts, metric)
        # CLIPScore floors at 0: a ratio to 0 means nothing (null in JSON)
        result.update(clip_score_real=real, clip_score_ratio=result["clip_score"] / real if real else None)
    return {**result, "num_prompts": len(texts), "steps": options.steps, "guidance": guidance, "seed": options.seed,
            "seconds_per_image": seconds_per_image, "prompts": str(source), "clip_model": str(clip_model)}


def headline(result: dict) -> dict[str, float]:
    """An evaluation's quality in the numbers that judge a student: its judge's headline (shapes: `attr_all`,
    all four attributes right), named as the sweep's columns are, then the CLIP score."""
    numbers = {}
    for judge in worlds.judges().values():
        if judge.result in result:
            numbers[f"{judge.prefix}{judge.headline}"] = result[judge.result][judge.headline]
    return {**numbers, "clip_score": result["clip_score"]}
