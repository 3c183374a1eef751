"""The recoverable objective: a candidate's loss after a short distillation, rather than right after surgery.

A plan that loses least when its units are cut is not always the one that recovers best once retrained
(TinyFusion, CVPR 2025, makes this point for DiTs). This objective builds each candidate's student, distils it
with one recipe, the same data and the same seeds for every candidate, and scores it on calibration prompts
(the world's training combinations, `shapes-train`, never the held-out ones): its loss is the share of the
teacher's quality the student lacks, 1 - student / teacher for the judge's headline (shapes: attributes, all
four) and for the CLIP score, summed.

The KD steps are spent by synchronous successive halving (prunekit.planner.search, reduction factor 3): every
candidate is distilled for the first rung's steps and scored; then only the best third of them (at least one)
goes on to the next rung (3x the steps), and so on; the last rung's loss chooses. (Optuna's own pruner is
asynchronous: trying candidates one at a time, it promoted every early one that led so far, 4 of 6 on tiny-sd.)
The first rung must be long enough for a student to draw again: on tiny-sd the loss after 30 KD steps ranks
quality after retraining backwards (Spearman -0.54 over 13 plans), after 90 steps with Spearman 0.92
(analyses/recoverable_rungs.py). One learning-rate schedule spans the last rung, so a candidate that goes on continues the same run.
As every candidate's run draws the same data, noise and timesteps, the teacher's outputs at each step are
computed once and shared (prunekit.distill.teacher_memo). The candidates are a pool: the plans
of least additive loss within the budget and random plans that use most of it (`pool`). The study lives in
the run directory's optuna.db; every rung's score in planner_cache.db; every candidate's distillation in
RUN/recoverable/ (its latent cache shared): a resumed search redoes nothing it finished.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.options import check_count, check_number

FOLDER = "recoverable"  # under the run directory
MEANING = ("the share of the teacher's quality the student lacks after a short distillation: 1 - student / teacher "
           "for the judge's headline and for the CLIP score, summed")


def latent_cache(run) -> Path:
    """The latent cache every candidate's distillation reads (built by the first), under the run directory: a
    later distillation of the same data may share it."""
    return run.path / FOLDER / "cache"


REDUCTION = 3  # successive halving's reduction factor: rung k distils first_rung * 3 ** k steps


@dataclass(frozen=True)
class RecoverOptions:
    """The short distillation and the scoring of every candidate (one recipe for all)."""

    first_rung: int = 90  # KD steps of the first rung (reports/recoverable_rungs)
    rungs: int = 2  # rungs: first_rung, 3x steps
    pool: int = 6  # candidates: the best by the additive objective, then random ones
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 20
    caption_dropout: float = 0.1
    num_examples: int = 10_000
    num_prompts: int = 32  # calibration prompts
    steps: int = 25  # their sampling steps
    seed: int = 0

    def __post_init__(self):
        for name in ("first_rung", "rungs", "pool", "batch_size", "num_examples", "num_prompts", "steps"):
            check_count(name, getattr(self, name))
        check_number("lr", self.lr, above=0)

    @property
    def schedule(self) -> list[int]:
        """The KD steps after which a candidate is scored (the rungs)."""
        return [self.first_rung * REDUCTION ** k for k in range(self.rungs)]

    @property
    def identity(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


class Recoverable:
    """Loss of a candidate after short distillations (see the module docstring), at any rung (`at`)."""

    cheap = False  # each candidate costs distillation

    def __init__(self, model, run, options: RecoverOptions, cache, kind: str = "diffusers", data: str | None = None):
        from prunekit import worlds
        from prunekit.distill.teacher_memo import TeacherMemo

        self.model, self.run, self.options, self.cache, self.kind = model, run, options, cache, kind
        self.data = data or model.card.data
        if self.data is None:
            raise PrunekitError(f"{model.name}'s card names no training data, which the recoverable objective "
                                "distils on: give the model a card with data, or plan with another objective.")
        world = next((w for w in worlds.WORLDS if self.data in w.data), None)  # the training data's world
        train_sets = [name for name in (world.prompt_sets if world else {}) if name != world.eval_prompts]
        self.prompts = train_sets[0] if train_sets else model.card.prompts  # calibration, never the held-out set
        self.folder = run.path / FOLDER
        self.identity = f"recoverable:{options.identity}:{self.prompts}"
        self._teacher: dict | None = None
        self.memo = TeacherMemo()  # every candidate's run feeds the teacher the same inputs
        self.spent_steps = 0  # KD steps this process ran (for the search's cost)

    def at(self, remove: list[str], steps: int) -> float:
        """The loss after `steps` KD steps of the candidate's one run (cached by candidate and steps)."""
        key = f"{self.identity}:{' '.join(sorted(remove))}:{steps}"
        value = self.cache.get(key)
        if value is None:
            value = self._loss(self._distil(remove, steps))
            self.cache.put(key, value)
        return value

    def predict(self, remove: list[str]) -> float:
        """The objective's prediction for any plan: its loss after the first rung."""
        return self.at(remove, self.options.first_rung)

    def _distil(self, remove: list[str], steps: int):
        """The candidate's student after `steps` steps of its one run (continuing its earlier rungs), loaded."""
        from prunekit.distill import DistillOptions, checkpoints, distill
        from prunekit.plan import make_plan
        from prunekit.students import load_student

        folder = self.folder / hashlib.sha256(" ".join(sorted(remove)).encode()).hexdigest()[:12]
        plan_path = folder / "plan.json"
        if not plan_path.is_file():
            make_plan(self.model.name, self.model.config, remove, "recoverable candidate", kind=self.kind,
                      tokens=self.model.tokens).save(plan_path)
        out = folder / "distill"
        before = checkpoints.complete(out / "checkpoints")
        done_before = checkpoints.read_state(before[-1]).step if before else 0
        options = DistillOptions(steps=steps, schedule_steps=self.options.schedule[-1],
                                 batch_size=self.options.batch_size, lr=self.options.lr, lr_schedule="cosine",
                                 warmup=self.options.warmup, caption_dropout=self.options.caption_dropout,
                                 cache_latents=True, cache_dir=str(latent_cache(self.run)),
                                 num_examples=self.options.num_examples, checkpoint_every=steps, keep_checkpoints=1,
                                 seed=self.options.seed, eval_num_prompts=0, progress=False, resume=bool(before))
        done = distill(plan_path, self.data, out, self.model, options, memo=self.memo)
        self.spent_steps += done["steps"] - done_before
        return load_student(out / "student")

    def _score(self, pipe) -> dict[str, float]:
        from prunekit import worlds
        from prunekit.evaluate import EvalOptions, evaluate

        result = evaluate(self.model, EvalOptions(prompts=self.prompts, num_prompts=self.options.num_prompts,
                                                  steps=self.options.steps, seed=self.options.seed, progress=False),
                          pipeline=pipe)
        scores = {"clip_score": result["clip_score"]}
        for judge in worlds.judges().values():
            if judge.result in result:
                scores["judge"] = result[judge.result][judge.headline]
        return scores

    def teacher_scores(self) -> dict[str, float]:
        if self._teacher is None:
            key = f"{self.identity}:teacher"
            cached = {name: self.cache.get(f"{key}:{name}") for name in ("clip_score", "judge")}
            if cached["clip_score"] is None:
                cached = self._score(self.model.pipeline())
                for name, value in cached.items():
                    self.cache.put(f"{key}:{name}", value)
            self._teacher = {name: value for name, value in cached.items() if value is not None}
        return self._teacher

    def _loss(self, student_pipe) -> float:
        teacher, student = self.teacher_scores(), self._score(student_pipe)
        return sum(1 - student[name] / teacher[name] for name in teacher if teacher[name])


ENUMERABLE = 200_000  # plans the recoverable pool may enumerate (a few seconds)


def feasible(space, costs, budget) -> list[dict]:
    """Every plan of the space within the budget ({"remove", "costs"}), in the space's order."""
    if space.size() > ENUMERABLE:
        raise PrunekitError(f"the recoverable objective looks at every plan of its space, and this one holds "
                            f"{space.size():,} (transformer depths multiply it): plan from a pair-granularity "
                            "sweep, whose space has no depth choices, or use the additive objective.")
    found = {}
    for state in space.states():
        spent = costs(state)
        if budget.fits(spent):
            found.setdefault(" ".join(space.remove(state)), {"remove": space.remove(state), "costs": spent})
    if not found:
        raise PrunekitError(f"no plan of the space meets the budget {budget}: raise --budget.")
    return list(found.values())


def random_plans(plans: list[dict], budget, count: int, seed: int, exclude=()) -> list[dict]:
    """`count` of `plans` drawn at random (seeded) among those that use at least 90% of a bound (all, if none
    do), none of `exclude` (lists of units)."""
    near = [c for c in plans if c["remove"] not in exclude
            and max(c["costs"][m] / budget[m] for m in budget.metrics) >= 0.9]
    rest = near or [c for c in plans if c["remove"] not in exclude]
    return random.Random(seed).sample(rest, min(count, len(rest)))


def pool(space, costs, budget, additive, count: int, seed: int) -> list[dict]:
    """The candidates ({"remove", "costs"}): the plans of least additive loss within the budget (half), then
    random plans within it that use most of it (the rest), without repeats. `costs(state)` gives a state's
    cost fractions."""
    plans = feasible(space, costs, budget)
    chosen = sorted(plans, key=lambda c: (additive(c["remove"]), c["remove"]))[:(count + 1) // 2]
    return chosen + random_plans(plans, budget, count - len(chosen), seed, [c["remove"] for c in chosen])
