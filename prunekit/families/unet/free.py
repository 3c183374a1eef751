"""The free plan's student: the teacher U-Net with its removed units' modules swapped for stand-ins, for good.

A plan of kind `free` removes units no diffusers config can drop; its student is a `FreeUNet2DConditionModel`:
the teacher's UNet2DConditionModel with every removed unit's modules replaced by the U-Net's parameter-free
stand-ins (prunekit.families.unet.units). Its config records the removed units (`_prunekit_removed`), so
`from_config` and `from_pretrained` rebuild the stand-ins, and its weights are saved under the variant
`prunekit-free` (diffusion_pytorch_model.prunekit-free.safetensors): plain diffusers finds no weights to load
there and stops, rather than filling the removed modules with random ones. A saved pipeline names this class
in model_index.json, so `DiffusionPipeline.from_pretrained` loads it wherever prunekit is installed.
"""
from __future__ import annotations

from diffusers import ModelMixin, UNet2DConditionModel

from prunekit.families.unet import units
from prunekit.units import unit_table

# diffusers' pipeline loader finds a component's loading method by looking its base classes up by name in the
# component's module (model_index.json names this module): ModelMixin must be found here.
__all__ = ["FreeUNet2DConditionModel", "ModelMixin", "REMOVED_KEY", "free_unet", "swap_in"]

REMOVED_KEY = "_prunekit_removed"
VARIANT = "prunekit-free"


class FreeUNet2DConditionModel(UNet2DConditionModel):
    """A UNet2DConditionModel whose units named in its config's `_prunekit_removed` are prunekit's stand-ins."""

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        made = super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)
        model = made[0] if return_unused_kwargs else made
        swap_in(model, model.config.get(REMOVED_KEY) or [])
        return made

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        if kwargs.get("variant") is None:
            kwargs["variant"] = VARIANT
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory, *args, variant: str | None = None, **kwargs):
        return super().save_pretrained(save_directory, *args, variant=variant or VARIANT, **kwargs)


def swap_in(unet, remove: list[str]) -> None:
    """Replace the modules of units `remove` of the whole U-Net `unet` by their stand-ins, for good."""
    table = unit_table(unet, units.add_units, units.GRANULARITIES)
    for name in remove:
        for path, standin in units.standins(unet, table[name], table):
            parent_path, _, child = path.rpartition(".")
            setattr(unet.get_submodule(parent_path), child, standin)


def free_unet(config: dict, remove: list[str]) -> FreeUNet2DConditionModel:
    """A free student of the teacher `config` without units `remove` (fresh weights, on the current device)."""
    return FreeUNet2DConditionModel.from_config({**config, REMOVED_KEY: list(remove)})
