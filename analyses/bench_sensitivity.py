"""Speed of the sensitivity sweep: full mode against its floor and against the naive way, proxy against full.

    python analyses/bench_sensitivity.py [--model tiny-sd | --random] [--num-prompts 32] [--steps 25]

Everything is measured in this one run, on one device, and printed as ratios:

- full / floor (target <= 1.2x): the full sweep's wall time (loading included) against (units + 1) x one
  batched generation of all prompts (the pipeline called once on all of them, images decoded; the median of
  three, after a warm-up);
- naive / full (target >= 3x): the naive way loads a fresh pipeline for the baseline and for each unit,
  generates one prompt at a time and scores with the same metrics. It is measured on the baseline and
  --naive-units units (spread over the network) and extrapolated to units + 1, and the output says so;
- full / proxy (target >= 20x): the proxy sweep (`--mode proxy`, default settings) against the full sweep;
- with `--race`, race / full (target <= 0.25x) and the race's Spearman against the full sweep's ranking (target
  >= 0.95): a racing sweep (`--race`, rounds of `--race-round` prompts until its forecast agreement reaches
  `--race-target`, at most --num-prompts each) against the full sweep of every unit on all --num-prompts
  prompts, both timed here (the issue's protocol: 64 prompts).

`--random` times tiny-sd's architecture with random weights (timing does not depend on the weights), for
machines where the trained tiny-sd is not installed; give --clip-model or --metrics without clip there.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from scipy.stats import spearmanr

from bench_report import write
from prunekit.ablation import ablate
from prunekit.generate import decode, generate, generate_latents, image_seeds
from prunekit.metrics import clip_score, clip_score_metric, teacher_error
from prunekit.models import resolve_model
from prunekit.sensitivity import sensitivity
from prunekit.sensitivity.settings import SweepOptions, resolve


def floor_seconds(model: str, prompts: list[str], seeds: list[int], steps: int, guidance: float,
                  repeats: int = 3) -> float:
    """Wall time of one generation of all prompts in one batch, images decoded: the median of `repeats`, after a
    one-step warm-up."""
    pipe = resolve_model(model).pipeline()
    pipe.set_progress_bar_config(disable=True)
    generate(pipe, prompts[:1], seeds[:1], steps=1, guidance=guidance, batch_size=1, progress=False)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        generate(pipe, prompts, seeds, steps=steps, guidance=guidance, batch_size=len(prompts), progress=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def naive_seconds(model: str, unit: str | None, prompts: list[str], seeds: list[int], settings, baseline):
    """Wall time of the naive way for one unit (None: the baseline), and its latents and images."""
    started = time.perf_counter()
    pipe = resolve_model(model).pipeline()
    pipe.set_progress_bar_config(disable=True)
    latents, images = [], []
    with ablate(pipe.unet, unit) if unit else nullcontext():
        for prompt, seed in zip(prompts, seeds):
            latent = generate_latents(pipe, [prompt], [seed], settings.steps, settings.guidance, batch_size=1,
                                      progress=False)
            latents.append(latent)
            images += decode(pipe, latent, batch_size=1)
    latents = torch.cat(latents)
    if "clip" in settings.metrics:
        clip_score(images, prompts, clip_score_metric(settings.clip_model))
    if settings.judge is not None:
        settings.judge.score(images, prompts)
    if "teacher" in settings.metrics and baseline is not None:
        teacher_error(latents, baseline[0], images, baseline[1])
    return time.perf_counter() - started, (latents, images)


def spread(names: list[str], count: int) -> list[str]:
    """`count` names evenly spread over `names` (first and last included)."""
    if count >= len(names):
        return names
    return [names[round(i * (len(names) - 1) / max(1, count - 1))] for i in range(count)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd", help="MODEL (default tiny-sd)")
    parser.add_argument("--random", action="store_true", help="time tiny-sd's architecture with random weights")
    parser.add_argument("--granularity", default="pair", choices=("block", "pair", "stage"))
    parser.add_argument("--units", help="comma-separated units to sweep instead of the granularity's")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, help="default: the model card's guidance")
    parser.add_argument("--metrics", help="full-mode metrics (default: the sweep's)")
    parser.add_argument("--clip-model", help="CLIP model (default: the sweep's)")
    parser.add_argument("--naive-units", type=int, default=2, help="units the naive way is measured on")
    parser.add_argument("--race", action="store_true", help="also time a racing sweep against the full one")
    parser.add_argument("--race-round", type=int, default=8, help="prompts per round of the race")
    parser.add_argument("--race-target", type=float, default=0.97, help="the race's forecast agreement to end at")
    parser.add_argument("--out", default="reports/bench_sensitivity", help="where table.md/csv and ratios.png go")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.random:
            from bench_distill import random_tiny_sd

            model = random_tiny_sd(tmp / "model")
        else:
            model = args.model
        common = {"granularity": args.granularity, "prompts": "shapes", "num_prompts": args.num_prompts,
                  "steps": args.steps, "guidance": args.guidance, "units": args.units, "progress": False}
        settings = resolve(model, str(tmp / "full"), SweepOptions(metrics=args.metrics, clip_model=args.clip_model,
                                                                  **common))
        prompts, seeds = list(settings.prompts), image_seeds(0, len(settings.prompts))
        names = [unit.name for unit in settings.units]

        floor = (len(names) + 1) * floor_seconds(model, prompts, seeds, args.steps, settings.guidance)
        started = time.perf_counter()
        full_table = sensitivity(model, str(tmp / "full"), metrics=args.metrics, clip_model=args.clip_model, **common)
        full = time.perf_counter() - started
        race = None
        if args.race:
            started = time.perf_counter()
            raced = sensitivity(model, str(tmp / "race"), metrics=args.metrics, clip_model=args.clip_model, race=True,
                                race_round=args.race_round, race_target=args.race_target, **common)
            race = {"seconds": time.perf_counter() - started, "prompts": int(raced["prompts"].sum()),
                    "spearman": float(spearmanr(full_table.set_index("unit")["sensitivity"],
                                                raced.set_index("unit").loc[full_table["unit"], "sensitivity"]
                                                ).statistic)}
        started = time.perf_counter()
        sensitivity(model, out=str(tmp / "proxy"), mode="proxy", **common)
        proxy = time.perf_counter() - started

        base_time, baseline = naive_seconds(model, None, prompts, seeds, settings, None)
        measured = spread(names, args.naive_units)
        unit_times = [naive_seconds(model, name, prompts, seeds, settings, baseline)[0] for name in measured]
        naive = (base_time + sum(unit_times)) / (1 + len(unit_times)) * (len(names) + 1)

    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{'random ' if args.random else ''}{args.model}: {len(names)} {args.granularity} units, "
          f"{len(prompts)} prompts, {args.steps} steps, metrics {','.join(settings.metrics)}, {device}")
    print(f"  floor (units + 1) x one batched generation  {floor:8.1f}s")
    print(f"  full sweep                                  {full:8.1f}s")
    print(f"  proxy sweep                                 {proxy:8.1f}s")
    print(f"  naive way (extrapolated)                    {naive:8.1f}s  measured on the baseline and "
          f"{len(measured)} units ({', '.join(measured)}): {base_time:.1f}s + "
          f"{' + '.join(f'{t:.1f}s' for t in unit_times)}, mean x {len(names) + 1}")
    ratios = {"full / floor": full / floor, "naive / full": naive / full, "full / proxy": full / proxy}
    if race is not None:
        ratios["race / full"] = race["seconds"] / full
        print(f"  racing sweep                                {race['seconds']:8.1f}s  {race['prompts']} prompt "
              f"generations of {len(names) * len(prompts)}; Spearman {race['spearman']:.3f} against the full sweep")
    print(f"  full / floor  {ratios['full / floor']:6.2f}x  (target <= 1.2x)")
    print(f"  naive / full  {ratios['naive / full']:6.2f}x  (target >= 3x; naive extrapolated)")
    print(f"  full / proxy  {ratios['full / proxy']:6.2f}x  (target >= 20x)")
    context = (f"`python analyses/bench_sensitivity.py{' --random' if args.random else ''}{f' --race --race-target {args.race_target:g}' if args.race else ''} --num-prompts "
               f"{len(prompts)} --steps {args.steps}`: {'random ' if args.random else ''}{args.model}, {len(names)} "
               f"{args.granularity} units, {len(prompts)} prompts, {args.steps} steps, {device}. The naive way (a fresh "
               f"pipeline per unit, one prompt at a time) is measured on the baseline and {len(measured)} units and "
               "extrapolated to every unit.")
    rows = [{"measure": "full / floor", "value": ratios["full / floor"], "unit": "x", "target": "<= 1.2"},
            {"measure": "naive / full", "value": ratios["naive / full"], "unit": "x", "target": ">= 3"},
            {"measure": "full / proxy", "value": ratios["full / proxy"], "unit": "x", "target": ">= 20"},
            {"measure": "full sweep", "value": full, "unit": "s", "target": "<= 600"}]
    if race is not None:
        rows += [{"measure": "race / full", "value": ratios["race / full"], "unit": "x", "target": "<= 0.25"},
                 {"measure": "race's Spearman against full", "value": race["spearman"], "unit": "", "target": ">= 0.95"},
                 {"measure": "race's prompts / full's", "value": race["prompts"] / (len(names) * len(prompts)),
                  "unit": "x", "target": ""}]
    rows += [{"measure": f"{name} seconds", "value": value, "unit": "s", "target": ""}
             for name, value in (("floor", floor), ("proxy sweep", proxy), ("naive (extrapolated)", naive))]
    write(args.out, "Sensitivity sweep speed", context, rows)
    return {"seconds": {"floor": floor, "full": full, "proxy": proxy, "naive": naive}, "ratios": ratios,
            "units": len(names), "race": race}


if __name__ == "__main__":
    main()
