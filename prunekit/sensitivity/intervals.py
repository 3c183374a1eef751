"""Confidence intervals of sensitivities, and the race that stops spending prompts on a unit once it is placed.

A unit's sensitivity is the mean over prompts of each prompt's loss by the sweep's rule: the ablated model's
score less the intact model's on the same prompt and noise, a paired difference. Its interval is the 95%
percentile bootstrap of that mean (1,000 resamples of the prompts, seeded by the sweep's seed and the unit's
name, so the same run gives the same interval).

Two units whose intervals overlap cannot be told apart by the prompts measured: the planner and the report
treat them as ties. A racing sweep measures every unit on rounds of prompts and stops with a unit once its
interval is clear of its neighbours' in the ranking (the units just above and below it), once the interval
is narrower than a hundredth of the spread of all sensitivities (it is placed as finely as anything can
matter), or once it has every prompt.
"""
from __future__ import annotations

import zlib

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
MIN_PROMPTS = 8  # fewer per-prompt values give intervals that mean little: the sweep warns
TOLERANCE = 0.01  # of the spread of all units' sensitivities: an interval this narrow is placed


def interval(losses, seed: int, name: str) -> tuple[float, float]:
    """The bootstrap interval of the mean of `losses` (one per prompt), seeded by `seed` and unit `name`."""
    values = np.asarray(losses, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    means = values[rng.integers(0, len(values), size=(RESAMPLES, len(values)))].mean(axis=1)
    tail = 100 * (1 - LEVEL) / 2
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def placed(name: str, estimates: dict[str, tuple[float, float, float]]) -> bool:
    """Whether unit `name`'s interval no longer needs prompts, given every unit's (mean, low, high) so far."""
    mean, low, high = estimates[name]
    means = [value[0] for value in estimates.values()]
    spread = max(means) - min(means)
    if spread > 0 and high - low <= TOLERANCE * spread:
        return True
    ranked = sorted(estimates, key=lambda other: (estimates[other][0], other))
    at = ranked.index(name)
    neighbours = [ranked[i] for i in (at - 1, at + 1) if 0 <= i < len(ranked)]
    return all(not overlap((low, high), estimates[other][1:]) for other in neighbours)


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
