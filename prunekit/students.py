"""Students of free plans: the teacher's architecture with the removed units swapped for prunekit's stand-ins.

A plan of kind `diffusers` builds a plain diffusers model (prunekit.surgery). A plan of kind `free` removes
units no diffusers config can drop; its student is a `FreeUNet2DConditionModel`: the teacher's
UNet2DConditionModel with every removed unit's modules replaced by the parameter-free stand-ins of
prunekit.ablation, for good. Its config records the removed units (`_prunekit_removed`), so `from_config`
and `from_pretrained` rebuild the stand-ins, and its weights are saved under the variant
`prunekit-free` (diffusion_pytorch_model.prunekit-free.safetensors): plain diffusers finds no weights
to load there and stops, rather than filling the removed modules with random ones. A saved pipeline names
this class in model_index.json, so `DiffusionPipeline.from_pretrained` loads it wherever prunekit is
installed; `load_student(DIR)` is the one call for a student directory of either kind.

Beside the student, `prunekit_student.json` is its manifest: the plan kind, the removed units, the teacher's
U-Net fingerprint and the student's parameter count, checked when it is loaded.
"""
from __future__ import annotations

import json
from pathlib import Path

from diffusers import ModelMixin, UNet2DConditionModel

from prunekit.errors import PrunekitError

# diffusers' pipeline loader finds a component's loading method by looking its base classes up by name in the
# component's module (model_index.json names ["prunekit.students", "FreeUNet2DConditionModel"]): ModelMixin must
# be found here.
__all__ = ["FreeUNet2DConditionModel", "ModelMixin", "free_unet", "load_student", "load_student_unet",
           "pipeline_with", "swap_in", "write_manifest"]

REMOVED_KEY = "_prunekit_removed"
VARIANT = "prunekit-free"
MANIFEST = "prunekit_student.json"
MANIFEST_FORMAT = "prunekit.student/1"


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


def pipeline_with(teacher_pipe, unet):
    """A pipeline of the teacher's class, components and settings, with `unet` in place of its denoiser (U-Net
    or transformer)."""
    from prunekit.families import denoiser_slot

    settings = {key: teacher_pipe.config[key] for key in ("requires_safety_checker", "force_zeros_for_empty_prompt")
                if key in teacher_pipe.config}
    return type(teacher_pipe)(**{**teacher_pipe.components, denoiser_slot(teacher_pipe): unet}, **settings)


def swap_in(unet, remove: list[str]) -> None:
    """Replace the modules of units `remove` by their stand-ins in `unet`, for good."""
    from prunekit.ablation import resolve, standins

    for unit in resolve(unet, list(remove)):
        for path, standin in standins(unet, unit):
            parent_path, _, name = path.rpartition(".")
            setattr(unet.get_submodule(parent_path), name, standin)


def free_unet(config: dict, remove: list[str]) -> FreeUNet2DConditionModel:
    """A free student of the teacher `config` without units `remove` (fresh weights, on the current device)."""
    return FreeUNet2DConditionModel.from_config({**config, REMOVED_KEY: list(remove)})


def write_manifest(directory: Path, plan, params: int) -> Path:
    """`prunekit_student.json` in the student directory `directory` (a pipeline or a U-Net folder)."""
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps({"format": MANIFEST_FORMAT, "kind": plan.kind, "remove": list(plan.remove),
                                "teacher": {"name": plan.model_name, "unet_fingerprint": plan.unet_fingerprint},
                                "params": params, "method": plan.method}, indent=2) + "\n", encoding="utf-8")
    return path


def _manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        int(manifest["params"])
        return manifest
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise PrunekitError(f"{path} is missing or garbled: {directory} is not a student saved by "
                            "`prunekit distill`.") from None


def _checked(directory: Path, unet, manifest: dict):
    params = sum(p.numel() for p in unet.parameters())
    if params != int(manifest["params"]):
        raise PrunekitError(f"{directory}'s U-Net has {params:,} parameters but its manifest says "
                            f"{int(manifest['params']):,}: the student was changed after it was saved.")


def load_student(directory: str | Path, **kwargs):
    """The student pipeline saved in `directory` by `prunekit distill` (plan kind diffusers or free), checked
    against its manifest; `kwargs` go to DiffusionPipeline.from_pretrained."""
    from diffusers import DiffusionPipeline

    directory = Path(directory)
    manifest = _manifest(directory)
    from prunekit.families import denoiser_of
    from prunekit.models import absent_components

    index = json.loads((directory / "model_index.json").read_text(encoding="utf-8"))
    pipe = DiffusionPipeline.from_pretrained(directory, local_files_only=True, **{**absent_components(index),
                                                                                   **kwargs})
    _checked(directory, denoiser_of(pipe), manifest)
    return pipe


def load_student_unet(directory: str | Path):
    """A student denoiser folder saved by `prunekit distill` (student_ema/), of either plan kind, checked against
    its manifest."""
    from prunekit.families import family_of

    directory = Path(directory)
    manifest = _manifest(directory)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    kind = FreeUNet2DConditionModel if manifest["kind"] == "free" else family_of(config).model_class(config)
    unet = kind.from_pretrained(directory, local_files_only=True)
    _checked(directory, unet, manifest)
    return unet
