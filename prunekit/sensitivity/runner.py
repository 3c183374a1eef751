"""The sweep: measure the baseline once, then ablate each unit in turn and write its row as soon as it is done.

One process, or several under `accelerate launch ... -m prunekit sensitivity`: every process loads the
pipeline, encodes the prompts and measures the baseline (all deterministic, so all agree), then takes every
num_processes-th unit still to do and writes its rows to its own shard; the main process merges the shards
into sensitivity.csv in unit order, with the very text each process wrote.
"""
from __future__ import annotations

import time

import pandas as pd
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from prunekit.conditioning import encode
from prunekit.ablation import ablate
from prunekit import worlds
from prunekit.families import denoiser_of
from prunekit.generate import image_seeds
from prunekit.metrics import clip_score
from prunekit.units import Unit
from prunekit.errors import PrunekitError
from prunekit.models import Model
from prunekit.options import merged
from prunekit.rundir import RunDir
from prunekit.sensitivity import pipelines
from prunekit.sensitivity.intervals import MIN_PROMPTS, interval, next_round, ranking_forecast
from prunekit.sensitivity.settings import Settings, SweepOptions, resolve, rule_value

THUMBNAILS = 4  # prompts per unit whose images are kept for the report
POOR_RATIO = 0.5  # an intact model whose CLIP score is below this share of its reference images' is warned about
POOR_CLIP = 20.0  # without reference images: a CLIP score below this is warned about
POOR_JUDGED = 0.3  # a judge's headline below this is warned about


def sensitivity(model: str | Model, out: str = "runs/sensitivity", options: SweepOptions | None = None,
                **changes) -> pd.DataFrame:
    """Ablate each unit of `model`'s U-Net alone, score the result, and write runs/NAME (docs/design.md).

    `model` is an alias (`tiny-sd`, `sd-v1-4`, ...), a hub id or a local diffusers pipeline directory (with
    init="random" also a directory holding only a U-Net config), or a resolved prunekit.models.Model. `out` is the
    run directory: rerunning the same command resumes (finished units are skipped), a sweep of other units or
    another granularity with the same settings extends it, another command into it is refused. `options` are
    SweepOptions; `changes` are applied to them (`sensitivity("tiny-sd", out, num_prompts=8)`):

        granularity: `block`, `pair` or `stage`: which units to sweep (prunekit.graph.enumerate_units).
        mode: `full` generates with every unit ablated and scores the images; `proxy` samples nothing and scores
            the change of the noise prediction (see prunekit.sensitivity.proxy).
        metrics: full mode: names or a comma-separated string of clip, fid, teacher and the judges of
            prunekit.worlds (default clip and teacher, plus the prompts' judge: attributes for shapes prompts;
            teacher alone for random weights).
        prompts: a prompt set of prunekit.worlds or a file of one prompt per line (default: the model card's).
        num_prompts: how many prompts (the first of the set; a world's prompts ordered by `seed`).
        steps, guidance: sampling steps of the pipeline's scheduler and classifier-free guidance scale (default:
            the model card's, prunekit.card).
        seed: seeds every image's noise (prunekit.generate.image_seeds), the proxy's noise and random weights.
        batch_size: prompts per batch (default: all at once).
        device, dtype: where (default cuda when a GPU is visible, else cpu) and in which precision to run.
        init: `pretrained` weights, or `random` ones at the model's real scale to time the sweep (scores mean nothing).
        units: unit names (a list or a comma-separated string) to sweep instead of all units of the granularity.
        timesteps: proxy mode: how many fixed timesteps the latents are noised at.
        proxy_latents: proxy mode: `baseline` (the intact model's generations) or `rendered` (the prompts' reference
            images, VAE-encoded, where their world draws them); default rendered where it does, else baseline.
        clip_model: the CLIP model of CLIP score and FID (prunekit.metrics.choose_clip by default).
        race: full mode: spend prompts only where the ranking is uncertain (prunekit.sensitivity.intervals), in
            rounds of `race_round` prompts, until the ranking is forecast to agree with a full sweep's (every unit
            on all `num_prompts`) at a Spearman correlation of `race_target`.
        progress: show progress bars (on the main process).

    Returns sensitivity.csv as a DataFrame: one row per unit measured in this directory so far.
    """
    settings = resolve(model, out, merged(SweepOptions, options, changes))
    state = PartialState(cpu=torch.device(settings.device).type == "cpu")
    main = state.is_main_process
    progress = settings.progress
    say = print if main and progress else (lambda *_: None)
    run, columns = RunDir(settings.out), settings.columns()
    record = run.start(settings.record())
    if main:
        run.merge(columns, [unit.name for unit in settings.units])  # rows a killed distributed run left in shards
    state.wait_for_everyone()
    table = run.table(columns)
    done = table.units()
    todo = [unit for unit in settings.units if unit.name not in done]
    if len(todo) < len(settings.units):
        say(f"resuming {run.path}: {len(settings.units) - len(todo)} of {len(settings.units)} units already "
            f"measured are skipped; {len(todo)} to go.")
    if not todo:
        return run.frame(columns)

    where = state.device if state.num_processes > 1 and torch.device(settings.device).type != "cpu" \
        else torch.device(settings.device)
    clip = _clip_metric(settings, where)
    pipe = pipelines.load(settings, str(where))
    if main:
        run.write_record(record)
    mine = todo[state.process_index::state.num_processes]
    if mine or main:
        measure_baseline = {"proxy": _proxy, "cosine": _criteria, "mse": _criteria}.get(settings.mode, _full)
        baseline, measure = measure_baseline(settings, pipe, clip, run, main)
        for warning in baseline_warnings(settings, baseline):
            say(f"warning: {warning}")
            record.notes = [*record.notes, warning] if warning not in record.notes else record.notes
        if main:
            record.baseline = baseline
            run.write_record(record)
        table = run.table(columns) if state.num_processes == 1 else run.shard(state.process_index, columns)
        sweep = _race if settings.race else _one_by_one
        sweep(settings, mine, measure, table, main and progress)
    state.wait_for_everyone()
    if main:
        run.merge(columns, [unit.name for unit in settings.units])
    state.wait_for_everyone()
    return run.frame(columns)


def baseline_warnings(settings: Settings, baseline: dict) -> list[str]:
    """What to tell the user when the intact model's own scores cannot rank anything, or too few prompts are
    measured for the intervals to mean much."""
    warnings = []
    if len(settings.prompts) < MIN_PROMPTS:
        warnings.append(f"{len(settings.prompts)} prompts give intervals that mean little: use at least "
                        f"{MIN_PROMPTS} (--num-prompts).")
    clip = baseline.get("clip_score")
    real = baseline.get("clip_score_real")
    if clip is not None and (clip < POOR_RATIO * real if real else clip < POOR_CLIP):
        against = f"{POOR_RATIO:.0%} of its reference images' {real:.1f}" if real else f"{POOR_CLIP:g}"
        warnings.append(f"the intact model scores CLIP {clip:.1f} at --steps {settings.steps}, below {against}: "
                        "its ablations rank noise; raise --steps (or check the model).")
    judge = settings.judge
    headline = baseline.get(f"{judge.prefix}{judge.headline}") if judge is not None else None
    if headline is not None and headline < POOR_JUDGED:
        warnings.append(f"the intact model gets {headline:.0%} of its prompts right ({settings.judge.metric}) at "
                        f"--steps {settings.steps}: its ablations rank noise; raise --steps (or check the model).")
    return warnings


def _row(settings: Settings, unit: Unit, values: dict, losses, seconds: float, prompts: int) -> dict:
    low, high = interval(losses, settings.seed, unit.name) if losses is not None else ("", "")
    return {"unit": unit.name, "kind": unit.kind, "stage": unit.stage, "params": unit.params, "macs": unit.macs,
            "full_macs": unit.full_macs, "seconds": seconds, "init": settings.init, **values,
            "sensitivity_low": low, "sensitivity_high": high, "prompts": prompts}


def _one_by_one(settings: Settings, units: list[Unit], measure, table, progress: bool) -> None:
    """Each unit on every prompt, its row written as soon as it is done."""
    for unit in tqdm(units, desc="sensitivity", unit="unit", disable=not progress):
        if unit.name in table.units():  # another process sweeping into this directory measured it meanwhile
            continue
        started = time.perf_counter()
        values, losses = measure(unit)
        table.append(_row(settings, unit, values, losses, time.perf_counter() - started, len(settings.prompts)))


def _race(settings: Settings, units: list[Unit], measure, table, progress: bool) -> None:
    """Every unit on a first round of max(--race-round, MIN_PROMPTS) prompts; then, until the ranking is
    forecast to agree with a full sweep's at --race-target (prunekit.sensitivity.intervals), rounds of
    --race-round more prompts for the units whose ranks are expected to move most. A unit's row is written
    once it has every prompt, the others' when the race ends: a kill loses the rounds of units not yet written."""
    count = len(settings.prompts)
    active = {unit.name: unit for unit in units if unit.name not in table.units()}
    measured = {name: _Measured() for name in active}
    bar = tqdm(total=len(active), desc="sensitivity (racing)", unit="unit", disable=not progress)

    def write(name: str) -> None:
        values, losses = measure.columns(active[name], measured[name])
        table.append(_row(settings, active[name], values, losses, measured[name].seconds, len(measured[name].indices)))
        bar.update()

    def advance(name: str, prompts: int) -> None:
        start = len(measured[name].indices)
        measured[name].add(measure.generate(active[name], list(range(start, min(start + prompts, count)))))
        if len(measured[name].indices) == count:
            write(name)

    for name in active:
        advance(name, max(settings.race_round, MIN_PROMPTS))
    while True:
        open_units = [name for name in active if len(measured[name].indices) < count]
        losses = {name: done.losses().double().numpy() for name, done in measured.items()}
        agreement, shifts = ranking_forecast(losses, count, settings.seed)
        if not open_units or agreement >= settings.race_target:
            break
        for name in next_round(shifts, open_units):
            advance(name, settings.race_round)
    for name in open_units:
        write(name)
    bar.close()


class _Measured:
    """One unit's generations so far: the prompts' indices, latents, images and seconds spent."""

    def __init__(self):
        self.indices, self.latents, self.images, self.seconds = [], [], [], 0.0
        self._losses = []

    def add(self, generation) -> None:
        indices, latents, images, seconds, losses = generation
        self.indices += indices
        self.latents.append(latents)
        self.images += images
        self.seconds += seconds
        self._losses.append(losses)

    def losses(self) -> torch.Tensor:
        return torch.cat(self._losses)


def _clip_metric(settings: Settings, device: torch.device):
    """The CLIP score metric, loaded before the pipeline so that a missing CLIP model fails fast."""
    if "clip" not in settings.metrics:
        return None
    from prunekit.metrics import clip_score_metric

    return clip_score_metric(settings.clip_model, device)


def _sampler(settings: Settings, pipe):
    from prunekit.sensitivity.sampling import Sampler

    prompts = list(settings.prompts)
    return Sampler(pipe, prompts, image_seeds(settings.seed, len(prompts)), settings.steps, settings.guidance,
                   settings.batch_size)


class _FullMeasure:
    """Full mode: generate a unit's images for some prompts (`generate`), or all of them and score them (a call)."""

    def __init__(self, settings: Settings, pipe, sampler, scorer, run: RunDir):
        self.settings, self.pipe, self.sampler, self.scorer, self.run = settings, pipe, sampler, scorer, run

    def _sample(self, unit: Unit, indices: list[int]):
        with ablate(denoiser_of(self.pipe), unit):
            latents = self.sampler.latents(indices)
        return latents, self.sampler.images(latents)

    def generate(self, unit: Unit, indices: list[int]):
        """(indices, latents, images, seconds, each prompt's loss) of `unit` removed on the prompts at `indices`."""
        started = time.perf_counter()
        latents, images = self._sample(unit, indices)
        seconds = time.perf_counter() - started
        _, losses = self.scorer.score(latents, images, indices)
        return indices, latents, images, seconds, losses

    def _columns(self, unit: Unit, latents, images, indices) -> tuple[dict, torch.Tensor | None]:
        values, losses = self.scorer.score(latents, images, indices)
        self.run.save_images(f"units/{unit.name}", [image for i, image in zip(indices, images) if i < THUMBNAILS])
        return {**values, "sensitivity": rule_value(self.settings.sensitivity_rule(), values)}, losses

    def columns(self, unit: Unit, measured) -> tuple[dict, torch.Tensor | None]:
        """The metric columns and `sensitivity` of a unit's generations so far (images of its first prompts kept)."""
        return self._columns(unit, torch.cat(measured.latents), measured.images, measured.indices)

    def __call__(self, unit: Unit) -> tuple[dict, torch.Tensor | None]:
        """The columns and each prompt's loss of `unit` removed, on every prompt."""
        indices = list(range(len(self.settings.prompts)))
        return self._columns(unit, *self._sample(unit, indices), indices)


def _full(settings: Settings, pipe, clip, run: RunDir, main: bool):
    """Generate and score the baseline (its images saved by the main process); the measure of one ablated unit."""
    from prunekit.sensitivity.scoring import Scorer

    sampler = _sampler(settings, pipe)
    scorer = Scorer(settings.metrics, list(settings.prompts), clip, settings.clip_model, settings.judge,
                    settings.sensitivity_rule())
    latents = sampler.latents(progress=settings.progress and main)
    images = sampler.images(latents)
    baseline = scorer.set_baseline(latents, images)
    references = worlds.references(list(settings.prompts)) if "clip" in settings.metrics else None
    if references is not None:
        baseline["clip_score_real"] = clip_score(references, list(settings.prompts), clip)
    if main:
        run.save_prompts(list(settings.prompts))
        run.save_images("baseline", images[:THUMBNAILS])
    return baseline, _FullMeasure(settings, pipe, sampler, scorer, run)


def _calibration(settings: Settings, pipe, run: RunDir, main: bool):
    """The latents (the baseline's generations, or the prompts' reference images encoded) that latent modes
    score, with their prompts' conditioning; the baseline's images are kept for the report."""
    prompts = list(settings.prompts)
    if settings.proxy_latents == "baseline":
        sampler = _sampler(settings, pipe)
        latents, conditioning = sampler.latents(progress=settings.progress and main), sampler.conditioning
        if main:
            run.save_prompts(prompts)
            run.save_images("baseline", sampler.images(latents[:THUMBNAILS]))
        return latents, conditioning
    return _reference_latents(pipe, prompts, settings.batch_size), encode(pipe, prompts)[0]


def _proxy(settings: Settings, pipe, clip, run: RunDir, main: bool):
    """The proxy's clean latents and the intact U-Net's activations on them; a function that scores one
    ablated unit and returns its metric columns and each latent's eps_mse."""
    from prunekit.sensitivity.proxy import Proxy

    latents, conditioning = _calibration(settings, pipe, run, main)
    proxy = Proxy(pipe.unet, latents, conditioning, settings.timesteps, pipe.scheduler.alphas_cumprod, settings.seed,
                  settings.batch_size)

    def measure(unit: Unit) -> tuple[dict, torch.Tensor]:
        with ablate(pipe.unet, unit):
            errors = proxy.eps_mse(unit)
        value = float(errors.mean())
        return {"eps_mse": value, "sensitivity": value}, errors

    return {"timesteps": sorted(set(proxy.timesteps))}, measure


def _criteria(settings: Settings, pipe, clip, run: RunDir, main: bool):
    """One intact pass over the calibration latents, noised at fixed levels of the pipeline's training noise,
    scoring every unit by `cosine` or `mse` (prunekit.sensitivity.criteria); a function that reads off one."""
    from prunekit.families import config_of, family_of
    from prunekit.schedules import noising_for
    from prunekit.sensitivity.criteria import BlockScores
    from prunekit.sensitivity.proxy import latent_noise

    latents, conditioning = _calibration(settings, pipe, run, main)
    denoiser, noising = denoiser_of(pipe), noising_for(pipe.scheduler)
    grid = noising.levels(settings.timesteps)
    levels = grid[torch.arange(len(latents)) % settings.timesteps]
    size = settings.batch_size or len(latents)

    def batches():
        for start in range(0, len(latents), size):
            clean = latents[start:start + size].float().cpu()
            noise = torch.stack([latent_noise(settings.seed, i, clean.shape[1:])
                                 for i in range(start, start + len(clean))])
            level = levels[start:start + size]
            noisy = noising.noisy(clean, noise, level).to(pipe.device, denoiser.dtype)
            yield noisy, noising.model_timestep(level).to(pipe.device), conditioning[start:start + size]

    scores = BlockScores(denoiser, family_of(config_of(denoiser)), list(settings.units), batches())
    column = settings.sensitivity_rule()

    def measure(unit: Unit) -> tuple[dict, torch.Tensor]:
        values = scores(unit, settings.mode)
        if values is None:
            raise PrunekitError(f"{unit.name}'s stand-in changes the shape of what passes through it, so {column} "
                                "cannot compare the two: sweep it in full mode.")
        value = float(values.mean())
        return {column: value, "sensitivity": value}, values

    return {"levels": [float(level) for level in grid]}, measure


@torch.no_grad()
def _reference_latents(pipe, prompts: list[str], batch_size: int | None) -> torch.Tensor:
    """The reference images of `prompts` (prunekit.worlds.references), encoded by the pipeline's VAE."""
    images = worlds.references(prompts)
    latents = []
    size = batch_size or len(images)
    for start in range(0, len(images), size):
        pixels = pipe.image_processor.preprocess(images[start:start + size]).to(pipe.device, pipe.vae.dtype)
        latents.append(pipe.vae.encode(pixels).latent_dist.mode().cpu() * pipe.vae.config.scaling_factor)
    return torch.cat(latents)
