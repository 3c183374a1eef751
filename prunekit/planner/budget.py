"""Budgets: bounds on several costs at once, each a fraction of the teacher's.

`--budget params=0.6,macs=0.65` keeps at most 60% of the teacher's parameters and 65% of its MACs per step;
`--budget latency=0.7` at most 70% of its step latency timed on `--device`; a bare number `--budget 0.5`
bounds the `--metric` alone; a BK-SDM preset's name, `--budget bk-small`, bounds parameters and MACs at that
preset's own (`of_preset`), so the plan competes with the preset at equal cost. A plan must satisfy every bound. The planner's methods see one number: the total
excess, the sum over bounds of how far a candidate's cost lies above each (0 when it fits), so that removing
anything that lowers a cost still over its bound counts as progress.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from prunekit.errors import PrunekitError

COSTS = ("params", "macs", "latency")
IMBALANCE = 0.2  # a plan keeping this much more of one cost than of another is warned about


@dataclass(frozen=True)
class Budget:
    """Bounds (cost -> largest fraction of the teacher's) that a plan must all satisfy."""

    bounds: tuple[tuple[str, float], ...]

    @classmethod
    def parse(cls, value, metric: str = "params") -> "Budget":
        """A Budget from a number (a bound on `metric`), a "cost=fraction,..." string, a dict or a Budget."""
        if isinstance(value, Budget):
            return value
        if isinstance(value, dict):
            pairs = list(value.items())
        elif isinstance(value, str) and ("=" in value or "," in value):
            parts = [part for part in value.split(",") if part.strip()]
            odd = [part for part in parts if "=" not in part]
            if odd:
                raise PrunekitError(f"--budget part {odd[0].strip()!r} is not cost=fraction: write bounds as "
                                    "params=0.6,macs=0.65.")
            pairs = [tuple(part.split("=", 1)) for part in parts]
        else:
            pairs = [(metric, value)]
        bounds = []
        for name, fraction in pairs:
            name = str(name).strip()
            if name not in COSTS:
                raise PrunekitError(f"--budget bounds unknown cost {name!r}: bound one or more of "
                                    f"{', '.join(COSTS)}, as in params=0.6,macs=0.65.")
            try:
                fraction = float(fraction)
            except (TypeError, ValueError):
                raise PrunekitError(f"--budget {name}={fraction} is not a number: give a fraction of the teacher's "
                                    "cost, as in params=0.6.") from None
            if not math.isfinite(fraction) or not 0 < fraction <= 1:
                raise PrunekitError(f"--budget {name}={fraction:g} is outside (0, 1]: give the fraction of the "
                                    "teacher's cost the student may keep, e.g. 0.5.")
            if name in dict(bounds):
                raise PrunekitError(f"--budget bounds {name} twice: bound each cost once.")
            bounds.append((name, fraction))
        if not bounds:
            raise PrunekitError("--budget bounds nothing: give a fraction, or cost=fraction pairs.")
        return cls(tuple(bounds))

    @classmethod
    def of_preset(cls, preset: str, teacher_config: dict, tokens: int | None = None) -> "Budget":
        """The parameters and MACs (at `tokens` text tokens) of `preset`'s student of this teacher, as fractions
        rounded up at the fourth decimal (so that the preset fits its own budget)."""
        from prunekit.plan import make_preset

        made = make_preset(preset, "", teacher_config, tokens).predicted
        return cls.parse({name: math.ceil(made[f"{name}_fraction"] * 1e4) / 1e4 for name in ("params", "macs")})

    @property
    def metrics(self) -> list[str]:
        return [name for name, _ in self.bounds]

    def __getitem__(self, metric: str) -> float:
        return dict(self.bounds)[metric]

    def __str__(self) -> str:
        return ",".join(f"{name}={fraction:g}" for name, fraction in self.bounds)

    def to_json(self) -> dict:
        return dict(self.bounds)

    def excess(self, costs: dict[str, float]) -> float:
        """How far `costs` (fractions of the teacher's) lie above the bounds, summed as ratios (0: it fits)."""
        return sum(max(0.0, costs[name] / fraction - 1) for name, fraction in self.bounds)

    def fits(self, costs: dict[str, float]) -> bool:
        return all(costs[name] <= fraction + 1e-12 for name, fraction in self.bounds)

    def slack(self, costs: dict[str, float]) -> list[float]:
        """Cost less bound for each bound (feasible where every value is 0 or less): Optuna's constraints."""
        return [costs[name] - fraction for name, fraction in self.bounds]


def imbalance(costs: dict[str, float]) -> str | None:
    """A warning when a plan keeps far more of one cost than of another (its speed-up would disappoint)."""
    known = {name: costs[name] for name in COSTS if costs.get(name) is not None}
    if len(known) < 2:
        return None
    most, least = max(known, key=known.get), min(known, key=known.get)
    if known[most] - known[least] <= IMBALANCE:
        return None
    return (f"this plan keeps {known[least]:.0%} of the teacher's {least} but {known[most]:.0%} of its {most}: "
            f"bound {most} too (e.g. --budget {least}={known[least]:.2g},{most}={known[least] + IMBALANCE:.2g}).")
