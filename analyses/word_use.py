"""How strongly a model's denoiser reads each word of a shapes caption: its training-target error with the right
caption against the same error with one attribute's word replaced by the next value of that attribute.

    python analyses/word_use.py [--model tiny-sd] [--examples 128] [--levels 3] [--seed 0]

Training latents of the shapes world are noised at `--levels` fixed noise levels of the model's own training
noise (prunekit.schedules: SD's DDPM timesteps or flow matching's levels), one noise draw per level, the same
for every caption set. For each level the table gives the mean squared error of the denoiser's prediction
against its training target (the noise, or the velocity) with the right captions, and the ratio of each swapped
set's error to it. A ratio near 1 means the denoiser draws the same thing whatever that word says. It takes
about a minute on one CPU thread for a bundled model, so it can follow a training run from its snapshots
(notes/tiny-sd-training.md: tiny-sd3 reads the colour word 15 to 60 times more strongly than the shape word).
"""
from __future__ import annotations

import argparse
from dataclasses import replace

from prunekit.quiet import quiet_libraries

quiet_libraries()
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from prunekit.conditioning import encode  # noqa: E402
from prunekit.families import config_of, denoiser_of, family_of  # noqa: E402
from prunekit.models import resolve_model  # noqa: E402
from prunekit.schedules import noising_for  # noqa: E402
from prunekit.shapes.data import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, parse_caption  # noqa: E402
from prunekit.tiny.stages import Images, encode_pool  # noqa: E402

VALUES = {"size": list(SIZES), "color": list(COLORS), "shape": list(SHAPES), "position": list(POSITIONS),
          "background": list(BACKGROUNDS)}


def swapped(caption: str, field: str) -> str:
    """`caption` with its `field` word replaced by the next value of that field."""
    attrs = parse_caption(caption)
    values = VALUES[field]
    return replace(attrs, **{field: values[(values.index(getattr(attrs, field)) + 1) % len(values)]}).caption()


def word_use(model: str, examples: int, levels: int, seed: int) -> pd.DataFrame:
    """One row per noise level: the right captions' error and each swapped field's error ratio."""
    pipe = resolve_model(model).pipeline()
    denoiser = denoiser_of(pipe)
    family, noising = family_of(config_of(denoiser)), noising_for(pipe.scheduler)
    images = Images("train", examples, seed)
    vae = pipe.vae
    latents = (encode_pool(vae, images, torch.device("cpu")) - (vae.config.get("shift_factor") or 0.0)) \
        * vae.config.scaling_factor
    captions = [images.captions[i] for i in images.labels[:examples]]
    sets = {"right": captions, **{field: [swapped(c, field) for c in captions] for field in VALUES}}
    conditions = {name: encode(pipe, texts, device=torch.device("cpu"))[0] for name, texts in sets.items()}
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for level in noising.levels(levels):
        t = level.repeat(examples)
        noise = torch.randn(latents.shape, generator=generator)
        noisy, target = noising.noisy(latents, noise, t), noising.target(latents, noise, t)
        errors = {}
        for name, condition in conditions.items():
            with torch.no_grad():
                prediction = family.predict(denoiser, noisy, noising.model_timestep(t), condition).float()
            errors[name] = (prediction - target).pow(2).mean().item()
        rows.append({"level": round(float(level), 3), "error": round(errors["right"], 4),
                     **{field: round(errors[field] / errors["right"], 3) for field in VALUES}})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-sd", help="a bundled alias or a saved pipeline directory")
    parser.add_argument("--examples", type=int, default=128, help="training latents")
    parser.add_argument("--levels", type=int, default=3, help="fixed noise levels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(word_use(args.model, args.examples, args.levels, args.seed).to_string(index=False))


if __name__ == "__main__":
    main()
