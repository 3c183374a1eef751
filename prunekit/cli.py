"""The `prunekit` command: parsing only. Each subcommand calls one API function; user errors exit 2."""
from __future__ import annotations

import argparse
import json
import sys

from prunekit.errors import PrunekitError

MODEL_HELP = "an alias (sd-v1-4, sd-v1-5, sd-v2-1-base, sd-v2-1, sdxl-base, tiny-sd), a hub id or a local diffusers directory"


def _inspect(args) -> None:
    from prunekit.inspect import inspect_model, render

    print(render(inspect_model(args.model, args.granularity), args.format))


def _plan(args) -> None:
    from prunekit.models import unet_config
    from prunekit.plan import make_preset

    plan = make_preset(args.preset, args.model, unet_config(args.model))
    plan.save(args.output)
    predicted = plan.predicted
    print(f"{plan.method} for {args.model}: removes {len(plan.remove)} units -> {args.output}")
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

    plan = commands.add_parser("plan", help="make a pruning plan (plan.json)",
                               description="Make a pruning plan: a preset (bk-base, bk-small, bk-tiny) for now.")
    plan.add_argument("--model", default="sd-v1-4", help=MODEL_HELP)
    plan.add_argument("--preset", required=True, choices=("bk-base", "bk-small", "bk-tiny"),
                      help="BK-SDM's plans, defined by topology")
    plan.add_argument("-o", "--output", default="plan.json", help="where to write the plan (default plan.json)")
    plan.set_defaults(run=_plan)

    evaluate = commands.add_parser("eval", help="generate with a model and score it",
                                   description="Generate with a model from fixed seeds and score the images: "
                                               "attribute accuracy and CLIP score for shapes prompts.")
    evaluate.add_argument("model", metavar="MODEL", nargs="?", default="tiny-sd", help=MODEL_HELP)
    evaluate.add_argument("--prompts", default="shapes", help="'shapes' (held-out captioned shapes) or a file of one prompt per line")
    evaluate.add_argument("--num-prompts", type=int, default=200)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--steps", type=int, default=25)
    evaluate.add_argument("--guidance", type=float, default=7.5)
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--format", choices=("table", "json"), default="table")
    evaluate.set_defaults(run=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
