"""`prunekit demo`: the whole loop on the bundled tiny-sd, offline, in one run directory.

inspect -> sensitivity (pair granularity, a few prompts) -> plan (for speed: at most 60% of the parameters and
of the MACs) -> distill (prunekit.distill.RECOVERY, the recipe that recovers the teacher) with its evaluation ->
report. Every stage is the same API call the CLI makes, so a demo run directory is an
ordinary run directory: rerunning the demo resumes each stage (finished sensitivity units and distillation
checkpoints are kept).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from prunekit.distill import RECOVERY
from prunekit.options import check_count, check_output_dir
from prunekit.planner.budget import Budget

MODEL = "tiny-sd"


@dataclass(frozen=True)
class DemoSettings:
    """How much work each stage does; the defaults fit 15 minutes on 2 CPU cores. Checked here, so a bad value
    is refused before the first stage starts."""

    num_prompts: int = 16
    steps: int = 25
    budget: str = "params=0.6,macs=0.6"  # for speed: MACs bounded as well as parameters
    distill_steps: int = RECOVERY.steps
    eval_num_prompts: int = 32
    seed: int = 0

    def __post_init__(self):
        for name in ("num_prompts", "steps", "distill_steps", "eval_num_prompts"):
            check_count(name, getattr(self, name))
        check_count("seed", self.seed, minimum=0)
        Budget.parse(self.budget)


def _stage(number: int, title: str) -> float:
    print(f"\n== {number}/5 {title}", flush=True)
    return time.perf_counter()


def _done(started: float) -> None:
    print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)


def demo(out: str | Path = "runs/demo", settings: DemoSettings = DemoSettings(), progress: bool = True) -> Path:
    """Run the whole loop on tiny-sd into `out`; returns the report's path."""
    from prunekit.distill import checkpoints, distill
    from prunekit.evaluate import headline
    from prunekit.inspect import inspect_model, render
    from prunekit.planner import plan, summary
    from prunekit.report import build_report
    from prunekit.rundir import RunDir
    from prunekit.sensitivity import sensitivity

    out = check_output_dir(out, "demo's run directory")
    began = time.perf_counter()
    started = _stage(1, f"inspect {MODEL}: the U-Net as removable units")
    print(render(inspect_model(MODEL, "pair")))
    _done(started)

    started = _stage(2, f"sensitivity: remove each unit alone, generate {settings.num_prompts} prompts, score")
    table = sensitivity(MODEL, str(out), granularity="pair", num_prompts=settings.num_prompts, steps=settings.steps,
                        seed=settings.seed, progress=progress)
    ranked = table.sort_values("sensitivity")
    print(f"   least harmful to remove: {', '.join(ranked['unit'].head(4))}")
    print(f"   most harmful to remove:  {', '.join(ranked['unit'].tail(4)[::-1])}")
    _done(started)

    started = _stage(3, f"plan: the least-loss student within {settings.budget} of the teacher's costs")
    student_plan = plan(MODEL, budget=settings.budget, sensitivity=str(out), method="greedy", seed=settings.seed,
                        force=True, progress=progress)  # a rerun makes the same plan again
    print(summary(student_plan))
    _done(started)

    started = _stage(4, f"distill: retrain the student for {settings.distill_steps} steps (task + output KD + "
                        "feature KD, the recovery recipe)")
    run = RunDir(out)
    recipe = replace(RECOVERY, steps=settings.distill_steps, warmup=min(RECOVERY.warmup, settings.distill_steps // 4),
                     seed=settings.seed, checkpoint_every=max(1, settings.distill_steps // 4),
                     resume=bool(checkpoints.complete(run.distill / "checkpoints")),
                     eval_num_prompts=settings.eval_num_prompts, eval_steps=settings.steps, progress=progress)
    result = distill(run.plan_path, out=run.distill, options=recipe)
    for name, scores in (result.get("eval") or {}).items():
        if name != "settings":
            print(f"   {name:>15}: " + ", ".join(f"{key} {value:.3f}" for key, value in headline(scores).items()))
    _done(started)

    started = _stage(5, "report")
    report = build_report(out)
    _done(started)
    print(f"\nThe whole loop took {(time.perf_counter() - began) / 60:.1f} min. Open the report in a browser:\n  {report}")
    return report
