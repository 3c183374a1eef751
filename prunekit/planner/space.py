"""Plan spaces: which sets of units the planner may remove together, one space per plan kind (prunekit.surgery.KINDS).

- `diffusers` (`DiffusersSpace`): only removals whose student is a plain diffusers U-Net (surgery.py).
  Per stage, how many of the down block's resnet/attention pairs stay and which (the mirror up block keeps
  one more, as diffusers feeds each up resnet one skip connection), where channel counts allow a choice;
  how many transformer layers each kept attention of depth above one keeps (its first k: SDXL's depth-10
  attentions); the mid block kept, reduced to one resnet, or dropped, a kept one as deep as the innermost down
  stage's first attention (diffusers ties the two); and how many innermost stages go. Choices finer than
  pairs (depths, the one-resnet mid block) are offered only where the objective scores their units
  (`scorable`), so a pair-granularity sweep plans as before. Which choices fit is read off the units'
  channels (the rule surgery's shape check enforces), so checking a candidate costs nothing.
- `diffusers` for a transformer (`BlockSpace`): any set of whole blocks, every stack keeping at least one (its
  student keeps the rest in order: prunekit.families.blocks).
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
from prunekit.graph import all_units, enumerate_units
from prunekit.units import Unit, top_level
from prunekit.surgery import KINDS

COST_METRICS = ("params", "macs")
MID_OPTIONS = ("keep", "resnet", "drop")  # mid block kept, reduced to one resnet (SSD-1B's), dropped
_MID_REMOVES = {"keep": [], "resnet": ["mid.attn0", "mid.res1"], "drop": ["mid"]}


class Space:
    """What every space shares: the teacher's units (every granularity, with costs at `tokens` text tokens, None
    for the family's length) and its totals."""

    kind: str  # the kind of plan its states make (prunekit.surgery.KINDS)

    def __init__(self, teacher_config: dict, tokens: int | None = None):
        from prunekit.costs import denoiser_costs

        self.config, self.tokens = teacher_config, tokens
        self.units: dict[str, Unit] = all_units(teacher_config, tokens)
        self.teacher = denoiser_costs(teacher_config, tokens, full=False)

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
    """A state of the diffusers space. Dropped stages hold their full choice and only kept attentions that lose
    layers are listed, so equal plans compare equal."""

    dropped: int  # innermost stages removed
    mid: str  # one of MID_OPTIONS
    stages: tuple[StageChoice, ...]  # one per teacher stage, outermost (down0) first
    depths: tuple[tuple[str, int], ...] = ()  # (attention unit, transformer layers it keeps), in the space's order


class DiffusersSpace(Space):
    """Plans whose student is a plain diffusers U-Net (see the module docstring)."""

    kind = "diffusers"

    def __init__(self, teacher_config: dict, scorable: Callable[[str], bool] = lambda name: True,
                 tokens: int | None = None):
        super().__init__(teacher_config, tokens)
        self.n = next(d for d in itertools.count() if f"down{d}.res0" not in self.units)  # stages
        self.options = [self._stage_options(d) for d in range(self.n)]
        self.mid_depth = self._depth("mid.attn0") if "mid.attn0" in self.units else 0
        self._mid_thins = mid_thins = all(scorable(f"mid.attn0.t{k}") for k in range(1, self.mid_depth))
        self.deep = {name: self._depth(name) for name in self.units if self.units[name].kind == "attn"
                     and not name.startswith("mid") and self._depth(name) > 1
                     and all(scorable(f"{name}.t{k}") for k in range(1, self._depth(name)))
                     and (mid_thins or not name.startswith(f"down{self.n - 1}."))}
        resnet = self._mid_resnet_expressible() and all(map(scorable, _MID_REMOVES["resnet"]))
        mids = ["keep"] + (["resnet"] if resnet else []) + (["drop"] if "mid" in self.units else [])
        self.cores = [(m, mid) for m in range(self.n) for mid in mids if self._core_fits(m, mid)]
        self._corrections: dict[tuple[int, str, int], float] = {}

    # --- unit names and the channel rule -----------------------------------------------------------
    def _count(self, block: str) -> int:
        return next(i for i in itertools.count() if f"{block}.res{i}" not in self.units)

    def _layer(self, block: str, i: int) -> str:
        """The pair-granularity name of layer i of `block`: its pair, or its resnet where it has no attention."""
        pair = f"{block}.pair{i}"
        return pair if pair in self.units else f"{block}.res{i}"

    def _res(self, block: str, i: int) -> Unit:
        return self.units[f"{block}.res{i}"]

    def _depth(self, attention: str) -> int:
        """Transformer layers of attention unit `attention` (units `{attention}.t{k}` exist above one)."""
        return next(k for k in itertools.count(1) if f"{attention}.t{k}" not in self.units)

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

    def _mid_resnet_expressible(self) -> bool:
        """Whether surgery can make a student whose mid block keeps one resnet (asked once)."""
        from prunekit.surgery import derive

        if "mid.res1" not in self.units:
            return False
        try:
            derive(self.config, _MID_REMOVES["resnet"], "diffusers")
        except PrunekitError:
            return False
        return True

    def _core_fits(self, m: int, mid: str) -> bool:
        """Whether m innermost stages can go with the mid block `mid`: the innermost stage left must feed
        the first up block left (and the mid block, if kept) the channels they take, and a kept mid attention
        can only be as deep as that stage's attentions (diffusers ties their depths)."""
        if m == 0:
            return True
        inner = f"down{self.n - 1 - m}"
        channels = self._res(inner, 0).channels_out
        mid_fits = mid == "drop" or "mid.res0" not in self.units or self.units["mid.res0"].channels_in == channels
        if mid == "keep" and self.mid_depth > 1:  # the mid block takes the depth of this stage's attentions
            attentions = [f"{inner}.attn{i}" for i in range(self._count(inner)) if f"{inner}.attn{i}" in self.units]
            mid_fits &= bool(attentions) and all(self._depth(a) == self.mid_depth or self._mid_thins and
                                                 self._depth(a) < self.mid_depth for a in attentions)
        return mid_fits and self._res(f"up{m}", 0).channels_in == channels

    # --- states --------------------------------------------------------------------------------------
    def full(self) -> Layout:
        return Layout(0, "keep", tuple(options[0] for options in self.options))

    def _deep_kept(self, state: Layout) -> list[str]:
        """The attentions of depth above one that `state` keeps, in the space's order."""
        kept = {f"down{d}.attn{i}" for d in range(self.n - state.dropped) for i in state.stages[d].down}
        kept |= {f"up{self.n - 1 - d}.attn{i}" for d in range(self.n - state.dropped) for i in state.stages[d].up}
        return [name for name in self.deep if name in kept]

    def _normal(self, state: Layout, depths: dict[str, int]) -> Layout:
        """`state` with the depths `depths` gives its kept attentions (others full), listed as Layout keeps them."""
        kept = self._deep_kept(state)
        return replace(state, depths=tuple((name, depths[name]) for name in kept
                                           if depths.get(name, self.deep[name]) < self.deep[name]))

    def _mid_layers(self, state: Layout) -> int:
        """Transformer layers a kept mid block keeps: the depth of the innermost kept down stage's first attention."""
        inner = self.n - 1 - state.dropped
        first = f"down{inner}.attn{state.stages[inner].down[0]}"
        return dict(state.depths).get(first, self._depth(first) if first in self.units else self.mid_depth)

    def remove(self, state: Layout) -> list[str]:
        """The units `state` removes: down stages, the mid block, up stages, then whole stages (plan order); each
        block's lost transformer layers follow its pairs."""
        kept, depths = range(self.n - state.dropped), dict(state.depths)

        def block(name: str, keep: tuple[int, ...]) -> list[str]:
            count = self._count(name)
            layers = [f"{name}.attn{i}.t{k}" for i in keep for k in range(depths.get(f"{name}.attn{i}", 0),
                                                                          self.deep.get(f"{name}.attn{i}", 0))
                      if f"{name}.attn{i}" in depths]
            return [self._layer(name, i) for i in range(count) if i not in keep] + layers

        down = [u for d in kept for u in block(f"down{d}", state.stages[d].down)]
        up = [u for d in reversed(kept) for u in block(f"up{self.n - 1 - d}", state.stages[d].up)]
        mid = list(_MID_REMOVES[state.mid])
        if state.mid == "keep":
            mid += [f"mid.attn0.t{k}" for k in range(self._mid_layers(state), self.mid_depth)]
        return down + mid + up + [f"stage{k}" for k in range(state.dropped)]

    def fraction(self, state: Layout, metric: str) -> float:
        """Parameters or MACs of `state`'s student as a fraction of the teacher's. Units' costs add up,
        except that a kept mid block runs at a higher resolution once inner stages go: that is counted."""
        fraction = self.additive_fraction(self.remove(state), metric)
        if metric == "macs" and state.dropped and state.mid != "drop":
            fraction += self._mid_correction(state.dropped, state.mid, self._mid_layers(state))
        return fraction

    def _mid_correction(self, m: int, mid: str, layers: int) -> float:
        """Exact less additive MACs fraction of the mid block (shrunk as `mid` says, `layers` deep) once m
        stages go: counted once per (m, mid, layers) on the student that only drops m stages and thins its
        innermost attentions to `layers`."""
        from prunekit.costs import denoiser_costs
        from prunekit.surgery import derive

        if (m, mid, layers) not in self._corrections:
            state = replace(self.full(), dropped=m, mid=mid)
            state = self._normal(state, {name: layers for name in self.deep
                                         if name.startswith(f"down{self.n - 1 - m}.")})
            remove = self.remove(state)
            config, _ = derive(self.config, remove, "diffusers")
            exact = denoiser_costs(config, self.tokens, full=False).macs / self.teacher.macs
            self._corrections[m, mid, layers] = exact - self.additive_fraction(remove, "macs")
        return self._corrections[m, mid, layers]

    def _with(self, state: Layout, d: int, choice: StageChoice) -> Layout:
        stages = list(state.stages)
        stages[d] = choice
        return self._normal(replace(state, stages=tuple(stages)), dict(state.depths))

    def _deepened(self, state: Layout, name: str, by: int) -> Layout:
        depths = dict(state.depths)
        return self._normal(state, {**depths, name: depths.get(name, self.deep[name]) + by})

    def removals(self, state: Layout) -> list[Layout]:
        """The states one step smaller: a stage loses one pair (down and up), a kept attention one transformer
        layer, the mid block shrinks, or the innermost stage left goes."""
        out = []
        for d in range(self.n - state.dropped):
            now = state.stages[d]
            out += [self._with(state, d, c) for c in self.options[d] if len(c.down) == len(now.down) - 1
                    and set(c.down) < set(now.down) and set(c.up) < set(now.up)]
        depths = dict(state.depths)
        out += [self._deepened(state, name, -1) for name in self._deep_kept(state) if depths.get(name, 2) > 1]
        order = MID_OPTIONS.index(state.mid)
        out += [replace(state, mid=mid) for mid in MID_OPTIONS[order + 1:] if (state.dropped, mid) in self.cores]
        inner = self.n - 1 - state.dropped
        if (state.dropped + 1, state.mid) in self.cores:
            out.append(replace(self._with(state, inner, self.options[inner][0]), dropped=state.dropped + 1))
        return [self._normal(s, dict(s.depths)) for s in out]

    def restorations(self, state: Layout) -> list[Layout]:
        """The states one step larger: the reverse of `removals` (a stage comes back whole)."""
        out = []
        for d in range(self.n - state.dropped):
            now = state.stages[d]
            out += [self._with(state, d, c) for c in self.options[d] if len(c.down) == len(now.down) + 1
                    and set(c.down) > set(now.down) and set(c.up) > set(now.up)]
        out += [self._deepened(state, name, 1) for name, _ in state.depths]
        order = MID_OPTIONS.index(state.mid)
        out += [replace(state, mid=mid) for mid in MID_OPTIONS[:order] if (state.dropped, mid) in self.cores]
        if state.dropped and (state.dropped - 1, state.mid) in self.cores:
            out.append(replace(state, dropped=state.dropped - 1))
        return [self._normal(s, dict(s.depths)) for s in out]

    def _thinnest(self, state: Layout) -> Layout:
        """`state` with each kept attention down to one transformer layer."""
        return self._normal(state, dict.fromkeys(self.deep, 1))

    def smallest(self, metric: str) -> Layout:
        states = []
        for m, mid in self.cores:
            base = replace(self.full(), dropped=m, mid=mid)
            stages = list(base.stages)
            for d in range(self.n - m):
                stages[d] = min(self.options[d],
                                key=lambda c: self.fraction(self._thinnest(self._with(base, d, c)), metric))
            states.append(self._thinnest(replace(base, stages=tuple(stages))))
        return min(states, key=lambda s: self.fraction(s, metric))

    def removable(self) -> list[str]:
        full = self.full()
        names = [name for d in range(self.n) for c in self.options[d]
                 for name in self.remove(self._thinnest(self._with(full, d, c)))]
        for m, mid in self.cores:
            names += self.remove(self._thinnest(replace(full, dropped=m, mid=mid)))
        return list(dict.fromkeys(names))

    def _stage_states(self, d: int, choice: StageChoice) -> int:
        """How many depth combinations stage d's `choice` allows."""
        return math.prod(self.deep[name] for name in self._deep_kept(self._with(self.full(), d, choice))
                         if name.startswith((f"down{d}.", f"up{self.n - 1 - d}.")))

    def size(self) -> int:
        return sum(math.prod(sum(self._stage_states(d, c) for c in self.options[d]) for d in range(self.n - m))
                   for m, _ in self.cores)

    def states(self):
        """Every state of the space, once each (size() of them)."""
        full = self.full()
        for m, mid in self.cores:
            for combo in itertools.product(*self.options[:self.n - m]):
                state = Layout(m, mid, tuple(combo) + full.stages[self.n - m:])
                kept = self._deep_kept(state)
                for depths in itertools.product(*(range(self.deep[name], 0, -1) for name in kept)):
                    yield self._normal(state, dict(zip(kept, depths)))

    def sample(self, rng) -> Layout:
        """A random state: the number of dropped stages and the mid block uniformly among those that fit, then
        each remaining stage's choice and each kept attention's depth uniformly (`rng` a random.Random)."""
        m, mid = rng.choice(self.cores)
        full = self.full()
        stages = [rng.choice(options) for options in self.options[:self.n - m]] + list(full.stages[self.n - m:])
        state = Layout(m, mid, tuple(stages))
        return self._normal(state, {name: rng.randint(1, self.deep[name]) for name in self._deep_kept(state)})

    def _label(self, d: int, choice: StageChoice) -> str:
        removed = self.remove(self._with(self.full(), d, choice))
        return " ".join(removed) if removed else "keep all"

    def suggest(self, trial) -> Layout:
        """A state sampled by an Optuna trial: the mid block and dropped stages, then each stage left, then the
        depth of each attention kept."""
        labels = {f"{m} inner stage(s) dropped, mid {mid}": (m, mid) for m, mid in self.cores}
        m, mid = labels[trial.suggest_categorical("core", list(labels))]
        stages = list(self.full().stages)
        for d in range(self.n - m):
            choices = {self._label(d, c): c for c in self.options[d]}
            stages[d] = choices[trial.suggest_categorical(f"stage down{d}/up{self.n - 1 - d}", list(choices))]
        state = Layout(m, mid, tuple(stages))
        return self._normal(state, {name: trial.suggest_int(f"layers {name}", 1, self.deep[name])
                                    for name in self._deep_kept(state)})

    def undominated(self, metrics: list[str], unit_loss: Callable[[str], float]) -> DiffusersSpace:
        """This space without the stage choices another choice of the same stage beats (saves no less of every
        cost in `metrics` and loses no more; of equals, the first stays). Exact where costs and loss add up over
        units (parameters or MACs, the additive objective): a stage's choice then changes a plan's costs and
        loss by its own units alone, so a beaten choice is in no best plan. Each stage keeps its full choice, and
        a stage whose attentions may lose layers keeps every choice (its depths make each a family of plans)."""
        full = self.full()
        pruned = copy.copy(self)
        pruned.options = []
        for d, options in enumerate(self.options):
            if any(name.startswith((f"down{d}.", f"up{self.n - 1 - d}.")) for name in self.deep):
                pruned.options.append(list(options))
                continue
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

    def __init__(self, teacher_config: dict, granularity: str = "block", tokens: int | None = None):
        super().__init__(teacher_config, tokens)
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


class BlockSpace(Space):
    """A transformer's diffusers plans: any set of whole blocks, every stack keeping one (see the module
    docstring). Costs add up over the blocks, with the family's correction where removing a block changes a kept
    one (SD3's new last block drops its text half)."""

    kind = "diffusers"

    def __init__(self, teacher_config: dict, scorable: Callable[[str], bool] = lambda name: True,
                 tokens: int | None = None):
        from prunekit.families import family_of

        super().__init__(teacher_config, tokens)
        self.family = family_of(teacher_config)
        blocks = enumerate_units(teacher_config, "pair", costs=False)  # whole blocks, in forward order
        self.order = [u.name for u in blocks]
        self.stacks: dict[str, list[str]] = {}
        for unit in blocks:
            self.stacks.setdefault(unit.stage, []).append(unit.name)

    def _fits(self, state: frozenset) -> bool:
        return all(any(name not in state for name in names) for names in self.stacks.values())

    def full(self) -> frozenset:
        return frozenset()

    def remove(self, state: frozenset) -> list[str]:
        return [name for name in self.order if name in state]

    def additive_fraction(self, remove: list[str], metric: str) -> float:
        correction = self.family.cost_correction(self.config, remove, metric, self.units)
        return super().additive_fraction(remove, metric) + correction / getattr(self.teacher, metric)

    def removals(self, state: frozenset) -> list[frozenset]:
        return [state | {name} for name in self.order if name not in state and self._fits(state | {name})]

    def restorations(self, state: frozenset) -> list[frozenset]:
        return [state - {name} for name in self.order if name in state]

    def smallest(self, metric: str) -> frozenset:
        """Every stack down to its cheapest block."""
        kept = {min(names, key=lambda name: (getattr(self.units[name], metric), name))
                for names in self.stacks.values()}
        return frozenset(name for name in self.order if name not in kept)

    def removable(self) -> list[str]:
        return list(self.order)

    def size(self) -> int:
        return math.prod(2 ** len(names) - 1 for names in self.stacks.values())

    def _repaired(self, state: frozenset) -> frozenset:
        """`state`, with a stack that would lose every block keeping its first."""
        return state - {names[0] for names in self.stacks.values() if all(name in state for name in names)}

    def states(self):
        for chosen in itertools.product([False, True], repeat=len(self.order)):
            state = frozenset(name for name, gone in zip(self.order, chosen) if gone)
            if self._fits(state):
                yield state

    def sample(self, rng) -> frozenset:
        return self._repaired(frozenset(name for name in self.order if rng.random() < 0.5))

    def suggest(self, trial) -> frozenset:
        """A state sampled by an Optuna trial: for each block, whether it goes (a stack keeps its first, if none)."""
        return self._repaired(frozenset(name for name in self.order if trial.suggest_categorical(name, [False, True])))

    def undominated(self, metrics: list[str], unit_loss: Callable[[str], float]) -> BlockSpace:
        return self


def make_space(kind: str, teacher_config: dict, granularity: str = "block",
               scorable: Callable[[str], bool] = lambda name: True, tokens: int | None = None) -> Space:
    """The plans of `kind` ('diffusers', offering finer choices where `scorable` says the objective scores their
    units, or 'free' over the units of `granularity`), costed at `tokens` text tokens (None: the family's); a
    transformer's diffusers plans are sets of blocks."""
    from prunekit.families import family_of

    if kind not in KINDS:
        raise PrunekitError(f"unknown plan kind {kind!r}: use one of {', '.join(KINDS)}.")
    if kind == "free":
        return FreeSpace(teacher_config, granularity, tokens)
    space = {"layout": DiffusersSpace, "blocks": BlockSpace}[family_of(teacher_config).space]
    return space(teacher_config, scorable, tokens)
