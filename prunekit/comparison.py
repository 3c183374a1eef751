"""Students compared after equal retraining: a run directory's comparison.csv.

One row per candidate student at one budget: its name (`prunekit (additive)`, `bk-small`, `random 1`), its
plan's removed units and cost fractions, the seeds it was distilled with, and for each quality number of
prunekit.evaluate.headline (attr_all and clip_score on the shapes world) the mean and sd over those seeds. The
demo writes its plan's student and the preset's at the same budget (one seed each); analyses/after_kd.py writes
every candidate of its study (three seeds each); the report's verdict reads it.

A candidate beats another on a number when its mean exceeds the other's by more than twice the larger of the
two sds (`margin`); with one seed there is no spread, and the verdict says so.
"""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.rundir import read_csv, write_atomically

COLUMNS = ("budget", "candidate", "params_fraction", "macs_fraction", "seeds", "remove")  # then metric_mean, _sd


def row(budget, candidate: str, plan, scores: list[dict[str, float]]) -> dict:
    """The comparison row at `budget` (a prunekit.planner.budget.Budget) of `candidate`, the student of `plan`
    (a prunekit.plan.Plan) scored once per seed (`scores`: one prunekit.evaluate.headline dict per seed)."""
    found = {"budget": str(budget), "candidate": candidate, "params_fraction": plan.predicted["params_fraction"],
             "macs_fraction": plan.predicted["macs_fraction"], "seeds": len(scores),
             "remove": " ".join(plan.remove)}
    for metric in scores[0]:
        values = [score[metric] for score in scores]
        found[f"{metric}_mean"] = statistics.fmean(values)
        found[f"{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return found


def write(path: Path, rows: list[dict]) -> None:
    """comparison.csv at `path`, written whole (the columns: COLUMNS, then each metric's mean and sd)."""
    columns = list(COLUMNS) + [key for key in rows[0] if key not in COLUMNS]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, buffer.getvalue())


def read(path: Path) -> list[dict] | None:
    """The rows of comparison.csv at `path` with numbers as floats (None when there is none)."""
    _, rows = read_csv(path, COLUMNS)
    if rows is None:
        return None
    text = ("budget", "candidate", "remove")
    numbers = []
    for line, found in enumerate(rows, start=2):
        try:
            numbers.append({key: value if key in text else float(value) for key, value in found.items()})
        except (TypeError, ValueError):
            raise PrunekitError(f"{path} line {line} has a cell that is not a number: the file is garbled; make it "
                                "again.") from None
    return numbers


def metrics(rows: list[dict]) -> list[str]:
    """The quality numbers the rows hold, in their column order."""
    return [key.removesuffix("_mean") for key in rows[0] if key.endswith("_mean")] if rows else []


def margin(candidate: dict, other: dict, metric: str) -> tuple[float, float]:
    """How far `candidate`'s mean lies above `other`'s on `metric`, and the margin it must exceed to beat it
    (twice the larger sd)."""
    gap = candidate[f"{metric}_mean"] - other[f"{metric}_mean"]
    return gap, 2 * max(candidate[f"{metric}_sd"], other[f"{metric}_sd"])
