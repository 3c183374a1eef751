"""`prunekit demo`: the whole loop on the bundled tiny-sd, offline, in one run directory.

inspect -> sensitivity (pair granularity, a few prompts) -> plan (Optuna over the diffusers space, which at
bk-small's own parameters and MACs it searches whole) -> distill (prunekit.distill.RECOVERY, the recipe that
recovers the teacher) with its evaluation -> the bk-small preset distilled the same way (RUN/compare/bk-small),
both written to comparison.csv -> report, whose verdict sets the plan's student against the teacher and the
preset. Every stage is the same API call the CLI makes, so a demo run directory is an ordinary run directory:
rerunning the demo resumes each stage (finished sensitivity units and distillation checkpoints are kept).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from prunekit.distill import RECOVERY
from prunekit.errors import PrunekitError
from prunekit.options import check_count, check_output_dir
from prunekit.plan import PRESETS
from prunekit.planner.budget import Budget

MODEL = "tiny-sd"


@dataclass(frozen=True)
class DemoSettings:
    """How much work each stage does; the defaults fit 15 minutes on 2 CPU cores. Checked here, so a bad value
    is refused before the first stage starts."""

    num_prompts: int = 16
    steps: int = 25
    budget: str = "bk-small"  # a preset's own parameters and MACs: for speed, and against that preset
    compare: bool = True  # distil the budget's preset too, the same way, and compare
    distill_steps: int = RECOVERY.steps
    eval_num_prompts: int = 32
    num_examples: int | None = None  # training examples (default: the shapes world's 10,000)
    seed: int = 0

    def __post_init__(self):
        for name in ("num_prompts", "steps", "distill_steps", "eval_num_prompts"):
            check_count(name, getattr(self, name))
        check_count("seed", self.seed, minimum=0)
        check_count("num_examples", self.num_examples, optional=True)
        if self.budget not in PRESETS:
            Budget.parse(self.budget)
            if self.compare:
                raise PrunekitError(f"the demo compares with the preset its budget names, and {self.budget} names "
                                    f"none: give one of {', '.join(PRESETS)}, or turn the comparison off.")

    @property
    def stages(self) -> int:
        return 5 + self.compare

    def recipe(self, resume: bool):
        """The distillation of every student of the demo."""
        return replace(RECOVERY, steps=self.distill_steps, warmup=min(RECOVERY.warmup, self.distill_steps // 4),
                       seed=self.seed, checkpoint_every=max(1, self.distill_steps // 4), resume=resume,
                       eval_num_prompts=self.eval_num_prompts, eval_steps=self.steps, num_examples=self.num_examples)


class _Stages:
    """The demo's numbered stage headings and their durations."""

    def __init__(self, total: int):
        self.total, self.number, self.began = total, 0, time.perf_counter()

    @contextmanager
    def stage(self, title: str):
        self.number += 1
        print(f"\n== {self.number}/{self.total} {title}", flush=True)
        started = time.perf_counter()
        yield
        print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)

    def minutes(self) -> float:
        return (time.perf_counter() - self.began) / 60


def _distill(plan_path: Path, out: Path, run, settings: DemoSettings, progress: bool) -> dict:
    """Distil the student of `plan_path` into `out` by the demo's recipe (resuming its checkpoints; every student
    of the run directory `run` trains from one latent cache), printing its evaluation; returns the evaluation."""
    from prunekit.distill import checkpoints, describe, distill

    recipe = replace(settings.recipe(bool(checkpoints.complete(out / "checkpoints"))), progress=progress,
                     cache_dir=str(run.path / "cache"))
    evaluation = distill(plan_path, out=out, options=recipe)["eval"] or {}
    for line in describe(evaluation):
        print(f"   {line}")
    return evaluation


def demo(out: str | Path = "runs/demo", settings: DemoSettings = DemoSettings(), progress: bool = True) -> Path:
    """Run the whole loop on tiny-sd into `out`; returns the report's path."""
    from prunekit import comparison
    from prunekit.distill import final_student
    from prunekit.evaluate import headline
    from prunekit.inspect import inspect_model, render
    from prunekit.models import resolve_model
    from prunekit.plan import make_preset
    from prunekit.planner import plan, summary
    from prunekit.report import build_report
    from prunekit.rundir import RunDir
    from prunekit.sensitivity import sensitivity

    out = check_output_dir(out, "demo's run directory")
    run = RunDir(out)
    stages = _Stages(settings.stages)
    with stages.stage(f"inspect {MODEL}: the U-Net as removable units"):
        print(render(inspect_model(MODEL, "pair")))

    with stages.stage(f"sensitivity: remove each unit alone, generate {settings.num_prompts} prompts, score"):
        table = sensitivity(MODEL, str(out), granularity="pair", num_prompts=settings.num_prompts,
                            steps=settings.steps, seed=settings.seed, progress=progress)
        ranked = table.sort_values("sensitivity")
        print(f"   least harmful to remove: {', '.join(ranked['unit'].head(4))}")
        print(f"   most harmful to remove:  {', '.join(ranked['unit'].tail(4)[::-1])}")

    cost = f"{settings.budget}'s own parameters and MACs" if settings.budget in PRESETS else settings.budget
    with stages.stage(f"plan: the least-loss student within {cost}"):
        student_plan = plan(MODEL, budget=settings.budget, sensitivity=str(out), method="optuna", seed=settings.seed,
                            force=True, progress=progress)  # a rerun makes the same plan again
        print(summary(student_plan))

    with stages.stage(f"distill: retrain the student for {settings.distill_steps} steps (task + output KD + "
                      "feature KD, the recovery recipe)"):
        mine = _distill(run.plan_path, run.distill, run, settings, progress)

    if settings.compare:
        preset = run.compare / settings.budget
        with stages.stage(f"compare: retrain BK-SDM's {settings.budget} the same way"):
            model = resolve_model(MODEL)
            preset_plan = make_preset(settings.budget, MODEL, model.config, model.tokens)
            preset_plan.save(preset / "plan.json")
            theirs = _distill(preset / "plan.json", preset / "distill", run, settings, progress)
            budget = Budget.parse(student_plan.budget)
            rows = [comparison.row(budget, name, made, [headline(evaluation[final_student(evaluation)])])
                    for name, made, evaluation in ((f"prunekit ({student_plan.method})", student_plan, mine),
                                                   (settings.budget, preset_plan, theirs)) if evaluation]
            if rows:
                comparison.write(run.comparison_path, rows)

    with stages.stage("report"):
        report = build_report(out)
    print(f"\nThe whole loop took {stages.minutes():.1f} min. Open the report in a browser:\n  {report}")
    return report
