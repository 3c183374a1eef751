"""tiny-sd's whole recipe from scratch, as one command: `python -m prunekit.tiny.recipe --out DIR [--smoke]`.

Two runs of prunekit.tiny.train, each recorded in its own folder:

1. DIR/1-base: tiny-clip, the VAE (its decoder then fine-tuned to decode guidance-pushed latents), and the
   text encoder and U-Net trained jointly with offset noise, the shape-only overshoot and the attribute probe.
2. DIR/2-tuned: that U-Net and text encoder guidance-tuned, so that SD's 7.5 samples as an ordinary model at 3.

The model is DIR/2-tuned/tiny-sd, its CLIP-score model DIR/1-base/tiny-clip. Any other argument (--threads 2,
--device cuda, ...) is passed to both runs. `--smoke` runs the same two runs with a few steps each (CI).
The notes on why each option is there: the model card, prunekit/assets/tiny-sd/README.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from prunekit.tiny import train

SHARED = ["--unet-batch", "128", "--unet-overshoot", "4", "--unet-overshoot-shape-only", "--offset-noise", "0.2",
          "--probe-weight", "0.05"]
BASE = [*SHARED, "--seed", "0", "--vae-shape-weight", "5", "--decoder-overshoot", "8"]
TUNING = [*SHARED, "--seed", "1", "--tune-guidance", "7.5", "--tune-guidance-like", "3"]
LENGTHS = {
    "full": ([*BASE, "--decoder-steps", "2500", "--unet-steps", "2000", "--unet-stop-step", "1000",
              "--unet-warmup", "150", "--unet-lr", "1e-3"],
             [*TUNING, "--unet-steps", "400", "--unet-warmup", "50", "--unet-lr", "5e-4"]),
    "smoke": ([*BASE, "--decoder-steps", "2", "--unet-batch", "8"], [*TUNING, "--unet-batch", "8"]),
}


def run_arguments(out: Path, preset: str, extra: list[str]) -> tuple[list[str], list[str]]:
    """The argument lists of the two prunekit.tiny.train runs."""
    base, tuning = LENGTHS[preset]
    return ([*base, "--preset", preset, "--out", str(out / "1-base"), *extra],
            [*tuning, "--preset", preset, "--init", str(out / "1-base" / "tiny-sd"), "--out", str(out / "2-tuned"),
             *extra])


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m prunekit.tiny.recipe", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (1-base/, 2-tuned/)")
    parser.add_argument("--smoke", action="store_true", help="a few steps per stage (seconds; what CI runs)")
    args, extra = parser.parse_known_args(argv)
    out = Path(args.out)
    base, tuning = run_arguments(out, "smoke" if args.smoke else "full", extra)
    train.main(base)
    train.main(tuning)
    model = out / "2-tuned" / "tiny-sd"
    print(f"recipe done: {model} (model), {out / '1-base' / 'tiny-clip'} (CLIP-score model)", flush=True)
    return model


if __name__ == "__main__":
    main()
