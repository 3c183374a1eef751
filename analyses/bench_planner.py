"""Planner speed on SD-v1.4's unit table: greedy under 1 s, 200 Optuna trials (additive) under 30 s.

Builds the diffusers plan space of SD-v1.4 once (unit costs counted on the meta device), draws random
per-unit sensitivities, then times greedy and Optuna at the budgets 0.675, 0.562, 0.377 and 0.5 (params)
and prints each time with its ratio to the target (< 1 meets it). "optuna" is the search as
`prunekit plan --method optuna` runs it (dominated choices pruned, a space no larger than --trials
enumerated); "optuna TPE whole" is TPE over the unpruned space, the heavy case; each with the study in
memory and in a SQLite file as the run directory keeps it. Last, the free space at budget 0.5. The loss
each method reaches is set beside the exact optimum (every plan of the space scored), so speed is not
bought with worse plans.

    python analyses/bench_planner.py [--seed 0]
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_report import write
from prunekit.graph import all_units
from prunekit.models import unet_config
from prunekit.planner.api import run_storage
from prunekit.planner.budget import Budget
from prunekit.planner.greedy import greedy
from prunekit.planner.objective import Additive
from prunekit.rundir import RunDir
from prunekit.planner.search import best_trial, search
from prunekit.planner.space import DiffusersSpace, FreeSpace

BUDGETS = (0.675, 0.562, 0.377, 0.5)
GREEDY_TARGET, OPTUNA_TARGET, TRIALS = 1.0, 30.0, 200


def sqlite(folder: str, name: str):
    """A fresh study file as `prunekit plan` keeps it (runs/NAME/optuna.db)."""
    run = RunDir(Path(folder) / name)
    run.path.mkdir()
    return run_storage(run)


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the random sensitivities and of Optuna")
    parser.add_argument("--out", default="reports/bench_planner", help="where table.md/csv and ratios.png go")
    args = parser.parse_args()
    rows = []
    torch.set_num_threads(1)

    config = unet_config("sd-v1-4")
    build, space = timed(lambda: DiffusersSpace(config))
    rng = random.Random(args.seed)
    table = {name: rng.random() for name in all_units(config, costs=False)}
    objective = Additive(table, space.units)

    def cost(state):
        return space.fraction(state, "params")

    def costs(state):
        return {"params": cost(state)}

    def loss(state):
        return objective(space.remove(state))

    everything = [(cost(s), loss(s)) for s in space.states()]
    pruned = space.undominated(["params"], objective.unit)
    print(f"SD-v1.4 diffusers space: {space.size()} plans ({pruned.size()} after pruning dominated choices); "
          f"built in {build:.1f}s (unit costs on the meta device, not timed below)")
    print(f"{'budget':>7} {'method':<26} {'seconds':>8} {'/ target':>9} {'loss':>8} {'optimum':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for budget in BUDGETS:
            optimum = min(value for spent, value in everything if spent <= budget)
            runs = [timed(lambda: greedy(space, cost, loss, budget)) for _ in range(3)]
            seconds, state = statistics.median(t for t, _ in runs), runs[0][1]
            print(f"{budget:>7} {'greedy':<26} {seconds:>8.3f} {seconds / GREEDY_TARGET:>9.3f} "
                  f"{loss(state):>8.3f} {optimum:>8.3f}")
            rows.append({"measure": f"greedy @{budget} (loss {loss(state):.3f}, optimum {optimum:.3f})",
                         "value": seconds, "unit": "s", "target": f"< {GREEDY_TARGET}"})
            for label, searched, exhaustive in (("optuna", pruned, None), ("optuna TPE whole", space, False)):
                for where in ("memory", "sqlite"):
                    storage = None if where == "memory" else sqlite(folder, f"{label}-{budget}")
                    seconds, study = timed(lambda: search(searched, costs, loss, Budget.parse(budget), trials=TRIALS,
                                                          storage=storage, study_name=label, seed=args.seed,
                                                          exhaustive=exhaustive))
                    value = best_trial(study, Budget.parse(budget)).value
                    print(f"{budget:>7} {f'{label} ({where})':<26} {seconds:>8.3f} {seconds / OPTUNA_TARGET:>9.3f} "
                          f"{value:>8.3f} {optimum:>8.3f}  ({len(study.trials)} trials, {type(study.sampler).__name__})")
                    rows.append({"measure": f"{label} ({where}) @{budget} (loss {value:.3f}, "
                                            f"optimum {optimum:.3f})",
                                 "value": seconds, "unit": "s", "target": f"< {OPTUNA_TARGET}"})
        free_space(config, objective, args.seed, folder)
    context = (f"`python analyses/bench_planner.py --seed {args.seed}`: SD-v1.4's diffusers plan space ({space.size()} "
               f"plans, {pruned.size()} after pruning dominated choices), random sensitivities, {TRIALS} Optuna trials, "
               f"{torch.get_num_threads()} CPU thread(s). The free-space timings are printed only.")
    write(args.out, "Planner speed", context, rows)


def free_space(config: dict, objective: Additive, seed: int, folder: str, budget: float = 0.5) -> None:
    """The free space (every block-level unit on its own: 2^44 plans, so no optimum to compare with)."""
    space = FreeSpace(config)

    def cost(state):
        return space.fraction(state, "params")

    def loss(state):
        return objective(space.remove(state))

    seconds, state = timed(lambda: greedy(space, cost, loss, budget))
    print(f"{budget:>7} {'free: greedy':<26} {seconds:>8.3f} {seconds / GREEDY_TARGET:>9.3f} {loss(state):>8.3f}")
    for where in ("memory", "sqlite"):
        storage = None if where == "memory" else sqlite(folder, "free")
        seconds, study = timed(lambda: search(space, lambda s: {"params": cost(s)}, loss, Budget.parse(budget),
                                              trials=TRIALS, storage=storage, study_name="free", seed=seed))
        print(f"{budget:>7} {f'free: optuna ({where})':<26} {seconds:>8.3f} {seconds / OPTUNA_TARGET:>9.3f} "
              f"{best_trial(study, Budget.parse(budget)).value:>8.3f}  ({len(study.trials)} trials, "
              f"{type(study.sampler).__name__})")

if __name__ == "__main__":
    main()
