"""How well the additive objective predicts the measured one: the sum of a sweep's per-unit sensitivities
against the loss of removing the whole plan at once, on random plans of the diffusers space and the presets.

    python analyses/additivity.py --sensitivity runs/NAME [--model MODEL] [--candidates 24] [--num-prompts N]
                                  [--steps S] [--seed 0] [--out reports/additivity]

The additive prediction is prunekit.planner's `Additive` over the run's sensitivity.csv (LAPTOP-Diff's
additivity assumption). The measured loss removes all of a plan's units at once and scores the generations by
the run's own rule (prunekit.planner.measured: -delta_clip_score for a default full sweep), on the run's
prompts, steps and seed unless --num-prompts / --steps ask for fewer. With the run's own settings the two
share their scale and noise: a single unit measured alone gives exactly its sensitivity.csv value.

Plans: the BK-SDM presets that fit the model, then random states of the diffusers space (the number of
dropped stages and the mid block uniformly among those that fit, then each remaining stage's choice
uniformly), without repeats. Writes into --out:

- results.csv: per plan, its kind, cost fractions, units, additive prediction, measured loss and the other
  metrics the measurement computed (latent MSE, attribute accuracy, ...);
- table.md: the settings, Spearman's and Pearson's correlations, and the table;
- scatter.png: measured against additive, presets marked, the line measured = additive.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import matplotlib
import pandas as pd
from scipy.stats import pearsonr, spearmanr

from prunekit.graph import all_units
from prunekit.models import resolve_model
from prunekit.plan import preset_remove, presets_for
from prunekit.planner.measured import measurer
from prunekit.planner.objective import Additive
from prunekit.planner.space import DiffusersSpace
from prunekit.rundir import RunDir

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)


def candidates(space: DiffusersSpace, config: dict, count: int, seed: int) -> list[tuple[str, list[str]]]:
    """(kind, units removed) for the presets that fit, then random plans of `space`, `count` in all, no repeats."""
    plans: dict[str, tuple[str, list[str]]] = {}
    for name in presets_for(config):
        remove = preset_remove(name, config)
        plans[" ".join(remove)] = (f"preset:{name}", remove)
    rng = random.Random(seed)
    for _ in range(100 * count):
        if len(plans) >= count:
            break
        remove = space.remove(space.sample(rng))
        if remove:
            plans.setdefault(" ".join(remove), ("random", remove))
    return list(plans.values())


def correlations(frame: pd.DataFrame) -> dict[str, float]:
    return {"spearman": float(spearmanr(frame["additive"], frame["measured"]).statistic),
            "pearson": float(pearsonr(frame["additive"], frame["measured"]).statistic)}


def markdown(frame: pd.DataFrame) -> str:
    """`frame` as a Markdown table, numbers to 4 significant digits."""
    cell = lambda value: f"{value:.4g}" if isinstance(value, float) else str(value)  # noqa: E731
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write_scatter(path: Path, frame: pd.DataFrame, rule: str, rho: float) -> None:
    figure, axis = plt.subplots(figsize=(5, 4.5))
    for preset, group in frame.groupby(frame["kind"] != "random"):
        axis.scatter(group["additive"], group["measured"], s=40 if preset else 18, marker="*" if preset else "o",
                     label="BK-SDM presets" if preset else "random diffusers-space plans")
    for row in frame[frame["kind"] != "random"].itertuples():
        axis.annotate(row.kind.split(":")[1], (row.additive, row.measured), fontsize=8)
    low = min(frame["additive"].min(), frame["measured"].min())
    high = max(frame["additive"].max(), frame["measured"].max())
    axis.plot([low, high], [low, high], color="gray", linewidth=0.8, label="measured = additive")
    axis.set_xlabel(f"additive: sum of the units' {rule}")
    axis.set_ylabel(f"measured: {rule} of the whole plan")
    axis.set_title(f"Additivity of block sensitivity (Spearman {rho:.2f})", fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensitivity", required=True, help="a full-mode sensitivity run (runs/NAME)")
    parser.add_argument("--model", help="the model (default: the run's)")
    parser.add_argument("--candidates", type=int, default=24, help="plans in all, presets included (default 24)")
    parser.add_argument("--num-prompts", type=int, help="prompts per measurement (default: the run's)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    parser.add_argument("--seed", type=int, default=0, help="picks the random plans (default 0)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when a GPU is visible)")
    parser.add_argument("--out", default="reports/additivity")
    args = parser.parse_args()

    run = RunDir(args.sensitivity)
    info = run.require_record()
    model = resolve_model(args.model or info.model_name)
    config = model.config
    run.check_model(model.fingerprint)
    additive = Additive(run.sensitivities(), all_units(config, costs=False), run.table_path)
    space = DiffusersSpace(config, scorable=additive.scores)  # the planner's space for this sweep
    measure = measurer(model, sensitivity=run.path, num_prompts=args.num_prompts or info.args["num_prompts"],
                       steps=args.steps, device=args.device)
    rule = measure.rule

    rows = []
    for number, (kind, remove) in enumerate(candidates(space, config, args.candidates, args.seed), 1):
        scores = measure.scores(remove)
        rows.append({"kind": kind, "params_fraction": space.additive_fraction(remove, "params"),
                     "macs_fraction": space.additive_fraction(remove, "macs"), "units": len(remove),
                     "additive": additive(remove), "measured": measure.loss(scores), **scores,
                     "remove": " ".join(remove)})
        print(f"{number:3d} {kind:15} additive {rows[-1]['additive']:9.4g}  measured {rows[-1]['measured']:9.4g}",
              flush=True)
    frame = pd.DataFrame(rows)
    stats = correlations(frame)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "results.csv", index=False)
    write_scatter(out / "scatter.png", frame, rule, stats["spearman"])
    described = measure.describe()
    shown = frame[["kind", "params_fraction", "units", "additive", "measured", "remove"]]
    text = [
        "# Additivity: the additive objective against the measured one",
        "",
        f"Model `{model.name}`, sensitivity run `{run.path}` ({info.args.get('num_prompts')} prompts, "
        f"{info.args.get('steps')} steps). Loss rule: `{rule}` (larger = more harmful). Measured on "
        f"{described['num_prompts']} {described['prompts']} prompts, {described['steps']} steps, guidance "
        f"{described['guidance']}, seed {described['seed']}; baseline {json.dumps(described['baseline'])}.",
        "",
        f"{len(frame)} plans ({(frame['kind'] != 'random').sum()} presets, the rest random diffusers-space plans, "
        f"seed {args.seed}). **Spearman rank correlation {stats['spearman']:.3f}**, Pearson {stats['pearson']:.3f}.",
        "",
        markdown(shown.sort_values("additive")),
        "",
    ]
    (out / "table.md").write_text("\n".join(text))
    print(f"Spearman {stats['spearman']:.3f}, Pearson {stats['pearson']:.3f} -> {out}")


if __name__ == "__main__":
    main()
