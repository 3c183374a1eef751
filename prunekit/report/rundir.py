"""A run directory as the report reads it: each file parsed and checked, None where it is absent.

The files, their paths and their parsing are prunekit.rundir's (docs/design.md); this module gathers
them with the teacher's costs. A file that is there but garbled raises PrunekitError naming it, rather than
leaving a section out silently.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from prunekit import comparison, rundir
from prunekit.costs import Costs
from prunekit.errors import PrunekitError
from prunekit.units import Unit
from prunekit.plan import Plan
from prunekit.planner.api import PARETO_COLUMNS
from prunekit.rundir import INTERVAL_COLUMNS, UNIT_COLUMNS, RunDir, RunRecord, read_csv, read_json

FILES = (rundir.RUN_JSON, rundir.TABLE, rundir.IMAGES, rundir.PLAN, rundir.PARETO, rundir.DISTILL, rundir.COMPARISON)


@dataclass(frozen=True)
class Teacher:
    """The run's model: its denoiser config, block-level units (no transformer layers), every unit by name, and
    costs, all counted at its pipeline's text length (`tokens`)."""

    name: str
    config: dict
    units: list[Unit]
    all_units: dict[str, Unit]
    costs: Costs
    tokens: int


@dataclass(frozen=True)
class Run:
    """What one run directory holds; each field is None (or empty) where its file is absent."""

    path: Path
    info: RunRecord | None  # run.json
    columns: list[str]  # sensitivity.csv's columns and rows
    units: list[dict]
    prompts: list[str] | None  # images/prompts.json (or "prompt i" for each baseline image)
    plan: Plan | None
    pareto: list[dict] | None
    log_columns: list[str]  # distill/logs.csv
    logs: list[dict] | None
    evaluation: dict | None  # distill/eval.json
    comparison: list[dict] | None  # comparison.csv (prunekit.comparison)
    compared: dict[str, Path]  # compare/NAME/distill of each student retrained beside the plan's
    model: str | None
    teacher: Teacher | None
    teacher_note: str | None  # why the teacher's costs are missing or may not match the run

    @property
    def metrics(self) -> list[str]:
        """The sensitivity.csv columns to chart: `sensitivity`, each `delta_M`, and each M without a delta."""
        extra = [c for c in self.columns if c not in UNIT_COLUMNS and c not in INTERVAL_COLUMNS]
        deltas = [c for c in extra if c.startswith("delta_")]
        plain = [c for c in extra if not c.startswith("delta_") and c != "sensitivity" and f"delta_{c}" not in extra]
        return ["sensitivity"] * ("sensitivity" in extra) + deltas + plain


def _number(text):
    """A CSV cell as an int or float where it is one (empty and NaN cells as None), else the text."""
    if text is None or not text.strip():
        return None
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        return None if isinstance(value, float) and math.isnan(value) else value
    return text


def _numbers(rows: list[dict] | None) -> list[dict] | None:
    """CSV rows with their cells as numbers where they are ones."""
    return None if rows is None else [{key: _number(value) for key, value in row.items()} for row in rows]


def _checked(path: Path, columns: list[str], rows: list[dict] | None, text: tuple[str, ...]) -> list[dict] | None:
    """`rows` with numbers for cells; a cell that should be a number and is not is refused, naming its line."""
    rows = _numbers(rows)
    for line, row in enumerate(rows or [], start=2):
        for column in columns:
            value = row.get(column)
            if column not in text and isinstance(value, str):
                raise PrunekitError(f"{path} line {line}: {column} {value!r} is not a number: the file is garbled; "
                                    "make it again, then make the report again.")
    return rows


def _prompts(images: Path) -> list[str] | None:
    prompts = read_json(images / "prompts.json", list)
    if prompts is not None:
        return [str(p) for p in prompts]
    baseline = images / "baseline"
    count = len([p for p in baseline.glob("*.png") if p.stem.isdigit()]) if baseline.is_dir() else 0
    return [f"prompt {i}" for i in range(count)] if count else None


def _teacher(name: str | None, fingerprint_expected: str | None) -> tuple[Teacher | None, str | None]:
    """The teacher of model `name` with its costs (no weights needed), or None and why not."""
    from prunekit.costs import denoiser_costs
    from prunekit.graph import all_units, enumerate_units
    from prunekit.units import top_level
    from prunekit.models import fingerprint, resolve_model

    if not name:
        return None, None
    try:
        model = resolve_model(name)
        config, tokens = model.config, model.tokens
    except PrunekitError as error:
        return None, f"the teacher's costs are not shown: {error}"
    note = None
    if fingerprint_expected and fingerprint(config) != fingerprint_expected:
        note = (f"the U-Net config of {name} now differs from the one this run used ({fingerprint_expected[:19]}): "
                "costs and drawings below are the current config's.")
    units = top_level(enumerate_units(config, "block", tokens))
    return Teacher(name, config, units, all_units(config, tokens), denoiser_costs(config, tokens), tokens), note


def read_run(path: Path) -> Run:
    """Everything the report shows from run directory `path`."""
    if not path.is_dir():
        raise PrunekitError(f"{path} is not a directory: give a run directory (runs/NAME).")
    if not any((path / name).exists() for name in FILES):
        raise PrunekitError(f"{path} holds none of {', '.join(FILES)}: is it a run directory?")
    run = RunDir(path)
    info = run.record()
    columns, units = run.table_rows()
    plan = Plan.load(run.plan_path) if run.plan_path.is_file() else None
    _, pareto = read_csv(run.pareto_path, PARETO_COLUMNS)
    log_columns, logs = read_csv(run.distill / "logs.csv", ("step",))
    name = info.model_name if info else (plan.model_name if plan else None)
    expected = info.fingerprint if info else (plan.unet_fingerprint if plan else None)
    teacher, note = _teacher(name, expected)
    return Run(path, info, columns, _checked(run.table_path, columns, units, ("unit", "kind", "stage", "init")) or [],
               _prompts(run.images), plan, _checked(run.pareto_path, list(PARETO_COLUMNS), pareto, ("remove", "is_preset")),
               log_columns, _checked(run.distill / "logs.csv", log_columns, logs, ()),
               read_json(run.distill / "eval.json", dict), comparison.read(run.comparison_path),
               _compared(run.compare), name, teacher, note)


def _compared(folder: Path) -> dict[str, Path]:
    """compare/NAME/distill of each other student that was distilled in the run, by NAME."""
    found = sorted(folder.glob("*/distill")) if folder.is_dir() else []
    return {path.parent.name: path for path in found if path.is_dir()}
