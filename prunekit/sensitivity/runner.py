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

from prunekit.ablation import ablate
from prunekit.generate import image_seeds
from prunekit.worlds import references
from prunekit.graph import Unit
from prunekit.models import Model
from prunekit.options import merged
from prunekit.rundir import RunDir
from prunekit.sensitivity import pipelines
from prunekit.sensitivity.settings import Settings, SweepOptions, resolve, rule_value

THUMBNAILS = 4  # prompts per unit whose images are kept for the report


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
        say(f"measuring the baseline ({len(settings.prompts)} prompts)...")
        measure_baseline = _proxy if settings.mode == "proxy" else _full
        baseline, measure = measure_baseline(settings, pipe, clip, run, main)
        if main:
            record.baseline = baseline
            run.write_record(record)
        table = run.table(columns) if state.num_processes == 1 else run.shard(state.process_index, columns)
        for unit in tqdm(mine, desc="sensitivity", unit="unit", disable=not (main and progress)):
            if unit.name in table.units():  # another process sweeping into this directory measured it meanwhile
                continue
            started = time.perf_counter()
            values = measure(unit)
            table.append({"unit": unit.name, "kind": unit.kind, "stage": unit.stage, "params": unit.params,
                          "macs": unit.macs, "full_macs": unit.full_macs, "seconds": time.perf_counter() - started,
                          "init": settings.init, **values})
    state.wait_for_everyone()
    if main:
        run.merge(columns, [unit.name for unit in settings.units])
    state.wait_for_everyone()
    return run.frame(columns)


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


def _full(settings: Settings, pipe, clip, run: RunDir, main: bool):
    """Generate and score the baseline (its images saved by the main process); a function that does the same
    for one ablated unit and returns its metric columns."""
    from prunekit.sensitivity.scoring import Scorer

    sampler = _sampler(settings, pipe)
    scorer = Scorer(settings.metrics, list(settings.prompts), clip, settings.clip_model, settings.judge)
    latents = sampler.latents()
    images = sampler.images(latents)
    baseline = scorer.set_baseline(latents, images)
    if main:
        run.save_prompts(list(settings.prompts))
        run.save_images("baseline", images[:THUMBNAILS])

    def measure(unit: Unit) -> dict:
        with ablate(pipe.unet, unit):
            latents = sampler.latents()
        images = sampler.images(latents)
        values = scorer.score(latents, images)
        run.save_images(f"units/{unit.name}", images[:THUMBNAILS])
        return {**values, "sensitivity": rule_value(settings.sensitivity_rule(), values)}

    return baseline, measure


def _proxy(settings: Settings, pipe, clip, run: RunDir, main: bool):
    """The proxy's clean latents and the intact U-Net's activations on them; a function that scores one
    ablated unit and returns its metric columns."""
    from prunekit.sensitivity.proxy import Proxy

    prompts = list(settings.prompts)
    if settings.proxy_latents == "baseline":
        sampler = _sampler(settings, pipe)
        latents, embeds = sampler.latents(), sampler.embeds
        if main:
            run.save_prompts(prompts)
            run.save_images("baseline", sampler.images(latents[:THUMBNAILS]))
    else:
        latents = _reference_latents(pipe, prompts, settings.batch_size)
        with torch.no_grad():
            embeds = pipe.encode_prompt(prompts, pipe.device, 1, False)[0]
    proxy = Proxy(pipe.unet, latents, embeds, settings.timesteps, pipe.scheduler.alphas_cumprod, settings.seed,
                  settings.batch_size)

    def measure(unit: Unit) -> dict:
        with ablate(pipe.unet, unit):
            value = proxy.eps_mse(unit)
        return {"eps_mse": value, "sensitivity": value}

    return {"timesteps": sorted(set(proxy.timesteps))}, measure


@torch.no_grad()
def _reference_latents(pipe, prompts: list[str], batch_size: int | None) -> torch.Tensor:
    """The reference images of `prompts` (prunekit.worlds.references), encoded by the pipeline's VAE."""
    images = references(prompts)
    latents = []
    size = batch_size or len(images)
    for start in range(0, len(images), size):
        pixels = pipe.image_processor.preprocess(images[start:start + size]).to(pipe.device, pipe.vae.dtype)
        latents.append(pipe.vae.encode(pixels).latent_dist.mode().cpu() * pipe.vae.config.scaling_factor)
    return torch.cat(latents)
