"""The whole loop on a real-shaped pipeline with random weights: the path a user with the real weights runs.

    python analyses/real_shape.py [--model sd-v1-4] [--latent 16] [--budget macs=0.7] [--granularity pair]
        [--units U,V] [--mixed-precision no] [--work runs/real_shape] [--out reports/real_shape]

No hub is reachable here, so the model's published architecture (its alias's config, in code) gets random
weights at its real widths: its denoiser, SD's VAE and text encoders of SD's depth at the denoiser's widths
(prunekit.sensitivity.pipelines.random_pipeline), at a small latent size, saved once as a local pipeline
directory in WORK/MODEL/pipe. That build and then the loop, as the commands a user types, each run in a
process of their own: sensitivity (2 prompts, 2 steps), a plan under --budget from that sweep, distill (2 steps
at batch 1, scored on one prompt by the bundled tiny-clip) and report; last, the student must load with plain
diffusers at the plan's parameter count. Each stage's wall time and peak memory (its process's largest resident set) are
printed, kept in WORK/MODEL/stages.json and tabulated in OUT/MODEL.md; a rerun starts the loop afresh in
WORK/MODEL/run (only the pipeline is kept). Random weights say nothing about quality: this shows that the path
works at real widths and what each stage costs in time and memory at this latent size.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from prunekit.quiet import quiet_libraries

quiet_libraries()
from prunekit.models import ASSETS, resolve_model  # noqa: E402

CLIP = str(ASSETS / "tiny-clip")  # the bundled scorer: the real CLIP is on the hub


def build(model: str, latent: int, path: Path) -> None:
    """The random real-shaped pipeline of `model` at `latent` x `latent` latents, saved in `path` (kept: a later
    run reuses it). It runs in a process of its own (`--build-only`), as the stages do, so that this one stays
    small: a process started from it would count this one's memory in its peak."""
    from prunekit.sensitivity.pipelines import random_pipeline

    if not (path / "model_index.json").is_file():
        random_pipeline({**resolve_model(model).config, "sample_size": latent}, "cpu", seed=0).save_pretrained(path)


def machine() -> str:
    """This machine's CPU cores and memory, for the table."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return f"{os.cpu_count()} CPU cores and {memory:.1f} GB of memory"


def commands(pipe: Path, run: Path, args) -> dict[str, list[str]]:
    """The pipeline's build, then the loop's commands as a user types them, in order."""
    units = ["--units", args.units] if args.units else []
    loop = {
        "sensitivity": ["sensitivity", "--model", str(pipe), "--out", str(run), "--granularity", args.granularity,
                        *units, "--prompts", "shapes", "--num-prompts", "2", "--steps", "2", "--clip-model", CLIP],
        "plan": ["plan", "--model", str(pipe), "--sensitivity", str(run), "--budget", args.budget,
                 "-o", str(run / "plan.json"), "--force"],
        "distill": ["distill", str(run / "plan.json"), "--data", "shapes", "--out", str(run / "distill"),
                    "--steps", "2", "--batch-size", "1", "--num-examples", "8", "--mixed-precision",
                    args.mixed_precision, "--eval-num-prompts", "1", "--eval-steps", "2", "--eval-clip-model", CLIP],
        "report": ["report", str(run)],
    }
    built = [sys.executable, str(Path(__file__).resolve()), "--build-only", "--model", args.model,
             "--latent", str(args.latent), "--work", args.work]
    return {"build": built, **{name: [sys.executable, "-m", "prunekit", *argv] for name, argv in loop.items()}}


def timed(argv: list[str], log: Path) -> dict:
    """Runs a command in its own process (output to `log`): its exit status, seconds and peak memory."""
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # the child's own resource usage
        process.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": process.returncode, "seconds": time.perf_counter() - started,
            "peak_gb": usage.ru_maxrss * 1024 / 1e9}  # ru_maxrss is in KiB on Linux


def reloaded_params(student: Path) -> int:
    """The parameters of the student's denoiser as plain diffusers loads it (absent components, such as SD3's T5
    here, passed as None, as diffusers asks)."""
    from diffusers import DiffusionPipeline

    from prunekit.families import denoiser_of
    from prunekit.models import absent_components

    absent = absent_components(json.loads((student / "model_index.json").read_text()))
    pipe = DiffusionPipeline.from_pretrained(student, **absent)
    return sum(p.numel() for p in denoiser_of(pipe).parameters())


def table(summary: dict, command: str) -> str:
    """The stages as markdown: exit status, seconds and peak memory, and the reloaded student's size."""
    lines = [f"# The loop on {summary['model']}'s architecture at real widths, random weights", "",
             f"`{command}`: {summary['latent']} x {summary['latent']} latents, budget {summary['budget']}, "
             f"distillation in mixed precision `{summary['mixed_precision']}`, on {summary['machine']}.", "",
             "| stage | exit status | seconds | peak memory (GB) |", "| --- | ---: | ---: | ---: |"]
    for name, stage in summary["stages"].items():
        if name == "build" and stage["kept"]:
            lines.append("| build | 0 | kept from an earlier run | |")
        elif name != "reload":
            seconds, peak = (f"{stage[key]:.1f}" if stage[key] is not None else "" for key in ("seconds", "peak_gb"))
            lines.append(f"| {name} | {stage['rc']} | {seconds} | {peak} |")
    reload = summary["stages"].get("reload")
    if reload:
        lines += ["", f"The student loads with plain diffusers at {reload['params']:,} denoiser parameters "
                      f"(the plan: {reload['planned']:,})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="sd-v1-4", help="an alias whose config prunekit carries")
    parser.add_argument("--latent", type=int, default=16, help="latent size (pixels: 8x)")
    parser.add_argument("--budget", default="macs=0.7")
    parser.add_argument("--granularity", default="pair")
    parser.add_argument("--units", default="", help="sweep only these units (comma-separated)")
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"),
                        help="the distillation's (bf16 halves the frozen teacher's memory)")
    parser.add_argument("--work", default="runs/real_shape")
    parser.add_argument("--out", default="reports/real_shape", help="where MODEL.md goes")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)  # the build stage's process
    args = parser.parse_args(argv)
    folder = Path(args.work) / args.model
    folder.mkdir(parents=True, exist_ok=True)
    pipe, run = folder / "pipe", folder / "run"
    if args.build_only:
        build(args.model, args.latent, pipe)
        return {}
    shutil.rmtree(run, ignore_errors=True)  # every stage is timed afresh; only the built pipeline is kept
    stages, kept = {}, (pipe / "model_index.json").is_file()
    for name, command in commands(pipe, run, args).items():
        stage = stages[name] = timed(command, folder / f"{name}.log") | ({"kept": kept} if name == "build" else {})
        print(f"{name:12} rc {stage['rc']}  {stage['seconds']:7.1f} s  peak {stage['peak_gb']:5.1f} GB"
              f"  ({folder / f'{name}.log'})", flush=True)
        if stage["rc"]:
            break
    else:
        planned = json.loads((run / "plan.json").read_text())["predicted"]["params"]
        params = reloaded_params(run / "distill" / "student")
        stages["reload"] = {"rc": int(params != planned), "params": params, "planned": planned}
        print(f"reload       plain diffusers: {params:,} parameters, the plan's {planned:,}", flush=True)
    summary = {"model": args.model, "latent": args.latent, "budget": args.budget,
               "mixed_precision": args.mixed_precision, "machine": machine(), "stages": stages}
    (folder / "stages.json").write_text(json.dumps(summary, indent=2) + "\n")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    command = " ".join(["python analyses/real_shape.py", *(sys.argv[1:] if argv is None else argv)])
    (Path(args.out) / f"{args.model}.md").write_text(table(summary, command))
    failed = [name for name, stage in stages.items() if stage["rc"]]
    if failed:
        raise SystemExit(f"real_shape: {failed[0]} failed on {args.model} (see {folder / (failed[0] + '.log')}).")
    return summary


if __name__ == "__main__":
    main()
