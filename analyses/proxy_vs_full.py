"""Proxy mode against full mode on tiny-sd: the speed-up, and the Spearman rank correlation of the rankings.

    python analyses/proxy_vs_full.py [--model tiny-sd] [--num-prompts 32] [--steps 25] [--out reports/proxy_vs_full]

Runs the full sweep once and the proxy sweep for each proxy setting (clean latents `rendered` (the prompts'
own captioned-shapes images) or `baseline` (the intact model's generations), times 1, 2, 4 and 8 timesteps),
times each, and compares each proxy ranking (eps_mse) with the full sweep's CLIP-score ranking
(-delta_clip_score, target Spearman >= 0.8) and, for reference, its latent-MSE and attribute-accuracy rankings.
Writes into --out:

- summary.md: the settings, and per proxy setting its seconds, speed-up and rank correlations;
- units.csv: per unit, the full sweep's scores and each proxy setting's eps_mse;
- proxy_vs_full.png: per proxy setting, eps_mse against -delta_clip_score, one point per unit.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import matplotlib
import pandas as pd
import torch
from scipy.stats import spearmanr

from prunekit.sensitivity import sensitivity
from prunekit.sensitivity.settings import SweepOptions, resolve

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)

REFERENCES = {"clip": "-delta_clip_score", "latent_mse": "latent_mse", "attributes": "-delta_attr_all"}


def reference_scores(full: pd.DataFrame) -> dict[str, pd.Series]:
    """The full sweep's harm rankings by each metric it has (larger = more harmful)."""
    scores = {}
    for name, rule in REFERENCES.items():
        column = rule.lstrip("-")
        if column in full:
            scores[name] = 0.0 - full[column] if rule.startswith("-") else full[column]
    return scores


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rho of two rankings (NaN when either is constant)."""
    if a.nunique() < 2 or b.nunique() < 2:
        return math.nan
    return float(spearmanr(a, b).statistic)


def markdown(frame: pd.DataFrame) -> str:
    """`frame` as a Markdown table, numbers to 3 significant digits."""
    cell = lambda value: f"{value:.3g}" if isinstance(value, float) else str(value)  # noqa: E731
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write_figure(path: Path, full: pd.DataFrame, proxies: dict[str, pd.DataFrame], rhos: dict[str, float]) -> None:
    """One panel per proxy setting: eps_mse (log) against the full sweep's -delta_clip_score, one point per unit."""
    count = len(proxies)
    columns = min(4, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    harm = reference_scores(full).get("clip", full["sensitivity"])
    for axis, (name, proxy) in zip(axes.flat, proxies.items()):
        axis.scatter(harm, proxy["eps_mse"], s=12)
        axis.set_yscale("log")
        axis.set_title(f"{name}\nSpearman {rhos[name]:.2f}", fontsize=9)
        axis.set_xlabel("full: -Δ clip_score", fontsize=8)
        axis.set_ylabel("proxy: eps_mse", fontsize=8)
    for axis in list(axes.flat)[count:]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--granularity", default="pair", choices=("block", "pair", "stage"))
    parser.add_argument("--units", help="comma-separated units instead of the granularity's")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--clip-model", help="CLIP model (default: the sweep's)")
    parser.add_argument("--latents", default="rendered,baseline", help="proxy latent sources to try")
    parser.add_argument("--timesteps", default="1,2,4,8", help="proxy timestep counts to try")
    parser.add_argument("--work", help="keep the sweeps' run directories here (default: a temporary folder)")
    parser.add_argument("--out", default="reports/proxy_vs_full")
    args = parser.parse_args(argv)

    common = {"granularity": args.granularity, "units": args.units, "prompts": "shapes",
              "num_prompts": args.num_prompts, "steps": args.steps}
    default = resolve(args.model, "", SweepOptions(mode="proxy", **common))
    settings = [(latents, int(k)) for latents in args.latents.split(",") for k in args.timesteps.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        started = time.perf_counter()
        full = sensitivity(args.model, out=str(work / "full"), clip_model=args.clip_model, progress=False, **common)
        full_seconds = time.perf_counter() - started
        proxies, seconds = {}, {}
        for latents, k in settings:
            name = f"{latents}, K={k}"
            started = time.perf_counter()
            proxies[name] = sensitivity(args.model, out=str(work / f"proxy-{latents}-{k}"), mode="proxy",
                                        proxy_latents=latents, timesteps=k, progress=False, **common)
            seconds[name] = time.perf_counter() - started

    references = reference_scores(full)
    table = full[["unit", "kind", "params"]].copy()
    for reference, score in references.items():
        table[f"full {REFERENCES[reference]}"] = score
    rows, rhos = [], {}
    for name, proxy in proxies.items():
        assert list(proxy["unit"]) == list(full["unit"])
        table[f"eps_mse ({name})"] = proxy["eps_mse"]
        correlations = {reference: spearman(proxy["eps_mse"], score) for reference, score in references.items()}
        rhos[name] = correlations.get("clip", math.nan)
        is_default = name == f"{default.proxy_latents}, K={default.timesteps}"
        rows.append({"proxy": name + " (default)" * is_default, "seconds": seconds[name],
                     "speed-up": full_seconds / seconds[name],
                     **{f"Spearman vs {REFERENCES[r]}": value for r, value in correlations.items()}})
    summary = pd.DataFrame(rows)
    table.to_csv(out / "units.csv", index=False)
    write_figure(out / "proxy_vs_full.png", full, proxies, rhos)
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    lines = [
        "# Proxy mode against full mode",
        "",
        f"{args.model}, {len(full)} {args.granularity} units, {args.num_prompts} shapes prompts, {args.steps} "
        f"steps, {device}. Full sweep: {full_seconds:.1f}s, ranking units by the change of CLIP score (and, for "
        "reference, by latent MSE and attribute accuracy). Targets: speed-up >= 20x, Spearman vs "
        "-delta_clip_score >= 0.8. Made by `python analyses/proxy_vs_full.py`.",
        "",
        markdown(summary),
        "",
        "units.csv: every unit's full-mode scores and proxy eps_mse; proxy_vs_full.png: eps_mse against "
        "-delta_clip_score per proxy setting.",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"full_seconds": full_seconds, "summary": summary}


if __name__ == "__main__":
    main()
