"""A sweep's options and settings: every argument checked and every default filled in before anything is loaded.

`SweepOptions` is what a caller gives; `resolve` turns it and the model into `Settings`, which also knows
what the sweep writes: the columns of sensitivity.csv, the rule of its `sensitivity` column, and run.json's
record (prunekit.rundir, docs/design.md).
"""
from __future__ import annotations

import datetime
import hashlib
import platform
import dataclasses
from dataclasses import dataclass

import torch

from prunekit import worlds
from prunekit.conditioning import check_supported
from prunekit.families import family_of
from prunekit.errors import PrunekitError
from prunekit.graph import GRANULARITIES, enumerate_units
from prunekit.units import Unit
from prunekit.metrics import METRICS, check_metrics, choose_clip
from prunekit.models import Model, build_meta, resolve_model
from prunekit.options import check_choice, check_count, check_number, resolve_device
from prunekit.rundir import NOT_COMPARED, UNIT_COLUMNS, RunRecord
from prunekit.worlds import Judge

MODES = ("full", "proxy", "cosine", "mse")
LATENT_MODES = ("proxy", "cosine", "mse")  # modes that score calibration latents, generating nothing per unit
MODE_COLUMNS = {"proxy": "eps_mse", "cosine": "block_cosine", "mse": "block_mse"}  # prunekit.sensitivity.criteria
MODE_WORDS = {"proxy": "noise-prediction error", "cosine": "how little each unit keeps its input's direction",
              "mse": "how far each unit moves its input"}
INITS = ("pretrained", "random")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PROXY_LATENTS = ("baseline", "rendered")
# the full-mode `sensitivity` column: the rule of the first of these metrics (in this order) that is computed
SENSITIVITY_RULES = (("clip", "-delta_clip_score"), ("teacher", "latent_mse"), ("judge", None), ("fid", "fid"))


@dataclass(frozen=True)
class SweepOptions:
    """What a sweep takes besides the model and the run directory (prunekit.sensitivity.sensitivity documents
    each); every value is checked here."""

    granularity: str = "pair"
    mode: str = "full"
    metrics: str | tuple[str, ...] | None = None
    prompts: str | None = None
    num_prompts: int = 32
    steps: int = 25
    guidance: float | None = None
    seed: int = 0
    batch_size: int | None = None
    device: str | None = None
    dtype: str = "float32"
    init: str = "pretrained"
    units: str | tuple[str, ...] | list[str] | None = None
    timesteps: int = 4
    proxy_latents: str | None = None
    clip_model: str | None = None
    race: bool = False  # spend prompts only where the ranking is uncertain (prunekit.sensitivity.intervals)
    race_round: int = 8  # prompts per round of a race
    race_target: float = 0.97  # a race ends once its ranking is forecast to agree with a full sweep's this well
    progress: bool = True

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        check_choice("init", self.init, INITS)
        check_choice("dtype", self.dtype, tuple(DTYPES))
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("proxy_latents", self.proxy_latents, (None, *PROXY_LATENTS))
        for name in ("num_prompts", "steps", "timesteps", "race_round"):
            check_count(name, getattr(self, name))
        check_count("batch_size", self.batch_size, optional=True)
        check_count("seed", self.seed, minimum=0)
        check_number("guidance", self.guidance, minimum=1, optional=True)
        check_number("race_target", self.race_target, minimum=0, maximum=1)
        if self.mode in LATENT_MODES and self.metrics is not None:
            raise PrunekitError(f"{self.mode} mode scores by {MODE_WORDS[self.mode]} ({MODE_COLUMNS[self.mode]}) "
                                "only: leave out --metrics, or use --mode full.")
        if self.mode in LATENT_MODES and self.race:
            raise PrunekitError(f"a {self.mode} sweep costs at most one pass per unit: --race is for full mode.")

    def extending(self, record: RunRecord | None, given: set[str]) -> tuple[SweepOptions, dict]:
        """These options made to extend the run of `record` (a run directory's run.json): every setting not in
        `given` (those the caller chose) takes the run's value, so a new granularity or new units reuse its
        prompts, steps and metrics. Returns the options and the settings taken from the run."""
        if record is None or record.command != "sensitivity":
            return self, {}
        fields = {f.name for f in dataclasses.fields(self)} - set(NOT_COMPARED) - given
        taken = {key: value for key, value in record.args.items() if key in fields and value is not None}
        taken = {key: tuple(value) if isinstance(value, list) else value for key, value in taken.items()}
        return dataclasses.replace(self, **taken), taken


@dataclass(frozen=True)
class Settings:
    """A checked sweep: what to ablate, how to generate and how to score."""

    model: Model
    out: str
    granularity: str
    mode: str
    metrics: tuple[str, ...]  # empty in proxy mode
    judge: Judge | None  # scores the prompts' images beyond CLIP (prunekit.worlds), when "judge" is a metric
    prompt_source: str
    prompts: tuple[str, ...]
    steps: int
    guidance: float
    seed: int
    batch_size: int | None
    device: str
    dtype: str
    init: str
    units: tuple[Unit, ...]
    units_given: bool  # a --units list, rather than every unit of the granularity
    timesteps: int
    proxy_latents: str | None
    clip_model: str | None
    race: bool
    race_round: int
    race_target: float
    progress: bool

    @property
    def config(self) -> dict:
        return self.model.config

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def metric_columns(self, metric: str) -> list[str]:
        if metric == "clip":
            return ["clip_score", "delta_clip_score"]
        if metric == "teacher":
            return ["latent_mse", "psnr", "ssim"]
        if metric == "fid":
            return ["fid"]
        return [name for key in self.judge.keys for name in (f"{self.judge.prefix}{key}",
                                                             f"delta_{self.judge.prefix}{key}")]

    def columns(self) -> list[str]:
        """sensitivity.csv's columns, in order."""
        columns = list(UNIT_COLUMNS) + [c for metric in self.metrics for c in self.metric_columns(metric)]
        if self.mode in MODE_COLUMNS:
            columns.append(MODE_COLUMNS[self.mode])
        if self.init == "random":
            columns.append("init")
        return columns + ["sensitivity", "sensitivity_low", "sensitivity_high", "prompts"]

    def sensitivity_rule(self) -> str:
        """What the `sensitivity` column holds (larger = more harmful to remove)."""
        if self.mode in MODE_COLUMNS:
            return MODE_COLUMNS[self.mode]
        for metric, rule in SENSITIVITY_RULES:
            if metric == "judge" and self.judge is not None and self.judge.metric in self.metrics:
                return f"-delta_{self.judge.prefix}{self.judge.headline}"
            if metric in self.metrics:
                return rule
        raise AssertionError("a full sweep has a metric")

    def args(self) -> dict:
        """The arguments as run.json records them (those that do not apply to the mode are None)."""
        proxy = self.mode in LATENT_MODES
        return {"model": self.model.name, "granularity": self.granularity, "mode": self.mode,
                "metrics": None if proxy else list(self.metrics), "prompts": self.prompt_source,
                "num_prompts": len(self.prompts), "steps": self.steps, "guidance": self.guidance, "seed": self.seed,
                "batch_size": self.batch_size, "device": self.device, "dtype": self.dtype, "init": self.init,
                "units": [unit.name for unit in self.units] if self.units_given else None,
                "timesteps": self.timesteps if proxy else None, "proxy_latents": self.proxy_latents,
                "clip_model": self.clip_model, "race": self.race_round if self.race else None,
                "race_target": self.race_target if self.race else None}

    def notes(self) -> list[str]:
        notes = [f"sensitivity = {self.sensitivity_rule()} (larger = more harmful to remove); sensitivity_low and "
                 "sensitivity_high bound its 95% bootstrap interval over the prompts (prunekit.sensitivity.intervals)."]
        if self.race:
            notes.append(f"racing: units were measured on rounds of {self.race_round} prompts until the ranking was "
                         f"forecast to agree with a full sweep's at Spearman {self.race_target:g} (the prompts column "
                         "says how many each took).")
        if self.init == "random":
            notes.append("random weights (--init random): for timing only; the scores mean nothing.")
        source = ("the baseline's generations" if self.proxy_latents == "baseline"
                  else "the prompts' own reference images, VAE-encoded")
        if self.mode == "proxy":
            notes.append(f"proxy mode: eps_mse is the mean squared difference of the ablated and intact U-Nets' noise "
                         f"predictions on {source}, each noised at one of {self.timesteps} fixed timesteps "
                         "(LAPTOP-Diff's output criterion); no images are generated per unit.")
        if self.mode in ("cosine", "mse"):
            what = ("one minus the cosine similarity of" if self.mode == "cosine" else
                    "the mean squared difference of")
            notes.append(f"{self.mode} mode: {MODE_COLUMNS[self.mode]} is {what} each unit's output and what its "
                         f"stand-in returns for the same input (a block's input), in one intact pass over {source}, "
                         f"each noised at one of {self.timesteps} fixed levels (prunekit.sensitivity.criteria).")
        if {"teacher", "fid"} & set(self.metrics):
            notes.append("latent_mse, psnr, ssim and fid compare each ablation with the baseline's outputs for the "
                         "same noise, so they have no delta column.")
        return notes

    def record(self) -> RunRecord:
        """run.json before the baseline is measured."""
        return RunRecord("sensitivity", self.args(), {"name": self.model.name, "unet_fingerprint": self.model.fingerprint},
                         versions(), datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                         {}, self.init, self.notes(), self.sensitivity_rule(), digest(list(self.prompts)))


def rule_value(rule: str, values: dict[str, float]) -> float:
    """The loss by `rule` ("-delta_clip_score", "latent_mse", ...) of one generation's metric columns."""
    return 0.0 - values[rule[1:]] if rule.startswith("-") else values[rule]  # 0.0 - x: no "-0.0" in the CSV


def explain(rule: str | None) -> str:
    """What a `sensitivity` rule measures, in words: "CLIP-score points lost" for -delta_clip_score."""
    if not rule:
        return "the sweep's sensitivity"
    metric = rule.removeprefix("-").removeprefix("delta_")
    words = {"clip_score": "CLIP-score points", "latent_mse": "latent MSE against the intact model",
             "eps_mse": "noise-prediction MSE against the intact model", "fid": "FID against the intact model",
             "attr_all": "all-attributes accuracy"}
    if rule.startswith("-delta_"):
        return f"{words.get(metric, metric)} lost ({rule})"
    return f"{words.get(metric, metric)} ({rule})"


def digest(prompts: list[str]) -> str:
    """A hash of the prompt texts in order: a resumed run must use the very same prompts."""
    return "sha256:" + hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


def versions() -> dict:
    import accelerate
    import diffusers
    import torchmetrics
    import transformers

    import prunekit

    return {"prunekit": prunekit.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "torchmetrics": torchmetrics.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}


def _names(units) -> list[str] | None:
    if units is None:
        return None
    names = [name.strip() for name in units.split(",")] if isinstance(units, str) else [str(u) for u in units]
    names = [name for name in names if name]
    if not names:
        raise PrunekitError("--units names no unit: give unit names separated by commas, or leave it out.")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise PrunekitError(f"--units names {', '.join(twice)} more than once: name each unit once.")
    return names


def _units(config: dict, granularity: str, names: list[str] | None, tokens: int) -> tuple[Unit, ...]:
    """The units a sweep scores, their costs counted at the model's `tokens` text tokens."""
    from prunekit.ablation import resolve
    from prunekit.graph import all_units

    if names is None:
        return tuple(enumerate_units(config, granularity, tokens))
    counted = all_units(config, tokens)
    return tuple(counted[unit.name] for unit in resolve(build_meta(config), names))


def _metrics(options: SweepOptions, judge: Judge | None) -> tuple[str, ...]:
    """The metric names of a full sweep; a judge's metric stands for itself in the names."""
    if options.mode in LATENT_MODES:
        return ()
    if options.metrics is None:
        if options.init == "random":
            return ("teacher",)
        return ("clip", "teacher") + ((judge.metric,) if judge else ())
    names = tuple(dict.fromkeys(check_metrics(options.metrics)))
    if not names:
        raise PrunekitError(f"--metrics names no metric: give one or more of {', '.join(METRICS)}.")
    for name in names:
        other = worlds.judges().get(name)
        if other is not None and (judge is None or judge.metric != name):
            raise PrunekitError(f"the {name} metric judges {other.scope} only: use their prompt set, or leave "
                                f"{name} out of --metrics.")
    return names


def resolve(model: str | Model, out: str, options: SweepOptions) -> Settings:
    """Settings from a model, a run directory and options, or a PrunekitError."""
    model = resolve_model(model)
    device = resolve_device(options.device)
    source = options.prompts or model.card.prompts
    texts = worlds.prompts(source, options.num_prompts, options.seed)
    judge = worlds.judge_for(texts)
    chosen = _metrics(options, judge)
    if "fid" in chosen and len(texts) < 2:
        raise PrunekitError("FID needs at least 2 prompts: raise --num-prompts.")
    proxy_latents = None
    if options.mode in LATENT_MODES:
        references = worlds.references(texts) is not None
        proxy_latents = options.proxy_latents or ("rendered" if references else "baseline")
        if proxy_latents == "rendered" and not references:
            raise PrunekitError("rendered proxy latents need prompts whose world can draw them (the shapes): use "
                                "--proxy-latents baseline.")
        if options.timesteps > len(texts):
            raise PrunekitError(f"each prompt's latent is noised at one of the {options.timesteps} timesteps: give at "
                                f"least {options.timesteps} prompts, or fewer --timesteps.")
    clip_model = choose_clip(options.clip_model, model.card, texts) if {"clip", "fid"} & set(chosen) else None
    check_supported(model.config, model.name)
    family = family_of(model.config)
    if options.mode == "proxy" and not family.proxy_sweeps:
        raise PrunekitError(f"proxy mode runs U-Nets block by block; a {family.classes[0]} sweeps in full mode: "
                            "use --mode full.")
    selected = _units(model.config, options.granularity, _names(options.units), model.tokens)
    guidance = model.card.guidance if options.guidance is None else float(options.guidance)
    settings = Settings(model, str(out), options.granularity, options.mode, chosen,
                    judge if judge is not None and judge.metric in chosen else None, source, tuple(texts),
                    options.steps, guidance, options.seed, options.batch_size, device, options.dtype, options.init,
                    selected, options.units is not None, options.timesteps, proxy_latents, clip_model,
                    options.race, options.race_round, options.race_target, options.progress)
    if settings.race and settings.sensitivity_rule() == "fid":
        raise PrunekitError("a race ranks units by per-prompt losses and FID is a score of the whole set: add clip, "
                            "teacher or a judge to --metrics, or leave out --race.")
    return settings
