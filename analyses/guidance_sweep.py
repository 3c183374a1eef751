"""Which classifier-free guidance a captioned-shapes model samples best at.

Scores the model at each guidance scale on training combinations (where the scale is chosen, so the held-out
combinations stay unseen by the choice) and on held-out ones (reported beside it). The chosen scale has the
most prompts with all four attributes right on training combinations (ties: the higher CLIP ratio).
`--write` records it in the pipeline directory's prunekit.json, which eval, sensitivity, distillation and the
demo then sample at by default (the model card, prunekit.card).

Writes reports/guidance_sweep/{table.md, table.csv}:
`python analyses/guidance_sweep.py [--model tiny-sd] [--guidances 1,1.5,2,3,5,7.5] [--write]`.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from prunekit.evaluate import evaluate
from prunekit.models import resolve_model

SETS = {"shapes-train": "training combinations (choice)", "shapes": "held-out combinations"}
ATTRIBUTES = ("color", "shape", "position", "size", "all")


def sweep(model, guidances: list[float], num_prompts: int, steps: int, seed: int,
          clip_model: str | None) -> list[dict]:
    """One row per (prompt set, guidance): attribute accuracies and the CLIP ratio."""
    rows, pipe = [], model.pipeline()
    for prompts in SETS:
        for guidance in guidances:
            result = evaluate(model, pipeline=pipe, prompts=prompts, num_prompts=num_prompts, steps=steps, seed=seed,
                              guidance=guidance, clip_model=clip_model, progress=False)
            rows.append({"prompts": prompts, "guidance": guidance, **result["attribute_accuracy"],
                         "clip_score_ratio": result["clip_score_ratio"]})
            print(rows[-1], flush=True)
    return rows


def choose(rows: list[dict]) -> float:
    """The guidance with the most all-four-right training prompts, then the highest CLIP ratio."""
    train = [row for row in rows if row["prompts"] == "shapes-train"]
    return max(train, key=lambda row: (row["all"], row["clip_score_ratio"] or 0.0))["guidance"]


def markdown(rows: list[dict], chosen: float, args) -> str:
    lines = ["# Guidance sweep", "",
             f"Model `{args.model}`; {args.num_prompts} prompts per set, {args.steps} PNDM steps, seed {args.seed}; "
             "attribute accuracy (`prunekit eval`'s deterministic judge) and the CLIP ratio "
             f"(generated / real renders, {args.clip_model or 'tiny-clip'}). Chosen on training combinations: **guidance {chosen:g}** "
             "(most prompts with all four attributes right, then the CLIP ratio). Made by "
             "`python analyses/guidance_sweep.py`.", ""]
    for prompts, title in SETS.items():
        lines += [f"## {title} (`--prompts {prompts}`)", "",
                  "| guidance | colour | shape | position | size | all four | CLIP ratio |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in (row for row in rows if row["prompts"] == prompts):
            ratio = "—" if row["clip_score_ratio"] is None else f"{row['clip_score_ratio']:.3f}"
            mark = " (chosen)" if row["guidance"] == chosen else ""
            lines.append(f"| {row['guidance']:g}{mark} | " + " | ".join(f"{row[key]:.3f}" for key in ATTRIBUTES)
                         + f" | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd", help="a captioned-shapes model: tiny-sd or a pipeline directory")
    parser.add_argument("--guidances", default="1,1.5,2,3,5,7.5", help="comma-separated scales")
    parser.add_argument("--num-prompts", type=int, default=128)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip-model", help="the CLIP model of the CLIP score (default: the bundled tiny-clip)")
    parser.add_argument("--write", action="store_true", help="record the chosen scale in the model's prunekit.json")
    parser.add_argument("--out", default="reports/guidance_sweep")
    args = parser.parse_args(argv)
    model = resolve_model(args.model)
    rows = sweep(model, [float(g) for g in args.guidances.split(",")], args.num_prompts, args.steps, args.seed,
                 args.clip_model)
    chosen = choose(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "table.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "table.md").write_text(markdown(rows, chosen, args))
    if args.write:
        model.card.with_guidance(chosen).write(model.location)
    print((out / "table.md").read_text())
    return chosen


if __name__ == "__main__":
    main()
