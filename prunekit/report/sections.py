"""What the report shows: the contents of a run directory turned into the template's sections.

`context(run)` gives the template one entry per section (None where the run lacks its files), the header's
key numbers and the navigation. Numbers are formatted here; escaping is left to jinja2.
"""
from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.report import plots
from prunekit.graph import Removed
from prunekit.plan import PRESETS
from prunekit.report.diagram import unet_diagram
from prunekit.report.rundir import Run
from prunekit.rundir import read_json

MAX_PROMPTS = 4  # image-grid columns
HIGHER_IS_BETTER = ("clip_score", "psnr", "ssim", "attr_")  # metric names (or prefixes) where larger is better


# -- formatting ---------------------------------------------------------------------------------------------

def _count(value) -> str:
    """A parameter or MAC count with a suffix that suits it: 859.52M, 338.83G."""
    divisor, suffix = plots.scale(value)
    return f"{value / divisor:,.2f}{suffix}"


def _text(value) -> str:
    """A value from a run file as short text: numbers to 4 significant digits, structures as JSON."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _pairs(mapping) -> list[tuple[str, str]]:
    return [(str(key), _text(value)) for key, value in mapping.items()] if isinstance(mapping, dict) else []


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value, text: str | None = None) -> dict:
    """A table cell: its text (empty for None) and, for numbers, the value the page's script sorts by."""
    if text is None:
        text = "" if value is None else _text(value)
    return {"text": text, "sort": value if _is_number(value) else None}


# -- sections -----------------------------------------------------------------------------------------------

def _run_section(run: Run) -> dict | None:
    info = run.info
    if info is None:
        return None
    return {"command": _text(info.command), "created": _text(info.created), "init": _text(info.init),
            "args": _pairs(info.args), "versions": _pairs(info.versions), "baseline": _pairs(info.baseline),
            "notes": [_text(note) for note in info.notes or []]}


def _cost_section(run: Run) -> dict | None:
    if run.teacher is None:
        return None
    units, total = run.teacher.units, run.teacher.costs
    stages = list(dict.fromkeys(u.stage for u in units))
    kinds = list(dict.fromkeys(u.kind for u in units))
    params = {k: [sum(u.params for u in units if u.stage == s and u.kind == k) for s in stages] for k in kinds}
    macs = {k: [sum(u.macs for u in units if u.stage == s and u.kind == k) for s in stages] for k in kinds}
    rows = []
    for i, stage in enumerate(stages):
        p, m = sum(v[i] for v in params.values()), sum(v[i] for v in macs.values())
        rows.append({"stage": stage, "params": _count(p), "params_pct": f"{100 * p / total.params:.1f}%",
                     "macs": _count(m), "macs_pct": f"{100 * m / total.macs:.1f}%"})
    inside_params, inside_macs = sum(u.params for u in units), sum(u.macs for u in units)
    return {"figure": plots.stage_costs(stages, kinds, params, macs), "rows": rows,
            "params": _count(total.params), "macs": _count(total.macs), "full_macs": _count(total.full_macs),
            "fixed_params": f"{100 * (1 - inside_params / total.params):.1f}%",
            "fixed_macs": f"{100 * (1 - inside_macs / total.macs):.1f}%"}


def _higher_is_better(metric: str) -> bool:
    return metric.startswith(HIGHER_IS_BETTER)


def _harm(column: str, value: float) -> float:
    """How much worse removing a unit made things by `column` (larger = more harmful)."""
    if column == "sensitivity":
        return value
    return -value if _higher_is_better(column.removeprefix("delta_")) else value


def _axis_label(column: str) -> str:
    if column == "sensitivity":
        return "sensitivity: the planner's number (larger = more harmful to remove)"
    metric = column.removeprefix("delta_")
    better = "higher" if _higher_is_better(metric) else "lower"
    if column.startswith("delta_"):
        return f"Δ {metric} (ablated − baseline; {better} is better)"
    return f"{metric} of the ablated model ({better} is better)"


def _by_harm(run: Run, column: str) -> list[dict]:
    """The units of sensitivity.csv with a value in `column`, most harmful to remove first."""
    rows = [row for row in run.units if _is_number(row.get(column))]
    return sorted(rows, key=lambda row: -_harm(column, row[column]))


def _ranking(run: Run) -> list[dict]:
    """The units of sensitivity.csv by the first metric charted (empty without one)."""
    return _by_harm(run, run.metrics[0]) if run.metrics else []


def _sensitivity_section(run: Run) -> dict | None:
    if not run.metrics:
        return None
    total = run.teacher.costs.params if run.teacher else None
    charts = []
    for column in run.metrics:
        rows = _by_harm(run, column)
        if not rows:
            continue
        saved = [_count(r["params"]) + (f"  {100 * r['params'] / total:.1f}%" if total else "")
                 if _is_number(r.get("params")) else "" for r in rows]
        errors = None
        if column == "sensitivity" and all(_is_number(r.get("sensitivity_low")) for r in rows):
            errors = [(r[column] - r["sensitivity_low"], r["sensitivity_high"] - r[column]) for r in rows]
        figure = plots.sensitivity_bars([str(r["unit"]) for r in rows], [str(r["kind"]) for r in rows],
                                        [r[column] for r in rows], saved, _axis_label(column), errors)
        charts.append({"column": column, "label": _axis_label(column), "figure": figure})
    return {"charts": charts, "count": len(run.units)} if charts else None


def _within(run: Run, path: Path) -> bool:
    """Whether `path`, links followed, lies inside the run directory: nothing outside it is embedded."""
    return path.resolve().is_relative_to(run.path.resolve())


def _image_uri(run: Run, path: Path) -> str | None:
    if not path.is_file() or not _within(run, path):
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _images_section(run: Run) -> dict | None:
    if run.prompts is None:
        return None
    folder = run.path / "images"
    prompts = run.prompts[:MAX_PROMPTS]
    rank = {row["unit"]: i for i, row in enumerate(_ranking(run))}
    units = folder / "units"
    names = sorted((d.name for d in units.iterdir() if d.is_dir() and _within(run, d)) if units.is_dir() else [],
                   key=lambda name: (rank.get(name, len(rank)), name))
    rows = [{"label": label, "images": [_image_uri(run, where / f"{i}.png") for i in range(len(prompts))]}
            for label, where in [("baseline", folder / "baseline")] + [(name, units / name) for name in names]]
    return {"prompts": prompts, "rows": rows, "more": len(run.prompts) - len(prompts), "ranked": bool(rank)}


def _removed(run: Run) -> Removed:
    """What the plan removes (nothing without a plan or a teacher config)."""
    if run.plan is None or run.teacher is None:
        return Removed(frozenset())
    return Removed.of(run.teacher.all_units[name] for name in run.plan.remove if name in run.teacher.all_units)


def _plan_state(run: Run, name: str, removed: Removed) -> str:
    """'removed', 'partly' or '' for unit `name` under the plan (by module paths when the teacher is known)."""
    if run.teacher is not None and name in run.teacher.all_units and removed.paths:
        state = removed.state(run.teacher.all_units[name])
        return {"removed": "removed", "partial": "partly", "kept": ""}[state]
    return "removed" if run.plan is not None and name in run.plan.remove else ""


def _count_cell(value) -> dict:
    return _cell(value, _count(value) if _is_number(value) else "")


def _units_section(run: Run) -> dict | None:
    """The sortable table: sensitivity.csv's units (else the teacher's), their costs and scores, the plan's verdict."""
    if run.units:
        rows = run.units
        scores = ["sensitivity"] * ("sensitivity" in run.columns) + [c for c in run.columns if c.startswith("delta_")]
    elif run.teacher is not None:
        rows = [{"unit": u.name, "kind": u.kind, "stage": u.stage, "params": u.params, "macs": u.macs,
                 "full_macs": u.full_macs} for u in run.teacher.units]
        scores = []
    else:
        return None
    total = run.teacher.costs.params if run.teacher else None
    ties = _ties(run)
    columns = ["unit", "kind", "stage", "params"] + ["% params"] * bool(total) + ["MACs", "full MACs"]
    columns += [c.replace("delta_", "Δ ") for c in scores] + ["95% interval", "tied with"] * bool(ties)
    columns += ["seconds"] * bool(run.units)
    columns += ["plan"] * (run.plan is not None)
    removed = _removed(run)
    table = []
    for row in rows:
        params = row.get("params")
        cells = [_cell(row["unit"]), _cell(row.get("kind")), _cell(row.get("stage")), _count_cell(params)]
        if total:
            share = 100 * params / total if _is_number(params) else None
            cells.append(_cell(share, f"{share:.2f}" if share is not None else ""))
        cells += [_count_cell(row.get("macs")), _count_cell(row.get("full_macs"))]
        cells += [_cell(row.get(c)) for c in scores]
        if ties:
            low, high = row.get("sensitivity_low"), row.get("sensitivity_high")
            shown = f"[{_text(low)}, {_text(high)}]" if _is_number(low) and _is_number(high) else ""
            cells += [_cell(low, shown), _cell(", ".join(ties.get(str(row["unit"]), [])))]
        cells += [_cell(row.get("seconds"))] * bool(run.units)
        state = _plan_state(run, str(row["unit"]), removed)
        if run.plan is not None:
            cells.append(_cell(state))
        table.append({"cells": cells, "removed": state == "removed"})
    return {"columns": columns, "rows": table, "from_csv": bool(run.units)}


def _ties(run: Run) -> dict[str, list[str]]:
    """Each unit with an interval: the units whose intervals overlap its own in a run of the ranking
    (prunekit.sensitivity.intervals.tie_groups), which the planner cannot tell apart from it."""
    from prunekit.sensitivity.intervals import tie_groups

    rows = [r for r in run.units if all(_is_number(r.get(k)) for k in ("sensitivity", "sensitivity_low",
                                                                        "sensitivity_high"))]
    if not rows:
        return {}
    groups = tie_groups({r["unit"]: (r["sensitivity_low"], r["sensitivity_high"]) for r in rows},
                        {r["unit"]: r["sensitivity"] for r in rows})
    members: dict[int, list[str]] = {}
    for name, group in groups.items():
        members.setdefault(group, []).append(name)
    return {name: [other for other in members[group] if other != name] for name, group in groups.items()}


def _plan_section(run: Run) -> dict | None:
    from prunekit.costs import unet_costs

    plan = run.plan
    if plan is None:
        return None
    predicted = plan.predicted
    student_file = run.path / "distill" / "student" / "unet" / "config.json"
    measured = unet_costs(read_json(student_file, dict) or plan.student_config)
    teacher = run.teacher.costs if run.teacher else None
    compare = []
    for key, label in (("params", "parameters"), ("macs", "MACs per step"),
                       ("full_macs", "full MACs (with attention)")):
        value = getattr(measured, key)
        fraction = f" ({value / getattr(teacher, key):.1%})" if teacher else ""
        guess = predicted.get(key)
        guess_fraction = predicted.get(f"{key}_fraction")
        compare.append({"label": label,
                        "predicted": (_count(guess) if _is_number(guess) else "—")
                        + (f" ({guess_fraction:.1%})" if _is_number(guess_fraction) else ""),
                        "measured": _count(value) + fraction})
    shown = {"params", "macs", "full_macs", "params_fraction", "macs_fraction", "full_macs_fraction",
             "teacher_params", "teacher_macs"}
    quality = _quality_change(run.evaluation)
    for key, value in predicted.items():
        if key not in shown:
            compare.append({"label": key, "predicted": _text(value),
                            "measured": f"before distillation: {quality}" if key == "loss" and quality else "—"})
    diagram = None
    if run.teacher is not None:
        diagram = unet_diagram(run.teacher.units, _removed(run))
    source = "distill/student/unet/config.json" if student_file.is_file() else "plan.json's student config"
    return {"method": plan.method, "budget": _pairs(plan.budget), "remove": plan.remove, "compare": compare,
            "student_source": source, "diagram": diagram}


def _quality_change(evaluation: dict | None) -> str:
    """The measured change of each metric from teacher to student before distillation, as one line."""
    if not evaluation or "teacher" not in evaluation or "student_before" not in evaluation:
        return ""
    teacher, before = _flatten(evaluation["teacher"]), _flatten(evaluation["student_before"])
    return ", ".join(f"Δ{k} {before[k] - teacher[k]:+.3g}" for k in teacher
                     if _is_number(teacher[k]) and _is_number(before.get(k)))


def _front(points: list[dict], key: str) -> list[dict]:
    """The points no other point beats on both `key` (smaller is better) and loss, sorted by `key`."""
    front, best = [], float("inf")
    for point in sorted(points, key=lambda p: (p[key], p["loss"])):
        if point["loss"] < best:
            front.append(point)
            best = point["loss"]
    return front


def _preset_sets(run: Run) -> dict[str, frozenset]:
    """What each BK-SDM preset removes from this teacher (empty when the presets do not fit it)."""
    from prunekit.plan import preset_remove

    if run.teacher is None:
        return {}
    try:
        return {name: frozenset(preset_remove(name, run.teacher.config)) for name in PRESETS}
    except PrunekitError:
        return {}


def _preset_name(point: dict, presets: dict[str, frozenset]) -> str | None:
    """The preset a pareto.csv row is: its is_preset cell may name it, or be true and match a preset's units."""
    flag = point.get("is_preset")
    if isinstance(flag, str) and flag.lower() not in ("true", "false", ""):
        return flag
    if flag in (None, 0, "") or (isinstance(flag, str) and flag.lower() == "false"):
        return None
    return next((name for name, units in presets.items() if units == point["units"]), "preset")


def _pareto_section(run: Run) -> dict | None:
    if run.pareto is None:
        return None
    keys = ("params_fraction", "macs_fraction", "loss")
    points = [{**row, "units": frozenset(str(row.get("remove") or "").split())} for row in run.pareto
              if all(_is_number(row.get(k)) for k in keys)]
    if not points:
        return None
    presets_known = _preset_sets(run)
    presets = {}
    for point in points:
        name = _preset_name(point, presets_known)
        if name:
            presets.setdefault(name, point)
    chosen = None
    if run.plan is not None:
        mine = frozenset(run.plan.remove)
        chosen = next((p for p in points if p["units"] == mine), None)
        if chosen is None and all(_is_number(run.plan.predicted.get(k)) for k in keys):
            chosen = {k: run.plan.predicted[k] for k in keys}
    front = {k: _front(points, k) for k in ("params_fraction", "macs_fraction")}
    table = [{"params": f"{p['params_fraction']:.3f}", "macs": f"{p['macs_fraction']:.3f}", "loss": f"{p['loss']:.4g}",
              "count": len(p["units"]), "remove": " ".join(sorted(p["units"])),
              "preset": _preset_name(p, presets_known) or ""} for p in front["params_fraction"]]
    return {"figure": plots.pareto(points, front, presets, chosen), "count": len(points), "front": table,
            "presets": sorted(presets)}


def _flatten(values, prefix: str = "") -> dict:
    """Nested metric dicts as one level: {"attr": {"color": 1}} -> {"attr.color": 1}."""
    if not isinstance(values, dict):
        return {prefix or "value": values}
    flat = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(_flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


def _distill_section(run: Run) -> dict | None:
    if run.logs is None and run.evaluation is None:
        return None
    section = {"figure": None, "summary": [], "eval_columns": [], "eval_rows": []}
    if run.logs:
        rows = [r for r in run.logs if _is_number(r.get("step"))]
        losses = {c: [r.get(c) if _is_number(r.get(c)) else None for r in rows]
                  for c in run.log_columns if c.startswith("loss")}
        lr = [r.get("lr") for r in rows] if all(_is_number(r.get("lr")) for r in rows) else None
        if rows and losses:
            section["figure"] = plots.distill_curves([r["step"] for r in rows], losses, lr)
            last = rows[-1]
            section["summary"] = [("steps", _text(last["step"]))] + [
                (f"final {c}", _text(last[c])) for c in losses if _is_number(last.get(c))]
            if _is_number(last.get("seconds")):
                section["summary"].append(("seconds (last row)", _text(last["seconds"])))
    if run.evaluation:
        names = [k for k in ("teacher", "student_before", "student_after") if isinstance(run.evaluation.get(k), dict)]
        tables = {k: _flatten(run.evaluation[k]) for k in names}
        metrics = list(dict.fromkeys(m for k in names for m in tables[k]))
        section["eval_columns"] = [k.replace("_", " ") for k in names] + (["recovered"] * (len(names) == 3))
        for metric in metrics:
            values = [tables[k].get(metric) for k in names]
            cells = [_text(v) if v is not None else "—" for v in values]
            if len(names) == 3:
                teacher, before, after = values
                gap = teacher - before if all(_is_number(v) for v in values) else 0
                cells.append(f"{(after - before) / gap:.0%}" if gap else "—")
            section["eval_rows"].append({"metric": metric, "cells": cells})
    return section


HEADLINE_METRICS = ("clip_score", "attribute_accuracy.all")  # the student's card shows the first one present


def _key_numbers(run: Run) -> list[dict]:
    """The header's cards: the teacher, the sweep, the plan and the distilled student, where known."""
    keys = []
    if run.teacher:
        c = run.teacher.costs
        keys.append({"label": "teacher U-Net", "value": f"{_count(c.params)} params",
                     "note": f"{_count(c.macs)} MACs / step"})
    ranking = _ranking(run)
    if ranking:
        keys.append({"label": "units measured", "value": str(len(run.units)),
                     "note": f"safest to remove: {ranking[-1]['unit']} · most harmful: {ranking[0]['unit']}"})
    if run.plan and _is_number(run.plan.predicted.get("params_fraction")):
        p = run.plan.predicted
        macs = f" · {p['macs_fraction']:.0%} MACs" if _is_number(p.get("macs_fraction")) else ""
        keys.append({"label": f"plan ({run.plan.method})", "value": f"{p['params_fraction']:.0%} params",
                     "note": f"removes {len(run.plan.remove)} units{macs}"})
    evaluation = run.evaluation or {}
    if isinstance(evaluation.get("student_after"), dict):
        after = _flatten(evaluation["student_after"])
        teacher = _flatten(evaluation.get("teacher") or {})
        numbers = [m for m in after if _is_number(after[m])]
        metric = next((m for m in HEADLINE_METRICS if m in numbers), numbers[0] if numbers else None)
        if metric:
            note = f"teacher {_text(teacher[metric])}" if _is_number(teacher.get(metric)) else "after distillation"
            keys.append({"label": f"student {metric}", "value": _text(after[metric]), "note": note})
    return keys


SECTIONS = (("run", "The run"), ("costs", "Teacher cost"), ("sensitivity", "Unit sensitivity"),
            ("images", "Images"), ("units", "Units"), ("plan", "Plan"), ("pareto", "Pareto front"),
            ("distill", "Distillation"))


def context(run: Run) -> dict:
    """Everything the template needs to draw the report of `run`."""
    from prunekit import __version__

    sections = {"run": _run_section(run), "costs": _cost_section(run), "sensitivity": _sensitivity_section(run),
                "images": _images_section(run), "units": _units_section(run), "plan": _plan_section(run),
                "pareto": _pareto_section(run), "distill": _distill_section(run)}
    return {"title": run.path.resolve().name, "model": run.model or "", "teacher_note": run.teacher_note or "",
            "keys": _key_numbers(run), "kind_colors": plots.KIND_COLORS,
            "nav": [(key, title) for key, title in SECTIONS if sections[key]], **sections,
            "version": __version__, "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
