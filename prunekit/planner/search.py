"""Optuna search over a plan space.

Each trial samples a state by define-by-run (space.suggest). By default TPE minimises the loss with the
budget as a constraint (`trial.set_constraint`, cost - budget <= 0: Optuna 5's form of constraints_func);
with `pareto`, NSGA-II minimises cost and loss together, unconstrained, and the plan is the trial of least
loss within the budget. A space that holds no more plans than `trials` is enumerated instead (Optuna's
BruteForceSampler): no sampler beats that. A trial that samples a plan the study already scored is pruned
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

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts (a pruned trial repeated a plan)


def _objective(space, cost: Callable, loss: Callable, budget: float, pareto: bool, cheap: bool):
    def objective(trial: optuna.Trial):
        state = space.suggest(trial)
        remove = space.remove(state)
        for earlier in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if earlier.user_attrs["plan"]["remove"] == remove:  # worth nothing new: let the sampler move on
                trial.set_user_attr("duplicate_of", earlier.number)
                raise optuna.TrialPruned()
        spent = cost(state)
        fractions = {f"{metric}_fraction": space.fraction(state, metric) for metric in ("params", "macs")}
        trial.set_user_attr("plan", {"remove": remove, "cost": spent, **fractions})  # one write: commits are slow
        if pareto:
            return spent, loss(state)
        trial.set_constraint("budget", spent - budget)
        return loss(state) if cheap or spent <= budget else math.inf  # infeasible: not worth measuring
    return objective


def _sampler(pareto: bool, exhaustive: bool, seed: int) -> optuna.samplers.BaseSampler:
    if exhaustive:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.BruteForceSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed) if pareto else optuna.samplers.TPESampler(seed=seed)


def search(space, cost: Callable, loss: Callable, budget: float, *, trials: int = 200,
           storage: str | optuna.storages.BaseStorage | None = None,
           study_name: str = "prunekit-plan", seed: int = 0, pareto: bool = False, cheap: bool = True,
           exhaustive: bool | None = None, progress: bool = False) -> optuna.Study:
    """Run (or resume) the study `study_name` in `storage` (None: in memory) until it holds `trials`
    finished trials; `cost` and `loss` take a state, `cheap` says whether the loss of an infeasible state
    is worth computing. `exhaustive` (by default: when the space holds no more states than `trials`)
    enumerates the space with Optuna's BruteForceSampler, which no sampler can beat at that size."""
    if exhaustive is None:
        exhaustive = space.size() <= trials
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, load_if_exists=True,
                                    directions=["minimize", "minimize"] if pareto else ["minimize"],
                                    sampler=_sampler(pareto, exhaustive, seed))
        done = len(study.get_trials(deepcopy=False, states=_FINISHED))
        if done:
            study.sampler = _sampler(pareto, exhaustive, seed + done)  # a resumed study does not replay its samples
        target = min(trials, space.size()) if exhaustive else trials
        if done < target:
            study.optimize(_objective(space, cost, loss, budget, pareto, cheap), n_trials=target - done,
                           callbacks=[optuna.study.MaxTrialsCallback(trials, states=_FINISHED)],
                           show_progress_bar=progress)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return study


def best_trial(study: optuna.Study, budget: float) -> FrozenTrial:
    """The finished trial of least loss within the budget (then least cost, then earliest)."""
    pareto = len(study.directions) == 2
    within = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        spent = trial.user_attrs["plan"]["cost"]
        if spent <= budget:
            within.append((trial.values[-1], spent, trial.number, trial))
    if not within:
        raise PrunekitError(f"none of the study's {len(study.trials)} trials met the budget {budget}: "
                            "run more --trials" + (" or search without --pareto." if pareto else "."))
    return min(within, key=lambda item: item[:3])[3]


def front(study: optuna.Study) -> list[dict]:
    """The Pareto front of a --pareto study as pareto.csv rows (params_fraction, macs_fraction, loss, remove)."""
    rows = {}
    for trial in sorted(study.best_trials, key=lambda t: (t.values[0], t.values[1], t.number)):
        attrs = trial.user_attrs["plan"]
        remove = " ".join(attrs["remove"])
        rows.setdefault(remove, {"params_fraction": attrs["params_fraction"], "macs_fraction": attrs["macs_fraction"],
                                 "loss": trial.values[1], "remove": remove, "is_preset": False})
    return list(rows.values())
