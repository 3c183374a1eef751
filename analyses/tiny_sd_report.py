"""The bundled tiny-sd's quality: `prunekit eval` on held-out prompts, the VAE and scorer checks, sample grids.

Writes reports/tiny-sd/{eval.json, checks.json, samples.png, README.md} (and eval-guidance7.5.json and
samples-guidance7.5.png, the issue's protocol, when tiny-sd recommends another guidance):
`python analyses/tiny_sd_report.py [--num-prompts 200] [--model tiny-sd]`.
"""
from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from prunekit.shapes.judge import attribute_accuracy  # noqa: E402
from prunekit.data import shapes  # noqa: E402
from prunekit.evaluate import evaluate  # noqa: E402
from prunekit.generate import decode, generate, image_seeds  # noqa: E402
from prunekit.card import SD_GUIDANCE  # noqa: E402
from prunekit.distill.data import to_tensor  # noqa: E402
from prunekit.models import resolve_model  # noqa: E402

BAR = {"color": 0.90, "shape": 0.85, "position": 0.85, "size": 0.85, "all": 0.70}


@torch.no_grad()
def scorer_checks(pipe, n: int = 300) -> dict:
    """The judge on real held-out images and on the VAE's reconstructions of the same images."""
    pairs = [shapes.sample("heldout", i, seed=11) for i in range(n)]
    images, captions = [image for image, _ in pairs], [attrs.caption() for _, attrs in pairs]
    pixels = torch.stack([to_tensor(image) for image in images])
    latents = torch.cat([pipe.vae.encode(pixels[i:i + 50]).latent_dist.mode() for i in range(0, n, 50)])
    reconstructions = decode(pipe, latents * pipe.vae.config.scaling_factor)
    return {"images": n, "real": attribute_accuracy(images, captions),
            "vae_reconstructions": attribute_accuracy(reconstructions, captions)}


def sample_grid(pipe, path: Path, guidance: float, count: int = 16, seed: int = 0) -> None:
    """Generated images (top of each pair) beside real renders of their held-out prompts."""
    prompts = shapes.prompts("heldout", count, seed)
    generated = generate(pipe, prompts, image_seeds(seed, count), guidance=guidance, progress=False)
    columns = 8
    rows = 2 * ((count + columns - 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.5))
    for i, prompt in enumerate(prompts):
        row, column = 2 * (i // columns), i % columns
        for offset, image, label in ((0, generated[i], "tiny-sd"), (1, shapes.render(shapes.parse_caption(prompt)), "real")):
            ax = axes[row + offset][column]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            title = "\n".join(textwrap.wrap(prompt.removeprefix("a "), 22)) if offset == 0 else label
            ax.set_title(title, fontsize=6.5)
    fig.suptitle(f"tiny-sd on held-out prompts (25 PNDM steps, guidance {guidance:g}); real renders below each",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def quality_table(result: dict) -> list[str]:
    """The attribute accuracies of one evaluation against the issue's bar, then its CLIP score and speed."""
    accuracy, ratio = result["attribute_accuracy"], result["clip_score_ratio"]
    lines = ["| attribute | accuracy | bar |", "| --- | ---: | ---: |"]
    lines += [f"| {key} | {accuracy[key]:.3f} | >= {bar} ({'met' if accuracy[key] >= bar else 'NOT met'}) |"
              for key, bar in BAR.items()]
    clip = (f"CLIP score (tiny-clip): generated {result['clip_score']:.3f}, real images of the same prompts "
            f"{result['clip_score_real']:.3f}, ratio {ratio:.3f} (bar >= 0.9)." if ratio is not None else "")
    return lines + ["", clip, f"Generation: {result['seconds_per_image']:.3f} s per image in batches of 32 on "
                    "this machine (bar <= 0.5).", ""]


def markdown(results: list[dict], checks: dict) -> str:
    """The report: each evaluation (the model's recommended guidance first), the scorer checks, the samples."""
    lines = ["# tiny-sd: measured quality", ""]
    for i, result in enumerate(results):
        flag = "" if result["guidance"] == results[0]["guidance"] else f" --guidance {result['guidance']:g}"
        why = "tiny-sd's recommended guidance" if i == 0 else "the guidance of the issue's protocol (SD's)"
        lines += [f"## guidance {result['guidance']:g}: {why}", "",
                  f"`prunekit eval tiny-sd --prompts shapes --num-prompts {result['num_prompts']}{flag} --format json` "
                  f"(held-out combinations, {result['steps']} PNDM steps, seed {result['seed']}):", ""]
        lines += quality_table(result)
    lines += [f"Scorer checks on {checks['images']} held-out images: real "
              + ", ".join(f"{k} {v:.3f}" for k, v in checks["real"].items())
              + "; VAE reconstructions " + ", ".join(f"{k} {v:.3f}" for k, v in checks["vae_reconstructions"].items())
              + ".", ""]
    for i, result in enumerate(results):
        lines += [f"Samples at guidance {result['guidance']:g}:", "", f"![samples]({grid_name(i, result)})", ""]
    return "\n".join(lines)


def grid_name(index: int, result: dict) -> str:
    """The file of the sample grid of evaluation `index` (samples.png for the recommended guidance)."""
    return "samples.png" if index == 0 else f"samples-guidance{result['guidance']:g}.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--clip-model", help="the CLIP model of the CLIP score (default: the bundled tiny-clip)")
    parser.add_argument("--out", default="reports/tiny-sd")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = resolve_model(args.model)
    pipe = model.pipeline()
    results = [evaluate(model, pipeline=pipe, prompts="shapes", num_prompts=args.num_prompts, clip_model=args.clip_model)]
    (out / "eval.json").write_text(json.dumps(results[0], indent=2))
    if results[0]["guidance"] != SD_GUIDANCE:  # the protocol too, as its bar is stated there
        results.append(evaluate(model, pipeline=pipe, prompts="shapes", num_prompts=args.num_prompts, guidance=SD_GUIDANCE,
                                clip_model=args.clip_model))
        (out / f"eval-guidance{SD_GUIDANCE:g}.json").write_text(json.dumps(results[1], indent=2))
    checks = scorer_checks(pipe)
    (out / "checks.json").write_text(json.dumps(checks, indent=2))
    for i, result in enumerate(results):
        sample_grid(pipe, out / grid_name(i, result), result["guidance"])
    (out / "README.md").write_text(markdown(results, checks))
    print((out / "README.md").read_text())


if __name__ == "__main__":
    main()
