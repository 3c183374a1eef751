"""The bundled tiny-sd's quality: `prunekit eval` on held-out prompts, the VAE and scorer checks, a sample grid.

Writes reports/tiny-sd/{eval.json, checks.json, samples.png, README.md}:
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

from prunekit.attributes import attribute_accuracy  # noqa: E402
from prunekit.data import shapes  # noqa: E402
from prunekit.evaluate import evaluate  # noqa: E402
from prunekit.generate import decode, generate, image_seeds  # noqa: E402
from prunekit.models import load_pipeline  # noqa: E402

BAR = {"color": 0.90, "shape": 0.85, "position": 0.85, "size": 0.85, "all": 0.70}


@torch.no_grad()
def scorer_checks(pipe, n: int = 300) -> dict:
    """The judge on real held-out images and on the VAE's reconstructions of the same images."""
    pairs = [shapes.sample("heldout", i, seed=11) for i in range(n)]
    images, captions = [image for image, _ in pairs], [attrs.caption() for _, attrs in pairs]
    pixels = torch.stack([shapes.to_tensor(image) for image in images])
    latents = torch.cat([pipe.vae.encode(pixels[i:i + 50]).latent_dist.mode() for i in range(0, n, 50)])
    reconstructions = decode(pipe, latents * pipe.vae.config.scaling_factor)
    return {"images": n, "real": attribute_accuracy(images, captions),
            "vae_reconstructions": attribute_accuracy(reconstructions, captions)}


def sample_grid(pipe, path: Path, count: int = 16, seed: int = 0) -> None:
    """Generated images (top of each pair) beside real renders of their held-out prompts."""
    prompts = shapes.prompts("heldout", count, seed)
    generated = generate(pipe, prompts, image_seeds(seed, count), progress=False)
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
    fig.suptitle("tiny-sd on held-out prompts (25 PNDM steps, guidance 7.5); real renders below each", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict, checks: dict) -> str:
    accuracy = result["attribute_accuracy"]
    lines = ["# tiny-sd: measured quality", "",
             f"`prunekit eval tiny-sd --prompts shapes --num-prompts {result['num_prompts']} --format json` "
             f"(held-out combinations, {result['steps']} PNDM steps, guidance {result['guidance']}, seed {result['seed']}):", "",
             "| attribute | accuracy | bar |", "| --- | ---: | ---: |"]
    for key, bar in BAR.items():
        mark = "met" if accuracy[key] >= bar else "NOT met"
        lines.append(f"| {key} | {accuracy[key]:.3f} | >= {bar} ({mark}) |")
    ratio = result.get("clip_score_ratio")
    lines += ["", f"CLIP score (tiny-clip): generated {result['clip_score']:.3f}, real images of the same prompts "
              f"{result['clip_score_real']:.3f}, ratio {ratio:.3f} (bar >= 0.9)." if ratio is not None else "",
              f"Generation: {result['seconds_per_image']:.3f} s per image in batches of 32 on this machine (bar <= 0.5).", "",
              f"Scorer checks on {checks['images']} held-out images: real "
              + ", ".join(f"{k} {v:.3f}" for k, v in checks["real"].items())
              + "; VAE reconstructions " + ", ".join(f"{k} {v:.3f}" for k, v in checks["vae_reconstructions"].items()) + ".",
              "", "![samples](samples.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--clip-model", help="the CLIP model of the CLIP score (default: the bundled tiny-clip)")
    parser.add_argument("--out", default="reports/tiny-sd")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model)
    result = evaluate(pipe, prompts="shapes", num_prompts=args.num_prompts, clip_model=args.clip_model)
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    checks = scorer_checks(pipe)
    (out / "checks.json").write_text(json.dumps(checks, indent=2))
    sample_grid(pipe, out / "samples.png")
    (out / "README.md").write_text(markdown(result, checks))
    print((out / "README.md").read_text())


if __name__ == "__main__":
    main()
