"""The `prunekit` command: parsing only. Each subcommand builds its options and calls one API function; every
user error prints one line and exits 2."""
from __future__ import annotations

import argparse
import json
import sys

from prunekit.errors import PrunekitError
from prunekit.export import FORMATS
from prunekit.quiet import quiet_libraries

PRESET_NAMES = ("bk-base", "bk-small", "bk-tiny", "koala-like", "ssd-like",  # prunekit.plan.PRESETS, without torch
                "half-depth", "flux-lite-like")
MODEL_HELP = ("an alias (sd-v1-4, sd-v1-5, sd-v2-1-base, sd-v2-1, sdxl-base, sd3-medium, sd3.5-large, flux-dev, "
              "flux-schnell, pixart-sigma, sana-1.6b, tiny-sd, tiny-sdxl, tiny-sd3), a hub id or a local diffusers "
              "directory")
GUIDANCE_HELP = "classifier-free guidance scale (default: the model card's; 7.5 for SD)"
DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu)"
SEED_HELP = "seed of every random choice (default 0): the same command gives the same numbers"


def _inspect(args) -> None:
    from prunekit.inspect import inspect_model, render

    print(render(inspect_model(args.model, args.granularity), args.format))


def _sensitivity(args) -> None:
    from accelerate import PartialState

    from prunekit.options import flag, from_namespace
    from prunekit.sensitivity import SweepOptions, sensitivity

    from prunekit.rundir import RunDir

    options, taken = from_namespace(SweepOptions, args).extending(RunDir(args.out).record(), args.given)
    if taken and PartialState().is_main_process:
        print(f"{args.out} holds a sweep: extending it with its own " +
              ", ".join(f"{flag(key)} {value}" for key, value in taken.items()), flush=True)
    table = sensitivity(args.model, args.out, options)
    if not PartialState().is_main_process:  # under `accelerate launch`, one process reports
        return
    print(f"{len(table)} units -> {args.out}/sensitivity.csv; most harmful to remove:")
    for _, row in table.sort_values("sensitivity", ascending=False).head(5).iterrows():
        print(f"  {row['unit']:<20} sensitivity {row['sensitivity']:.4g}")


def _plan(args) -> None:
    from prunekit.options import check_count, from_namespace
    from prunekit.planner import PlanOptions, plan, summary

    if args.budget is None:
        _preset(args)
        return
    from prunekit.planner.recoverable import RecoverOptions

    for name in ("kd_steps", "pool"):
        check_count(name, getattr(args, name), optional=True)
    given = {"first_rung": args.kd_steps, "pool": args.pool}
    recover = RecoverOptions(seed=args.seed, **{name: value for name, value in given.items() if value is not None})
    options = from_namespace(PlanOptions, args, recover=recover)  # checked before a measurer is built
    measure = None
    if args.objective == "measured":
        check_count("measure_prompts", args.measure_prompts)
        check_count("measure_steps", args.measure_steps, optional=True)
        from prunekit.planner.measured import deferred_measurer

        measure = deferred_measurer(args.model, args.sensitivity, kind=args.kind, num_prompts=args.measure_prompts,
                                    steps=args.measure_steps, device=args.device)
    made = plan(args.model, options, measure=measure)
    print(summary(made))
    print(f"  -> {options.output()}")


def _preset(args) -> None:
    from prunekit.costs import human
    from prunekit.models import resolve_model
    from prunekit.options import check_output_file
    from prunekit.plan import make_preset

    output = check_output_file("plan.json" if args.out is None else args.out, "plan", replace=args.force)
    model = resolve_model(args.model)
    made = make_preset(args.preset, args.model, model.config, model.tokens)
    made.save(output)
    predicted = made.predicted
    print(f"{made.method} for {args.model}: removes {len(made.remove)} units -> {output}")
    print(f"  params {predicted['params']:,} ({predicted['params_fraction']:.4f} of the teacher's)")
    print(f"  MACs   {human(predicted['macs'])} per step at {predicted['tokens']} text tokens "
          f"({predicted['macs_fraction']:.4f} of the teacher's)")


def _distill(args) -> None:
    from accelerate import PartialState

    from prunekit.distill import DistillOptions, describe, distill
    from prunekit.options import from_namespace

    summary = distill(args.plan, args.data, args.out, args.teacher, from_namespace(DistillOptions, args))
    if not PartialState().is_main_process:  # under `accelerate launch`, one process reports
        return
    print(f"distilled {summary['steps']} steps in {summary['seconds']:.0f}s -> {summary['student']}")
    for line in describe(summary["eval"]):
        print(f"  {line}")


def _eval(args) -> None:
    from prunekit.evaluate import EvalOptions, evaluate
    from prunekit.options import from_namespace

    result = evaluate(args.model, from_namespace(EvalOptions, args))
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        if isinstance(value, dict):
            value = "  ".join(f"{k} {v:.3f}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.4f}"
        print(f"{key:>20}  {value}")


def _report(args) -> None:
    from prunekit.report import build_report

    print(f"report -> {build_report(args.run_dir, args.output)}")


def _export(args) -> None:
    from prunekit.export import export

    print(f"{args.student} -> {export(args.student, args.output, args.format, args.unet_only)}")


def _demo(args) -> None:
    from prunekit.demo import DemoSettings, demo

    from prunekit.options import from_namespace

    demo(args.out, from_namespace(DemoSettings, args))


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in prunekit's one-line form (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"prunekit: error: {message} (see `{self.prog} --help`).\n")


def _sensitivity_parser(commands) -> None:
    sensitivity = commands.add_parser(
        "sensitivity", help="2. ablate each unit alone and measure what its removal does (sensitivity.csv)",
        description="Ablate each unit of the U-Net alone, generate from the same noise and score the result "
                    "against the intact model; one row per unit goes to OUT/sensitivity.csv as it finishes. "
                    "Rerun the same command to resume, or with other --units or --granularity to extend the run; "
                    "several processes may sweep into one directory at once; under `accelerate launch` the units "
                    "are split across processes.")
    sensitivity.add_argument("--model", default="tiny-sd", help=MODEL_HELP + " (default tiny-sd)")
    sensitivity.add_argument("--out", required=True, help="the run directory (runs/NAME)")
    sensitivity.add_argument("--granularity", choices=("block", "pair", "stage"), default="pair",
                             help="which units to sweep (default pair)")
    sensitivity.add_argument("--mode", choices=("full", "proxy", "cosine", "mse"), default="full",
                             help="full: generate and score images; proxy: noise-prediction error, no sampling "
                                  "(U-Nets); cosine, mse: one intact pass, how far each unit moves its input "
                                  "(ShortGPT and SANA-1.5's similarity, Flux.1-Lite's MSE)")
    sensitivity.add_argument("--metrics", help="full mode: comma-separated clip, fid, teacher, attributes "
                                               "(default clip,teacher, plus attributes for shapes prompts)")
    sensitivity.add_argument("--prompts", help="'shapes', 'shapes-train', 'everyday' or a file of one prompt per line "
                                               "(default: the model card's; everyday for SD)")
    sensitivity.add_argument("--num-prompts", type=int, default=32, help="default 32")
    sensitivity.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    sensitivity.add_argument("--guidance", type=float, help=GUIDANCE_HELP)
    sensitivity.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    sensitivity.add_argument("--batch-size", type=int, help="prompts per batch (default: all at once)")
    sensitivity.add_argument("--device", help=DEVICE_HELP)
    sensitivity.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    sensitivity.add_argument("--init", choices=("pretrained", "random"), default="pretrained",
                             help="random: the model's U-Net with random weights, to time the sweep (no download)")
    sensitivity.add_argument("--units", help="comma-separated unit names to sweep instead of the granularity's")
    sensitivity.add_argument("--timesteps", type=int, default=4, help="proxy mode: fixed timesteps (default 4)")
    sensitivity.add_argument("--proxy-latents", choices=("baseline", "rendered"),
                             help="proxy mode: the baseline's generations, or the prompts' reference images "
                                  "(default rendered where the prompts' world draws them, else baseline)")
    sensitivity.add_argument("--clip-model", help="CLIP model of CLIP score and FID (default: the model card's, "
                                                  "else the prompts' world's, else openai/clip-vit-large-patch14)")
    sensitivity.add_argument("--race", action="store_true",
                             help="full mode: measure units on rounds of prompts, spending them only where the "
                                  "ranking is uncertain, until it is forecast to agree with a full sweep of "
                                  "--num-prompts prompts at --race-target")
    sensitivity.add_argument("--race-round", type=int, default=8, help="prompts per round of a race (default 8)")
    sensitivity.add_argument("--race-target", type=float, default=0.97,
                             help="the Spearman correlation with a full sweep's ranking at which a race ends "
                                  "(default 0.97)")
    sensitivity.set_defaults(run=_sensitivity)


def _plan_parser(commands) -> None:
    plan = commands.add_parser("plan", help="3. make a pruning plan (plan.json): a BK-SDM preset or one under a budget",
                               description="Make a pruning plan: a BK-SDM preset (--preset), or the plan of least "
                                           "loss whose student keeps at most --budget of the teacher's parameters, "
                                           "MACs or latency, found by greedy or Optuna from a sensitivity run.")
    plan.add_argument("--model", default="sd-v1-4", help=MODEL_HELP)
    what = plan.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", choices=PRESET_NAMES,
                      help="a plan defined by topology: BK-SDM's (SD-1.x, SD-2.x), koala-like or ssd-like (SDXL)")
    what.add_argument("--budget", metavar="BOUNDS",
                      help="the student keeps at most these fractions of the teacher's costs, each bound met: "
                           "params=0.6,macs=0.65 or latency=0.7 (timed on --device); a bare F bounds --metric; a "
                           "preset's name (bk-small) bounds params and MACs at that preset's own")
    plan.add_argument("--metric", choices=("params", "macs", "latency"), default="params",
                      help="what a bare-number --budget bounds (default params)")
    plan.add_argument("--sensitivity", metavar="RUN", help="a sensitivity run directory (runs/NAME): the additive "
                                                           "objective reads it; the study and caches go there")
    plan.add_argument("--objective", choices=("additive", "measured", "recoverable"), default="additive",
                      help="additive (default): the sum of the units' sensitivities, instant once a sweep exists; "
                           "right when removals barely interact. measured: remove each candidate whole and score "
                           "a few prompts as the sweep does; right when they interact, at a generation per "
                           "candidate. recoverable: distil each candidate briefly and score what it recovers, "
                           "weak ones stopped early by successive halving (with --method optuna); right when the "
                           "student will be retrained, at a few short distillations")
    plan.add_argument("--measure-prompts", type=int, default=8, metavar="N",
                      help="measured: prompts each candidate is scored on (default 8, the run's prompt set)")
    plan.add_argument("--measure-steps", type=int, metavar="S",
                      help="measured: sampling steps (default: the sensitivity run's, else 25)")
    plan.add_argument("--kd-steps", type=int, metavar="N",
                      help="recoverable: KD steps of the first rung, then 3N for the candidates that go on "
                           "(default 90: fewer leave the students too raw to rank)")
    plan.add_argument("--pool", type=int,
                      help="recoverable: candidates (default 6: the best by the additive objective, then random ones)")
    plan.add_argument("--method", choices=("greedy", "optuna"), default="greedy", help="default greedy")
    plan.add_argument("--kind", choices=("diffusers", "free"), default="diffusers",
                      help="the kind of plan: diffusers (default), whose student is a plain diffusers U-Net; free, "
                           "any units, whose student keeps prunekit's stand-ins (prunekit.students.load_student)")
    plan.add_argument("--trials", type=int, default=200,
                      help="Optuna: finished trials the study should hold (default 200); rerunning resumes")
    plan.add_argument("--storage", metavar="URL",
                      help="Optuna: the study's RDB URL (default sqlite:///RUN/optuna.db, else in memory); "
                           "`optuna-dashboard URL` shows its trials")
    plan.add_argument("--pareto", action="store_true",
                      help="Optuna: minimise cost and loss together (NSGA-II; a space of no more plans than "
                           "--trials is enumerated instead, and the summary says so); writes pareto.csv beside "
                           "the plan")
    plan.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    plan.add_argument("--device", help="where --metric latency is timed: " + DEVICE_HELP)
    plan.add_argument("-o", "--out", "--output", dest="out",
                      help="where to write the plan (default RUN/plan.json with --sensitivity, else plan.json)")
    plan.add_argument("--force", action="store_true", help="replace the plan file if it exists")
    plan.set_defaults(run=_plan)


def _distill_parser(commands) -> None:
    distill = commands.add_parser("distill", help="4. retrain a plan's student from its teacher (BK-SDM distillation)",
                                  description="Build the student of PLAN from its teacher and retrain it by "
                                              "distillation: task loss + output KD + feature KD, on accelerate "
                                              "(run under `accelerate launch` for several GPUs).")
    distill.add_argument("plan", metavar="PLAN.json", help="a plan made by `prunekit plan` for the teacher")
    distill.add_argument("--data", help="named data ('shapes'), an image folder with metadata.jsonl/csv "
                                        "(file_name, text), or a Hugging Face dataset name (default: the teacher "
                                        "card's, shapes for tiny-sd)")
    distill.add_argument("--out", required=True, help="output folder (student/, checkpoints/, logs.csv, eval.json)")
    distill.add_argument("--teacher", help=f"the teacher MODEL (default: the plan's model): {MODEL_HELP}")
    distill.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    distill.add_argument("--batch-size", type=int, default=16, help="micro-batch size per process (default 16)")
    distill.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    distill.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (default 5e-5)")
    distill.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default="constant",
                         help="constant (default, BK-SDM's), or cosine or linear decay after the warm-up")
    distill.add_argument("--warmup", type=int, default=0, help="steps of linear learning-rate warm-up (default 0)")
    distill.add_argument("--schedule-steps", type=int,
                         help="the schedule's length (default --steps): a longer one stops the run part-way")
    for name, what in (("task", "the task loss"), ("out", "output KD"), ("feat", "feature KD")):
        distill.add_argument(f"--lambda-{name}", type=float, default=1.0, help=f"weight of {what} (default 1)")
    distill.add_argument("--feat-norm", choices=("none", "teacher"), default="none",
                         help="divide each feature term by the teacher feature's mean square (teacher)")
    distill.add_argument("--feat-layers", choices=("block-out", "self-attn"), default="block-out",
                         help="features matched by feature KD: each stage's output (default, BK-SDM's) or each "
                              "self-attention the student keeps (KOALA's finding for SDXL)")
    distill.add_argument("--caption-dropout", type=float, default=0.0,
                         help="share of examples trained on the empty caption, so that the unconditional branch "
                              "guidance needs is distilled too (default 0, BK-SDM's)")
    distill.add_argument("--ema", action="store_true", help="keep an EMA of the student's weights (student_ema/)")
    distill.add_argument("--ema-decay", type=float, default=0.9999,
                         help="the EMA's largest decay, reached through a warm-up (default 0.9999)")
    distill.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    distill.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    distill.add_argument("--cache-latents", action="store_true",
                         help="encode images and captions once into OUT/cache and train from there")
    distill.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)")
    distill.add_argument("--keep-checkpoints", type=int, default=3, help="newest checkpoints kept (default 3)")
    distill.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
    distill.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    distill.add_argument("--num-examples", type=int, help="use the first N examples (named data: generate N)")
    distill.add_argument("--num-workers", type=int, default=0, help="data-loader worker processes (default 0)")
    distill.add_argument("--eval-prompts", help="a prompt set or file (default: the data's world's, else the "
                                                "data's first captions)")
    distill.add_argument("--eval-num-prompts", type=int, default=200, help="images per evaluation; 0 skips it")
    distill.add_argument("--eval-steps", type=int, default=25, help="sampling steps of the evaluation")
    distill.add_argument("--eval-clip-model", help="CLIP model of the evaluation's CLIP score (default: see eval)")
    distill.set_defaults(run=_distill)


def _eval_parser(commands) -> None:
    evaluate = commands.add_parser("eval", help="5. generate with a model (a teacher or a student) and score it",
                                   description="Generate with a model from fixed seeds and score the images: CLIP "
                                               "score, plus attribute accuracy for shapes prompts.")
    evaluate.add_argument("model", metavar="MODEL", nargs="?", default="tiny-sd", help=MODEL_HELP)
    evaluate.add_argument("--prompts", help="'shapes' (held-out captioned shapes), 'shapes-train' (training "
                                            "combinations), 'everyday' or a file of one prompt per line "
                                            "(default: the model card's)")
    evaluate.add_argument("--num-prompts", type=int, default=200)
    evaluate.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    evaluate.add_argument("--steps", type=int, default=25)
    evaluate.add_argument("--guidance", type=float, help=GUIDANCE_HELP)
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--device", help=DEVICE_HELP)
    evaluate.add_argument("--clip-model", help="CLIP model of the CLIP score (default: the model card's, else the "
                                               "prompts' world's, else openai/clip-vit-large-patch14)")
    evaluate.add_argument("--images", metavar="DIR", help="save the images (DIR/i.png) and their prompts "
                                                          "(DIR/prompts.json) to look at")
    evaluate.add_argument("--format", choices=("table", "json"), default="table")
    evaluate.set_defaults(run=_eval)


def build_parser() -> argparse.ArgumentParser:
    from prunekit import __version__

    parser = _Parser(prog="prunekit", description=(
        "Find which blocks of a diffusion U-Net can go, plan a smaller U-Net under a budget, "
        "and retrain it by distillation (BK-SDM, automated). The commands below are in the order of the loop."))
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    inspect = commands.add_parser("inspect", help="1. list a denoiser's removable units with parameters and MACs",
                                  description="List a U-Net's removable units with parameters and MACs "
                                              "(counted on the meta device: no weights needed).")
    inspect.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    inspect.add_argument("--granularity", choices=("block", "pair", "stage"), default="block",
                         help="block: resnets, attentions and their transformer layers; pair: resnet+attention "
                              "pairs; stage: mid and whole resolution levels")
    inspect.add_argument("--format", choices=("table", "csv", "json"), default="table")
    inspect.set_defaults(run=_inspect)
    _sensitivity_parser(commands)
    _plan_parser(commands)
    _distill_parser(commands)
    _eval_parser(commands)

    report = commands.add_parser("report", help="6. write a run directory's self-contained HTML report",
                                 description="Write one self-contained HTML page (plots and images embedded) "
                                             "showing whatever the run directory holds.")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/demo")
    report.add_argument("-o", "--output", help="where to write the page (default RUN_DIR/report.html)")
    report.set_defaults(run=_report)

    export = commands.add_parser("export", help="7. write a student as one checkpoint for ComfyUI and A1111",
                                 description="Write a student saved by `prunekit distill` (its output folder, whose "
                                             "EMA weights are used where kept, or its student/) as one safetensors "
                                             "file in the original Stable Diffusion key layout: U-Net, VAE and "
                                             "SD-1.x text encoder, which ComfyUI and AUTOMATIC1111 load.")
    export.add_argument("student", metavar="STUDENT", help="a distill output folder (runs/NAME/distill) or its student/")
    export.add_argument("-o", "--output", required=True, help="the file to write (NAME.safetensors)")
    export.add_argument("--format", choices=FORMATS, default="single-file",
                        help="single-file (default): one checkpoint in the original SD layout")
    export.add_argument("--unet-only", action="store_true",
                        help="the U-Net alone (ComfyUI's diffusion-model loader), for any text encoder")
    export.set_defaults(run=_export)

    demo = commands.add_parser("demo", help="the whole loop on the bundled tiny-sd, offline",
                               description="inspect -> sensitivity -> plan -> distill -> evaluation -> the "
                                           "preset distilled the same way -> report, on the bundled tiny-sd, "
                                           "offline (about 11 minutes on 2 CPU cores). Rerunning resumes.")
    demo.add_argument("--out", default="runs/demo", help="the run directory (default runs/demo)")
    demo.add_argument("--num-prompts", type=int, default=16, help="prompts of the sensitivity sweep (default 16)")
    demo.add_argument("--budget", default="bk-small", metavar="BOUNDS",
                      help="the plan's budget, as for `plan` (default bk-small: that preset's own parameters and MACs)")
    demo.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                      help="also distil the preset the budget names, the same way, and compare (default on)")
    demo.add_argument("--distill-steps", type=int, default=600, help="distillation steps (default 600)")
    demo.set_defaults(run=_demo)
    return parser


def _given(argv: list[str]) -> set[str]:
    """The options typed in `argv` (not left at their defaults): parsed again with every default a marker."""
    unset = object()
    parser = build_parser()
    for action in _actions(parser):
        action.default = unset
    return {key for key, value in vars(parser.parse_args(argv)).items() if value is not unset}


def _actions(parser: argparse.ArgumentParser):
    """Every argument of `parser` and of its commands."""
    for action in parser._actions:
        yield action
        for sub in (action.choices or {}).values() if isinstance(action, argparse._SubParsersAction) else ():
            yield from _actions(sub)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.given = _given(argv)
    quiet_libraries()  # before the first library import
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
