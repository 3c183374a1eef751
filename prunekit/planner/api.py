"""`plan(...)`: a plan under a budget, made by greedy or Optuna over the plans of one kind (`prunekit plan --budget`).

The budget caps the student's parameters, MACs or measured latency as a fraction of the teacher's U-Net;
the loss is the additive sensitivity of a sensitivity run, or a measured one. The plan records its
predicted cost and loss, how it was found, and the BK-SDM presets' cost and loss beside it (`summary`).
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.models import Model, resolve_model
from prunekit.options import check_choice, check_count, check_number, check_output_file, merged, resolve_device
from prunekit.plan import PRESETS, Plan, make_plan, preset_remove
from prunekit.planner.cache import Cache
from prunekit.planner.objective import OBJECTIVES, Additive, Measured
from prunekit.planner.space import COST_METRICS, make_space
from prunekit.rundir import RunDir
from prunekit.surgery import KINDS

METRICS = COST_METRICS + ("latency",)
METHODS = ("greedy", "optuna")
PARETO_COLUMNS = ("params_fraction", "macs_fraction", "loss", "remove", "is_preset")


@dataclass(frozen=True)
class PlanOptions:
    """What `plan` takes besides the model (see there); every value is checked here."""

    budget: float = 0.5
    metric: str = "params"
    sensitivity: str | None = None  # the sensitivity run directory (runs/NAME)
    objective: str = "additive"
    method: str = "greedy"
    kind: str = "diffusers"
    trials: int = 200
    storage: str | None = None
    pareto: bool = False
    seed: int = 0
    out: str | None = None
    device: str | None = None  # where --metric latency is timed
    force: bool = False  # replace an existing plan file
    progress: bool = True

    def __post_init__(self):
        check_number("budget", self.budget)
        if not 0 < self.budget <= 1:
            raise PrunekitError(f"--budget {self.budget} is outside (0, 1]: give the fraction of the teacher's cost "
                                "the student may keep, e.g. 0.5.")
        for name, choices in (("metric", METRICS), ("objective", OBJECTIVES), ("method", METHODS), ("kind", KINDS)):
            check_choice(name, getattr(self, name), choices)
        if self.method != "optuna" and (self.pareto or self.storage):
            raise PrunekitError("--pareto and --storage belong to the Optuna search: add --method optuna.")
        check_count("trials", self.trials)
        check_count("seed", self.seed, minimum=0)

    @property
    def run(self) -> RunDir | None:
        return RunDir(self.sensitivity) if self.sensitivity else None

    def output(self) -> Path:
        """Where the plan goes: `out`, else the sensitivity run's plan.json, else ./plan.json."""
        if self.out is not None:
            return Path(self.out)
        return self.run.plan_path if self.run else Path("plan.json")


def output_path(out=None, sensitivity=None) -> Path:
    """Where `prunekit plan` writes: `out`, else the sensitivity run's plan.json, else ./plan.json."""
    return PlanOptions(out=out, sensitivity=sensitivity).output()


def _free_granularity(config: dict, loss_of: Additive) -> str:
    """The free kind's units for an additive objective: blocks where the run scores every block (as a
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


def _study_name(options: PlanOptions, *keys) -> str:
    """The study a command searches: the same settings resume the same study (a pareto study serves any budget)."""
    digest = hashlib.sha256("|".join(map(str, keys)).encode()).hexdigest()[:10]
    goal = "pareto" if options.pareto else f"budget{options.budget:g}"
    return f"plan-{options.kind}-{options.metric}-{options.objective}-{goal}-seed{options.seed}-{digest}"


def run_storage(run: RunDir):
    """The study's default home, runs/NAME/optuna.db: SQLite in WAL mode with normal syncing, since Optuna
    commits every sampled parameter and a disk sync per commit would make the search several times slower."""
    import sqlite3

    import optuna

    path = run.study_path.resolve()

    def connect():
        connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"creator": connect})


def open_storage(url: str):
    """The Optuna storage at RDB URL `url` (created if need be), or one sentence saying why it cannot be opened."""
    import optuna

    try:
        return optuna.storages.RDBStorage(url)
    except Exception as error:  # noqa: BLE001 - SQLAlchemy and its drivers raise many kinds; all mean "no storage"
        detail = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise PrunekitError(f"cannot open the Optuna storage {url!r} ({detail}): give an RDB URL such as "
                            "sqlite:///runs/NAME/optuna.db, or leave out --storage.") from None


def _write_pareto(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PARETO_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _objective(model: Model, options: PlanOptions, measure):
    """The loss of a candidate, the plan space, and what identifies both (for the study's name)."""
    from prunekit.graph import all_units

    config, run = model.config, options.run
    if options.objective == "measured":
        if measure is None:
            raise PrunekitError("the measured objective needs a measuring function: pass measure=... to "
                                "prunekit.planner.plan (prunekit.planner.measured.measurer builds one).")
        if run is not None and run.record_path.is_file():
            run.check_model(model.fingerprint)
        loss_of = Measured(measure, Cache(run.cache_path if run is not None else None, "measured"))
        return loss_of, make_space(options.kind, config), [model.fingerprint, "measured", loss_of.identity]
    if run is None:
        raise PrunekitError("the additive objective needs --sensitivity runs/NAME (a sensitivity run of this "
                            "model): run the sensitivity sweep first, or plan with --objective measured.")
    table = run.sensitivities()
    run.check_model(model.fingerprint)
    loss_of = Additive(table, all_units(config, costs=False), run.table_path)
    granularity = _free_granularity(config, loss_of) if options.kind == "free" else "block"
    plan_space = make_space(options.kind, config, granularity)
    loss_of(plan_space.removable())  # every unit the space may remove has a sensitivity, or this says which not
    return loss_of, plan_space, [model.fingerprint, loss_of.digest]


def _optuna(plan_space, loss_of, cost, loss, options: PlanOptions, name: str):
    """Search with Optuna: the best trial within the budget, the study, and how it was searched."""
    from prunekit.planner.search import best_trial, search

    exact = isinstance(loss_of, Additive) and options.metric in COST_METRICS and plan_space.kind == "diffusers"
    searched = plan_space.undominated(options.metric, loss_of.unit) if exact else plan_space
    run = options.run
    if options.storage is not None:
        storage = open_storage(options.storage)
    else:
        storage = run_storage(run) if run is not None else None
    study = search(searched, cost, loss, options.budget, trials=options.trials, storage=storage, study_name=name,
                   seed=options.seed, pareto=options.pareto, cheap=loss_of.cheap, progress=options.progress)
    best = best_trial(study, options.budget)
    where = options.storage or (str(run.study_path) if run is not None else "in memory")
    info = {"sampler": type(study.sampler).__name__, "study": name, "storage": where,
            "trials": len(study.trials), "space_size": searched.size(), "best_trial": best.number}
    return best, study, info


def plan(model: str | Model = "sd-v1-4", options: PlanOptions | None = None, measure=None, **changes) -> Plan:
    """Plan the student of `model` whose `metric` is at most `budget` of the teacher's, with least loss.

    `options` are PlanOptions; `changes` are applied to them (`plan("tiny-sd", budget=0.5, sensitivity=RUN)`).
    `sensitivity` is a sensitivity run directory (runs/NAME): the additive objective reads its
    sensitivity.csv; the Optuna study (runs/NAME/optuna.db unless `storage` gives an RDB URL) and the
    caches of measured losses and latencies live there. `measure(remove) -> float` scores a candidate for
    the measured objective. Writes plan.json to `options.output()` (refusing to replace a file unless
    `force`; pareto.csv beside it with `pareto`) and returns the Plan.
    """
    from prunekit.planner.greedy import greedy
    from prunekit.planner.latency import LatencyMeter
    from prunekit.planner.search import front

    options = merged(PlanOptions, options, changes)
    model = resolve_model(model)
    check_output_file(options.output(), "plan", replace=options.force)  # never overwritten silently
    run = options.run
    if run is not None and not run.path.is_dir():
        raise PrunekitError(f"the sensitivity run {run.path} does not exist: check the path.")
    config = model.config
    loss_of, plan_space, keys = _objective(model, options, measure)
    meter = None
    if options.metric == "latency":
        meter = LatencyMeter(config, resolve_device(options.device),
                             Cache(run.cache_path if run is not None else None, "latency"))
        keys.append(meter.prefix)

    def cost(state) -> float:
        if meter is not None:
            return meter.fraction(plan_space.remove(state), plan_space.kind)
        return plan_space.fraction(state, options.metric)

    def loss(state) -> float:
        return loss_of(plan_space.remove(state))

    least = cost(plan_space.smallest("params" if options.metric == "latency" else options.metric))
    if least > options.budget:
        hint = " or plan with --kind free" if options.kind == "diffusers" else ""
        raise PrunekitError(f"no {options.kind} plan keeps {options.metric} within {options.budget} of the teacher's: "
                            f"the smallest reachable is {least:.4f}; raise --budget{hint}.")

    info = {"kind": options.kind, "objective": options.objective, "method": options.method}
    if options.method == "greedy":
        state = greedy(plan_space, cost, loss, options.budget)
        remove, loss_value, spent = plan_space.remove(state), loss(state), cost(state)
    else:
        best, study, searched = _optuna(plan_space, loss_of, cost, loss, options, _study_name(options, *keys))
        remove, loss_value, spent = best.user_attrs["plan"]["remove"], best.values[-1], best.user_attrs["plan"]["cost"]
        info.update(searched)

    predicted = {"loss": loss_value}
    if meter is not None:
        predicted.update(latency_fraction=spent, latency_ms=1000 * meter.seconds(remove, plan_space.kind))
        info["latency"] = meter.describe()
    budget_info = {"metric": options.metric, "fraction": options.budget}
    result = make_plan(model.name, config, remove, options.method, budget_info, options.kind, **predicted)
    if options.kind == "free":
        info["student"] = "the teacher with the removed units swapped for prunekit's stand-ins: load it with " \
                          "prunekit.students.load_student"
    info["presets"] = _presets(config, plan_space, loss_of, meter)
    result.provenance.update(sensitivity_run=str(run.path) if run is not None else None, planner=info)
    path = result.save(options.output())
    if options.pareto:
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
    lines = [f"{result.method} plan for {result.model_name} ({info.get('kind')} plan, {info.get('objective')} "
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
