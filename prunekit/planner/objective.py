"""Objectives: the loss the planner minimises for a candidate (a list of unit names to remove).

- `Additive` (default): the sum of the units' measured sensitivities from a sensitivity run's
  sensitivity.csv (LAPTOP-Diff's additivity assumption). A unit without its own row counts as the sum of
  its parts: a pair as its resnet and attention, `mid` as its resnets and attention, a stage as its blocks.
  With the run's intervals it also gives the uncertainty of a candidate's loss (`halfwidth`), by which the
  greedy planner treats candidates that cannot be told apart as ties.
- `Measured`: a callable `measure(remove) -> float` that ablates the whole candidate and scores it (the
  sensitivity runner provides it), called once per candidate: results are cached in the run directory.
- `recoverable` (prunekit.planner.recoverable): the loss after a short distillation, searched with
  successive halving over KD steps.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.units import Unit, outermost
from prunekit.cache import Cache

OBJECTIVES = ("additive", "measured", "recoverable")  # the last: prunekit.planner.recoverable


class Additive:
    """Loss of a candidate: the sum of the sensitivities of its units (see the module docstring)."""

    cheap = True  # evaluating a candidate costs nothing, so the planner may score infeasible ones too

    def __init__(self, table: dict[str, float], units: dict[str, Unit], source: Path | str = "sensitivity.csv",
                 intervals: dict[str, tuple[float, float]] | None = None):
        self.table, self.units, self.source = table, units, source
        self.intervals = intervals or {}
        self.resolved: dict[str, float] = {}

    @property
    def digest(self) -> str:
        """What identifies the sensitivities (an Optuna study's name holds it)."""
        return hashlib.sha256(json.dumps(sorted(self.table.items())).encode()).hexdigest()[:12]

    def __call__(self, remove: list[str]) -> float:
        return sum(self.unit(name) for name in remove)

    def _parts(self, name: str) -> list[str]:
        """The largest units inside unit `name` (those inside no other unit inside it)."""
        return [u.name for u in outermost([u for u in self.units.values() if self.units[name].contains(u)])]

    def halfwidth(self, remove: list[str]) -> float:
        """Half the width of the candidate's loss interval: its units' half-widths summed (a unit without an
        interval of its own, its parts'; 0 without intervals)."""
        return sum(self._halfwidth(name) for name in remove)

    def _halfwidth(self, name: str) -> float:
        if name in self.intervals:
            low, high = self.intervals[name]
            return (high - low) / 2
        if name in self.table:
            return 0.0
        return sum(self._halfwidth(part) for part in self._parts(name))

    def scores(self, name: str) -> bool:
        """Whether unit `name` has a sensitivity (its own row, or rows for all its parts)."""
        try:
            self.unit(name)
        except PrunekitError:
            return False
        return True

    def unit(self, name: str) -> float:
        """The sensitivity of unit `name`: its own row, else the sum of its parts'."""
        if name not in self.resolved:
            if name in self.table:
                self.resolved[name] = self.table[name]
            else:
                parts = self._parts(name)
                if not parts:
                    raise PrunekitError(f"{self.source} has no row for {name} nor for all "
                                        "of its parts: extend the sensitivity run to it (`prunekit sensitivity "
                                        f"--out {Path(self.source).parent} --granularity pair` reuses the run's "
                                        "settings), or plan with --objective measured.")
                self.resolved[name] = sum(self.unit(part) for part in parts)
        return self.resolved[name]


class Measured:
    """Loss of a candidate as `measure(remove)` scores it, each candidate measured once (cached by its set
    of units in `cache`, which lives in the run directory so a resumed search measures nothing twice)."""

    cheap = False  # measuring runs the model: the planner measures only candidates within the budget

    def __init__(self, measure: Callable[[list[str]], float], cache: Cache):
        self.measure, self.cache = measure, cache
        self.identity = getattr(measure, "identity", "")  # what the losses mean: never mix two settings

    def __call__(self, remove: list[str]) -> float:
        key = self.identity + ":" + " ".join(sorted(remove))
        value = self.cache.get(key)
        if value is None:
            value = float(self.measure(list(remove)))
            self.cache.put(key, value)
        return value
