"""A run directory as the report reads it: each file parsed and checked, None where it is absent.

The files and their columns are those of notes/run-directory.md. A file that is there but garbled raises
PrunekitError naming it, rather than leaving a section out silently.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from prunekit.costs import Costs
from prunekit.errors import PrunekitError
from prunekit.graph import Unit
from prunekit.plan import Plan

UNIT_COLUMNS = ("unit", "kind", "stage", "params", "macs", "full_macs", "seconds")
PARETO_COLUMNS = ("params_fraction", "macs_fraction", "loss", "remove", "is_preset")
FILES = ("run.json", "sensitivity.csv", "images/", "plan.json", "pareto.csv", "distill/logs.csv", "distill/eval.json")


@dataclass(frozen=True)
class Teacher:
    """The run's model: its U-Net config, block-level units (no transformer layers), every unit by name, costs."""

    name: str
    config: dict
    units: list[Unit]
    all_units: dict[str, Unit]
    costs: Costs


@dataclass(frozen=True)
class Run:
    """What one run directory holds; each field is None (or empty) where its file is absent."""

    path: Path
    info: dict | None  # run.json
    columns: list[str]  # sensitivity.csv's columns and rows
    units: list[dict]
    prompts: list[str] | None  # images/prompts.json (or "prompt i" for each baseline image)
    plan: Plan | None
    pareto: list[dict] | None
    log_columns: list[str]  # distill/logs.csv
    logs: list[dict] | None
    evaluation: dict | None  # distill/eval.json
    model: str | None
    teacher: Teacher | None
    teacher_note: str | None  # why the teacher's costs are missing or may not match the run

    @property
    def metrics(self) -> list[str]:
        """The sensitivity.csv columns to chart: `sensitivity`, each `delta_M`, and each M without a delta."""
        extra = [c for c in self.columns if c not in UNIT_COLUMNS]
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


def read_json(path: Path, kind: type):
    """The parsed JSON file at `path` (None when absent), which must be a `kind`."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PrunekitError(f"cannot read {path} ({error}): fix or remove it, then make the report again.") from None
    if not isinstance(data, kind):
        raise PrunekitError(f"{path} holds a {type(data).__name__}, not a {kind.__name__}: fix or remove it, "
                            "then make the report again.")
    return data


def read_csv(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[dict] | None]:
    """The columns and rows (cells as numbers where they are) of the CSV file at `path`; None rows when absent."""
    if not path.is_file():
        return [], None
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            rows = [{key: _number(value) for key, value in row.items() if key is not None} for row in reader]
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PrunekitError(f"cannot read {path} ({error}): fix or remove it, then make the report again.") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise PrunekitError(f"{path} lacks the column(s) {', '.join(missing)}: make it again with this prunekit.")
    return columns, rows


def _prompts(images: Path) -> list[str] | None:
    prompts = read_json(images / "prompts.json", list)
    if prompts is not None:
        return [str(p) for p in prompts]
    baseline = images / "baseline"
    count = len([p for p in baseline.glob("*.png") if p.stem.isdigit()]) if baseline.is_dir() else 0
    return [f"prompt {i}" for i in range(count)] if count else None


def _teacher(name: str | None, fingerprint_expected: str | None) -> tuple[Teacher | None, str | None]:
    """The teacher of model `name` with its costs (no weights needed), or None and why not."""
    from prunekit.costs import unet_costs
    from prunekit.graph import all_units, enumerate_units, top_level
    from prunekit.models import fingerprint, unet_config

    if not name:
        return None, None
    try:
        config = unet_config(name)
    except PrunekitError as error:
        return None, f"the teacher's costs are not shown: {error}"
    note = None
    if fingerprint_expected and fingerprint(config) != fingerprint_expected:
        note = (f"the U-Net config of {name} now differs from the one this run used ({fingerprint_expected[:19]}): "
                "costs and drawings below are the current config's.")
    units = top_level(enumerate_units(config, "block"))
    return Teacher(name, config, units, all_units(config), unet_costs(config)), note


def read_run(path: Path) -> Run:
    """Everything the report shows from run directory `path`."""
    if not path.is_dir():
        raise PrunekitError(f"{path} is not a directory: give a run directory (runs/NAME).")
    if not any((path / name).exists() for name in FILES):
        raise PrunekitError(f"{path} holds none of {', '.join(FILES)}: is it a run directory?")
    info = read_json(path / "run.json", dict)
    columns, units = read_csv(path / "sensitivity.csv", UNIT_COLUMNS)
    plan = Plan.load(path / "plan.json") if (path / "plan.json").is_file() else None
    _, pareto = read_csv(path / "pareto.csv", PARETO_COLUMNS)
    log_columns, logs = read_csv(path / "distill" / "logs.csv", ("step",))
    model = info.get("model") if info and isinstance(info.get("model"), dict) else {}
    name = model.get("name") or (plan.model_name if plan else None)
    expected = model.get("unet_fingerprint") or (plan.unet_fingerprint if plan else None)
    teacher, note = _teacher(name, expected)
    return Run(path, info, columns, units or [], _prompts(path / "images"), plan, pareto, log_columns, logs,
               read_json(path / "distill" / "eval.json", dict), name, teacher, note)
