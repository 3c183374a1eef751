"""`plan(...)`: a plan under a budget, made by greedy or Optuna over the plans of one kind (`prunekit plan --budget`).

The budget bounds the student's parameters, MACs and measured latency, each as a fraction of the teacher's
U-Net (prunekit.planner.budget: every bound must hold); the loss is the additive sensitivity of a sensitivity
run, or a measured one. The plan records its predicted costs and loss, how it was found, the BK-SDM presets'
costs and loss beside it, and a warning when it keeps far more of one cost than of another (`summary`).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.models import Model, resolve_model
from prunekit.options import check_choice, check_count, check_output_file, merged, resolve_device
from prunekit.plan import PRESETS, Plan, make_plan, preset_remove, presets_for
from prunekit.planner.budget import COSTS, Budget, imbalance
from prunekit.cache import Cache
from prunekit.planner.objective import OBJECTIVES, Additive, Measured
from prunekit.planner.recoverable import RecoverOptions, Recoverable
from prunekit.planner.space import COST_METRICS, make_space
from prunekit.rundir import RunDir
from prunekit.surgery import KINDS

METHODS = ("greedy", "optuna")
PARETO_COLUMNS = ("params_fraction", "macs_fraction", "loss", "remove", "is_preset")


@dataclass(frozen=True)
class PlanOptions:
    """What `plan` takes besides the model (see there); every value is checked here."""

    budget: Budget | float | str | dict = 0.5  # a Budget, a bound on `metric`, "params=0.6,macs=0.65" or a preset
    metric: str = "params"  # what a bare-number budget bounds
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
    recover: RecoverOptions = RecoverOptions()  # the recoverable objective's short distillations
    progress: bool = True

    def __post_init__(self):
        check_choice("metric", self.metric, COSTS)
        if self.budget not in PRESETS:  # a preset's budget is its cost on the model: made by `plan`
            object.__setattr__(self, "budget", Budget.parse(self.budget, self.metric))
        for name, choices in (("objective", OBJECTIVES), ("method", METHODS), ("kind", KINDS)):
            check_choice(name, getattr(self, name), choices)
        if self.method != "optuna" and (self.pareto or self.storage):
            raise PrunekitError("--pareto and --storage belong to the Optuna search: add --method optuna.")
        if self.objective == "recoverable" and (self.method != "optuna" or self.pareto or self.kind != "diffusers"):
            raise PrunekitError("the recoverable objective is searched by Optuna's successive halving over diffusers "
                                "plans: use --method optuna, without --pareto or --kind free.")
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
    from prunekit.graph import enumerate_units
    from prunekit.units import top_level

    try:
        loss_of([u.name for u in top_level(enumerate_units(config, "block", costs=False))])
    except PrunekitError:
        return "pair"
    return "block"


def _presets(config: dict, space, objective, meter) -> dict:
    """The presets that fit this U-Net: their cost fractions and loss (None where the objective cannot score
    them). Their parameters and MACs add up exactly over their units (no preset drops a stage and keeps the mid
    block, so no correction applies)."""
    rows = {}
    for name in presets_for(config):
        remove = preset_remove(name, config)
        row = {f"{metric}_fraction": space.additive_fraction(remove, metric) for metric in COST_METRICS}
        if meter is not None:
            row["latency_fraction"] = meter.fraction(remove)
        try:  # the recoverable objective would distil each preset: its presets go unscored
            row["loss"] = objective(remove) if not isinstance(objective, Recoverable) else None
        except PrunekitError:
            row["loss"] = None
        rows[name] = {**row, "remove": remove}
    return rows


def _study_name(options: PlanOptions, *keys) -> str:
    """The study a command searches: the same settings resume the same study (a pareto study serves any budget
    on the same costs)."""
    digest = hashlib.sha256("|".join(map(str, keys)).encode()).hexdigest()[:10]
    budget = options.budget
    goal = "pareto-" + "-".join(budget.metrics) if options.pareto else str(budget).replace(",", "-")
    return f"plan-{options.kind}-{options.objective}-{goal}-seed{options.seed}-{digest}"


def _loss_meaning(objective: str, run: RunDir | None) -> str:
    """What the plan's predicted loss measures, in words (the plan records it; the report labels it)."""
    from prunekit.planner.recoverable import MEANING
    from prunekit.sensitivity.settings import explain

    if objective == "recoverable":
        return MEANING
    record = run.record() if run is not None else None
    rule = explain(record.sensitivity if record is not None else None)
    if objective == "measured":
        return f"{rule}, with the whole plan removed at once"
    return f"the sum over the removed units of {rule}, each unit removed alone"


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
        if getattr(measure, "kind", options.kind) != options.kind:
            raise PrunekitError(f"the measuring function measures {measure.kind} students but the plans are "
                                f"{options.kind}: build it with kind={options.kind!r}.")
        if run is not None and run.record_path.is_file():
            run.check_model(model.fingerprint)
        loss_of = Measured(measure, Cache(run.cache_path if run is not None else None, "measured"))
        plan_space = make_space(options.kind, config, tokens=model.tokens)
        return loss_of, plan_space, [model.fingerprint, "measured", loss_of.identity]
    if run is None:
        raise PrunekitError(f"the {options.objective} objective needs --sensitivity runs/NAME (a sensitivity run of "
                            "this model): run the sensitivity sweep first, or plan with --objective measured.")
    table = run.sensitivities()
    run.check_model(model.fingerprint)
    loss_of = Additive(table, all_units(config, costs=False), run.table_path, run.intervals())
    granularity = _free_granularity(config, loss_of) if options.kind == "free" else "block"
    plan_space = make_space(options.kind, config, granularity, scorable=loss_of.scores, tokens=model.tokens)
    loss_of(plan_space.removable())  # every unit the space may remove has a sensitivity, or this says which not
    return loss_of, plan_space, [model.fingerprint, loss_of.digest]


def _optuna(plan_space, loss_of, costs, loss, options: PlanOptions, name: str):
    """Search with Optuna: the best trial within the budget, the study, and how it was searched (`distinct`: the
    plans scored, a trial that repeats one being pruned)."""
    import optuna

    from prunekit.planner.search import best_trial, search

    metrics = options.budget.metrics
    exact = isinstance(loss_of, Additive) and set(metrics) <= set(COST_METRICS) and plan_space.kind == "diffusers"
    searched = plan_space.undominated(metrics, loss_of.unit) if exact else plan_space
    run = options.run
    if options.storage is not None:
        storage = open_storage(options.storage)
    else:
        storage = run_storage(run) if run is not None else None
    study = search(searched, costs, loss, options.budget, trials=options.trials, storage=storage, study_name=name,
                   seed=options.seed, pareto=options.pareto, cheap=loss_of.cheap, progress=options.progress)
    best = best_trial(study, options.budget)
    where = options.storage or (str(run.study_path) if run is not None else "in memory")
    distinct = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    info = {"sampler": type(study.sampler).__name__, "study": name, "storage": where, "trials": len(study.trials),
            "distinct": distinct, "space_size": searched.size(), "best_trial": best.number}
    return best, study, info


def _recoverable(plan_space, additive: Additive, recoverable: Recoverable, costs, options: PlanOptions, keys):
    """The recoverable search: successive halving over a pool of candidates (prunekit.planner.recoverable)."""
    from prunekit.planner.recoverable import REDUCTION, pool
    from prunekit.planner.search import successive_halving

    candidates = pool(plan_space, costs, options.budget, additive, options.recover.pool, options.seed)
    name = _study_name(options, *keys, recoverable.identity)
    study = successive_halving(candidates, recoverable.at, schedule=options.recover.schedule, reduction=REDUCTION,
                               storage=open_storage(options.storage) if options.storage else run_storage(options.run),
                               study_name=name)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best = min(complete, key=lambda t: (t.value, t.number))
    steps = {t.number: max(t.intermediate_values, default=0) for t in study.trials}
    info = {"sampler": "SynchronousHalving", "study": name, "trials": len(study.trials),
            "space_size": len(candidates), "best_trial": best.number, "kd_steps": sum(steps.values()),
            "rungs": options.recover.schedule, "calibration": recoverable.prompts,
            "teacher_passes_reused": recoverable.memo.hits,  # KD steps of this process that reused the teacher's
            "storage": options.storage or str(options.run.study_path)}
    return best, info


def plan(model: str | Model = "sd-v1-4", options: PlanOptions | None = None, measure=None, **changes) -> Plan:
    """Plan the student of `model` that keeps every cost its budget bounds within the bound, with least loss.

    `options` are PlanOptions; `changes` are applied to them (`plan("tiny-sd", budget="params=0.6,macs=0.65",
    sensitivity=RUN)`). `sensitivity` is a sensitivity run directory (runs/NAME): the additive objective reads
    its sensitivity.csv; the Optuna study (runs/NAME/optuna.db unless `storage` gives an RDB URL) and the
    caches of measured losses and latencies live there. `measure(remove) -> float` scores a candidate for
    the measured objective. Writes plan.json to `options.output()` (refusing to replace a file unless
    `force`; pareto.csv beside it with `pareto`) and returns the Plan.
    """
    from prunekit.planner.greedy import greedy
    from prunekit.latency import LatencyMeter
    from prunekit.planner.search import front

    options = merged(PlanOptions, options, changes)
    model = resolve_model(model)
    if not isinstance(options.budget, Budget):
        options = dataclasses.replace(options, budget=Budget.of_preset(options.budget, model.config,
                                                                                  model.tokens))
    budget = options.budget
    check_output_file(options.output(), "plan", replace=options.force)  # never overwritten silently
    run = options.run
    if run is not None and not run.path.is_dir():
        raise PrunekitError(f"the sensitivity run {run.path} does not exist: check the path.")
    config = model.config
    loss_of, plan_space, keys = _objective(model, options, measure)
    meter = None
    if "latency" in budget.metrics:
        meter = LatencyMeter(config, resolve_device(options.device),
                             Cache(run.cache_path if run is not None else None, "latency"), tokens=model.tokens)
        keys.append(meter.prefix)

    def costs(state) -> dict[str, float]:
        values = {metric: plan_space.fraction(state, metric) for metric in COST_METRICS}
        if meter is not None:
            values["latency"] = meter.fraction(plan_space.remove(state), plan_space.kind)
        return values

    def excess(state) -> float:
        return budget.excess(costs(state))

    def loss(state) -> float:
        return loss_of(plan_space.remove(state))

    for metric in budget.metrics:  # each bound alone must be reachable (latency: at the fewest parameters)
        least = costs(plan_space.smallest("params" if metric == "latency" else metric))[metric]
        if least > budget[metric]:
            hint = " or plan with --kind free" if options.kind == "diffusers" else ""
            raise PrunekitError(f"no {options.kind} plan keeps {metric} within {budget[metric]:g} of the teacher's: "
                                f"the smallest reachable is {least:.4f}; raise --budget{hint}.")

    info = {"kind": options.kind, "objective": options.objective, "method": options.method}
    if options.objective == "recoverable":
        recoverable = Recoverable(model, run, options.recover, Cache(run.cache_path, "recoverable"), options.kind)
        best, searched = _recoverable(plan_space, loss_of, recoverable, costs, options, keys)
        remove, loss_value = best.user_attrs["plan"]["remove"], best.value
        spent, loss_of = best.user_attrs["plan"]["costs"], recoverable
        info.update(searched)
    elif options.method == "greedy":
        ties = (lambda state: loss_of.halfwidth(plan_space.remove(state))) if isinstance(loss_of, Additive) else None
        state = greedy(plan_space, excess, loss, 0.0, ties)
        remove, loss_value, spent = plan_space.remove(state), loss(state), costs(state)
    else:
        best, study, searched = _optuna(plan_space, loss_of, costs, loss, options, _study_name(options, *keys))
        remove, loss_value, spent = best.user_attrs["plan"]["remove"], best.values[-1], best.user_attrs["plan"]["costs"]
        info.update(searched)

    predicted = {"loss": loss_value}
    if meter is not None:
        predicted.update(latency_fraction=spent["latency"], latency_ms=1000 * meter.seconds(remove, plan_space.kind))
        info["latency"] = meter.describe()
    result = make_plan(model.name, config, remove, options.method, budget.to_json(), options.kind, model.tokens,
                       **predicted)
    warning = imbalance({metric: result.predicted.get(f"{metric}_fraction") for metric in COSTS})
    if warning:
        info["warning"] = warning
    if options.kind == "free":
        info["student"] = "the teacher with the removed units swapped for prunekit's stand-ins: load it with " \
                          "prunekit.students.load_student"
    info["presets"] = _presets(config, plan_space, loss_of, meter)
    info["loss"] = _loss_meaning(options.objective, run)
    result.provenance.update(sensitivity_run=str(run.path) if run is not None else None, planner=info)
    path = result.save(options.output())
    if options.pareto:
        presets = [{"params_fraction": row["params_fraction"], "macs_fraction": row["macs_fraction"],
                    "loss": row["loss"], "remove": " ".join(row["remove"]), "is_preset": True}
                   for row in info["presets"].values()]
        _write_pareto(path.parent / "pareto.csv", front(study) + presets)
    return result


def summary(result: Plan) -> str:
    """The plan beside the BK-SDM presets: cost fractions, predicted loss, whether each meets the budget, and the
    planner's warning where the plan keeps far more of one cost than of another."""
    info, predicted = result.provenance.get("planner", {}), result.predicted
    budget = Budget.parse(result.budget)
    columns = ["params", "macs"] + (["latency"] if "latency" in budget.metrics else [])
    lines = [f"{result.method} plan for {result.model_name} ({info.get('kind')} plan, {info.get('objective')} "
             f"objective): removes {len(result.remove)} units; budget {budget} of the teacher's",
             f"  {'':10}" + "".join(f"{c:>10}" for c in columns) + f"{'loss':>12}  within budget"]

    def row(label: str, values: dict) -> str:
        loss = values.get("loss")
        cells = "".join(f"{values[f'{c}_fraction']:>10.4f}" for c in columns)
        fits = "yes" if budget.fits({c: values[f"{c}_fraction"] for c in budget.metrics}) else "no"
        return f"  {label:10}{cells}{'-' if loss is None else f'{loss:.4g}':>12}  {fits}"

    lines.append(row("this plan", predicted))
    lines += [row(name, values) for name, values in info.get("presets", {}).items()]
    lines.append("  removes: " + (" ".join(result.remove) or "nothing"))
    better = [(name, values["loss"]) for name, values in info.get("presets", {}).items()
              if values.get("loss") is not None and predicted.get("loss") is not None
              and values["loss"] < predicted["loss"]
              and budget.fits({c: values[f"{c}_fraction"] for c in budget.metrics if f"{c}_fraction" in values})]
    if better:
        name, loss = min(better, key=lambda item: item[1])
        lines.append(f"  note: {name} fits the budget at a lower loss ({loss:.4g} against {predicted['loss']:.4g}): "
                     + ("greedy search is not exhaustive; --method optuna searches the space" if
                        result.method == "greedy" else "the search did not reach it; give it more --trials"))
    if "warning" in info:
        lines.append(f"  warning: {info['warning']}")
    if "latency" in info:
        lat = info["latency"]
        lines.append(f"  latency timed on {lat['device']} ({lat['timing']}, {lat['dtype']}, batch {lat['batch']}): "
                     f"teacher {lat['teacher_ms']:.2f} ms per step")
    if "loss" in info:
        lines.append(f"  loss: {info['loss']}")
    if "sampler" in info:
        how = "every plan of the space" if info["sampler"] == "BruteForceSampler" else f"{info['trials']} trials"
        lines.append(f"  Optuna {info['sampler']}: the best of {how} (space of {info['space_size']} plans), "
                     f"study {info['study']} in {info['storage']}")
    if "student" in info:
        lines.append(f"  student: {info['student']}")
    return "\n".join(lines)
