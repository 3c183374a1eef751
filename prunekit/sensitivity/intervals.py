"""Confidence intervals of sensitivities, and the race that spends prompts only where the ranking is uncertain.

A unit's sensitivity is the mean over prompts of each prompt's loss by the sweep's rule: the ablated model's
score less the intact model's on the same prompt and noise, a paired difference. Its interval is the 95%
percentile bootstrap of that mean (1,000 resamples of the prompts, seeded by the sweep's seed and the unit's
name, so the same run gives the same interval).

Two units whose intervals overlap cannot be told apart by the prompts measured: the planner and the report
treat them as ties.

A racing sweep spends prompts only where the ranking is still uncertain. Every unit is measured on a first
round of prompts; then, while the ranking is predicted to agree with a full sweep's (every unit on every
prompt) at a Spearman correlation below the race's target, the units whose ranks are expected to move most get
their next round. The prediction draws each unit's full-sweep mean from what its prompts so far say: their
mean, plus their standard error shrunk by the share of prompts still unmeasured (the full sweep's prompts
include these), times a Student t variable (the spread itself is estimated from few prompts).
"""
from __future__ import annotations

import zlib

import numpy as np
from scipy.stats import rankdata

RESAMPLES = 1000
LEVEL = 0.95
MIN_PROMPTS = 8  # fewer per-prompt values give intervals that mean little: the sweep warns; a race's first round
DRAWS = 400  # full sweeps drawn per prediction of a race
SHARE = 0.3  # a race's next round goes to the units that carry this share of the expected rank shifts


def interval(losses, seed: int, name: str) -> tuple[float, float]:
    """The bootstrap interval of the mean of `losses` (one per prompt), seeded by `seed` and unit `name`."""
    values = np.asarray(losses, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    means = values[rng.integers(0, len(values), size=(RESAMPLES, len(values)))].mean(axis=1)
    tail = 100 * (1 - LEVEL) / 2
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def ranking_forecast(losses: dict[str, np.ndarray], total: int, seed: int) -> tuple[float, dict[str, float]]:
    """For units with per-prompt `losses` on the first prompts of `total`: the expected Spearman correlation of
    their ranking by mean with a full sweep's, and each unit's expected squared shift of rank."""
    names = sorted(losses)
    if len(names) < 2:
        return 1.0, dict.fromkeys(names, 0.0)
    counts = np.array([len(losses[name]) for name in names], dtype=np.float64)
    means = np.array([losses[name].mean() for name in names])
    spread = np.array([losses[name].std(ddof=1) if len(losses[name]) > 1 else 0.0 for name in names])
    error = spread / np.sqrt(counts) * np.sqrt(np.clip(1 - counts / total, 0, 1))
    rng = np.random.default_rng(seed)
    drawn = means + rng.standard_t(np.maximum(counts - 1, 1), size=(DRAWS, len(names))) * error
    now, then = rankdata(means), rankdata(drawn, axis=1)
    centred_now, centred_then = now - now.mean(), then - then.mean(axis=1, keepdims=True)
    scale = np.linalg.norm(centred_now) * np.linalg.norm(centred_then, axis=1)
    rho = np.where(scale > 0, centred_then @ centred_now / np.where(scale > 0, scale, 1), 1.0)
    shifts = ((then - now) ** 2).mean(axis=0)
    return float(rho.mean()), {name: float(shift) for name, shift in zip(names, shifts)}


def next_round(shifts: dict[str, float], open_units: list[str]) -> list[str]:
    """The open units (not yet on every prompt) that carry SHARE of the open units' expected rank shifts, the
    largest first (at least one)."""
    ranked = sorted(open_units, key=lambda name: (-shifts[name], name))
    total, chosen, carried = sum(shifts[name] for name in ranked), [], 0.0
    for name in ranked:
        chosen.append(name)
        carried += shifts[name]
        if carried >= SHARE * total:
            break
    return chosen


def tie_groups(intervals: dict[str, tuple[float, float]], means: dict[str, float]) -> dict[str, int]:
    """Units ranked by mean, grouped where consecutive intervals overlap: unit -> group number (0 first)."""
    groups, group, reach = {}, -1, None
    for name in sorted(means, key=lambda n: (means[n], n)):
        low, high = intervals[name]
        if reach is None or low > reach:
            group += 1
            reach = high
        else:
            reach = max(reach, high)
        groups[name] = group
    return groups
