"""Plans: which units of a denoiser go, the student that remains, and what it is predicted to cost.

A plan is data (plan.json, "prunekit.plan/2"): presets, the greedy planner and Optuna make it; surgery
applies it. Its kind (prunekit.surgery.KINDS) says what its student is: `diffusers`, a plain diffusers
U-Net, or `free`, the teacher with the removed units swapped for stand-ins (prunekit.students). Its
student config and weight map always follow from its remove list (prunekit.surgery.derive); `check_teacher`
derives them again and refuses a plan whose stored ones differ, one made for another denoiser, or a remove
list that names a unit twice, units that overlap, or every unit.

Presets live in the denoiser families, which say which of them fit a denoiser (`presets_for`): the U-Net's
BK-SDM, KOALA- and SSD-like presets in prunekit.families.unet.presets, the transformers' `half-depth` (every
second block) and `flux-lite-like` in prunekit.families.blocks.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.families.unet.free import REMOVED_KEY
from prunekit.surgery import KINDS

FORMAT = "prunekit.plan/2"
PRESETS = ("bk-base", "bk-small", "bk-tiny", "koala-like", "ssd-like", "half-depth", "flux-lite-like")
_UNIT_NAME = re.compile(r"(down|up)\d+\.(res|attn|pair)\d+(\.t\d+)?|down\d+\.downsample|up\d+\.upsample"
                        r"|mid(\.res\d+|\.attn\d+(\.t\d+)?)?|stage\d+|(joint|single|block)\d+(\.(attn|ff|cross))?")
_REQUIRED = {"format": str, "model": dict, "method": str, "remove": list, "student": dict}


@dataclass
class Plan:
    """One plan.json: the teacher it is for, the units it removes, the student and its predicted costs."""

    model_name: str
    unet_fingerprint: str
    method: str  # "preset:bk-small", "greedy", "optuna", ...
    remove: list[str]
    student_config: dict  # a complete UNet2DConditionModel config (a free student's names its removed units)
    weight_map: dict[str, str]  # student module path -> teacher module path
    kind: str = "diffusers"  # prunekit.surgery.KINDS
    budget: dict | None = None  # {"metric": "params", "fraction": 0.6}; None for presets
    predicted: dict = field(default_factory=dict)  # params, params_fraction, macs, macs_fraction, tokens, ...
    provenance: dict = field(default_factory=dict)  # prunekit version, created, ...

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "model": {"name": self.model_name, "unet_fingerprint": self.unet_fingerprint},
            "method": self.method,
            "budget": self.budget,
            "remove": list(self.remove),
            "student": {"kind": self.kind, "unet_config": self.student_config, "weight_map": self.weight_map},
            "predicted": self.predicted,
            "provenance": self.provenance,
        }

    def save(self, path) -> Path:
        """Write the plan as JSON to `path` (parent folders created) and return the path."""
        from prunekit.rundir import write_atomically

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(self.to_dict(), indent=2, default=list) + "\n")
        return path

    @classmethod
    def from_dict(cls, data, source: str = "the plan") -> "Plan":
        """A Plan from parsed plan.json, with its format and fields checked."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise PrunekitError(f"{source} has format {found!r}, not {FORMAT!r}: make it again with this "
                                "prunekit (`prunekit plan`).")
        wrong = [key for key, kind in _REQUIRED.items() if not isinstance(data.get(key), kind)]
        model, student = (data[k] if isinstance(data.get(k), dict) else {} for k in ("model", "student"))
        wrong += [f"model.{k}" for k in ("name", "unet_fingerprint") if not isinstance(model.get(k), str)]
        wrong += [f"student.{k}" for k in ("unet_config", "weight_map") if not isinstance(student.get(k), dict)]
        wrong += ["student.kind"] * (student.get("kind", "diffusers") not in KINDS)
        if wrong:
            raise PrunekitError(f"{source} lacks or garbles {', '.join(wrong)}: make it again with `prunekit plan`.")
        bad = [str(name) for name in data["remove"] if not (isinstance(name, str) and _UNIT_NAME.fullmatch(name))]
        if bad:
            raise PrunekitError(f"{source} names unknown unit(s) {', '.join(bad)}: unit names look like "
                                "down1.pair1, mid or stage0 (see `prunekit inspect`).")
        return cls(model["name"], model["unet_fingerprint"], data["method"], list(data["remove"]),
                   student["unet_config"], student["weight_map"], student.get("kind", "diffusers"),
                   data.get("budget"), data.get("predicted") or {}, data.get("provenance") or {})

    @classmethod
    def load(cls, path, teacher_config: dict | None = None) -> "Plan":
        """Read and validate plan.json; with `teacher_config`, also check the plan was made for that U-Net."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise PrunekitError(f"{path} is not UTF-8 text, so not a plan: make it with `prunekit plan`.") from None
        except OSError:
            raise PrunekitError(f"cannot read the plan {path}: check the path.") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PrunekitError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}): "
                                "fix it or make the plan again with `prunekit plan`.") from None
        plan = cls.from_dict(data, str(path))
        if teacher_config is not None:
            plan.check_teacher(teacher_config, str(path))
        return plan

    def check_teacher(self, teacher_config: dict, source: str = "the plan") -> None:
        """Refuse a plan made for another U-Net, one whose remove list this U-Net cannot take (see
        check_removal), or one whose student config or weight map does not follow from its remove list."""
        from prunekit.models import fingerprint
        from prunekit.surgery import derive

        mine = fingerprint(teacher_config)
        if mine != self.unet_fingerprint:
            theirs = f"{self.model_name}, {self.unet_fingerprint[:19]}"
            raise PrunekitError(f"{source} was made for another U-Net ({theirs}) than this one ({mine[:19]}): "
                                "make a plan for this model.")
        check_removal(teacher_config, self.remove, self.kind, source)
        config, weight_map = derive(teacher_config, self.remove, self.kind)
        try:
            same = _normal(self.student_config) == _normal(config)
        except Exception:  # noqa: BLE001 - a stored config diffusers cannot even build
            same = False
        if not same or self.weight_map != weight_map:
            part = "student config" if not same else "weight map"
            raise PrunekitError(f"{source}'s {part} does not follow from its remove list for a {self.kind} plan: it "
                                "was edited or made by another prunekit; make the plan again with `prunekit plan`.")


load = Plan.load


def _normal(config: dict) -> str:
    """A student config as comparable text: every default filled in, tuples as lists, its removed units kept."""
    from prunekit.families import canonical_config

    return json.dumps({**canonical_config(config), REMOVED_KEY: config.get(REMOVED_KEY)}, sort_keys=True, default=list)


def check_removal(teacher_config: dict, remove: list[str], kind: str = "diffusers", source: str = "the plan") -> None:
    """Refuse a remove list that names units the U-Net lacks, a unit twice, two units that overlap (one holds
    a module of the other), or every unit. Adjacent stages share the downsampler between them; a diffusers plan
    removes stages together from the inside out, so there they may overlap."""
    from prunekit.graph import all_units, enumerate_units
    from prunekit.units import Removed, top_level

    units = all_units(teacher_config, costs=False)
    unknown = [name for name in remove if name not in units]
    if unknown:
        raise PrunekitError(f"{source} names unit(s) this denoiser lacks: {', '.join(unknown)}; "
                            "list its units with `prunekit inspect`.")
    twice = sorted({name for name in remove if remove.count(name) > 1})
    if twice:
        raise PrunekitError(f"{source} names {', '.join(twice)} more than once: name each unit once.")
    chosen = [units[name] for name in remove]
    for i, a in enumerate(chosen):
        for b in chosen[i + 1:]:
            if a.overlap(b) is not None and not (kind == "diffusers" and a.kind == b.kind == "stage"):
                raise PrunekitError(f"{source} removes {a.name} and {b.name}, which overlap (both hold "
                                    f"{a.overlap(b)}): remove one of them.")
    removed = Removed.of(chosen)
    if remove and all(removed.state(u) == "removed" for u in top_level(enumerate_units(teacher_config, "block",
                                                                                        costs=False))):
        raise PrunekitError(f"{source} removes every unit of the U-Net: keep at least one.")


def presets_for(teacher_config: dict) -> list[str]:
    """The presets whose rule fits the denoiser of `teacher_config`, in PRESETS order."""
    from prunekit.families import family_of

    fits = family_of(teacher_config).presets(teacher_config)
    return [name for name in PRESETS if name in fits]


def preset_remove(name: str, teacher_config: dict) -> list[str]:
    """The units preset `name` removes from the denoiser of `teacher_config` (a U-Net's: down, mid, up, then
    stages); a preset whose rule does not fit it is refused in one sentence naming those that do."""
    from prunekit.families import family_of

    if name not in PRESETS:
        raise PrunekitError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}.")
    fits = family_of(teacher_config).presets(teacher_config)
    if name in fits:
        return fits[name]
    instead = f"use {', '.join(presets_for(teacher_config))}, or " if fits else ""
    problem = family_of(teacher_config).preset_problem(name, teacher_config)
    raise PrunekitError(f"preset {name} {problem}: {instead}remove units with a budget-driven plan instead.")


def provenance(**extra) -> dict:
    """Who made a plan and when: prunekit, torch and diffusers versions, UTC time, and `extra`."""
    import diffusers
    import torch

    from prunekit import __version__

    return {"prunekit": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "diffusers": diffusers.__version__, **extra}


def make_plan(model_name: str, teacher_config: dict, remove: list[str], method: str,
              budget: dict | None = None, kind: str = "diffusers", tokens: int | None = None, **predicted) -> Plan:
    """A Plan of `kind` removing `remove` from the teacher: student config and weight map, and its costs counted
    exactly on the student (on the meta device) at `tokens` text tokens (None: the family's length), which it
    records."""
    from prunekit.costs import denoiser_costs
    from prunekit.families import family_of
    from prunekit.models import fingerprint
    from prunekit.surgery import derive

    check_removal(teacher_config, list(remove), kind)
    config, weight_map = derive(teacher_config, list(remove), kind)
    tokens = family_of(teacher_config).tokens if tokens is None else tokens
    teacher, student = denoiser_costs(teacher_config, tokens), denoiser_costs(config, tokens)
    fractions = student.fraction_of(teacher)
    costs = {"params": student.params, "params_fraction": fractions["params"],
             "macs": student.macs, "macs_fraction": fractions["macs"],
             "full_macs": student.full_macs, "full_macs_fraction": fractions["full_macs"],
             "teacher_params": teacher.params, "teacher_macs": teacher.macs, "tokens": tokens, **predicted}
    return Plan(model_name, fingerprint(teacher_config), method, list(remove), config, weight_map, kind,
                budget, costs, provenance())


def make_preset(name: str, model_name: str, teacher_config: dict, tokens: int | None = None) -> Plan:
    """The plan of preset `name` for the denoiser of `teacher_config`, its costs at `tokens` text tokens (see
    make_plan and the module docstring)."""
    return make_plan(model_name, teacher_config, preset_remove(name, teacher_config), f"preset:{name}",
                     tokens=tokens)
