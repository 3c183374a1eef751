"""`plan(...)`: a plan under a budget, made by greedy or Optuna over a plan space (`prunekit plan --budget`).

The budget caps the student's parameters, MACs or measured latency as a fraction of the teacher's U-Net;
the loss is the additive sensitivity of a sensitivity run, or a measured one. The plan records its
predicted cost and loss, how it was found, and the BK-SDM presets' cost and loss beside it (`summary`).
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.plan import PRESETS, Plan, make_plan, preset_remove, provenance
from prunekit.planner.cache import Cache
from prunekit.planner.objective import OBJECTIVES, Additive, Measured, check_run, load_sensitivity
from prunekit.planner.space import COST_METRICS, SPACES, make_space

METRICS = COST_METRICS + ("latency",)
METHODS = ("greedy", "optuna")
PARETO_COLUMNS = ("params_fraction", "macs_fraction", "loss", "remove", "is_preset")
CACHE_FILE = "planner_cache.db"  # measured losses and latencies, in the run directory


def output_path(out=None, sensitivity=None) -> Path:
    """Where the plan goes: `out`, else the sensitivity run's plan.json, else ./plan.json."""
    if out is not None:
        return Path(out)
    return Path(sensitivity) / "plan.json" if sensitivity else Path("plan.json")


def _check_choices(budget, metric, objective, method, space, trials, pareto, storage) -> None:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise PrunekitError(f"--budget {budget} is outside (0, 1]: give the fraction of the teacher's cost "
                            "the student may keep, e.g. 0.5.")
    for option, value, choices in (("--metric", metric, METRICS), ("--objective", objective, OBJECTIVES),
                                   ("--method", method, METHODS), ("--space", space, SPACES)):
        if value not in choices:
            raise PrunekitError(f"unknown {option} {value!r}: use one of {', '.join(choices)}.")
    if method != "optuna" and (pareto or storage):
        raise PrunekitError("--pareto and --storage belong to the Optuna search: add --method optuna.")
    if trials < 1:
        raise PrunekitError(f"--trials {trials}: give at least 1.")


def _free_plan(model: str, config: dict, space, remove: list[str], method: str, budget: dict, **predicted) -> Plan:
    """A plan of the free space: the teacher's architecture, the removed units swapped for prunekit's
    stand-ins, so its costs are the teacher's less the removed units' (the stand-ins hold no parameters)."""
    from prunekit.costs import unet_costs
    from prunekit.models import build_unet_meta, canonical_config, fingerprint

    teacher = unet_costs(config)
    costs = {}
    for metric in ("params", "macs", "full_macs"):
        total = getattr(teacher, metric)
        costs[metric] = total - sum(getattr(space.units[name], metric) for name in remove)
        costs[f"{metric}_fraction"] = costs[metric] / total
    weight_map = {name: name for name, module in build_unet_meta(config).named_children() if module.state_dict()}
    return Plan(model, fingerprint(config), method, list(remove), canonical_config(config), weight_map, "free",
                budget, {**costs, "teacher_params": teacher.params, "teacher_macs": teacher.macs, **predicted},
                provenance())


def _free_granularity(config: dict, loss_of: Additive) -> str:
    """The free space's units for an additive objective: blocks where the run scores every block (as a
    block-granularity sweep does), else pairs (as a pair-granularity sweep does)."""
    from prunekit.graph import enumerate_units, top_level

    try:
        loss_of([u.name for u in top_level(enumerate_units(config, "block", costs=False))])
    except PrunekitError:
        return "pair"
    return "block"


def _presets(config: dict, space, objective, meter) -> dict:
    """The BK-SDM presets that fit this U-Net: their cost fractions and loss (None where the objective
    cannot score them). Their parameters and MACs add up exactly over their units."""
    rows = {}
    for name in PRESETS:
        try:
            remove = preset_remove(name, config)
        except PrunekitError:
            continue
        row = {f"{metric}_fraction": space.additive_fraction(remove, metric) for metric in COST_METRICS}
        if meter is not None:
            row["latency_fraction"] = meter.fraction(remove)
        try:
            row["loss"] = objective(remove)
        except PrunekitError:
            row["loss"] = None
        rows[name] = {**row, "remove": remove}
    return rows


def _study_name(space: str, metric: str, objective: str, budget: float, pareto: bool, seed: int, *keys) -> str:
    """The study a command searches: the same settings resume the same study (a pareto study serves any budget)."""
    digest = hashlib.sha256("|".join(map(str, keys)).encode()).hexdigest()[:10]
    goal = "pareto" if pareto else f"budget{budget:g}"
    return f"plan-{space}-{metric}-{objective}-{goal}-seed{seed}-{digest}"


def run_storage(run: Path):
    """The study's default home, runs/NAME/optuna.db: SQLite in WAL mode with normal syncing, since Optuna
    commits every sampled parameter and a disk sync per commit would make the search several times slower."""
    import sqlite3

    import optuna

    path = (run / "optuna.db").resolve()

    def connect():
        connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"creator": connect})


def _write_pareto(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PARETO_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _objective(config: dict, run: Path | None, objective: str, space: str, measure):
    """The loss of a candidate, the plan space, and what identifies both (for the study's name)."""
    from prunekit.graph import all_units
    from prunekit.models import fingerprint

    if objective == "measured":
        if measure is None:
            raise PrunekitError("the measured objective needs a measuring function: pass measure=... to "
                                "prunekit.planner.plan (prunekit.planner.measured.measurer builds one).")
        if run is not None and (run / "run.json").is_file():
            check_run(run, config)
        loss_of = Measured(measure, Cache(run / CACHE_FILE if run is not None else None, "measured"))
        return loss_of, make_space(space, config), [fingerprint(config), "measured", loss_of.identity]
    if run is None:
        raise PrunekitError("the additive objective needs --sensitivity runs/NAME (a sensitivity run of this "
                            "model): run the sensitivity sweep first, or plan with --objective measured.")
    table = load_sensitivity(run, config)
    loss_of = Additive(table, all_units(config, costs=False))
    plan_space = make_space(space, config, _free_granularity(config, loss_of) if space == "free" else "block")
    loss_of(plan_space.removable())  # every unit the space may remove has a sensitivity, or this says which not
    return loss_of, plan_space, [fingerprint(config), table.digest]


def _optuna(plan_space, loss_of, cost, loss, budget: float, metric: str, run: Path | None, storage, name: str,
            trials: int, seed: int, pareto: bool, progress: bool):
    """Search with Optuna: the best trial within the budget, the study, and how it was searched."""
    from prunekit.planner.search import best_trial, search

    exact = isinstance(loss_of, Additive) and metric in COST_METRICS and plan_space.standard
    searched = plan_space.undominated(metric, loss_of.unit) if exact else plan_space
    if storage is None and run is not None:
        storage = run_storage(run)
    study = search(searched, cost, loss, budget, trials=trials, storage=storage, study_name=name, seed=seed,
                   pareto=pareto, cheap=loss_of.cheap, progress=progress)
    best = best_trial(study, budget)
    where = getattr(storage, "url", storage)  # an RDBStorage keeps its URL
    info = {"sampler": type(study.sampler).__name__, "study": name, "storage": str(where or "in memory"),
            "trials": len(study.trials), "space_size": searched.size(), "best_trial": best.number}
    return best, study, info


def plan(model: str = "sd-v1-4", budget: float = 0.5, metric: str = "params", sensitivity=None,
         objective: str = "additive", method: str = "greedy", space: str = "diffusers", trials: int = 200,
         storage: str | None = None, pareto: bool = False, seed: int = 0, out=None, device: str = "cpu",
         measure=None, progress: bool = True) -> Plan:
    """Plan the student of `model` whose `metric` is at most `budget` of the teacher's, with least loss.

    `sensitivity` is a sensitivity run directory (runs/NAME): the additive objective reads its
    sensitivity.csv; the Optuna study (runs/NAME/optuna.db unless `storage` gives an RDB URL) and the
    caches of measured losses and latencies live there. `measure(remove) -> float` scores a candidate for
    the measured objective. Writes plan.json to `output_path(out, sensitivity)` (and pareto.csv beside it
    with `pareto`) and returns the Plan.
    """
    from prunekit.models import unet_config
    from prunekit.planner.greedy import greedy
    from prunekit.planner.latency import LatencyMeter
    from prunekit.planner.search import front

    _check_choices(budget, metric, objective, method, space, trials, pareto, storage)
    config = unet_config(model)
    run = Path(sensitivity) if sensitivity else None
    if run is not None and not run.is_dir():
        raise PrunekitError(f"the sensitivity run {run} does not exist: check the path.")
    loss_of, plan_space, keys = _objective(config, run, objective, space, measure)
    meter = None
    if metric == "latency":
        meter = LatencyMeter(config, device, Cache(run / CACHE_FILE if run is not None else None, "latency"))
        keys.append(meter.prefix)

    def cost(state) -> float:
        if meter is not None:
            return meter.fraction(plan_space.remove(state), plan_space.standard)
        return plan_space.fraction(state, metric)

    def loss(state) -> float:
        return loss_of(plan_space.remove(state))

    least = cost(plan_space.smallest("params" if metric == "latency" else metric))
    if least > budget:
        hint = " or plan with --space free" if space == "diffusers" else ""
        raise PrunekitError(f"no plan in the {space} space keeps {metric} within {budget} of the teacher's: the "
                            f"smallest reachable is {least:.4f}; raise --budget{hint}.")

    info = {"space": space, "objective": objective, "method": method}
    if method == "greedy":
        state = greedy(plan_space, cost, loss, budget)
        remove, loss_value, spent = plan_space.remove(state), loss(state), cost(state)
    else:
        name = _study_name(space, metric, objective, budget, pareto, seed, *keys)
        best, study, searched = _optuna(plan_space, loss_of, cost, loss, budget, metric, run, storage, name, trials,
                                        seed, pareto, progress)
        remove, loss_value, spent = best.user_attrs["plan"]["remove"], best.values[-1], best.user_attrs["plan"]["cost"]
        info.update(searched)

    predicted = {"loss": loss_value}
    if meter is not None:
        predicted.update(latency_fraction=spent, latency_ms=1000 * meter.seconds(remove, plan_space.standard))
        info["latency"] = meter.describe()
    budget_info = {"metric": metric, "fraction": budget}
    if plan_space.standard:
        result = make_plan(model, config, remove, method, budget_info, **predicted)
    else:
        result = _free_plan(model, config, plan_space, remove, method, budget_info, **predicted)
        info["student"] = "the teacher with the removed units swapped for prunekit's stand-ins: needs prunekit to load"
    info["presets"] = _presets(config, plan_space, loss_of, meter)
    result.provenance.update(sensitivity_run=str(run) if run is not None else None, planner=info)
    path = result.save(output_path(out, sensitivity))
    if pareto:
        presets = [{"params_fraction": row["params_fraction"], "macs_fraction": row["macs_fraction"],
                    "loss": row["loss"], "remove": " ".join(row["remove"]), "is_preset": True}
                   for row in info["presets"].values()]
        _write_pareto(path.parent / "pareto.csv", front(study) + presets)
    return result


def summary(result: Plan) -> str:
    """The plan beside the BK-SDM presets: cost fractions, predicted loss, and whether each meets the budget."""
    info, predicted, budget = result.provenance.get("planner", {}), result.predicted, result.budget
    metric, limit = budget["metric"], budget["fraction"]
    columns = ["params", "macs"] + (["latency"] if metric == "latency" else [])
    lines = [f"{result.method} plan for {result.model_name} ({info.get('space')} space, {info.get('objective')} "
             f"objective): removes {len(result.remove)} units, {metric} <= {limit} of the teacher's",
             f"  {'':10}" + "".join(f"{c:>10}" for c in columns) + f"{'loss':>12}  within budget"]

    def row(label: str, values: dict) -> str:
        loss = values.get("loss")
        cells = "".join(f"{values[f'{c}_fraction']:>10.4f}" for c in columns)
        fits = "yes" if values[f"{metric}_fraction"] <= limit else "no"
        return f"  {label:10}{cells}{'-' if loss is None else f'{loss:.4g}':>12}  {fits}"

    lines.append(row("this plan", predicted))
    lines += [row(name, values) for name, values in info.get("presets", {}).items()]
    lines.append("  removes: " + (" ".join(result.remove) or "nothing"))
    if "latency" in info:
        lat = info["latency"]
        lines.append(f"  latency timed on {lat['device']} ({lat['timing']}, {lat['dtype']}, batch {lat['batch']}): "
                     f"teacher {lat['teacher_ms']:.2f} ms per step")
    if "sampler" in info:
        lines.append(f"  Optuna {info['sampler']}: best of {info['trials']} trials (space of {info['space_size']} "
                     f"plans), study {info['study']} in {info['storage']}")
    if "student" in info:
        lines.append(f"  student: {info['student']}")
    return "\n".join(lines)
