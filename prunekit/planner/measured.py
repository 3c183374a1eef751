"""The measured objective: remove a whole candidate at once, generate a small fixed prompt set, score the result.

    measure = measurer("tiny-sd", sensitivity="runs/demo", num_prompts=8)
    measure(["down0.pair1", "mid"])   # the loss of removing both at once (higher = worse)

`measurer` loads the pipeline once, encodes the prompts once and generates the intact baseline once, each image
from the noise prunekit.generate.image_seeds gives it (the sensitivity sweep's own pieces: settings, pipelines,
sampling, scoring). Each call then generates the same prompts from the same noise with the candidate removed
and returns its loss by the rule of a full-mode sensitivity run's `sensitivity` column
(prunekit.sensitivity.settings.SENSITIVITY_RULES): by default -delta_clip_score, the baseline's CLIP score less
the candidate's, so a measured loss and an additive one (a sum of per-unit sensitivities) share one scale.

Given a sensitivity run, the measurement copies its prompt set, steps, guidance, seed, metrics, CLIP model and
dtype (hence its rule), and only takes fewer prompts. A proxy run's eps_mse has no generated counterpart: its
candidates are measured by the full-mode default, -delta_clip_score.

How a candidate is removed depends on the kind of plan it is for (`kind`):

- `diffusers`: the candidate's surgery student (prunekit.surgery.build_student), the plain U-Net its plan
  would build, is swapped into the pipeline. Ablation would not always compute it: a removed up pair's
  stand-in discards the skip connection it would have taken, while the student's kept up resnets take the
  skips in order, so removing an up stage's pair 0 (not 1) feeds the two different tensors
  (tests/test_measured.py shows one);
- `free`: all units are ablated at once with prunekit.ablation.ablate, as the sweep ablates one, which is what
  the free student computes; a unit inside another unit of the candidate (a pair's resnet) is left out, as
  removing its container removes it.

A Measure does not cache: the planner's `Measured` objective caches its losses per candidate in the run
directory, so each candidate is measured once.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager

from prunekit.units import outermost
from prunekit.models import Model
from prunekit.rundir import RunDir
from prunekit.families import denoiser_of
from prunekit.options import check_choice
from prunekit.sensitivity.settings import rule_value
from prunekit.surgery import KINDS

# run.json arguments a measurement copies from its sensitivity run (those not given explicitly)
_FROM_RUN = ("prompts", "steps", "guidance", "seed", "clip_model", "dtype")
DEFAULT_PROMPTS = 8


@contextmanager
def unet_swapped(pipe, unet):
    """The pipeline with `unet` in place of its own denoiser (U-Net or transformer) for the body of the `with`."""
    from prunekit.families import denoiser_slot

    slot = denoiser_slot(pipe)
    teacher = getattr(pipe, slot)
    setattr(pipe, slot, unet)
    try:
        yield pipe
    finally:
        setattr(pipe, slot, teacher)


def _run_arguments(sensitivity) -> dict:
    """The arguments of the sensitivity run `sensitivity` that a measurement copies (none without a run)."""
    if sensitivity is None:
        return {}
    args = RunDir(sensitivity).require_record().args
    copied = {key: args.get(key) for key in _FROM_RUN if args.get(key) is not None}
    if args.get("mode", "full") == "full" and args.get("metrics"):
        copied["metrics"] = tuple(args["metrics"])
    return copied


class Measure:
    """The loss of removing a candidate's units at once, on fixed prompts and noise (see the module docstring)."""

    def __init__(self, settings, pipe, sampler, scorer, kind: str = "diffusers"):
        self.settings, self.pipe, self.sampler, self.scorer, self.kind = settings, pipe, sampler, scorer, kind
        self.rule = settings.sensitivity_rule()
        latents = sampler.latents()
        self.baseline = scorer.set_baseline(latents, sampler.images(latents))

    def describe(self) -> dict:
        """What the losses mean: the rule, prompts, steps and the baseline's scores (for reports and plans)."""
        s = self.settings
        return {"rule": self.rule, "prompts": s.prompt_source, "num_prompts": len(s.prompts), "steps": s.steps,
                "guidance": s.guidance, "seed": s.seed, "clip_model": s.clip_model, "baseline": self.baseline}

    def _latents(self, remove: list[str]):
        """The final latents with all of `remove` removed (see the module docstring for how)."""
        from prunekit.ablation import ablate, resolve
        from prunekit.surgery import build_student

        remove = list(dict.fromkeys(remove))
        teacher = denoiser_of(self.pipe)
        if self.kind == "diffusers":
            student, _ = build_student(teacher, remove)
            with unet_swapped(self.pipe, student.eval()):
                return self.sampler.latents()
        with ablate(teacher, outermost(resolve(teacher, remove))):  # a container removes its parts
            return self.sampler.latents()

    def scores(self, remove: list[str]) -> dict[str, float]:
        """Every metric column (sensitivity.csv's names) of the generation with all of `remove` removed."""
        latents = self._latents(remove)
        return self.scorer.score(latents, self.sampler.images(latents))[0]

    def loss(self, values: dict[str, float]) -> float:
        """The loss of a candidate's metric columns, by the run's rule (larger = more harmful)."""
        return rule_value(self.rule, values)

    def __call__(self, remove: list[str]) -> float:
        return self.loss(self.scores(remove))


def measurer(model: str | Model = "tiny-sd", sensitivity=None, kind: str = "diffusers", **changes) -> Measure:
    """A Measure for `model` and plans of `kind`: its pipeline loaded, its prompts encoded, its baseline generated.

    The sweep's options (prunekit.sensitivity.SweepOptions) come from the sensitivity run `sensitivity`
    (runs/NAME) if given, else from the sweep's defaults (the model card's prompt set and guidance, 25 steps,
    seed 0, metrics clip and teacher plus the prompts' judge, so the rule is -delta_clip_score), with
    DEFAULT_PROMPTS prompts; `changes` (num_prompts=..., steps=..., device=...) override them.
    """
    from prunekit.generate import image_seeds
    from prunekit.metrics import clip_score_metric
    from prunekit.sensitivity import pipelines
    from prunekit.sensitivity.sampling import Sampler
    from prunekit.sensitivity.scoring import Scorer
    from prunekit.sensitivity.settings import SweepOptions, resolve

    check_choice("kind", kind, KINDS)
    chosen = {"num_prompts": DEFAULT_PROMPTS, **_run_arguments(sensitivity),
              **{key: value for key, value in changes.items() if value is not None}, "mode": "full"}
    settings = resolve(model, str(sensitivity or ""), SweepOptions(**chosen))
    clip = clip_score_metric(settings.clip_model, settings.device) if "clip" in settings.metrics else None
    pipe = pipelines.load(settings, settings.device)
    texts = list(settings.prompts)
    sampler = Sampler(pipe, texts, image_seeds(settings.seed, len(texts)), settings.steps, settings.guidance,
                      settings.batch_size)
    scorer = Scorer(settings.metrics, texts, clip, settings.clip_model, settings.judge)
    return Measure(settings, pipe, sampler, scorer, kind)


def deferred_measurer(*args, **kwargs):
    """`measurer(*args, **kwargs)` built on the first call only: a search whose candidates are all cached (a
    resumed one) loads no model, and bad planner arguments are refused before anything loads."""
    built: list[Measure] = []

    def measure(remove: list[str]) -> float:
        if not built:
            built.append(measurer(*args, **kwargs))
        return built[0](remove)

    measure.kind = kwargs.get("kind", "diffusers")
    settings = json.dumps([args, kwargs], sort_keys=True, default=str)
    measure.identity = hashlib.sha256(settings.encode()).hexdigest()[:16]  # keys the planner's cache of losses
    return measure
