"""BK-SDM's distillation ablation at small scale: a bk-small student of tiny-sd, retrained three ways.

    python analyses/kd_ablation.py [--steps 500] [--batch-size 64] [--lr 1e-4] [--seeds 0,1,2]

Rows, as in the paper's ablation of its retraining losses: the teacher; the student straight after
surgery (no retraining); and, with the same steps, data, learning rate and seed, the student retrained
with the task loss only, with task + output KD, and with task + output KD + feature KD. Every model is
scored by `prunekit.evaluate` on held-out captioned-shapes prompts (attribute accuracy, CLIP score with
tiny-clip and its ratio to real images' CLIP score). "recovered" is the share of the surgery's loss that
retraining won back: (student - surgery) / (teacher - surgery).

Writes reports/kd_ablation/table.md, table.csv and ablation.png. Training runs and measured scores go
to a folder per model, preset, steps, batch size and lr under --work (default runs/kd_ablation); a rerun
reuses finished runs and scores and resumes interrupted ones.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from prunekit.distill import checkpoints, distill  # noqa: E402
from prunekit.evaluate import evaluate  # noqa: E402
from prunekit.models import resolve_model  # noqa: E402
from prunekit.plan import make_preset  # noqa: E402
from prunekit.students import pipeline_with  # noqa: E402
from prunekit.surgery import build_student  # noqa: E402

ARMS = {  # row name: (lambda_task, lambda_out, lambda_feat)
    "task loss only": (1.0, 0.0, 0.0),
    "task + out-KD": (1.0, 1.0, 0.0),
    "task + out-KD + feat-KD": (1.0, 1.0, 1.0),
}
METRICS = ("attr_all", "attr_color", "attr_shape", "attr_position", "attr_size", "clip_score", "clip_score_ratio")
RECOVERED = ("attr_all", "clip_score")


def scores(model, pipe, args, device: str) -> dict:
    """The METRICS of `pipe` (the teacher `model` or a student of it) on held-out shapes prompts."""
    result = evaluate(model, pipeline=pipe, prompts="shapes", num_prompts=args.num_prompts, steps=args.eval_steps,
                      guidance=args.guidance, device=device, clip_model=args.clip_model, progress=False)
    flat = {f"attr_{key}": value for key, value in result["attribute_accuracy"].items()}
    ratio = result["clip_score_ratio"]  # None where real images score 0
    return {**flat, "clip_score": result["clip_score"], "clip_score_ratio": float("nan") if ratio is None else ratio}


class Scores:
    """Measured scores kept in a JSON file named after the evaluation settings, so a rerun measures only what is new."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str, measure) -> dict:
        if key not in self.data:
            self.data[key] = measure()
            self.path.write_text(json.dumps(self.data, indent=2) + "\n")
        return self.data[key]


def train(plan: Path, out: Path, weights: tuple, seed: int, args) -> Path:
    """The student of one arm and seed, trained (or resumed) unless it is already finished."""
    logs = out / "logs.csv"
    done = (out / "student" / "model_index.json").is_file() and logs.is_file() and \
        len(logs.read_text().splitlines()) - 1 >= args.steps
    if not done:
        lambda_task, lambda_out, lambda_feat = weights
        distill(plan, "shapes", out, teacher=args.model, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                lambda_task=lambda_task, lambda_out=lambda_out, lambda_feat=lambda_feat, seed=seed,
                mixed_precision=args.mixed_precision, cache_latents=True, num_examples=args.num_examples,
                checkpoint_every=max(1, args.steps // 4), resume=bool(checkpoints.complete(out / "checkpoints")),
                eval_num_prompts=0)
    return out


def task_losses(logs: Path) -> list[float]:
    with logs.open(newline="") as file:
        return [float(row["loss_task"]) for row in csv.DictReader(file)]


def summarise(rows: dict[str, list[dict]], params: dict[str, int], losses: dict[str, list[list[float]]]) -> list[dict]:
    """One table row per model: mean (and std over seeds) of each metric, params, recovered, final task loss."""
    mean = {name: {m: statistics.fmean(s[m] for s in runs) for m in METRICS} for name, runs in rows.items()}
    table = []
    for name, runs in rows.items():
        row = {"model": name, "seeds": len(runs), "params_m": round(params[name] / 1e6, 3)}
        for metric in METRICS:
            values = [run[metric] for run in runs]
            row[metric] = statistics.fmean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        for metric in RECOVERED:
            gap = mean["teacher"][metric] - mean["surgery (no retraining)"][metric]
            row[f"recovered_{metric}"] = ((row[metric] - mean["surgery (no retraining)"][metric]) / gap
                                          if name in ARMS and gap else None)
        tail = [run[-max(1, len(run) // 10):] for run in losses.get(name, [])]
        row["final_task_loss"] = statistics.fmean(sum(tail, [])) if tail else None
        table.append(row)
    return table


def write_markdown(path: Path, table: list[dict], args) -> None:
    def cell(row, metric, digits=3):
        std = f" ± {row[metric + '_std']:.{digits}f}" if row["seeds"] > 1 else ""
        return f"{row[metric]:.{digits}f}{std}"

    def share(value):
        return "—" if value is None else f"{value:.0%}"

    lines = [f"# Distillation ablation: {args.preset} student of {args.model}", "",
             f"{args.steps} steps, batch {args.batch_size}, AdamW lr {args.lr:g}, {args.num_examples} shapes examples "
             f"(latents cached), seeds {args.seeds}; evaluation: {args.num_prompts} held-out shapes prompts, "
             f"{args.eval_steps} PNDM steps, guidance {args.guidance:g}. Mean{' ± std over seeds' if ',' in args.seeds else ''}.",
             "", "| model | params (M) | attributes, all | colour | shape | position | size | CLIP score | "
             "CLIP ratio | recovered (attributes) | recovered (CLIP) | final task loss |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in table:
        loss = "—" if row["final_task_loss"] is None else f"{row['final_task_loss']:.4f}"
        lines.append(f"| {row['model']} | {row['params_m']:.2f} | {cell(row, 'attr_all')} | "
                     f"{cell(row, 'attr_color')} | {cell(row, 'attr_shape')} | {cell(row, 'attr_position')} | "
                     f"{cell(row, 'attr_size')} | "
                     f"{cell(row, 'clip_score', 2)} | {cell(row, 'clip_score_ratio')} | "
                     f"{share(row['recovered_attr_all'])} | {share(row['recovered_clip_score'])} | {loss} |")
    path.write_text("\n".join(lines) + "\n")


def write_figure(path: Path, table: list[dict], losses: dict[str, list[list[float]]]) -> None:
    figure, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4))
    names = [row["model"] for row in table]
    width = 0.4
    for offset, metric, label in ((-width / 2, "attr_all", "attribute accuracy (all)"),
                                  (width / 2, "clip_score_ratio", "CLIP score / real images'")):
        bars.bar([i + offset for i in range(len(names))], [row[metric] for row in table], width,
                 yerr=[row[metric + "_std"] for row in table], label=label)
    bars.set_xticks(range(len(names)), [name.replace(" + ", "\n+ ").replace(" (", "\n(") for name in names], fontsize=7)
    bars.set_ylim(bottom=0)
    bars.set_title("held-out shapes prompts")
    bars.legend(fontsize=8)
    for name, runs in losses.items():
        window = max(1, len(runs[0]) // 25)
        smooth = [statistics.fmean(runs[0][max(0, i - window + 1):i + 1]) for i in range(len(runs[0]))]
        curves.plot(range(1, len(smooth) + 1), smooth, label=name)
    curves.set_xlabel("step")
    curves.set_ylabel("task loss (moving average, first seed)")
    curves.set_title("retraining")
    curves.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd", help="the teacher MODEL (default tiny-sd)")
    parser.add_argument("--preset", default="bk-small", choices=("bk-base", "bk-small", "bk-tiny"))
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--num-examples", type=int, default=10_000, help="shapes training examples")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--num-prompts", type=int, default=200, help="held-out prompts per evaluation")
    parser.add_argument("--eval-steps", type=int, default=25)
    parser.add_argument("--clip-model", help="CLIP model of the CLIP score (default: the bundled tiny-clip)")
    parser.add_argument("--work", default="runs/kd_ablation", help="training runs and scores")
    parser.add_argument("--report", default="reports/kd_ablation", help="where table.md, table.csv, ablation.png go")
    args = parser.parse_args(argv)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    report = Path(args.report)
    work = Path(args.work) / f"{Path(args.model).name}-{args.preset}-{args.steps}x{args.batch_size}-lr{args.lr:g}"
    work.mkdir(parents=True, exist_ok=True)
    report.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    model = resolve_model(args.model)
    plan = make_preset(args.preset, args.model, model.config, model.tokens)
    plan_path = plan.save(work / "plan.json")
    params = {"teacher": plan.predicted["teacher_params"], "surgery (no retraining)": plan.predicted["params"],
              **{name: plan.predicted["params"] for name in ARMS}}
    clip = Path(str(args.clip_model)).name
    args.guidance = model.card.guidance  # the teacher's, for the teacher and every student
    measured = Scores(work / f"scores-{args.num_prompts}prompts-{args.eval_steps}steps-g{args.guidance:g}-{clip}.json")
    teacher = model.pipeline()
    surgery, _ = build_student(teacher.unet, plan)
    surgery_pipe = pipeline_with(teacher, surgery)
    rows = {"teacher": [measured.get("teacher", lambda: scores(model, teacher, args, device))],
            "surgery (no retraining)": [measured.get("surgery", lambda: scores(model, surgery_pipe, args, device))]}
    losses = {}
    for name, weights in ARMS.items():
        rows[name], losses[name] = [], []
        for seed in seeds:
            slug = f"{name.replace(' + ', '-').replace(' ', '-')}-seed{seed}"
            out = train(plan_path, work / slug, weights, seed, args)
            pipe = type(teacher).from_pretrained(out / "student", local_files_only=True)
            rows[name].append(measured.get(slug, lambda: scores(model, pipe, args, device)))
            losses[name].append(task_losses(out / "logs.csv"))

    table = summarise(rows, params, losses)
    with (report / "table.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    write_markdown(report / "table.md", table, args)
    write_figure(report / "ablation.png", table, losses)
    print((report / "table.md").read_text())
    return table


if __name__ == "__main__":
    main()
