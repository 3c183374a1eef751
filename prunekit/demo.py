"""`prunekit demo`: the whole loop on the bundled tiny-sd, offline, in one run directory.

inspect -> sensitivity (pair granularity, a few prompts) -> plan (budget 0.5) -> distill (short) with its
evaluation -> report. Every stage is the same API call the CLI makes, so a demo run directory is an
ordinary run directory: rerunning the demo resumes each stage (finished sensitivity units and distillation
checkpoints are kept).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

MODEL = "tiny-sd"


@dataclass(frozen=True)
class DemoSettings:
    """How much work each stage does; the defaults fit 15 minutes on 2 CPU cores."""

    num_prompts: int = 16
    steps: int = 25
    budget: float = 0.5
    distill_steps: int = 200
    distill_batch_size: int = 32
    distill_lr: float = 1e-4
    eval_num_prompts: int = 32
    seed: int = 0


def _stage(number: int, title: str) -> float:
    print(f"\n== {number}/5 {title}", flush=True)
    return time.perf_counter()


def _done(started: float) -> None:
    print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)


def demo(out: str | Path = "runs/demo", settings: DemoSettings = DemoSettings(), progress: bool = True) -> Path:
    """Run the whole loop on tiny-sd into `out`; returns the report's path."""
    from prunekit.distill import distill
    from prunekit.inspect import inspect_model, render
    from prunekit.planner import plan, summary
    from prunekit.report import build_report
    from prunekit.sensitivity import sensitivity

    out = Path(out)
    began = time.perf_counter()
    started = _stage(1, f"inspect {MODEL}: the U-Net as removable units")
    print(render(inspect_model(MODEL, "pair")))
    _done(started)

    started = _stage(2, f"sensitivity: remove each unit alone, generate {settings.num_prompts} prompts, score")
    table = sensitivity(MODEL, out=str(out), granularity="pair", num_prompts=settings.num_prompts,
                        steps=settings.steps, seed=settings.seed, progress=progress)
    ranked = table.sort_values("sensitivity")
    print(f"   least harmful to remove: {', '.join(ranked['unit'].head(4))}")
    print(f"   most harmful to remove:  {', '.join(ranked['unit'].tail(4)[::-1])}")
    _done(started)

    started = _stage(3, f"plan: the least-loss student within {settings.budget:.0%} of the parameters")
    student_plan = plan(MODEL, budget=settings.budget, sensitivity=str(out), method="greedy", seed=settings.seed,
                        progress=progress)
    print(summary(student_plan))
    _done(started)

    started = _stage(4, f"distill: retrain the student for {settings.distill_steps} steps (task + output KD + feature KD)")
    result = distill(out / "plan.json", data="shapes", out=out / "distill", steps=settings.distill_steps,
                     batch_size=settings.distill_batch_size, lr=settings.distill_lr, seed=settings.seed,
                     checkpoint_every=max(1, settings.distill_steps // 4), resume=(out / "distill").is_dir(),
                     eval_num_prompts=settings.eval_num_prompts, eval_steps=settings.steps, progress=progress)
    for name, scores in (result.get("eval") or {}).items():
        if name != "settings":
            accuracy = scores.get("attribute_accuracy", {}).get("all")
            print(f"   {name:>15}: CLIP score {scores['clip_score']:.3f}"
                  + (f", attributes all right {accuracy:.3f}" if accuracy is not None else ""))
    _done(started)

    started = _stage(5, "report")
    report = build_report(out)
    _done(started)
    print(f"\nThe whole loop took {(time.perf_counter() - began) / 60:.1f} min. Open the report in a browser:\n  {report}")
    return report
