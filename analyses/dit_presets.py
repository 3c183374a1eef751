"""The diffusion transformers prunekit knows, and their presets: parameters and MACs per step, on the meta device.

Writes reports/dit/presets.md and presets.csv: `python analyses/dit_presets.py`. Every count comes from the
alias's config in prunekit.models through diffusers' own class (no weights, no download); the published sizes
beside them are the ones the issue and the model cards state (SD3-medium's transformer 2,028,328,000;
FLUX.1-dev 11,901,408,320; Flux.1-Lite "8B").
"""
from __future__ import annotations


import pandas as pd

from bk_sdm_costs import presets_report

MODELS = ("sd3-medium", "sd3.5-large", "flux-dev", "flux-schnell", "pixart-sigma", "sana-1.6b")
PUBLISHED = {("sd3-medium", "teacher"): "2,028,328,000", ("flux-dev", "teacher"): "11,901,408,320",
             ("flux-dev", "flux-lite-like"): "8B (Freepik's Flux.1-Lite-8B card)"}


def markdown(frame: pd.DataFrame, seconds: float) -> str:
    lines = ["# Diffusion transformers and their presets", "",
             "Per step at each model's native resolution (1024 px), batch 1, each family's text tokens (SD3 333, "
             "Flux 512, PixArt and SANA 300), counted on the meta device through diffusers' own classes.", "",
             "| model | student | params | kept | MACs | kept | MACs with attention | published |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in frame.to_dict("records"):
        lines.append(f"| {r['teacher']} | {r['unet']} | {r['params']:,} | {r['params_fraction']:.4f} | "
                     f"{r['macs_G']:,.1f}G | {r['macs_fraction']:.4f} | {r['full_macs_G']:,.1f}G | "
                     f"{PUBLISHED.get((r['teacher'], r['unet']), '')} |")
    lines += ["", "half-depth removes every second block of every stack; flux-lite-like keeps the first 8 of every "
              "19 double-stream (MMDiT) blocks and every single-stream block (prunekit.families.blocks states the "
              "rule and its source); SD3's blocks are all double-stream.",
              "", f"Counted in {seconds:.1f} s (`python analyses/dit_presets.py`)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> pd.DataFrame:
    frame, out = presets_report(MODELS, markdown, argv, __doc__, "reports/dit")
    print((out / "presets.md").read_text())
    return frame


if __name__ == "__main__":
    main()
