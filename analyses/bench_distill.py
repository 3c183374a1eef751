"""Cost of a distillation step: KD (task + out-KD + feat-KD) against plain fine-tuning of the student.

    python analyses/bench_distill.py [--model tiny-sd | --random] [--preset bk-small] [--steps 30]

Runs `prunekit.distill` four times on the same data and student: plain fine-tuning (lambda_out =
lambda_feat = 0, so no teacher pass) and KD, each without and with --cache-latents, and prints the median
seconds per optimizer step (after `--warmup` steps) and the ratios:

- KD / plain (target <= 1.5): what the teacher's forward pass and the feature hooks add;
- the --cache-latents speed-up of a KD step, and the one-off time to build the cache.

`--random` times tiny-sd's architecture with random weights (timing does not depend on the weights),
for machines where the trained tiny-sd is not installed. Runs on whatever device accelerate picks.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_report import write
from prunekit.distill import distill
from prunekit.models import unet_config
from prunekit.plan import make_preset

RUNS = {  # name: (lambda_out, lambda_feat, cache_latents)
    "plain": (0.0, 0.0, False),
    "kd": (1.0, 1.0, False),
    "plain + cache": (0.0, 0.0, True),
    "kd + cache": (1.0, 1.0, True),
}


def random_tiny_sd(directory: Path) -> str:
    """tiny-sd's architecture with random weights, saved as a pipeline directory."""
    from prunekit.tiny import architecture, build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    text = architecture.text_encoder(tokenizer)
    pipe = architecture.pipeline(architecture.vae(), text, tokenizer, architecture.unet(text.config.hidden_size))
    pipe.save_pretrained(directory)
    return str(directory)


def step_seconds(logs: Path, warmup: int) -> float:
    """Median wall seconds per optimizer step in logs.csv, after the first `warmup` steps."""
    seconds = [float(line.split(",")[-1]) for line in logs.read_text().splitlines()[1:]]
    return statistics.median(b - a for a, b in zip(seconds[warmup:], seconds[warmup + 1:]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd", help="the teacher MODEL (default tiny-sd)")
    parser.add_argument("--random", action="store_true", help="time tiny-sd's architecture with random weights")
    parser.add_argument("--preset", default="bk-small", choices=("bk-base", "bk-small", "bk-tiny"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-examples", type=int, default=2048, help="shapes examples (and cache size)")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--out", default="reports/bench_distill", help="where table.md/csv and ratios.png go")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup + 1")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = random_tiny_sd(tmp / "teacher") if args.random else args.model
        plan = make_preset(args.preset, model, unet_config(model)).save(tmp / "plan.json")
        results = {}
        for name, (lambda_out, lambda_feat, cache) in RUNS.items():
            started = time.perf_counter()
            summary = distill(plan, "shapes", tmp / name.replace(" + ", "-"), teacher=model, steps=args.steps,
                              batch_size=args.batch_size, lambda_out=lambda_out, lambda_feat=lambda_feat,
                              cache_latents=cache, checkpoint_every=args.steps, num_examples=args.num_examples,
                              mixed_precision=args.mixed_precision, eval_num_prompts=0, progress=False)
            wall = time.perf_counter() - started
            results[name] = {"step": step_seconds(tmp / name.replace(" + ", "-") / "logs.csv", args.warmup),
                             "outside_training": wall - summary["seconds"]}

    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    precision = "fp32" if args.mixed_precision == "no" else args.mixed_precision
    print(f"{args.preset} student of {'random ' if args.random else ''}{args.model}, batch {args.batch_size}, "
          f"{precision}, {device}, median of {args.steps - args.warmup - 1} steps")
    for name, result in results.items():
        print(f"  {name:>14}  {result['step'] * 1000:8.1f} ms/step")
    plain, kd = results["plain"]["step"], results["kd"]["step"]
    ratios = {
        "kd / plain": kd / plain,
        "kd / plain (cached)": results["kd + cache"]["step"] / results["plain + cache"]["step"],
        "cache speed-up (kd)": kd / results["kd + cache"]["step"],
        "cache build seconds": results["kd + cache"]["outside_training"] - results["kd"]["outside_training"],
    }
    print(f"  KD step / plain step: {ratios['kd / plain']:.2f}x (target <= 1.5x); "
          f"with cached latents {ratios['kd / plain (cached)']:.2f}x")
    print(f"  --cache-latents: KD step {ratios['cache speed-up (kd)']:.2f}x faster; building the cache of "
          f"{args.num_examples} examples took about {ratios['cache build seconds']:.1f}s once")
    context = (f"`python analyses/bench_distill.py{' --random' if args.random else ''} --steps {args.steps} "
               f"--batch-size {args.batch_size}`: {args.preset} student of {'random ' if args.random else ''}"
               f"{args.model}, batch {args.batch_size}, {precision}, {device}, median of "
               f"{args.steps - args.warmup - 1} steps.")
    rows = [{"measure": "KD step / plain step", "value": ratios["kd / plain"], "unit": "x", "target": "<= 1.5"},
            {"measure": "KD / plain, latents cached", "value": ratios["kd / plain (cached)"], "unit": "x", "target": ""},
            {"measure": "--cache-latents speed-up (KD)", "value": ratios["cache speed-up (kd)"], "unit": "x",
             "target": ""},
            {"measure": "cache build", "value": ratios["cache build seconds"], "unit": "s", "target": ""}]
    rows += [{"measure": f"{name} step", "value": 1000 * result["step"], "unit": "ms", "target": ""}
             for name, result in results.items()]
    write(args.out, "Distillation step cost", context, rows)
    return {"steps": results, "ratios": ratios}


if __name__ == "__main__":
    main()
