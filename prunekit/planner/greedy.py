"""Greedy planning: take the cheapest loss per unit of cost saved until the budget holds, then give back
what still fits.

From the teacher, each step moves to the one-step-smaller state (space.removals: one stage's pair, the mid
block, the innermost stage, or in the free space one unit) with the least added loss per unit of cost
saved, until the cost is within the budget. Then a clean-up pass moves back one step at a time
(space.restorations) while that lowers the loss and the budget still holds. Ties go to the plan whose
unit list sorts first, so the result is deterministic.
"""
from __future__ import annotations

from collections.abc import Callable

from prunekit.errors import PrunekitError


def greedy(space, cost: Callable[[object], float], loss: Callable[[object], float], budget: float):
    """The state greedy reaches in `space` with cost(state) <= `budget` (a fraction of the teacher's)."""
    state = space.full()
    now_cost, now_loss = cost(state), loss(state)
    while now_cost > budget:
        best = None
        for candidate in space.removals(state):
            saved = now_cost - cost(candidate)
            if saved <= 0:
                continue
            key = ((loss(candidate) - now_loss) / saved, space.remove(candidate))
            if best is None or key < best[0]:
                best = (key, candidate)
        if best is None:
            raise PrunekitError(f"greedy stopped at {now_cost:.4f} of the teacher's cost, above the budget "
                                f"{budget}: try --method optuna or a larger --budget.")
        state = best[1]
        now_cost, now_loss = cost(state), loss(state)
    while True:
        gains = [(loss(c) - now_loss, space.remove(c), c) for c in space.restorations(state) if cost(c) <= budget]
        gains = [gain for gain in gains if gain[0] < 0]
        if not gains:
            return state
        state = min(gains, key=lambda gain: gain[:2])[2]
        now_loss = loss(state)
