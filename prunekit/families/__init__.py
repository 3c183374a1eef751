"""Denoiser families: what prunekit must know about one kind of diffusers denoiser, and the registry.

A family is one object (`Family`) that general code asks instead of branching on the denoiser's class: how to
build it on the meta device, the inputs of one step (for counting MACs), its units at each granularity, the
parameter-free stand-ins that ablate them, and the plain diffusers student (config and weight map) that
removing them leaves. `family_of(config)` picks the family of a config by its `_class_name`; a config without
one is a U-Net's. Each family lives in this package: unet (UNet2DConditionModel, a package of its own), and
the transformer families sd3, flux, pixart and sana, one module each, which share the block-stack machinery
of `blocks`. A family's code imports only what lies below the families (prunekit.units, .standins,
.weightmap), never the general code that asks it.
"""
from __future__ import annotations

from prunekit.errors import PrunekitError


class Family:
    """One kind of denoiser. Subclasses fill in every method; general code calls only these."""

    name: str  # "unet", "sd3", ...
    classes: tuple[str, ...]  # the diffusers class names it builds (the first is the plain one)
    folder: str  # the pipeline's subfolder holding it: "unet" or "transformer"
    tokens: int  # text tokens of one step's inputs when costs are counted, for a model without its pipeline
    granularities: tuple[str, ...]  # the unit granularities it lists, the first the finest
    free_plans: bool  # whether it takes free plans (parameter-free stand-ins kept in the student)
    runs_pipelines: bool  # whether prunekit samples, sweeps and distils its pipelines (else architecture work only)
    proxy_sweeps: bool  # whether the sweep's proxy mode (a block-by-block forward) knows its layout
    space: str  # its diffusers plans (prunekit.planner.space): "layout" (a U-Net's stages) or "blocks" (any blocks)
    drawing: str  # how the report draws it (prunekit.report.diagram): "u-net" or "stacks"

    def build_meta(self, config: dict):
        """The denoiser of `config` on the meta device."""
        raise NotImplementedError

    def model_class(self, config: dict):
        """The diffusers class that builds and loads the denoiser of `config`."""
        raise NotImplementedError

    def check_config(self, config: dict, source: str) -> None:
        """Refuse, in one sentence naming `source`, a config this family's class cannot be built from."""
        raise NotImplementedError

    def check_builds(self, config: dict, source: str, label: str) -> None:
        """Refuse a config diffusers cannot build, with diffusers' reason, in one sentence naming `source`."""
        try:
            self.build_meta(config)
        except Exception as error:  # noqa: BLE001 - diffusers raises anything on a garbled config; say which
            detail = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            raise PrunekitError(f"{source} is not a {label} config diffusers can build ({detail}): fix it or pass "
                                "another model.") from None

    def example_inputs(self, config: dict, batch: int, tokens: int, device) -> dict:
        """Keyword inputs of one denoising step at the config's sample size."""
        raise NotImplementedError

    def pipeline_tokens(self, index: dict, tokenizer_length: int) -> int:
        """Text tokens of one step as the pipeline of `index` (its model_index.json) encodes a prompt, its first
        tokenizer taking `tokenizer_length`: the family's published length unless the family says otherwise."""
        return self.tokens

    def predict(self, module, sample, timestep, conditioning):
        """The denoiser's prediction for `sample` at `timestep` (as the model reads it) under `conditioning`
        (prunekit.conditioning.Conditioning), as its pipeline calls it."""
        raise NotImplementedError

    def add_units(self, builder, module, granularity: str) -> None:
        """Add the units of `module` at `granularity` to `builder` (a prunekit.units.UnitBuilder), in forward
        order."""
        raise NotImplementedError

    def units(self, module_or_config) -> dict:
        """Every unit of the denoiser (a module, or a config built on the meta device) at every granularity, by
        name, without MACs: what a plan may name (prunekit.graph counts the costs)."""
        from prunekit.units import unit_table

        module = self.build_meta(config_of(module_or_config)) if isinstance(module_or_config, dict) \
            else module_or_config
        return unit_table(module, self.add_units, self.granularities)

    def named_units(self, module_or_config, names: list[str]) -> list:
        """The units `names` names, in that order; unknown names raise one PrunekitError listing them."""
        units = self.units(module_or_config)
        unknown = [name for name in names if name not in units]
        if unknown:
            raise PrunekitError(f"unknown unit name(s) {', '.join(unknown)}: run `prunekit inspect` on the model "
                                "to list the units it has.")
        return [units[name] for name in names]

    def depth(self, unit, config: dict) -> int:
        """How deep `unit` lies (what `prunekit inspect` prints)."""
        raise NotImplementedError

    def footnote(self, config: dict) -> str:
        """What `prunekit inspect` says under its table about depth and the MAC counts."""
        raise NotImplementedError

    def standins(self, module, unit, table: dict) -> list:
        """(module path, stand-in) for every module of `module` that ablating `unit` swaps; `table` is every unit
        by name."""
        raise NotImplementedError

    def plain_student(self, teacher_config: dict, remove: list[str]) -> tuple[dict, dict[str, str]]:
        """The plain diffusers student config and weight map that removing `remove` leaves (a diffusers plan)."""
        raise NotImplementedError

    def cost_correction(self, config: dict, remove: list[str], metric: str, units: dict) -> int:
        """What a plain student removing `remove` costs beyond the teacher less the removed units (0 where costs
        add up over units)."""
        return 0

    def feature_pairs(self, student, teacher, weight_map: dict[str, str], layers: str) -> list[tuple[str, str]]:
        """(student path, teacher path) of every feature distillation matches (prunekit.distill.features)."""
        raise NotImplementedError

    def feature_points(self, teacher, layers: str) -> list[str]:
        """Every path of `teacher` that feature_pairs may match, whatever the student (a shared teacher memo,
        prunekit.distill.teacher_memo, taps them all)."""
        raise NotImplementedError

    def feature(self, path: str, output):
        """The hidden states in what its module at `path` returned (a feature distillation matches)."""
        raise NotImplementedError

    def presets(self, config: dict) -> dict:
        """Preset name -> the units it removes from the denoiser of `config`, for the presets whose rule fits it."""
        raise NotImplementedError

    def preset_problem(self, name: str, config: dict) -> str:
        """Why preset `name` does not fit the denoiser of `config`, as a clause after the preset's name."""
        return f"does not fit this {self.classes[0]}"


def _registry() -> dict[str, Family]:
    from prunekit.families.flux import FLUX
    from prunekit.families.pixart import PIXART
    from prunekit.families.sana import SANA
    from prunekit.families.sd3 import SD3
    from prunekit.families.unet import UNET

    return {cls: family for family in (UNET, SD3, FLUX, PIXART, SANA) for cls in family.classes}


def _default() -> Family:
    from prunekit.families.unet import UNET

    return UNET


def family_of(config: dict) -> Family:
    """The family of the denoiser `config` describes: by its `_class_name`, a U-Net when it names none."""
    kind = config.get("_class_name") if isinstance(config, dict) else None
    if kind is None:
        return _default()
    family = _registry().get(kind)
    if family is None:
        known = ", ".join(sorted(_registry()))
        raise PrunekitError(f"prunekit does not know the denoiser class {kind!r}: it prunes {known}.")
    return family


def denoiser_config(config: dict, family: Family) -> dict:
    """`config` without private keys, naming its class unless its family is the default one (so a U-Net's
    config, and its fingerprint, stay what they were before there were families)."""
    plain = {key: value for key, value in config.items() if not key.startswith("_")}
    return plain if family is _default() else {"_class_name": family.classes[0], **plain}


def canonical_config(config: dict) -> dict:
    """`config` with every default filled in and private keys dropped (but a transformer's class), as diffusers
    builds it."""
    family = family_of(config)
    return denoiser_config(dict(family.build_meta(config).config), family)


def config_of(module_or_config) -> dict:
    """The config of a denoiser module or config, as `denoiser_config` gives it (a module names its class)."""
    if isinstance(module_or_config, dict):
        config = module_or_config
    else:
        config = {"_class_name": type(module_or_config).__name__, **module_or_config.config}
    return denoiser_config(config, family_of(config))


def denoiser_slot(pipe) -> str:
    """The name of a pipeline's denoiser component: "unet" or "transformer"."""
    return "unet" if "unet" in pipe.components else "transformer"


def denoiser_of(pipe):
    """A pipeline's denoiser: its U-Net or its transformer."""
    return getattr(pipe, denoiser_slot(pipe))
