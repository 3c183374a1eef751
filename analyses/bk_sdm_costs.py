"""BK-SDM's cost table, recounted: U-Net parameters and MACs of SD-v1.4, SD-v2.1-base and their students.

Writes reports/bk_sdm_costs/{table.md, table.csv, costs.png}. Everything is counted on the meta device
from the configs in prunekit.models (no weights, no download): `python analyses/bk_sdm_costs.py`.
Paper MACs count convolutions and linears as torch-pruning does (BK-SDM's count); "with attention"
adds the attention matmuls.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from prunekit.costs import denoiser_costs  # noqa: E402
from prunekit.models import unet_config  # noqa: E402
from prunekit.plan import make_preset, presets_for  # noqa: E402

# What BK-SDM and the issue state (U-Net parameters exactly; MACs per step at 512 px, batch 1).
PAPER = {
    ("sd-v1-4", "teacher"): (859_520_964, 338.7e9),
    ("sd-v1-4", "bk-base"): (579_384_964, 223.8e9),
    ("sd-v1-4", "bk-small"): (482_346_884, 217.7e9),
    ("sd-v1-4", "bk-tiny"): (323_384_964, 205.0e9),
    ("sd-v2-1-base", "teacher"): (865_910_724, None),
    ("sd-v2-1-base", "bk-base"): (583_480_964, None),
    ("sd-v2-1-base", "bk-small"): (485_787_524, None),
    ("sd-v2-1-base", "bk-tiny"): (326_825_604, None),
}


def rows(models=("sd-v1-4", "sd-v2-1-base")) -> list[dict]:
    """One row per (teacher, U-Net): our counts beside the paper's."""
    table = []
    for model in models:
        config = unet_config(model)
        teacher = denoiser_costs(config)
        students = {"teacher": (config, teacher)}
        for preset in presets_for(config):
            plan = make_preset(preset, model, config)
            students[preset] = (plan.student_config, denoiser_costs(plan.student_config))
        for name, (_, costs) in students.items():
            paper_params, paper_macs = PAPER.get((model, name), (None, None))
            table.append({
                "teacher": model, "unet": name, "params": costs.params,
                "paper_params": paper_params, "params_fraction": costs.params / teacher.params,
                "macs_G": costs.macs / 1e9, "paper_macs_G": paper_macs / 1e9 if paper_macs else None,
                "macs_error_pct": 100 * (costs.macs / paper_macs - 1) if paper_macs else None,
                "full_macs_G": costs.full_macs / 1e9, "macs_fraction": costs.macs / teacher.macs,
            })
    return table


def presets_report(models, markdown, argv: list[str] | None, doc: str,
                   default_out: str) -> tuple[pd.DataFrame, Path]:
    """The costs of `models` and their presets (`rows`), counted and timed, written as presets.csv and presets.md
    (`markdown(frame, seconds)`) into the folder that `--out` names in `argv` (default `default_out`); a script's
    whole command line, its description the first line of `doc`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    out = Path(parser.parse_args(argv).out)
    started = time.perf_counter()
    frame = pd.DataFrame(rows(models))
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    frame.drop(columns=["paper_params", "paper_macs_G", "macs_error_pct"]).to_csv(out / "presets.csv", index=False)
    (out / "presets.md").write_text(markdown(frame, seconds))
    return frame, out


def markdown(frame: pd.DataFrame, seconds: float) -> str:
    lines = ["# BK-SDM's U-Net costs, recounted by prunekit", "",
             "Per U-Net step at the model's native resolution (512 px: 64x64 latents), batch 1, 77 tokens.",
             "Paper MACs: convolutions and linears as torch-pruning counts them; 'with attention' adds the",
             "attention matmuls (torch FlopCounterMode / 2). Params must match exactly; MACs within 0.5%.", "",
             "| teacher | U-Net | params | paper params | kept | MACs | paper MACs | diff | MACs with attention |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in frame.to_dict("records"):
        paper_params = f"{int(r['paper_params']):,}" if pd.notna(r["paper_params"]) else "—"
        paper_macs = f"{r['paper_macs_G']:.1f}G" if pd.notna(r["paper_macs_G"]) else "—"
        diff = f"{r['macs_error_pct']:+.2f}%" if pd.notna(r["macs_error_pct"]) else "—"
        lines.append(f"| {r['teacher']} | {r['unet']} | {r['params']:,} | {paper_params} | {r['params_fraction']:.4f} "
                     f"| {r['macs_G']:.1f}G | {paper_macs} | {diff} | {r['full_macs_G']:.1f}G |")
    lines += ["", f"Counted in {seconds:.1f} s on the meta device (`python analyses/bk_sdm_costs.py`)."]
    return "\n".join(lines) + "\n"


def plot(frame: pd.DataFrame, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, column, label in ((axes[0], "params", "U-Net parameters (M)"), (axes[1], "macs_G", "MACs per step (G)")):
        for i, (model, group) in enumerate(frame.groupby("teacher", sort=False)):
            values = group[column] / (1e6 if column == "params" else 1)
            positions = [j + i * 0.4 for j in range(len(group))]
            ax.bar(positions, values, width=0.38, label=model)
        ax.set_xticks([j + 0.2 for j in range(4)], ["teacher", "bk-base", "bk-small", "bk-tiny"])
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="reports/bk_sdm_costs")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    frame = pd.DataFrame(rows())
    seconds = time.perf_counter() - started
    frame.to_csv(out / "table.csv", index=False)
    (out / "table.md").write_text(markdown(frame, seconds))
    plot(frame, out / "costs.png")
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
