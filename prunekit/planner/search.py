"""Optuna search over a plan space.

Each trial samples a state by define-by-run (space.suggest). By default TPE minimises the loss with each of
the budget's bounds as a constraint (`trial.set_constraint`, cost - bound <= 0: Optuna 5's form of
constraints_func); with `pareto`, NSGA-II minimises the bounded costs and the loss together, unconstrained,
and the plan is the trial of least loss within the budget. A space that holds no more plans than `trials` is
enumerated instead (Optuna's BruteForceSampler), with or without `pareto`: no sampler beats that; the plan
and the summary say which sampler ran. A trial that samples a plan the study already scored is pruned
rather than scored again, so TPE, which would keep proposing its favourite, moves on.

The study lives in any storage Optuna supports (an RDB URL), so many machines can search one study;
`trials` counts the study's finished (complete or pruned) trials, so running the same command again
resumes an interrupted search and adds only what is missing.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from prunekit.errors import PrunekitError
from prunekit.planner.budget import Budget

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts (a pruned trial repeated a plan)


def _objective(space, costs: Callable, loss: Callable, budget: Budget, pareto: bool, cheap: bool):
    def objective(trial: optuna.Trial):
        state = space.suggest(trial)
        remove = space.remove(state)
        for earlier in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if earlier.user_attrs["plan"]["remove"] == remove:  # worth nothing new: let the sampler move on
                trial.set_user_attr("duplicate_of", earlier.number)
                raise optuna.TrialPruned()
        spent = costs(state)
        trial.set_user_attr("plan", {"remove": remove, "costs": spent})  # one write: commits are slow
        if pareto:
            return (*[spent[name] for name in budget.metrics], loss(state))
        for name, gap in zip(budget.metrics, budget.slack(spent)):
            trial.set_constraint(name, gap)
        return loss(state) if cheap or budget.fits(spent) else math.inf  # infeasible: not worth measuring
    return objective


def _sampler(pareto: bool, exhaustive: bool, seed: int) -> optuna.samplers.BaseSampler:
    if exhaustive:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.BruteForceSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed) if pareto else optuna.samplers.TPESampler(seed=seed)


def search(space, costs: Callable, loss: Callable, budget: Budget, *, trials: int = 200,
           storage: str | optuna.storages.BaseStorage | None = None,
           study_name: str = "prunekit-plan", seed: int = 0, pareto: bool = False, cheap: bool = True,
           exhaustive: bool | None = None, progress: bool = False) -> optuna.Study:
    """Run (or resume) the study `study_name` in `storage` (None: in memory) until it holds `trials`
    finished trials; `costs` (cost name -> fraction of the teacher's) and `loss` take a state, `cheap` says
    whether the loss of an infeasible state is worth computing. `exhaustive` (by default: when the space holds no more states than `trials`)
    enumerates the space with Optuna's BruteForceSampler, which no sampler can beat at that size."""
    if exhaustive is None:
        exhaustive = space.size() <= trials
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True,
                                    directions=["minimize"] * (len(budget.metrics) + 1 if pareto else 1),
                                    sampler=_sampler(pareto, exhaustive, seed))
        done = len(study.get_trials(deepcopy=False, states=_FINISHED))
        if done:
            study.sampler = _sampler(pareto, exhaustive, seed + done)  # a resumed study does not replay its samples
        target = min(trials, space.size()) if exhaustive else trials
        if done < target:
            study.optimize(_objective(space, costs, loss, budget, pareto, cheap), n_trials=target - done,
                           callbacks=[optuna.study.MaxTrialsCallback(trials, states=_FINISHED)],
                           show_progress_bar=progress)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return study


def best_trial(study: optuna.Study, budget: Budget) -> FrozenTrial:
    """The finished trial of least loss within the budget (then least cost, then earliest)."""
    pareto = len(study.directions) > 1
    within = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        spent = trial.user_attrs["plan"]["costs"]
        if budget.fits(spent):
            within.append((trial.values[-1], sum(spent[name] for name in budget.metrics), trial.number, trial))
    if not within:
        raise PrunekitError(f"none of the study's {len(study.trials)} trials met the budget {budget}: "
                            "run more --trials" + (" or search without --pareto." if pareto else "."))
    return min(within, key=lambda item: item[:3])[3]


def front(study: optuna.Study) -> list[dict]:
    """The Pareto front of a --pareto study as pareto.csv rows (params_fraction, macs_fraction, loss, remove)."""
    rows = {}
    for trial in sorted(study.best_trials, key=lambda t: (*t.values, t.number)):
        attrs = trial.user_attrs["plan"]
        remove = " ".join(attrs["remove"])
        rows.setdefault(remove, {"params_fraction": attrs["costs"]["params"], "macs_fraction": attrs["costs"]["macs"],
                                 "loss": trial.values[-1], "remove": remove, "is_preset": False})
    return list(rows.values())


class SynchronousHalving(optuna.pruners.BasePruner):
    """Successive halving in step: at a rung, a trial goes on only if its value is among the best 1/reduction (at
    least one) of those that every trial not failed reported at that rung. So the search must report a rung for
    all its live trials before it asks any of them; then no candidate's fate depends on the order they ran in."""

    def __init__(self, reduction: int):
        self.reduction = reduction

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        rivals = sorted((t.intermediate_values[step], t.number) for t in study.get_trials(deepcopy=False)
                        if t.state != TrialState.FAIL and step in t.intermediate_values)
        return (trial.intermediate_values[step], trial.number) not in rivals[:max(1, len(rivals) // self.reduction)]


def successive_halving(candidates: list[dict], loss_at: Callable, *, schedule: list[int], reduction: int,
                       storage, study_name: str) -> optuna.Study:
    """Score `candidates` ({"remove", "costs"}) by `loss_at(remove, steps)` at each rung of `schedule` under
    synchronous successive halving: every candidate is a trial (Optuna's ask-and-tell), every live trial reports a
    rung, then SynchronousHalving prunes all but the best 1/reduction; the last rung's survivors complete.
    Resumes a study in `storage`: a killed search's running trials fail and are asked again (`loss_at` is
    expected to cache what they finished)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True,
                                    pruner=SynchronousHalving(reduction), direction="minimize")
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # a killed search's
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        finished = {t.params["candidate"] for t in study.get_trials(deepcopy=False, states=_FINISHED)}
        waiting = {t.system_attrs.get("fixed_params", {}).get("candidate")
                   for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
        todo = [index for index in range(len(candidates)) if index not in finished]
        for index in todo:
            if index not in waiting:
                study.enqueue_trial({"candidate": index})
        live, values = [], {}
        for _ in todo:
            trial = study.ask()  # takes a queued candidate
            index = trial.suggest_categorical("candidate", list(range(len(candidates))))
            trial.set_user_attr("plan", candidates[index])
            live.append(trial)
        for rung, steps in enumerate(schedule):
            for trial in live:
                values[trial.number] = loss_at(trial.user_attrs["plan"]["remove"], steps)
                trial.report(values[trial.number], steps)
            if rung < len(schedule) - 1:
                pruned = [trial for trial in live if trial.should_prune()]  # decided before any is told
                for trial in pruned:
                    study.tell(trial, state=TrialState.PRUNED)
                live = [trial for trial in live if trial not in pruned]
        for trial in live:
            study.tell(trial, values[trial.number])
    finally:
        optuna.logging.set_verbosity(verbosity)
    return study
