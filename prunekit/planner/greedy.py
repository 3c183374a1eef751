"""Greedy planning: take the cheapest loss per unit of cost saved until the budget holds, then give back
what still fits.

From the teacher, each step moves to the one-step-smaller state (space.removals: one stage's pair, the mid
block, the innermost stage, or in the free space one unit) with the least added loss per unit of cost
saved, until the cost is within the budget. Steps whose added loss cannot be told apart (their loss
intervals, `uncertainty`, overlap once divided by the cost they save) are ties: of those, the one that saves
most is taken. Then a clean-up pass moves back one step at a time (space.restorations) while that lowers the
loss and the budget still holds. Remaining ties go to the plan whose unit list sorts first, so the result is
deterministic.
"""
from __future__ import annotations

from collections.abc import Callable

from prunekit.errors import PrunekitError


def greedy(space, cost: Callable[[object], float], loss: Callable[[object], float], budget: float,
           uncertainty: Callable[[object], float] | None = None):
    """The state greedy reaches in `space` with cost(state) <= `budget`; `uncertainty(state)` is the half-width
    of a state's loss interval (None: losses are exact)."""
    state = space.full()
    now_cost, now_loss = cost(state), loss(state)
    while now_cost > budget:
        steps = []  # (rate, its half-width, cost saved, units, state)
        base = uncertainty(state) if uncertainty else 0.0
        for candidate in space.removals(state):
            saved = now_cost - cost(candidate)
            if saved > 0:
                spread = max(0.0, uncertainty(candidate) - base) / saved if uncertainty else 0.0
                steps.append(((loss(candidate) - now_loss) / saved, spread, saved, space.remove(candidate), candidate))
        if not steps:
            raise PrunekitError(f"greedy stopped at {now_cost:.4f} of the teacher's cost, above the budget "
                                f"{budget}: try --method optuna or a larger --budget.")
        best = min(steps, key=lambda step: (step[0], step[3]))
        tied = [step for step in steps if abs(step[0] - best[0]) <= step[1] + best[1]]
        state = min(tied, key=lambda step: (-step[2], step[3]))[4]
        now_cost, now_loss = cost(state), loss(state)
    while True:
        gains = [(loss(c) - now_loss, space.remove(c), c) for c in space.restorations(state) if cost(c) <= budget]
        gains = [gain for gain in gains if gain[0] < 0]
        if not gains:
            return state
        state = min(gains, key=lambda gain: gain[:2])[2]
        now_loss = loss(state)
