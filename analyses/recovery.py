"""How fast distillation recovers the teacher: a preset's student on the bundled tiny-sd, trained once, its
checkpoints scored along the way (the recovery curve: attributes and CLIP score against steps and minutes).

    python analyses/recovery.py [--preset bk-small] [--steps 600] [--batch-size 32] [--lr 5e-4]
        [--lr-schedule cosine] [--warmup 50] [--no-ema] [--caption-dropout 0.1] [--every 150] [--curve-prompts 64]
        [--threads 2] [--name NAME] [--work runs/recovery] [--out reports/recovery]

The run is one `prunekit distill` (prunekit.distill; its defaults here are prunekit.distill.RECOVERY's) with
latents cached, on the shapes data; its eval.json scores the teacher and the student before and after on 200
held-out prompts (the goal's protocol). Every
`--every` steps a checkpoint is kept, and afterwards each is scored on `--curve-prompts` held-out prompts (the
same prompts and seeds for the teacher). Recovery is the student's score as a share of the teacher's. The
training minutes are logs.csv's; the whole distill call's wall time (latent cache, evaluations) is given too.
Writes into --out:
NAME.csv (the curve), NAME.md (settings, final scores, recovery, minutes) and NAME.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import matplotlib
import torch
from safetensors.torch import load_file

from prunekit.quiet import quiet_libraries

quiet_libraries()
from prunekit.distill import RECOVERY, DistillOptions, checkpoints, distill  # noqa: E402
from prunekit.evaluate import evaluate  # noqa: E402
from prunekit.models import resolve_model  # noqa: E402
from prunekit.plan import Plan, make_preset  # noqa: E402
from prunekit.students import pipeline_with  # noqa: E402
from prunekit.surgery import build_student  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)

GOAL = 0.95  # the share of the teacher's attributes-all and CLIP score to recover
BUDGET_MINUTES = 15.0


def score(model, pipe, prompts: int) -> dict:
    """Attributes-all and CLIP score of `pipe` on the first `prompts` held-out shapes prompts."""
    result = evaluate(model, pipeline=pipe, prompts="shapes", num_prompts=prompts, progress=False)
    return {"attr_all": result["attribute_accuracy"]["all"], "clip_score": result["clip_score"]}


def checkpoint_weights(folder: Path, ema: bool) -> dict:
    """The student's weights in one checkpoint (its EMA's with `ema`)."""
    if ema:
        return load_file(next((folder / "ema").glob("*.safetensors")))
    return load_file(folder / "model.safetensors")


def seconds_at(logs: Path) -> dict[int, float]:
    with logs.open(newline="") as file:
        return {int(row["step"]): float(row["seconds"]) for row in csv.DictReader(file)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--preset", default="bk-small")
    parser.add_argument("--steps", type=int, default=RECOVERY.steps)
    parser.add_argument("--batch-size", type=int, default=RECOVERY.batch_size)
    parser.add_argument("--lr", type=float, default=RECOVERY.lr)
    parser.add_argument("--lr-schedule", default=RECOVERY.lr_schedule)
    parser.add_argument("--warmup", type=int, default=RECOVERY.warmup)
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="score the trained weights, not the EMA")
    parser.add_argument("--ema-decay", type=float, default=RECOVERY.ema_decay)
    parser.add_argument("--feat-norm", default=RECOVERY.feat_norm)
    parser.add_argument("--caption-dropout", type=float, default=RECOVERY.caption_dropout)
    parser.add_argument("--lambdas", default="1,1,1", help="task, out-KD and feature-KD weights")
    parser.add_argument("--num-examples", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=150, help="steps between scored checkpoints")
    parser.add_argument("--curve-prompts", type=int, default=64)
    parser.add_argument("--final-prompts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--name", help="the run's name (default: from the settings)")
    parser.add_argument("--work", default="runs/recovery")
    parser.add_argument("--out", default="reports/recovery")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lambdas = [float(x) for x in args.lambdas.split(",")]
    name = args.name or (f"{args.preset}-{args.steps}x{args.batch_size}-lr{args.lr:g}-{args.lr_schedule}"
                         f"-w{args.warmup}{'-ema' if args.ema else ''}-{args.feat_norm}-seed{args.seed}")
    work, out = Path(args.work) / name, Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    model = resolve_model(args.model)
    plan = work / "plan.json"
    if not plan.is_file():
        make_preset(args.preset, model.name, model.config, model.tokens).save(plan)
    options = DistillOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule,
                             warmup=args.warmup, ema=args.ema, ema_decay=args.ema_decay, feat_norm=args.feat_norm,
                             caption_dropout=args.caption_dropout,
                             lambda_task=lambdas[0], lambda_out=lambdas[1], lambda_feat=lambdas[2],
                             cache_latents=True, num_examples=args.num_examples, checkpoint_every=args.every,
                             keep_checkpoints=args.steps // args.every + 1, seed=args.seed,
                             eval_num_prompts=args.final_prompts,
                             resume=bool(checkpoints.complete(work / "distill" / "checkpoints")))
    started = time.perf_counter()
    summary = distill(plan, out=work / "distill", teacher=model, options=options)
    wall = time.perf_counter() - started

    teacher = model.pipeline()
    scores = {"teacher": score(model, teacher, args.curve_prompts)}
    student, _ = build_student(teacher.unet, Plan.load(plan))
    seconds = seconds_at(work / "distill" / "logs.csv")
    rows = []
    for folder in checkpoints.complete(work / "distill" / "checkpoints"):
        step = checkpoints.read_state(folder).step
        student.load_state_dict(checkpoint_weights(folder, args.ema))
        pipe = pipeline_with(teacher, student.eval())
        values = score(model, pipe, args.curve_prompts)
        rows.append({"step": step, "minutes": seconds[step] / 60, **values,
                     **{f"{key}_recovered": values[key] / scores["teacher"][key] for key in values}})
        print(rows[-1], flush=True)

    final = summary["eval"] or json.loads((work / "distill" / "eval.json").read_text())
    after = final["student_after_ema" if args.ema else "student_after"]
    recovered = {"attr_all": after["attribute_accuracy"]["all"] / final["teacher"]["attribute_accuracy"]["all"],
                 "clip_score": after["clip_score"] / final["teacher"]["clip_score"]}
    train_minutes = summary["seconds"] / 60
    write(out, name, args, rows, scores["teacher"], final, recovered, train_minutes, wall / 60)
    return {"recovered": recovered, "train_minutes": train_minutes, "curve": rows}


def write(out: Path, name: str, args, rows: list[dict], teacher: dict, final: dict, recovered: dict,
          train_minutes: float, wall_minutes: float) -> None:
    with (out / f"{name}.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for axis, key, label in ((axes[0], "attr_all", "attributes, all four"), (axes[1], "clip_score", "CLIP score")):
        axis.plot([r["minutes"] for r in rows], [r[key] for r in rows], marker="o", label="student")
        axis.axhline(teacher[key], color="gray", linewidth=0.8, label="teacher")
        axis.axhline(GOAL * teacher[key], color="gray", linestyle="--", linewidth=0.8, label=f"{GOAL:.0%} of teacher")
        axis.axvline(BUDGET_MINUTES, color="#cf222e", linewidth=0.8, label=f"{BUDGET_MINUTES:g} min")
        axis.set_xlabel("training minutes (2 CPU cores)")
        axis.set_ylabel(label)
        axis.legend(fontsize=7)
    figure.suptitle(f"Recovery of the {args.preset} student of {args.model}: {name}", fontsize=9)
    figure.tight_layout()
    figure.savefig(out / f"{name}.png", dpi=120)
    plt.close(figure)
    teacher_final, after = final["teacher"], final["student_after_ema" if args.ema else "student_after"]
    lines = [f"# Recovery: {name}", "",
             f"`python analyses/recovery.py {' '.join(_argv(args))}`", "",
             f"- training: {train_minutes:.1f} min (logs.csv); the whole distill call, the latent cache and four "
             f"evaluations of {args.final_prompts} prompts included, {wall_minutes:.1f} min",
             f"- held-out, {args.final_prompts} prompts: teacher attributes-all "
             f"{teacher_final['attribute_accuracy']['all']:.3f}, CLIP {teacher_final['clip_score']:.2f}; student "
             f"before {final['student_before']['attribute_accuracy']['all']:.3f} / "
             f"{final['student_before']['clip_score']:.2f}; after {after['attribute_accuracy']['all']:.3f} / "
             f"{after['clip_score']:.2f}",
             f"- recovered: attributes-all {recovered['attr_all']:.1%}, CLIP {recovered['clip_score']:.1%} "
             f"(goal {GOAL:.0%} of each within {BUDGET_MINUTES:g} min: "
             f"{'met' if min(recovered.values()) >= GOAL and train_minutes <= BUDGET_MINUTES else 'not met'})", "",
             "| step | minutes | attributes-all | CLIP | attributes recovered | CLIP recovered |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['step']} | {r['minutes']:.1f} | {r['attr_all']:.3f} | {r['clip_score']:.2f} | "
              f"{r['attr_all_recovered']:.1%} | {r['clip_score_recovered']:.1%} |" for r in rows]
    lines += ["", f"Curve on {args.curve_prompts} held-out prompts (teacher {teacher['attr_all']:.3f} / "
              f"{teacher['clip_score']:.2f} there).", ""]
    (out / f"{name}.md").write_text("\n".join(lines))


def _argv(args) -> list[str]:
    return [f"--{key.replace('_', '-')} {value}" if not isinstance(value, bool) else f"--{key.replace('_', '-')}"
            for key, value in vars(args).items() if value not in (None, False) and key not in ("work", "out")]


if __name__ == "__main__":
    main()
