"""The SDXL presets on sdxl-base beside the published SDXL students: U-Net parameters and MACs per step.

Writes reports/sdxl/presets.md and presets.csv. Everything is counted on the meta device from sdxl-base's config
in prunekit.models (no weights, no download): `python analyses/sdxl_presets.py`. The published sizes are
what the papers' abstracts state, rounded as they round them; no per-stage figure of theirs is used, as none
could be read in a primary source.
"""
from __future__ import annotations


import pandas as pd

from bk_sdm_costs import presets_report

# What the papers' abstracts say of the students each preset's cut follows (U-Net parameters).
PUBLISHED = {
    "koala-like": ("KOALA-1B", "a 54% cut of SDXL's U-Net (KOALA, arXiv 2312.04005)", 0.46),
    "ssd-like": ("SSD-1B", "1.3B (Segmind, arXiv 2401.02677)", 1.3e9),
}


def markdown(frame: pd.DataFrame, seconds: float) -> str:
    lines = ["# The SDXL presets on sdxl-base, beside the published students", "",
             "Per U-Net step at 1024 px (128 x 128 latents), batch 1, 77 tokens, counted on the meta device.", "",
             "| U-Net | params | kept | MACs | kept | MACs with attention | follows | published size |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in frame.to_dict("records"):
        student, size, _ = PUBLISHED.get(r["unet"], ("", "", None))
        lines.append(f"| {r['unet']} | {r['params']:,} | {r['params_fraction']:.4f} | {r['macs_G']:.1f}G | "
                     f"{r['macs_fraction']:.4f} | {r['full_macs_G']:.1f}G | {student} | {size} |")
    lines += ["", "The presets are rules on the topology (prunekit.plan), not copies of the students' configs: "
              "koala-like keeps one layer per down stage and two per up stage and 60% of the innermost "
              "transformer layers; ssd-like keeps every resnet but one of the mid block's, 40% of the innermost "
              "layers (the last up attention whole) and half of the next stage's up layers.",
              "", f"Counted in {seconds:.1f} s (`python analyses/sdxl_presets.py`)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> pd.DataFrame:
    frame, out = presets_report(("sdxl-base",), markdown, argv, __doc__, "reports/sdxl")
    for name, (_, _, published) in PUBLISHED.items():
        kept = frame.loc[frame["unet"] == name, "params_fraction" if published < 1 else "params"].item()
        print(f"{name}: {kept:,.4g} against the published {published:,.4g} ({kept / published:.3f}x)")
    print(f"-> {out / 'presets.md'}")
    return frame


if __name__ == "__main__":
    main()
