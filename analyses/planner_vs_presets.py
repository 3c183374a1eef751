"""The planner's plans against BK-SDM's presets at equal cost, measured without retraining.

    python analyses/planner_vs_presets.py --sensitivity runs/NAME [--model MODEL] [--budgets 0.675,0.562,0.377,0.5]
        [--methods greedy,optuna] [--trials 200] [--num-prompts 32] [--steps 25] [--out reports/planner_vs_presets]

For every budget (parameters) and method, `prunekit.planner.plan` finds a plan from the run's sensitivities (the
additive objective, diffusers space; the Optuna study lives in the run directory). The budgets are the given ones
(BK-SDM-Base, Small and Tiny keep 0.675, 0.562 and 0.377 of SD-v1.4's parameters, plus 0.5) and each preset's own
parameter fraction on this model, so that every preset meets planner plans of equal cost. Every plan and every
preset is then built by surgery (prunekit.surgery.build_student: a standard diffusers U-Net with the teacher's
weights, not retrained), swapped into the teacher's pipeline and scored by prunekit.evaluate on held-out
captioned-shapes prompts: CLIP score and attribute accuracy. Writes into --out:

- plans/: every plan.json;
- results.csv: per plan, its budget, cost fractions, predicted (additive) loss, the scores and its units;
- table.md: the settings, all plans, and the head-to-head at each preset's cost (planner minus preset);
- plot.png: CLIP score and attribute accuracy against the parameter fraction.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib
import pandas as pd

from prunekit.errors import PrunekitError
from prunekit.evaluate import evaluate
from prunekit.graph import all_units
from prunekit.models import resolve_model
from prunekit.plan import make_preset, presets_for
from prunekit.planner import plan
from prunekit.planner.measured import unet_swapped
from prunekit.planner.objective import Additive
from prunekit.rundir import RunDir
from prunekit.surgery import build_student

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)

ATTRIBUTES = ("color", "shape", "position", "size", "all")


def find_plans(model: str, config: dict, run: Path, budgets: list[float], methods: list[str], trials: int,
               out: Path) -> tuple[list[dict], dict[str, float]]:
    """The teacher, the presets that fit, and each method's plan at each budget (a budget no plan meets is left
    out); and each preset's cost, its parameter fraction rounded up to 4 decimals (a budget it meets)."""
    additive = Additive(RunDir(run).sensitivities(), all_units(config, costs=False))
    rows = [{"plan": "teacher", "method": "teacher", "budget": 1.0, "params_fraction": 1.0, "macs_fraction": 1.0,
             "predicted_loss": 0.0, "remove": []}]
    preset_costs = {}
    for name in presets_for(config):
        preset = make_preset(name, model, config)
        cost = math.ceil(preset.predicted["params_fraction"] * 1e4) / 1e4  # a budget the preset itself meets
        preset_costs[name] = cost
        rows.append({"plan": f"preset:{name}", "method": "preset", "budget": cost,
                     "params_fraction": preset.predicted["params_fraction"],
                     "macs_fraction": preset.predicted["macs_fraction"],
                     "predicted_loss": additive(preset.remove), "remove": list(preset.remove)})
    for budget in sorted(set(budgets) | set(preset_costs.values()), reverse=True):
        for method in methods:
            try:
                made = plan(model, budget, sensitivity=str(run), method=method, trials=trials,
                            out=out / "plans" / f"{method}-{budget:g}.json", progress=False)
            except PrunekitError as error:
                print(f"  {method} at {budget:g}: {error}")
                continue
            rows.append({"plan": f"{method}@{budget:g}", "method": method, "budget": budget,
                         "params_fraction": made.predicted["params_fraction"],
                         "macs_fraction": made.predicted["macs_fraction"], "predicted_loss": made.predicted["loss"],
                         "remove": list(made.remove)})
    return rows, preset_costs


def head_to_head(frame: pd.DataFrame, preset_costs: dict) -> pd.DataFrame:
    """Per preset and method: the planner's plan at the preset's own cost, its scores minus the preset's."""
    rows = []
    for name, cost in preset_costs.items():
        preset = frame[frame["plan"] == f"preset:{name}"].iloc[0]
        for found in frame[(frame["method"].isin(["greedy", "optuna"])) & (frame["budget"] == cost)].itertuples():
            same = found.remove == preset["remove"]
            rows.append({"preset": name, "cost": cost, "method": found.method,
                         "planner_params": found.params_fraction, "predicted_loss_diff":
                         found.predicted_loss - preset["predicted_loss"],
                         "clip_score_diff": found.clip_score - preset["clip_score"],
                         "attr_all_diff": found.attr_all - preset["attr_all"],
                         "verdict": "same plan" if same else (
                             "planner better" if found.clip_score >= preset["clip_score"] else "preset better")})
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame) -> str:
    """`frame` as a Markdown table, numbers to 4 significant digits."""
    cell = lambda value: f"{value:.4g}" if isinstance(value, float) else str(value)  # noqa: E731
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write_plot(path: Path, frame: pd.DataFrame) -> None:
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"preset": ("*", 120), "greedy": ("o", 30), "optuna": ("x", 40)}
    for axis, column, label in ((axes[0], "clip_score", "CLIP score"), (axes[1], "attr_all", "attribute accuracy (all)")):
        teacher = frame[frame["method"] == "teacher"].iloc[0]
        axis.axhline(teacher[column], color="gray", linewidth=0.8, label="teacher")
        for method, (marker, size) in styles.items():
            group = frame[frame["method"] == method]
            axis.scatter(group["params_fraction"], group[column], marker=marker, s=size, label=method)
        for row in frame[frame["method"] == "preset"].itertuples():
            axis.annotate(row.plan.split(":")[1], (row.params_fraction, getattr(row, column)), fontsize=8)
        axis.set_xlabel("parameters kept (fraction of the teacher's U-Net)")
        axis.set_ylabel(label)
        axis.legend(fontsize=8)
    figure.suptitle("Planner plans and BK-SDM presets without retraining", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sensitivity", required=True, help="the model's sensitivity run (runs/NAME)")
    parser.add_argument("--model", help="the model (default: the run's)")
    parser.add_argument("--budgets", default="0.675,0.562,0.377,0.5", help="parameter budgets, comma-separated")
    parser.add_argument("--methods", default="greedy,optuna", help="comma-separated: greedy, optuna")
    parser.add_argument("--trials", type=int, default=200, help="Optuna trials per budget (default 200)")
    parser.add_argument("--num-prompts", type=int, default=32, help="held-out shapes prompts per plan (default 32)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    parser.add_argument("--seed", type=int, default=0, help="orders the prompts and seeds the noise (default 0)")
    parser.add_argument("--clip-model", help="CLIP model of the CLIP score (default: the run's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="reports/planner_vs_presets")
    args = parser.parse_args()

    run, out = Path(args.sensitivity), Path(args.out)
    info = RunDir(run).require_record()
    teacher = resolve_model(args.model or info.model_name)
    model, config = teacher.name, teacher.config
    clip_model = args.clip_model or info.args.get("clip_model")
    rows, preset_costs = find_plans(model, config, run, [float(b) for b in args.budgets.split(",")],
                                    args.methods.split(","), args.trials, out)

    pipe = teacher.pipeline()
    pipe.set_progress_bar_config(disable=True)
    scored: dict[str, dict] = {}
    for row in rows:
        key = " ".join(row["remove"])
        if key not in scored:  # the surgery student with the teacher's weights (the teacher itself for no units)
            unet = build_student(pipe.unet, row["remove"])[0].eval() if row["remove"] else pipe.unet
            with unet_swapped(pipe, unet):
                scored[key] = evaluate(teacher, pipeline=pipe, prompts="shapes", num_prompts=args.num_prompts, seed=args.seed,
                                       steps=args.steps, device=args.device, clip_model=clip_model, progress=False)
        result = scored[key]
        row.update(clip_score=result["clip_score"],
                   **{f"attr_{name}": result["attribute_accuracy"][name] for name in ATTRIBUTES})
        print(f"  {row['plan']:18} params {row['params_fraction']:.4f}  clip {row['clip_score']:.3f}  "
              f"attr_all {row['attr_all']:.3f}", flush=True)
    frame = pd.DataFrame(rows)
    duel = head_to_head(frame, preset_costs)

    out.mkdir(parents=True, exist_ok=True)
    frame.assign(remove=frame["remove"].map(" ".join)).to_csv(out / "results.csv", index=False)
    write_plot(out / "plot.png", frame)
    shown = frame[["plan", "budget", "params_fraction", "macs_fraction", "predicted_loss", "clip_score", "attr_all"]]
    text = [
        "# Planner plans against BK-SDM presets, without retraining",
        "",
        f"Model `{model}`, sensitivity run `{run}` (rule `{info.sensitivity or 'sensitivity'}`); plans from the "
        f"additive objective in the diffusers space (Optuna: {args.trials} trials). Each student is built by surgery "
        f"with the teacher's weights and scored on {args.num_prompts} held-out shapes prompts, {args.steps} steps, "
        f"seed {args.seed}, CLIP model `{clip_model}`.",
        "",
        markdown(shown),
        "",
        "## At each preset's own cost (planner minus preset; the verdict by CLIP score)",
        "",
        markdown(duel) if len(duel) else "No preset fits this model.",
        "",
        "Units removed by each plan: results.csv; the plans themselves: plans/.",
        "",
    ]
    (out / "table.md").write_text("\n".join(text))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
