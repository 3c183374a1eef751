"""Objectives: the loss the planner minimises for a candidate (a list of unit names to remove).

- `Additive` (default): the sum of the units' measured sensitivities from a sensitivity run's
  sensitivity.csv (LAPTOP-Diff's additivity assumption). A unit without its own row counts as the sum of
  its parts: a pair as its resnet and attention, `mid` as its resnets and attention, a stage as its blocks.
- `Measured`: a callable `measure(remove) -> float` that ablates the whole candidate and scores it (the
  sensitivity runner provides it), called once per candidate: results are cached in the run directory.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.graph import Unit
from prunekit.planner.cache import Cache

OBJECTIVES = ("additive", "measured")


@dataclass(frozen=True)
class SensitivityRun:
    """A sensitivity run's per-unit sensitivities (larger = more harmful to remove)."""

    path: Path
    table: dict[str, float]

    @property
    def digest(self) -> str:
        text = json.dumps(sorted(self.table.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_run(run_dir, teacher_config: dict) -> None:
    """Refuse a run directory whose run.json names another U-Net than `teacher_config`'s."""
    from prunekit.models import fingerprint

    info_path = Path(run_dir) / "run.json"
    try:
        model = json.loads(info_path.read_text())["model"]
        theirs = model["unet_fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        raise PrunekitError(f"{info_path} is missing or lacks model.unet_fingerprint: {run_dir} is not a "
                            "complete sensitivity run; run the sweep again.") from None
    mine = fingerprint(teacher_config)
    if theirs != mine:
        raise PrunekitError(f"{run_dir} was measured on another U-Net ({model.get('name', '?')}, {theirs[:19]}) "
                            f"than this one ({mine[:19]}): pass a sensitivity run of this model.")


def load_sensitivity(run_dir, teacher_config: dict) -> SensitivityRun:
    """The sensitivities in `run_dir`/sensitivity.csv, refused when the run was made for another U-Net."""
    run = Path(run_dir)
    table_path = run / "sensitivity.csv"
    if not table_path.is_file():
        raise PrunekitError(f"{table_path} is missing: run the sensitivity sweep into {run} first, "
                            "or plan with --objective measured.")
    check_run(run, teacher_config)
    with table_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"unit", "sensitivity"} <= set(reader.fieldnames or []):
            raise PrunekitError(f"{table_path} has no `unit` and `sensitivity` columns: "
                                "make it with the sensitivity sweep.")
        table = {}
        for row in reader:  # a unit measured again (a resumed run) keeps its last row
            try:
                value = float(row["sensitivity"])
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                table[row["unit"]] = value
    return SensitivityRun(run, table)


def _inside(path: str, container: str) -> bool:
    return path == container or path.startswith(container + ".")


def _contains(outer: Unit, inner: Unit) -> bool:
    return outer.name != inner.name and all(any(_inside(p, q) for q in outer.modules) for p in inner.modules)


class Additive:
    """Loss of a candidate: the sum of the sensitivities of its units (see the module docstring)."""

    cheap = True  # evaluating a candidate costs nothing, so the planner may score infeasible ones too

    def __init__(self, run: SensitivityRun, units: dict[str, Unit]):
        self.run, self.units = run, units
        self.resolved: dict[str, float] = {}

    def __call__(self, remove: list[str]) -> float:
        return sum(self.unit(name) for name in remove)

    def _parts(self, name: str) -> list[str]:
        """The largest units inside unit `name` (those inside no other unit inside it)."""
        inside = [u for u in self.units.values() if _contains(self.units[name], u)]
        return [u.name for u in inside if not any(_contains(other, u) for other in inside)]

    def unit(self, name: str) -> float:
        """The sensitivity of unit `name`: its own row, else the sum of its parts'."""
        if name not in self.resolved:
            if name in self.run.table:
                self.resolved[name] = self.run.table[name]
            else:
                parts = self._parts(name)
                if not parts:
                    raise PrunekitError(f"{self.run.path / 'sensitivity.csv'} has no row for {name} nor for all "
                                        "of its parts: extend the sensitivity run to it, or plan with "
                                        "--objective measured.")
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
