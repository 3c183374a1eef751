"""Student directories: a distilled student pipeline or denoiser folder, its manifest, and loading either kind.

A plan of kind `diffusers` gives a plain diffusers student (prunekit.surgery); a plan of kind `free`, the
teacher U-Net with stand-ins in place of the removed units (prunekit.families.unet.free). `load_student(DIR)`
is the one call for a student directory of either kind; `pipeline_with` puts a student into its teacher's
pipeline.

Beside the student, `prunekit_student.json` is its manifest: the plan kind, the removed units, the teacher's
U-Net fingerprint and the student's parameter count, checked when it is loaded.
"""
from __future__ import annotations

import json
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.families.unet.free import FreeUNet2DConditionModel, ModelMixin

# Free students saved before the U-Net family became a package name this module in model_index.json: diffusers
# looks their class up here, and ModelMixin (for its loading method) beside it.
__all__ = ["FreeUNet2DConditionModel", "MANIFEST", "ModelMixin", "load_student", "load_student_unet", "pipeline_with",
           "write_manifest"]

MANIFEST = "prunekit_student.json"
MANIFEST_FORMAT = "prunekit.student/1"


def pipeline_with(teacher_pipe, unet):
    """A pipeline of the teacher's class, components and settings, with `unet` in place of its denoiser (U-Net
    or transformer)."""
    from prunekit.families import denoiser_slot

    settings = {key: teacher_pipe.config[key] for key in ("requires_safety_checker", "force_zeros_for_empty_prompt")
                if key in teacher_pipe.config}
    return type(teacher_pipe)(**{**teacher_pipe.components, denoiser_slot(teacher_pipe): unet}, **settings)


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
    kind = family_of(config).model_class(config)  # a free student's config names its removed units
    unet = kind.from_pretrained(directory, local_files_only=True)
    _checked(directory, unet, manifest)
    return unet
