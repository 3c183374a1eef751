"""`prunekit eval`: generate images for a prompt set and score them.

For the captioned-shapes prompts (held-out combinations) the result holds the attribute accuracy,
the CLIP score of the generations, that of real rendered images for the same prompts, and their
ratio; for a prompt file, the CLIP score alone.
"""
from __future__ import annotations

import time
from pathlib import Path

from diffusers import DiffusionPipeline

from prunekit.attributes import attribute_accuracy
from prunekit.data import shapes
from prunekit.errors import PrunekitError
from prunekit.generate import generate, image_seeds
from prunekit.metrics import BUNDLED_CLIP, DEFAULT_CLIP, clip_score, clip_score_metric
from prunekit.models import load_pipeline, recommended_guidance

SHAPES_PROMPTS = "shapes"
SHAPES_SPLITS = {SHAPES_PROMPTS: "heldout", "shapes-train": "train"}  # prompt set -> captioned-shapes split


def read_prompts(path: str | Path) -> list[str]:
    """The non-empty lines of a prompt file, one prompt per line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise PrunekitError(f"cannot read the prompt file {path} ({error.__class__.__name__}): "
                            f"pass a UTF-8 text file with one prompt per line, or {SHAPES_PROMPTS!r}.") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise PrunekitError(f"the prompt file {path} holds no prompts: write one prompt per line.")
    return prompts


def evaluate(model: str | DiffusionPipeline, prompts: str = SHAPES_PROMPTS, num_prompts: int = 200, seed: int = 0,
             steps: int = 25, guidance: float | None = None, batch_size: int = 32, device: str = "cpu",
             clip_model: str | None = None, progress: bool = True) -> dict:
    """Generate `num_prompts` images with `model` and score them; returns a JSON-ready dict.

    Args:
        model: a loaded diffusers pipeline, or a MODEL as prunekit.models.load_pipeline takes it
            (an alias such as `tiny-sd`, a local pipeline directory or a hub id).
        prompts: `shapes` for held-out captioned-shapes prompts (`shapes.prompts("heldout", num_prompts,
            seed)`), `shapes-train` for training combinations (to choose settings without looking at the
            held-out ones), or the path of a file with one prompt per line (its first `num_prompts` are used).
        seed: orders the shapes prompts and seeds each image's noise (prunekit.generate.image_seeds),
            so results do not depend on `batch_size` (nor, up to floating point, on `device`).
        steps, guidance: sampling steps of the pipeline's own scheduler (PNDM for SD-v1.x and tiny-sd)
            and the classifier-free guidance scale (default: the model's recommended one,
            prunekit.models.recommended_guidance: 7.5 for SD, tiny-sd's own from its prunekit.json).
        clip_model: the CLIP model of the CLIP score (see prunekit.metrics.load_clip); by default the
            bundled tiny-clip for shapes prompts or the `tiny-sd` model, else openai/clip-vit-large-patch14.
        progress: show a progress bar over the images.

    Returns:
        For shapes prompt sets: {"attribute_accuracy": {"color", "shape", "position", "size", "all"},
        "clip_score", "clip_score_real" (real rendered images of the same prompts, canonical position
        and size), "clip_score_ratio" (generated / real; None if the real score is 0), "num_prompts",
        "steps", "guidance", "seed", "seconds_per_image" (generation wall time, decoding included),
        "prompts", "clip_model"}. For a prompt file the same without attribute_accuracy, clip_score_real
        and clip_score_ratio.
    """
    if num_prompts < 1 or steps < 1 or batch_size < 1:
        raise PrunekitError("num_prompts, steps and batch_size must each be at least 1.")
    split = SHAPES_SPLITS.get(prompts)
    is_shapes = split is not None
    texts = shapes.prompts(split, num_prompts, seed) if is_shapes else read_prompts(prompts)[:num_prompts]
    if clip_model is None:
        clip_model = BUNDLED_CLIP if is_shapes or model == "tiny-sd" else DEFAULT_CLIP
    metric = clip_score_metric(clip_model, device)  # before generating: a missing CLIP model fails fast
    pipe = load_pipeline(model) if isinstance(model, str) else model
    pipe.to(device)
    guidance = recommended_guidance(pipe) if guidance is None else guidance

    started = time.perf_counter()
    images = generate(pipe, texts, image_seeds(seed, len(texts)), steps, guidance, batch_size, progress)
    seconds_per_image = (time.perf_counter() - started) / len(texts)

    # CLIP scores in the metric's own fixed batches, so that no number depends on `batch_size`
    result = {"clip_score": clip_score(images, texts, metric)}
    if is_shapes:
        real_score = clip_score([shapes.render(shapes.parse_caption(text)) for text in texts], texts, metric)
        result = {"attribute_accuracy": attribute_accuracy(images, texts), **result, "clip_score_real": real_score,
                  # CLIPScore floors at 0: a ratio to 0 means nothing (null in JSON)
                  "clip_score_ratio": result["clip_score"] / real_score if real_score else None}
    return {**result, "num_prompts": len(texts), "steps": steps, "guidance": guidance, "seed": seed,
            "seconds_per_image": seconds_per_image, "prompts": str(prompts), "clip_model": str(clip_model)}
