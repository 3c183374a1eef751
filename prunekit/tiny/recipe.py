"""The recipes of the bundled tiny models from scratch, one command each:
`python -m prunekit.tiny.recipe --out DIR [--model tiny-sd|tiny-sdxl|tiny-sd3] [--smoke]`.

Each is a few runs of prunekit.tiny.train, recorded in their own folders, each continuing the one before:

1. DIR/1-base: for tiny-sd, tiny-clip, the VAE (its decoder then fine-tuned to decode guidance-pushed
   latents), and the text encoder and U-Net trained jointly with offset noise, the shape-only overshoot and the
   attribute probe; for tiny-sdxl, a new SDXL-topology U-Net around the bundled tiny-sd's VAE and text encoder
   and the bundled tiny-clip's text tower (frozen), trained the same way but for the probe; for tiny-sd3, a new
   SD3-topology transformer around those parts (frozen), trained with flow matching: tiny-sd3's only run.
2. tiny-sd and tiny-sdxl: DIR/2-tuned, that U-Net (and tiny-sd's text encoder) guidance-tuned, so that SD's
   7.5 samples as an ordinary model at 3. tiny-sd3 is not guidance-tuned: its card recommends the scale it
   samples best at, 1 (unguided).

The model is the last run's DIR/RUN/MODEL, tiny-sd's CLIP-score model DIR/1-base/tiny-clip (the others' is the
bundled one). Any other argument (--threads 2, --device cuda, ...) is passed to every run. `--smoke` runs the
same runs with a few steps each (CI). The notes on why each option is there: the model cards,
prunekit/assets/tiny-sd/README.md, prunekit/assets/tiny-sdxl/README.md and prunekit/assets/tiny-sd3/README.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from prunekit.models import ASSETS
from prunekit.tiny import train

GUIDED = ["--unet-batch", "128", "--unet-overshoot", "4", "--unet-overshoot-shape-only", "--offset-noise", "0.2"]
SHARED = [*GUIDED, "--probe-weight", "0.05"]
BASE = [*SHARED, "--seed", "0", "--vae-shape-weight", "5", "--decoder-overshoot", "8"]
TUNING = [*SHARED, "--seed", "1", "--tune-guidance", "7.5", "--tune-guidance-like", "3"]
XL_BASE = [*GUIDED, "--seed", "0", "--sdxl", "--init", str(ASSETS / "tiny-sd"), "--clip", str(ASSETS / "tiny-clip")]
XL_TUNING = [*GUIDED, "--seed", "1", "--tune-guidance", "7.5", "--tune-guidance-like", "3"]
SD3_BASE = [*GUIDED, "--seed", "0", "--sd3", "--init", str(ASSETS / "tiny-sd"), "--clip", str(ASSETS / "tiny-clip")]
FULL_UNET = ["--unet-steps", "2000", "--unet-stop-step", "1000", "--unet-warmup", "150", "--unet-lr", "1e-3"]
FULL_TUNING = ["--unet-steps", "400", "--unet-warmup", "50", "--unet-lr", "5e-4"]
SD3_GUIDANCE = "1"  # tiny-sd3 is not guidance-tuned: its card recommends the scale it samples best at, unguided
# Each model's runs in order, as (folder, arguments); every run after the first continues the one before it.
LENGTHS = {
    ("tiny-sd", "full"): [("1-base", [*BASE, "--decoder-steps", "2500", *FULL_UNET]),
                          ("2-tuned", [*TUNING, *FULL_TUNING])],
    ("tiny-sd", "smoke"): [("1-base", [*BASE, "--decoder-steps", "2", "--unet-batch", "8"]),
                           ("2-tuned", [*TUNING, "--unet-batch", "8"])],
    ("tiny-sdxl", "full"): [("1-base", [*XL_BASE, *FULL_UNET]), ("2-tuned", [*XL_TUNING, *FULL_TUNING])],
    ("tiny-sdxl", "smoke"): [("1-base", [*XL_BASE, "--unet-batch", "8"]),
                             ("2-tuned", [*XL_TUNING, "--unet-batch", "8"])],
    ("tiny-sd3", "full"): [("1-base", [*SD3_BASE, "--card-guidance", SD3_GUIDANCE, *FULL_UNET])],
    ("tiny-sd3", "smoke"): [("1-base", [*SD3_BASE, "--card-guidance", SD3_GUIDANCE, "--unet-batch", "8"])],
}
MODELS = ("tiny-sd", "tiny-sdxl", "tiny-sd3")


def run_arguments(out: Path, preset: str, extra: list[str], model: str = "tiny-sd") -> list[list[str]]:
    """The argument lists of the prunekit.tiny.train runs, in order."""
    runs, previous = [], None
    for folder, arguments in LENGTHS[model, preset]:
        init = ["--init", str(out / previous / model)] if previous else []
        runs.append([*arguments, "--preset", preset, *init, "--out", str(out / folder), *extra])
        previous = folder
    return runs


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m prunekit.tiny.recipe", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (1-base/, 2-tuned/)")
    parser.add_argument("--model", choices=MODELS, default="tiny-sd", help="which bundled model (default tiny-sd)")
    parser.add_argument("--smoke", action="store_true", help="a few steps per stage (seconds; what CI runs)")
    args, extra = parser.parse_known_args(argv)
    out = Path(args.out)
    preset = "smoke" if args.smoke else "full"
    for arguments in run_arguments(out, preset, extra, args.model):
        train.main(arguments)
    model = out / LENGTHS[args.model, preset][-1][0] / args.model
    clip = out / "1-base" / "tiny-clip" if args.model == "tiny-sd" else ASSETS / "tiny-clip"
    print(f"recipe done: {model} (model), {clip} (CLIP-score model)", flush=True)
    return model


if __name__ == "__main__":
    main()
