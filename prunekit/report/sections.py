"""What the report shows: the contents of a run directory turned into the template's sections.

`context(run)` gives the template one entry per section (None where the run lacks its files), the header's
key numbers and the navigation. Numbers are formatted here; escaping is left to jinja2.
"""
from __future__ import annotations

import base64
import io
import json
from datetime import datetime, timezone
from pathlib import Path

from prunekit import comparison
from prunekit.costs import human
from prunekit.distill import final_student
from prunekit.evaluate import headline
from prunekit.units import Removed
from prunekit.plan import PRESETS
from prunekit.report import plots
from prunekit.report.diagram import diagram as draw
from prunekit.report.rundir import Run
from prunekit.rundir import read_json

MAX_PROMPTS = 4  # image-grid columns
HIGHER_IS_BETTER = ("clip_score", "psnr", "ssim", "attr_", "attribute_accuracy")  # metrics where larger is better
# the verdict's flag: the worst share of the teacher's quality the student keeps, below which it is raised
FLAGS = ((0.5, "red", "lost most of the teacher's quality"), (0.9, "amber", "lost part of the teacher's quality"))
STUDENT_IMAGES = 256  # pixels a side at most, for the teacher / student grid


# -- formatting ---------------------------------------------------------------------------------------------

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
        rows.append({"stage": stage, "params": human(p), "params_pct": f"{100 * p / total.params:.1f}%",
                     "macs": human(m), "macs_pct": f"{100 * m / total.macs:.1f}%"})
    inside_params, inside_macs = sum(u.params for u in units), sum(u.macs for u in units)
    return {"figures": plots.stage_costs(stages, kinds, params, macs), "rows": rows,
            "params": human(total.params), "macs": human(total.macs), "full_macs": human(total.full_macs),
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
        saved = [human(r["params"]) + (f"  {100 * r['params'] / total:.1f}%" if total else "")
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


def _image_uri(run: Run, path: Path, size: int | None = None) -> str | None:
    """The image at `path` as a data URI (shrunk to at most `size` pixels a side if given), None if it is absent
    or outside the run directory."""
    if not path.is_file() or not _within(run, path):
        return None
    data = path.read_bytes()
    if size is not None:
        from PIL import Image

        with Image.open(path) as image:
            if max(image.size) > size:
                image.thumbnail((size, size))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


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
    return _cell(value, human(value) if _is_number(value) else "")


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


def _measured_student(run: Run):
    """The costs of the run's student, counted from the distilled student's config where it was saved (else the
    plan's), at the teacher's text length (else the plan's); the config's source; that length."""
    from prunekit.costs import denoiser_costs
    from prunekit.families import family_of

    plan = run.plan
    source = f"distill/student/{family_of(plan.student_config).folder}/config.json"
    saved = read_json(run.path / source, dict)
    tokens = run.teacher.tokens if run.teacher else plan.predicted.get("tokens")
    costs = denoiser_costs(saved or plan.student_config, tokens)
    return costs, source if saved else "plan.json's student config", tokens


def _plan_section(run: Run) -> dict | None:
    plan = run.plan
    if plan is None:
        return None
    predicted = plan.predicted
    measured, source, tokens = _measured_student(run)
    teacher = run.teacher.costs if run.teacher else None
    compare = []
    at = f" at {tokens} text tokens" if tokens else ""
    for key, label in (("params", "parameters"), ("macs", f"MACs per step{at}"),
                       ("full_macs", "full MACs (with attention)")):
        value = getattr(measured, key)
        fraction = f" ({value / getattr(teacher, key):.1%})" if teacher else ""
        guess = predicted.get(key)
        guess_fraction = predicted.get(f"{key}_fraction")
        compare.append({"label": label,
                        "predicted": (human(guess) if _is_number(guess) else "—")
                        + (f" ({guess_fraction:.1%})" if _is_number(guess_fraction) else ""),
                        "measured": human(value) + fraction})
    shown = {"params", "macs", "full_macs", "params_fraction", "macs_fraction", "full_macs_fraction",
             "teacher_params", "teacher_macs", "tokens"}
    quality = _quality_change(run.evaluation)
    for key, value in predicted.items():
        if key not in shown:
            label = f"loss: {_loss_meaning(run)}" if key == "loss" else key
            compare.append({"label": label, "predicted": _text(value),
                            "measured": f"before distillation: {quality}" if key == "loss" and quality else "—"})
    diagram = None
    if run.teacher is not None:
        diagram = draw(run.teacher.config, run.teacher.units, _removed(run))
    return {"method": plan.method, "budget": _pairs(plan.budget), "remove": plan.remove, "compare": compare,
            "student_source": source, "diagram": diagram}


def _loss_meaning(run: Run) -> str:
    """What the plan's predicted loss measures (the planner records it), else what the sweep's rule is."""
    from prunekit.sensitivity.settings import explain

    planner = run.plan.provenance.get("planner", {}) if run.plan is not None else {}
    if isinstance(planner.get("loss"), str):
        return planner["loss"]
    return f"the planner's objective over {explain(run.info.sensitivity if run.info else None)}"


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
    """What each preset that fits this teacher removes from it."""
    from prunekit.plan import preset_remove, presets_for

    if run.teacher is None:
        return {}
    config = run.teacher.config
    return {name: frozenset(preset_remove(name, config)) for name in presets_for(config)}


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
    planner = run.plan.provenance.get("planner", {}) if run.plan is not None else {}
    searched = ""
    if _is_number(planner.get("trials")):
        distinct = f", {planner['distinct']} distinct plans" if _is_number(planner.get("distinct")) else ""
        searched = f" of {planner['trials']} trials{distinct} ({planner.get('sampler', 'Optuna')})"
    plans = len([p for p in points if not _preset_name(p, presets_known)])
    return {"figures": plots.pareto(points, front, presets, chosen, "predicted loss"), "count": plans,
            "searched": searched, "front": table, "presets": sorted(presets), "loss": _loss_meaning(run)}


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
    section = {"figures": [], "summary": [], "eval_columns": [], "eval_rows": []}
    if run.logs:
        rows = [r for r in run.logs if _is_number(r.get("step"))]
        losses = {c: [r.get(c) if _is_number(r.get(c)) else None for r in rows]
                  for c in run.log_columns if c.startswith("loss")}
        lr = [r.get("lr") for r in rows] if rows and all(_is_number(r.get("lr")) for r in rows) else None
        constant = lr is not None and max(lr) == min(lr)
        if rows and losses:
            section["figures"] = plots.distill_curves([r["step"] for r in rows], losses, None if constant else lr)
            last = rows[-1]
            section["summary"] = [("steps", _text(last["step"]))] + [
                (f"final {c}", _text(last[c])) for c in losses if _is_number(last.get(c))]
            if constant:
                section["summary"].append(("learning rate (constant)", _text(lr[0])))
            if _is_number(last.get("seconds")):
                section["summary"].append(("seconds (last row)", _text(last["seconds"])))
    if run.evaluation:
        names = [k for k in ("teacher", "student_before", "student_after", "student_after_ema")
                 if isinstance(run.evaluation.get(k), dict)]
        final = final_student(run.evaluation)
        tables = {k: _flatten(run.evaluation[k]) for k in names}
        metrics = list(dict.fromkeys(m for k in names for m in tables[k]))
        shares = "teacher" in names and final is not None
        section["eval_columns"] = [k.replace("_", " ") for k in names] + [f"{final.replace('_', ' ')} / teacher"] * shares
        for metric in metrics:
            values = [tables[k].get(metric) for k in names]
            cells = [_text(v) if v is not None else "—" for v in values]
            if shares:
                teacher, after = tables["teacher"].get(metric), tables[final].get(metric)
                quality = _higher_is_better(metric) and metric != "clip_score_real"  # the real images': constant
                cells.append(f"{after / teacher:.0%}" if quality and _is_number(after) and _is_number(teacher)
                             and teacher else "—")
            section["eval_rows"].append({"metric": metric, "cells": cells})
    return section


def _key_numbers(run: Run) -> list[dict]:
    """The header's cards of a run without a plan: the teacher and the sweep, where known."""
    keys = []
    if run.teacher:
        c = run.teacher.costs
        keys.append({"label": "teacher U-Net", "value": f"{human(c.params)} params",
                     "note": f"{human(c.macs)} MACs / step"})
    ranking = _ranking(run)
    if ranking:
        keys.append({"label": "units measured", "value": str(len(run.units)),
                     "note": f"safest to remove: {ranking[-1]['unit']} · most harmful: {ranking[0]['unit']}"})
    return keys


def _student_costs(run: Run) -> list[dict]:
    """The verdict's cost cards: parameters and MACs the student keeps (counted from its config), and its latency
    (timed by the distillation, else predicted by the planner)."""
    measured = _measured_student(run)[0]
    teacher = run.teacher.costs if run.teacher else None
    cards = []
    for key, label in (("params", "parameters"), ("macs", "MACs per step")):
        value = getattr(measured, key)
        note = f"{value / getattr(teacher, key):.0%} of the teacher's {human(getattr(teacher, key))}" if teacher else ""
        cards.append({"label": label, "value": human(value), "note": note})
    timed = (run.evaluation or {}).get("latency")
    predicted = run.plan.predicted
    if isinstance(timed, dict) and all(_is_number(timed.get(k)) for k in ("student_ms", "teacher_ms", "speedup")):
        cards.append({"label": "U-Net step latency", "value": f"{timed['student_ms']:.3g} ms",
                      "note": f"{timed['speedup']:.2f}× faster than the teacher's {timed['teacher_ms']:.3g} ms "
                              f"({timed.get('device')}, {timed.get('timing')}, batch {timed.get('batch')})"})
    elif _is_number(predicted.get("latency_ms")) and _is_number(predicted.get("latency_fraction")):
        cards.append({"label": "U-Net step latency", "value": f"{predicted['latency_ms']:.3g} ms",
                      "note": f"{1 / predicted['latency_fraction']:.2f}× faster than the teacher, as the planner "
                              "timed it"})
    else:
        cards.append({"label": "U-Net step latency", "value": "not timed",
                      "note": "prunekit distill times teacher and student"})
    return cards


def _flag(shares: dict[str, float]) -> tuple[str, str]:
    """The verdict's colour and words for the worst share of the teacher's quality that the student keeps."""
    worst = min(shares.values())
    for bound, colour, words in FLAGS:
        if worst < bound:
            return colour, words
    return "green", "keeps the teacher's quality"


def _student_quality(run: Run) -> dict | None:
    """The student's headline numbers against the teacher's, before and after distillation, and the flag."""
    evaluation = run.evaluation or {}
    if not isinstance(evaluation.get("teacher"), dict):
        return None
    final = final_student(evaluation)
    judged = final or ("student_before" if isinstance(evaluation.get("student_before"), dict) else None)
    if judged is None:
        return None
    teacher = headline(evaluation["teacher"])
    before = headline(evaluation["student_before"]) if isinstance(evaluation.get("student_before"), dict) else {}
    after = headline(evaluation[judged])
    shares = {m: after[m] / teacher[m] if teacher[m] else 1.0 for m in teacher if _is_number(after.get(m))}
    colour, words = _flag(shares)
    rows = [{"metric": m, "teacher": _text(teacher[m]), "before": _text(before[m]) if m in before else "—",
             "after": _text(after[m]), "share": f"{shares[m]:.0%}"} for m in shares]
    worst = min(shares, key=shares.get)
    retrained = final is not None
    sentence = (f"The student {words}" + ("" if retrained else " and is not retrained yet") +
                f": {worst} {after[worst]:.3g} against the teacher's {teacher[worst]:.3g} ({shares[worst]:.0%})"
                + (f", on {evaluation.get('settings', {}).get('num_prompts', '?')} evaluation prompts." if retrained
                   else "."))
    label = {"student_after_ema": "after (EMA)", "student_after": "after", "student_before": "before"}[judged]
    return {"flag": colour, "sentence": sentence, "rows": rows, "after_label": label}


def _versus(mine: dict, other: dict, metrics: list[str]) -> str:
    """How the plan's student stands against another on each metric, as words."""
    parts = []
    for metric in metrics:
        gap, needed = comparison.margin(mine, other, metric)
        if int(mine["seeds"]) < 2 or int(other["seeds"]) < 2:
            verdict = "one seed: no spread measured"
        elif abs(gap) > needed:
            verdict = "beats it" if gap > 0 else "loses to it"
        else:
            verdict = f"tied: within 2 sd = {needed:.2g}"
        parts.append(f"{metric} {gap:+.3g} ({verdict})")
    return "; ".join(parts)


def _rivals(run: Run) -> list[dict]:
    """The other students of comparison.csv at the plan's budget, each set against the plan's student."""
    if not run.comparison or run.plan is None:
        return []
    mine_units = " ".join(run.plan.remove)
    mine = next((row for row in run.comparison if row["remove"] == mine_units), None)
    if mine is None:
        return []
    metrics = comparison.metrics(run.comparison)
    return [{"candidate": row["candidate"], "scores": _mean_sd(row, metrics), "versus": _versus(mine, row, metrics)}
            for row in run.comparison if row["budget"] == mine["budget"] and row is not mine]


def _mean_sd(row: dict, metrics: list[str]) -> str:
    return ", ".join(f"{m} {row[f'{m}_mean']:.3g}" + (f" ± {row[f'{m}_sd']:.2g}" if row["seeds"] > 1 else "")
                     for m in metrics)


def _verdict(run: Run) -> dict | None:
    """The first screen: what the plan removes and keeps, how fast its student is, and what quality it kept
    against the teacher and against the other students retrained the same way."""
    if run.plan is None:
        return None
    plan = run.plan
    budget = ", ".join(f"{key} ≤ {_text(value)}" for key, value in plan.budget.items()) if plan.budget else "a preset"
    objective = plan.provenance.get("planner", {}).get("objective")
    how = f"{plan.method} plan" + (f", {objective} objective" if objective else "")
    return {"plan": f"{how}: removes {len(plan.remove)} units, budget {budget}", "costs": _student_costs(run),
            "quality": _student_quality(run), "rivals": _rivals(run)}


def _students_section(run: Run) -> dict | None:
    """The teacher and the students, before and after distillation (and the other students retrained), on the
    same prompts and seeds."""
    images = run.path / "distill" / "images"
    prompts = read_json(images / "teacher" / "prompts.json", list)
    if not prompts:
        return None
    prompts = [str(p) for p in prompts[:MAX_PROMPTS]]
    final = final_student(run.evaluation) or "student_after"
    folders = [("teacher", images / "teacher"), ("student before distillation", images / "student_before"),
               ("student after" + (" (EMA)" if final.endswith("ema") else ""), images / final)]
    for name, folder in run.compared.items():
        other = final_student(read_json(folder / "eval.json", dict)) or "student_after"
        folders.append((f"{name} after", folder / "images" / other))
    rows = [{"label": label, "images": [_image_uri(run, where / f"{i}.png", STUDENT_IMAGES)
                                        for i in range(len(prompts))]}
            for label, where in folders if where.is_dir()]
    return {"prompts": prompts, "rows": rows}


def _comparison_section(run: Run) -> dict | None:
    """comparison.csv: every student retrained the same way, by budget, with the preset's verdict."""
    if not run.comparison:
        return None
    metrics = comparison.metrics(run.comparison)
    budgets = list(dict.fromkeys(row["budget"] for row in run.comparison))
    groups = []
    for budget in budgets:
        rows = [row for row in run.comparison if row["budget"] == budget]
        preset = next((row for row in rows if row["candidate"] in PRESETS), None)
        table = [{"candidate": row["candidate"], "params": f"{row['params_fraction']:.3f}",
                  "macs": f"{row['macs_fraction']:.3f}", "seeds": int(row["seeds"]),
                  "scores": [f"{row[f'{m}_mean']:.3g}" + (f" ± {row[f'{m}_sd']:.2g}" if row["seeds"] > 1 else "")
                             for m in metrics],
                  "versus": _versus(row, preset, metrics) if preset is not None and row is not preset else "",
                  "remove": row["remove"]} for row in rows]
        groups.append({"budget": budget, "rows": table, "preset": preset["candidate"] if preset else None})
    return {"metrics": metrics, "groups": groups}


SECTIONS = (("students", "Student"), ("comparison", "After retraining"), ("costs", "Teacher cost"),
            ("sensitivity", "Unit sensitivity"), ("images", "Ablations"), ("units", "Units"), ("plan", "Plan"),
            ("pareto", "Pareto front"), ("distill", "Distillation"), ("run", "The run"))


def context(run: Run) -> dict:
    """Everything the template needs to draw the report of `run`."""
    from prunekit import __version__

    sections = {"students": _students_section(run), "comparison": _comparison_section(run),
                "costs": _cost_section(run), "sensitivity": _sensitivity_section(run), "images": _images_section(run),
                "units": _units_section(run), "plan": _plan_section(run), "pareto": _pareto_section(run),
                "distill": _distill_section(run), "run": _run_section(run)}
    verdict = _verdict(run)
    return {"title": run.path.resolve().name, "model": run.model or "", "teacher_note": run.teacher_note or "",
            "verdict": verdict, "keys": [] if verdict else _key_numbers(run), "kind_colors": plots.KIND_COLORS,
            "nav": [(key, title) for key, title in SECTIONS if sections[key]], **sections,
            "version": __version__, "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
