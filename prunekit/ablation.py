"""Run-time ablation: remove units from a diffusers denoiser in place, and put them back.

`with ablate(unet, ["down1.pair1", "mid"]): ...` swaps every module of the named units for a
parameter-free stand-in (setattr on the module's parent) and swaps the originals back on exit, also on an
exception: no copy of the model, no weight touched, outputs afterwards bit-identical to before.

The stand-ins are prunekit.standins' (which module gets which is the unit's family's choice).

Units that share a module (a pair and its resnet, `mid` and `mid.res0`, an attention and its transformer
layers, `stage0` and the blocks in it, adjacent stages, which share a downsampler) cannot be ablated
together: `check_together` refuses them with a PrunekitError, and `compatible_units` lists what may join a set.
"""
from __future__ import annotations

import difflib
import functools
import json
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import nn

from prunekit.errors import PrunekitError
from prunekit.graph import all_units
from prunekit.units import Unit

_ACTIVE: weakref.WeakKeyDictionary[nn.Module, list[Unit]] = weakref.WeakKeyDictionary()


@functools.lru_cache(maxsize=8)
def _units_of(config_key: str) -> dict[str, Unit]:
    return all_units(json.loads(config_key))


def unit_table(module: nn.Module) -> dict[str, Unit]:
    """Every unit of the denoiser `module` by name, from its config (so it holds while units are ablated)."""
    from prunekit.families import config_of

    return _units_of(json.dumps(config_of(module), sort_keys=True, default=list))


def resolve(unet: nn.Module, units: Iterable[Unit | str] | Unit | str) -> list[Unit]:
    """The units of `unet` that `units` (Unit objects or names, or one of them) name; a unit is its name."""
    table = unit_table(unet)
    resolved = []
    for unit in [units] if isinstance(units, (str, Unit)) else units:
        name = unit.name if isinstance(unit, Unit) else unit
        found = table.get(name)
        if found is None:
            close = difflib.get_close_matches(str(name), table, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise PrunekitError(f"this {type(unet).__name__} has no unit {name!r}{hint}: list its units with "
                                "`prunekit inspect`.")
        resolved.append(found)
    return resolved


def check_together(units: list[Unit]) -> None:
    """Refuse units that cannot be ablated at once: the same unit twice, or two that share a module."""
    for i, a in enumerate(units):
        for b in units[i + 1:]:
            if a.name == b.name:
                raise PrunekitError(f"unit {a.name} is listed twice: list it once.")
            shared = a.overlap(b)
            if shared is not None:
                raise PrunekitError(f"units {a.name} and {b.name} overlap (both hold {shared}): "
                                    "ablate one of them, not both.")


def compatible_units(unet: nn.Module, chosen: Iterable[Unit | str] = ()) -> list[Unit]:
    """The units of `unet` (all granularities) that may be ablated together with all of `chosen`."""
    chosen = resolve(unet, chosen)
    check_together(chosen)
    return [u for u in unit_table(unet).values()
            if all(u.name != c.name and u.overlap(c) is None for c in chosen)]


def ablated_units(unet: nn.Module) -> tuple[str, ...]:
    """The names of the units of `unet` ablated right now, in the order they were ablated."""
    return tuple(u.name for u in _ACTIVE.get(unet, ()))


def standins(module: nn.Module, unit: Unit) -> list[tuple[str, nn.Module]]:
    """(module path, stand-in) for every module of `module` that removing `unit` swaps (its family's choice)."""
    from prunekit.families import config_of, family_of

    return family_of(config_of(module)).standins(module, unit, unit_table(module))


@contextmanager
def ablate(unet: nn.Module, units: Iterable[Unit | str] | Unit | str) -> Iterator[list[Unit]]:
    """Remove `units` (Unit objects or names) from `unet` in place for the body of the `with`.

    Yields the resolved units. Contexts may nest over disjoint units; overlapping units, also across nested
    contexts, are refused with a PrunekitError before anything changes.
    """
    removed = resolve(unet, units)
    active = _ACTIVE.setdefault(unet, [])
    check_together(active + removed)
    originals: list[tuple[nn.Module, str, nn.Module]] = []
    active.extend(removed)
    try:
        for unit in removed:
            for path, standin in standins(unet, unit):
                parent_path, _, name = path.rpartition(".")
                parent = unet.get_submodule(parent_path)
                originals.append((parent, name, parent.get_submodule(name)))
                setattr(parent, name, standin)
        yield removed
    finally:
        for parent, name, module in reversed(originals):
            setattr(parent, name, module)
        for unit in removed:
            active.remove(unit)
