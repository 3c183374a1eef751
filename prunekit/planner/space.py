"""Plan spaces: which sets of units the planner may remove together, one space per plan kind (prunekit.surgery.KINDS).

- `diffusers` (`DiffusersSpace`): only removals whose student is a plain diffusers U-Net (surgery.py).
  Per stage, how many of the down block's resnet/attention pairs stay and which (the mirror up block keeps
  one more, as diffusers feeds each up resnet one skip connection), where channel counts allow a choice;
  the mid block kept, reduced to its resnets where surgery can express that, or dropped; and how many
  innermost stages go. Which choices fit is read off the units' channels (the rule surgery's shape check
  enforces), so checking a candidate costs nothing.
- `free` (`FreeSpace`): any set of the top-level units of one granularity (block: resnets, attentions,
  samplers and the parts of the mid block; pair: pairs, samplers and the mid block). The student keeps
  prunekit's stand-ins (prunekit.students), so it needs prunekit to load.

A state is hashable. Each space gives, for a state: the units it removes in plan order (`remove`), its
parameters or MACs as a fraction of the teacher's (`fraction`), the states one step smaller (`removals`)
or larger (`restorations`), and Optuna's define-by-run sampling of a state (`suggest`).
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from prunekit.errors import PrunekitError
from prunekit.graph import Unit, all_units, enumerate_units, top_level
from prunekit.surgery import KINDS

COST_METRICS = ("params", "macs")
MID_OPTIONS = ("keep", "resnets", "drop")  # mid block kept, only its resnets kept, dropped
_MID_REMOVES = {"keep": [], "resnets": ["mid.attn0"], "drop": ["mid"]}


class Space:
    """What both spaces share: the teacher's units (every granularity, with costs) and its totals."""

    kind: str  # the kind of plan its states make (prunekit.surgery.KINDS)

    def __init__(self, teacher_config: dict):
        from prunekit.costs import unet_costs

        self.config = teacher_config
        self.units: dict[str, Unit] = all_units(teacher_config)
        self.teacher = unet_costs(teacher_config, full=False)

    def additive_fraction(self, remove: list[str], metric: str) -> float:
        """The teacher's `metric` less that of the units in `remove`, as a fraction of the teacher's."""
        total = getattr(self.teacher, metric)
        return (total - sum(getattr(self.units[name], metric) for name in remove)) / total

    def fraction(self, state, metric: str) -> float:
        """Parameters or MACs of `state`'s student as a fraction of the teacher's."""
        return self.additive_fraction(self.remove(state), metric)

    def remove(self, state) -> list[str]:
        raise NotImplementedError

    def smallest(self, metric: str):
        """The state of least `metric` (parameters or MACs): what the tightest reachable budget is."""
        raise NotImplementedError

    def removable(self) -> list[str]:
        """Every unit some state of the space removes."""
        raise NotImplementedError

    def size(self) -> int:
        """How many states the space holds."""
        raise NotImplementedError


@dataclass(frozen=True)
class StageChoice:
    """What one stage keeps: teacher indices of its down block's resnets and of its up block's."""

    down: tuple[int, ...]
    up: tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    """A state of the diffusers space. Dropped stages hold their full choice, so equal plans compare equal."""

    dropped: int  # innermost stages removed
    mid: str  # one of MID_OPTIONS
    stages: tuple[StageChoice, ...]  # one per teacher stage, outermost (down0) first


class DiffusersSpace(Space):
    """Plans whose student is a plain diffusers U-Net (see the module docstring)."""

    kind = "diffusers"

    def __init__(self, teacher_config: dict):
        super().__init__(teacher_config)
        self.n = next(d for d in itertools.count() if f"down{d}.res0" not in self.units)  # stages
        self.options = [self._stage_options(d) for d in range(self.n)]
        mids = ["keep"] + (["resnets"] if self._mid_resnets_expressible() else []) + (
            ["drop"] if "mid" in self.units else [])
        self.cores = [(m, mid) for m in range(self.n) for mid in mids if self._core_fits(m, mid)]
        self._corrections: dict[tuple[int, str], float] = {}

    # --- unit names and the channel rule -----------------------------------------------------------
    def _count(self, block: str) -> int:
        return next(i for i in itertools.count() if f"{block}.res{i}" not in self.units)

    def _layer(self, block: str, i: int) -> str:
        """The pair-granularity name of layer i of `block`: its pair, or its resnet where it has no attention."""
        pair = f"{block}.pair{i}"
        return pair if pair in self.units else f"{block}.res{i}"

    def _res(self, block: str, i: int) -> Unit:
        return self.units[f"{block}.res{i}"]

    def _down_fits(self, d: int, kept: tuple[int, ...]) -> bool:
        """Each kept down resnet must take the channels its new place feeds it."""
        block = f"down{d}"
        first = self._res(block, 0)
        wants = [first.channels_in] + [first.channels_out] * (len(kept) - 1)
        return all(self._res(block, t).channels_in == want for t, want in zip(kept, wants))

    def _up_fits(self, d: int, kept: tuple[int, ...], kept_down: int) -> bool:
        """Each kept up resnet must take its new place's hidden channels and skip connection: the first
        `kept_down` skips come from this stage's down resnets, the last from the stage outside it."""
        block = f"up{self.n - 1 - d}"
        resnets = [self._res(block, i) for i in range(self._count(block))]
        inner, outer = self._res(f"down{d}", 0).channels_out, resnets[-1].skip_channels
        for place, t in enumerate(kept):
            hidden = resnets[0].channels_in if place == 0 else resnets[0].channels_out
            skip = inner if place < kept_down else outer
            if (resnets[t].channels_in, resnets[t].skip_channels) != (hidden, skip):
                return False
        return True

    def _stage_options(self, d: int) -> list[StageChoice]:
        """The choices of stage d that fit, the full stage first, then fewer layers."""
        downs, ups = self._count(f"down{d}"), self._count(f"up{self.n - 1 - d}")
        options = []
        for k in range(downs, 0, -1):
            for down in itertools.combinations(range(downs), k):
                if not self._down_fits(d, down):
                    continue
                options += [StageChoice(down, up) for up in itertools.combinations(range(ups), k + ups - downs)
                            if self._up_fits(d, up, k)]
        return options

    def _mid_resnets_expressible(self) -> bool:
        """Whether surgery can make a student whose mid block keeps only its resnets (asked once)."""
        from prunekit.surgery import student_config

        if "mid.attn0" not in self.units:
            return False
        try:
            student_config(self.config, ["mid.attn0"])
        except PrunekitError:
            return False
        return True

    def _core_fits(self, m: int, mid: str) -> bool:
        """Whether m innermost stages can go with the mid block `mid`: the innermost stage left must feed
        the first up block left (and the mid block, if kept) the channels they take."""
        if m == 0:
            return True
        channels = self._res(f"down{self.n - 1 - m}", 0).channels_out
        mid_fits = mid == "drop" or "mid.res0" not in self.units or self.units["mid.res0"].channels_in == channels
        return mid_fits and self._res(f"up{m}", 0).channels_in == channels

    # --- states --------------------------------------------------------------------------------------
    def full(self) -> Layout:
        return Layout(0, "keep", tuple(options[0] for options in self.options))

    def remove(self, state: Layout) -> list[str]:
        """The units `state` removes: down stages, the mid block, up stages, then whole stages (plan order)."""
        kept = range(self.n - state.dropped)
        down = [self._layer(f"down{d}", i) for d in kept for i in range(self._count(f"down{d}"))
                if i not in state.stages[d].down]
        up = [self._layer(f"up{self.n - 1 - d}", i) for d in reversed(kept)
              for i in range(self._count(f"up{self.n - 1 - d}")) if i not in state.stages[d].up]
        return down + _MID_REMOVES[state.mid] + up + [f"stage{k}" for k in range(state.dropped)]

    def fraction(self, state: Layout, metric: str) -> float:
        """Parameters or MACs of `state`'s student as a fraction of the teacher's. Units' costs add up,
        except that a kept mid block runs at a higher resolution once inner stages go: that is counted."""
        fraction = self.additive_fraction(self.remove(state), metric)
        if metric == "macs" and state.dropped and state.mid != "drop":
            fraction += self._mid_correction(state.dropped, state.mid)
        return fraction

    def _mid_correction(self, m: int, mid: str) -> float:
        """Exact less additive MACs fraction of the student that only drops m stages (and shrinks the mid
        block as `mid` says): counted once per (m, mid)."""
        from prunekit.costs import unet_costs
        from prunekit.surgery import student_config

        if (m, mid) not in self._corrections:
            remove = _MID_REMOVES[mid] + [f"stage{k}" for k in range(m)]
            config, _ = student_config(self.config, remove)
            exact = unet_costs(config, full=False).macs / self.teacher.macs
            self._corrections[m, mid] = exact - self.additive_fraction(remove, "macs")
        return self._corrections[m, mid]

    def _with(self, state: Layout, d: int, choice: StageChoice) -> Layout:
        stages = list(state.stages)
        stages[d] = choice
        return replace(state, stages=tuple(stages))

    def removals(self, state: Layout) -> list[Layout]:
        """The states one step smaller: a stage loses one pair (down and up), the mid block shrinks, or
        the innermost stage left goes."""
        out = []
        for d in range(self.n - state.dropped):
            now = state.stages[d]
            out += [self._with(state, d, c) for c in self.options[d] if len(c.down) == len(now.down) - 1
                    and set(c.down) < set(now.down) and set(c.up) < set(now.up)]
        order = MID_OPTIONS.index(state.mid)
        out += [replace(state, mid=mid) for mid in MID_OPTIONS[order + 1:] if (state.dropped, mid) in self.cores]
        inner = self.n - 1 - state.dropped
        if (state.dropped + 1, state.mid) in self.cores:
            out.append(replace(self._with(state, inner, self.options[inner][0]), dropped=state.dropped + 1))
        return out

    def restorations(self, state: Layout) -> list[Layout]:
        """The states one step larger: the reverse of `removals` (a stage comes back whole)."""
        out = []
        for d in range(self.n - state.dropped):
            now = state.stages[d]
            out += [self._with(state, d, c) for c in self.options[d] if len(c.down) == len(now.down) + 1
                    and set(c.down) > set(now.down) and set(c.up) > set(now.up)]
        order = MID_OPTIONS.index(state.mid)
        out += [replace(state, mid=mid) for mid in MID_OPTIONS[:order] if (state.dropped, mid) in self.cores]
        if state.dropped and (state.dropped - 1, state.mid) in self.cores:
            out.append(replace(state, dropped=state.dropped - 1))
        return out

    def smallest(self, metric: str) -> Layout:
        states = []
        for m, mid in self.cores:
            stages = list(self.full().stages)
            for d in range(self.n - m):
                stages[d] = min(self.options[d], key=lambda c: self.fraction(self._with(self.full(), d, c), metric))
            states.append(Layout(m, mid, tuple(stages)))
        return min(states, key=lambda s: self.fraction(s, metric))

    def removable(self) -> list[str]:
        full = self.full()
        names = [name for d in range(self.n) for c in self.options[d] for name in self.remove(self._with(full, d, c))]
        names += [name for m, mid in self.cores for name in _MID_REMOVES[mid] + [f"stage{k}" for k in range(m)]]
        return list(dict.fromkeys(names))

    def size(self) -> int:
        return sum(math.prod(len(self.options[d]) for d in range(self.n - m)) for m, _ in self.cores)

    def sample(self, rng) -> Layout:
        """A random state: the number of dropped stages and the mid block uniformly among those that fit, then
        each remaining stage's choice uniformly (`rng` a random.Random)."""
        m, mid = rng.choice(self.cores)
        full = self.full()
        stages = [rng.choice(options) for options in self.options[:self.n - m]] + list(full.stages[self.n - m:])
        return Layout(m, mid, tuple(stages))

    def _label(self, d: int, choice: StageChoice) -> str:
        removed = self.remove(self._with(self.full(), d, choice))
        return " ".join(removed) if removed else "keep all"

    def suggest(self, trial) -> Layout:
        """A state sampled by an Optuna trial: the mid block and dropped stages, then each stage left."""
        labels = {f"{m} inner stage(s) dropped, mid {mid}": (m, mid) for m, mid in self.cores}
        m, mid = labels[trial.suggest_categorical("core", list(labels))]
        stages = list(self.full().stages)
        for d in range(self.n - m):
            choices = {self._label(d, c): c for c in self.options[d]}
            stages[d] = choices[trial.suggest_categorical(f"stage down{d}/up{self.n - 1 - d}", list(choices))]
        return Layout(m, mid, tuple(stages))

    def undominated(self, metrics: list[str], unit_loss: Callable[[str], float]) -> DiffusersSpace:
        """This space without the stage choices another choice of the same stage beats (saves no less of every
        cost in `metrics` and loses no more; of equals, the first stays). Exact where costs and loss add up over
        units (parameters or MACs, the additive objective): a stage's choice then changes a plan's costs and
        loss by its own units alone, so a beaten choice is in no best plan. Each stage keeps its full choice."""
        full = self.full()
        pruned = copy.copy(self)
        pruned.options = []
        for d, options in enumerate(self.options):
            scores = []
            for choice in options:
                removed = self.remove(self._with(full, d, choice))
                saved = tuple(sum(getattr(self.units[n], metric) for n in removed) for metric in metrics)
                scores.append((saved, sum(map(unit_loss, removed))))
            pruned.options.append([options[0]] + [
                choice for i, (choice, mine) in enumerate(zip(options, scores)) if i and not any(
                    all(a >= b for a, b in zip(other[0], mine[0])) and other[1] <= mine[1] and (other != mine or j < i)
                    for j, other in enumerate(scores) if j != i)])
        return pruned


class FreeSpace(Space):
    """Any set of the top-level units of `granularity` (block or pair); the student keeps prunekit's
    stand-ins (see the module docstring)."""

    kind = "free"

    def __init__(self, teacher_config: dict, granularity: str = "block"):
        super().__init__(teacher_config)
        units = enumerate_units(teacher_config, granularity, costs=False)
        self.order = [u.name for u in top_level(units)]

    def full(self) -> frozenset:
        return frozenset()

    def remove(self, state: frozenset) -> list[str]:
        return [name for name in self.order if name in state]

    def removals(self, state: frozenset) -> list[frozenset]:
        return [state | {name} for name in self.order if name not in state]

    def restorations(self, state: frozenset) -> list[frozenset]:
        return [state - {name} for name in self.order if name in state]

    def smallest(self, metric: str) -> frozenset:
        return frozenset(self.order)

    def removable(self) -> list[str]:
        return list(self.order)

    def size(self) -> int:
        return 2 ** len(self.order)

    def suggest(self, trial) -> frozenset:
        """A state sampled by an Optuna trial: for each unit, whether it goes."""
        return frozenset(name for name in self.order if trial.suggest_categorical(name, [False, True]))


def make_space(kind: str, teacher_config: dict, granularity: str = "block") -> Space:
    """The plans of `kind` ('diffusers', or 'free' over the units of `granularity`)."""
    if kind not in KINDS:
        raise PrunekitError(f"unknown plan kind {kind!r}: use one of {', '.join(KINDS)}.")
    return DiffusersSpace(teacher_config) if kind == "diffusers" else FreeSpace(teacher_config, granularity)
