"""The `prunekit` command: parsing only. Each subcommand calls one API function; user errors exit 2."""
from __future__ import annotations

import argparse
import json
import os
import sys

from prunekit.errors import PrunekitError

MODEL_HELP = "an alias (sd-v1-4, sd-v1-5, sd-v2-1-base, sd-v2-1, sdxl-base, tiny-sd), a hub id or a local diffusers directory"
GUIDANCE_HELP = "classifier-free guidance scale (default: the model's recommended one; 7.5 for SD, tiny-sd's own from its model card)"


def _inspect(args) -> None:
    from prunekit.inspect import inspect_model, render

    print(render(inspect_model(args.model, args.granularity), args.format))


def _plan(args) -> None:
    if args.budget is not None:
        from prunekit.planner import output_path, plan, summary

        measure = None
        if args.objective == "measured":
            from prunekit.planner.measured import deferred_measurer

            measure = deferred_measurer(args.model, args.sensitivity, num_prompts=args.measure_prompts,
                                        steps=args.measure_steps, device=args.device)
        made = plan(args.model, args.budget, metric=args.metric, sensitivity=args.sensitivity,
                    objective=args.objective, method=args.method, space=args.space, trials=args.trials,
                    storage=args.storage, pareto=args.pareto, seed=args.seed, out=args.output, device=args.device,
                    measure=measure)
        print(summary(made))
        print(f"  -> {output_path(args.output, args.sensitivity)}")
        return
    from prunekit.models import unet_config
    from prunekit.plan import make_preset

    output = args.output or "plan.json"
    made = make_preset(args.preset, args.model, unet_config(args.model))
    made.save(output)
    predicted = made.predicted
    print(f"{made.method} for {args.model}: removes {len(made.remove)} units -> {output}")
    print(f"  params {predicted['params']:,} ({predicted['params_fraction']:.4f} of the teacher's)")
    print(f"  MACs   {predicted['macs'] / 1e9:.1f}G per step ({predicted['macs_fraction']:.4f} of the teacher's)")


def _eval(args) -> None:
    from prunekit.evaluate import evaluate

    result = evaluate(args.model, prompts=args.prompts, num_prompts=args.num_prompts, seed=args.seed,
                      steps=args.steps, guidance=args.guidance, batch_size=args.batch_size, device=args.device)
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k} {v:.3f}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.4f}"
        print(f"{key:>20}  {value}")


def _distill(args) -> None:
    from accelerate import PartialState

    from prunekit.distill import distill

    summary = distill(args.plan, data=args.data, out=args.out, teacher=args.teacher, steps=args.steps,
                      batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, lambda_task=args.lambda_task,
                      lambda_out=args.lambda_out, lambda_feat=args.lambda_feat, feat_norm=args.feat_norm, ema=args.ema,
                      mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                      cache_latents=args.cache_latents, checkpoint_every=args.checkpoint_every, resume=args.resume,
                      seed=args.seed, num_examples=args.num_examples, num_workers=args.num_workers,
                      eval_prompts=args.eval_prompts, eval_num_prompts=args.eval_num_prompts,
                      eval_steps=args.eval_steps, eval_clip_model=args.eval_clip_model)
    if not PartialState().is_main_process:  # under `accelerate launch`, one process reports
        return
    print(f"distilled {summary['steps']} steps in {summary['seconds']:.0f}s -> {summary['student']}")
    for name, result in (summary["eval"] or {}).items():
        if name != "settings":
            accuracy = result.get("attribute_accuracy", {}).get("all")
            print(f"  {name:>17}  clip_score {result['clip_score']:.3f}"
                  + (f"  attribute accuracy (all) {accuracy:.3f}" if accuracy is not None else ""))


def _sensitivity(args) -> None:
    from accelerate import PartialState

    from prunekit.sensitivity import sensitivity

    table = sensitivity(args.model, out=args.out, granularity=args.granularity, mode=args.mode, metrics=args.metrics,
                        prompts=args.prompts, num_prompts=args.num_prompts, steps=args.steps, guidance=args.guidance,
                        seed=args.seed, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                        init=args.init, units=args.units, timesteps=args.timesteps, proxy_latents=args.proxy_latents,
                        clip_model=args.clip_model)
    if not PartialState().is_main_process:  # under `accelerate launch`, one process reports
        return
    print(f"{len(table)} units -> {args.out}/sensitivity.csv; most harmful to remove:")
    for _, row in table.sort_values("sensitivity", ascending=False).head(5).iterrows():
        print(f"  {row['unit']:<20} sensitivity {row['sensitivity']:.4g}")


def _demo(args) -> None:
    from prunekit.demo import DemoSettings, demo

    demo(args.out, DemoSettings(num_prompts=args.num_prompts, distill_steps=args.distill_steps))


def _report(args) -> None:
    from prunekit.report import build_report

    print(f"report -> {build_report(args.run_dir, args.output)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description=(
        "Find which blocks of a diffusion U-Net can go, plan a smaller U-Net under a budget, "
        "and retrain it by distillation (BK-SDM, automated)."))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = commands.add_parser("inspect", help="list a U-Net's removable units with parameters and MACs",
                                  description="List a U-Net's removable units with parameters and MACs "
                                              "(counted on the meta device: no weights needed).")
    inspect.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    inspect.add_argument("--granularity", choices=("block", "pair", "stage"), default="block",
                         help="block: resnets and attentions; pair: resnet+attention pairs; stage: mid and stages")
    inspect.add_argument("--format", choices=("table", "csv", "json"), default="table")
    inspect.set_defaults(run=_inspect)

    plan = commands.add_parser("plan", help="make a pruning plan (plan.json): a BK-SDM preset or one under a budget",
                               description="Make a pruning plan: a BK-SDM preset (--preset), or the plan of least "
                                           "loss whose student keeps at most --budget of the teacher's parameters, "
                                           "MACs or latency, found by greedy or Optuna from a sensitivity run.")
    plan.add_argument("--model", default="sd-v1-4", help=MODEL_HELP)
    what = plan.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", choices=("bk-base", "bk-small", "bk-tiny"),
                      help="BK-SDM's plans, defined by topology")
    what.add_argument("--budget", type=float, metavar="F",
                      help="the student keeps at most F (0 < F <= 1) of the teacher's --metric")
    plan.add_argument("--metric", choices=("params", "macs", "latency"), default="params",
                      help="what the budget caps (default params; latency is timed on --device)")
    plan.add_argument("--sensitivity", metavar="RUN", help="a sensitivity run directory (runs/NAME): the additive "
                                                           "objective reads it; the study and caches go there")
    plan.add_argument("--objective", choices=("additive", "measured"), default="additive",
                      help="additive: the sum of the units' sensitivities (default); measured: remove each "
                           "candidate whole, generate a small prompt set and score it as the sensitivity run does")
    plan.add_argument("--measure-prompts", type=int, default=8, metavar="N",
                      help="measured: prompts each candidate is scored on (default 8, the run's prompt set)")
    plan.add_argument("--measure-steps", type=int, metavar="S",
                      help="measured: sampling steps (default: the sensitivity run's, else 25)")
    plan.add_argument("--method", choices=("greedy", "optuna"), default="greedy", help="default greedy")
    plan.add_argument("--space", choices=("diffusers", "free"), default="diffusers",
                      help="diffusers: standard diffusers students only (default); free: any units "
                           "(the student needs prunekit's stand-ins)")
    plan.add_argument("--trials", type=int, default=200,
                      help="Optuna: finished trials the study should hold (default 200); rerunning resumes")
    plan.add_argument("--storage", metavar="URL",
                      help="Optuna: the study's RDB URL (default sqlite:///RUN/optuna.db, else in memory)")
    plan.add_argument("--pareto", action="store_true",
                      help="Optuna: NSGA-II over cost and loss; writes pareto.csv beside the plan")
    plan.add_argument("--seed", type=int, default=0)
    plan.add_argument("--device", default="cpu", help="where --metric latency is timed: cpu (default), cuda or cuda:N")
    plan.add_argument("-o", "--out", "--output", dest="output",
                      help="where to write the plan (default RUN/plan.json with --sensitivity, else plan.json)")
    plan.set_defaults(run=_plan)

    evaluate = commands.add_parser("eval", help="generate with a model and score it",
                                   description="Generate with a model from fixed seeds and score the images: "
                                               "attribute accuracy and CLIP score for shapes prompts.")
    evaluate.add_argument("model", metavar="MODEL", nargs="?", default="tiny-sd", help=MODEL_HELP)
    evaluate.add_argument("--prompts", default="shapes", help="'shapes' (held-out captioned shapes), 'shapes-train' "
                                                              "(training combinations) or a file of one prompt per line")
    evaluate.add_argument("--num-prompts", type=int, default=200)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--steps", type=int, default=25)
    evaluate.add_argument("--guidance", type=float, help=GUIDANCE_HELP)
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--format", choices=("table", "json"), default="table")
    evaluate.set_defaults(run=_eval)

    distill = commands.add_parser("distill", help="retrain a plan's student from its teacher (BK-SDM distillation)",
                                  description="Build the student of PLAN from its teacher and retrain it by "
                                              "distillation: task loss + output KD + feature KD, on accelerate "
                                              "(run under `accelerate launch` for several GPUs).")
    distill.add_argument("plan", metavar="PLAN.json", help="a plan made by `prunekit plan` for the teacher")
    distill.add_argument("--data", default="shapes",
                         help="'shapes' (default), an image folder with metadata.jsonl/csv (file_name, text), "
                              "or a Hugging Face dataset name")
    distill.add_argument("--out", required=True, help="output folder (student/, checkpoints/, logs.csv, eval.json)")
    distill.add_argument("--teacher", help=f"the teacher MODEL (default: the plan's model): {MODEL_HELP}")
    distill.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    distill.add_argument("--batch-size", type=int, default=16, help="micro-batch size per process (default 16)")
    distill.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    distill.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (default 5e-5)")
    for name, what in (("task", "the task loss"), ("out", "output KD"), ("feat", "feature KD")):
        distill.add_argument(f"--lambda-{name}", type=float, default=1.0, help=f"weight of {what} (default 1)")
    distill.add_argument("--feat-norm", choices=("none", "teacher"), default="none",
                         help="divide each feature term by the teacher feature's mean square (teacher)")
    distill.add_argument("--ema", action="store_true", help="keep an EMA of the student's weights (student_ema/)")
    distill.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    distill.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    distill.add_argument("--cache-latents", action="store_true",
                         help="encode images and captions once into OUT/cache and train from there")
    distill.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)")
    distill.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
    distill.add_argument("--seed", type=int, default=0)
    distill.add_argument("--num-examples", type=int,
                         help="use the first N examples (shapes: generate N, default 10000)")
    distill.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes (default 0)")
    distill.add_argument("--eval-prompts", help="'shapes' or a prompt file (default: shapes for shapes data, "
                                                "else the data's first captions)")
    distill.add_argument("--eval-num-prompts", type=int, default=200, help="images per evaluation; 0 skips it")
    distill.add_argument("--eval-steps", type=int, default=25, help="sampling steps of the evaluation")
    distill.add_argument("--eval-clip-model", help="CLIP model of the evaluation's CLIP score (default: see eval)")
    distill.set_defaults(run=_distill)

    sensitivity = commands.add_parser(
        "sensitivity", help="ablate each unit alone and measure what its removal does (sensitivity.csv)",
        description="Ablate each unit of the U-Net alone, generate from the same noise and score the result "
                    "against the intact model; one row per unit goes to OUT/sensitivity.csv as it finishes. "
                    "Rerun the same command to resume; under `accelerate launch` the units are split across "
                    "processes.")
    sensitivity.add_argument("--model", default="tiny-sd", help=MODEL_HELP + " (default tiny-sd)")
    sensitivity.add_argument("--out", required=True, help="the run directory (runs/NAME)")
    sensitivity.add_argument("--granularity", choices=("block", "pair", "stage"), default="pair",
                             help="which units to sweep (default pair)")
    sensitivity.add_argument("--mode", choices=("full", "proxy"), default="full",
                             help="full: generate and score images; proxy: noise-prediction error, no sampling")
    sensitivity.add_argument("--metrics", help="full mode: comma-separated clip, fid, teacher, attributes "
                                               "(default clip,teacher, plus attributes for shapes prompts)")
    sensitivity.add_argument("--prompts", help="'shapes', 'everyday' or a file of one prompt per line "
                                               "(default shapes for tiny-sd, else everyday)")
    sensitivity.add_argument("--num-prompts", type=int, default=32, help="default 32")
    sensitivity.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    sensitivity.add_argument("--guidance", type=float, help=GUIDANCE_HELP)
    sensitivity.add_argument("--seed", type=int, default=0)
    sensitivity.add_argument("--batch-size", type=int, help="prompts per batch (default: all at once)")
    sensitivity.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    sensitivity.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    sensitivity.add_argument("--init", choices=("pretrained", "random"), default="pretrained",
                             help="random: the model's U-Net with random weights, to time the sweep (no download)")
    sensitivity.add_argument("--units", help="comma-separated unit names to sweep instead of the granularity's")
    sensitivity.add_argument("--timesteps", type=int, default=4, help="proxy mode: fixed timesteps (default 4)")
    sensitivity.add_argument("--proxy-latents", choices=("baseline", "rendered"),
                             help="proxy mode: the baseline's generations, or the shapes prompts' own images "
                                  "(default rendered for shapes prompts, else baseline)")
    sensitivity.add_argument("--clip-model", help="CLIP model of CLIP score and FID (default tiny-clip for tiny-sd, "
                                                  "else openai/clip-vit-large-patch14)")
    sensitivity.set_defaults(run=_sensitivity)

    report = commands.add_parser("report", help="write a run directory's self-contained HTML report",
                                 description="Write one self-contained HTML page (plots and images embedded) "
                                             "showing whatever the run directory holds.")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/demo")
    report.add_argument("-o", "--output", help="where to write the page (default RUN_DIR/report.html)")
    report.set_defaults(run=_report)

    demo = commands.add_parser("demo", help="run the whole loop on the bundled tiny-sd, offline",
                               description="inspect -> sensitivity -> plan (budget 0.5) -> distill -> evaluation -> "
                                           "report, on the bundled tiny-sd, offline (about 15 minutes on 2 CPU cores). "
                                           "Rerunning resumes.")
    demo.add_argument("--out", default="runs/demo", help="the run directory (default runs/demo)")
    demo.add_argument("--num-prompts", type=int, default=16, help="prompts of the sensitivity sweep (default 16)")
    demo.add_argument("--distill-steps", type=int, default=200, help="distillation steps (default 200)")
    demo.set_defaults(run=_demo)
    return parser


def _quiet_libraries() -> None:
    """Keep the terminal for prunekit's own progress: no library warnings or loading bars."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        args.run(args)
    except PrunekitError as error:
        print(f"prunekit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunekit: interrupted; finished work is kept.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
