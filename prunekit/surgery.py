"""Surgery: the one place that turns a teacher denoiser and the units to remove into a student and its weight map.

A plan has one of two kinds (KINDS). A `diffusers` plan's student is a plain diffusers model of the teacher's
class, whose config and weight map the teacher's family derives (prunekit.families: a U-Net's in
prunekit.families.unet.surgery, fewer stages, blocks, layers or transformer layers; a transformer's, fewer
blocks). A `free` plan's student (U-Nets only) is the teacher's architecture with the removed units swapped
for prunekit's parameter-free stand-ins (prunekit.students), so any set of non-overlapping units can go; its
weight map keeps every module where it was. The weight map names, for every student module that holds
tensors, the teacher module (or tensor) its tensors come from. `derive` gives both for a kind;
`build_student` builds the student with every tensor copied exactly from the teacher.
"""
from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.weightmap import check_map, source_tensor

KINDS = ("diffusers", "free")


def derive(teacher_config: dict, remove: list[str], kind: str) -> tuple[dict, dict[str, str]]:
    """The student config and weight map that removing `remove` leaves, for a plan of `kind` (see KINDS).

    A free student's config is the teacher's (its stand-ins come from the removed units); its map keeps every
    module where it was.
    """
    from prunekit.families import canonical_config, family_of

    if kind not in KINDS:
        raise PrunekitError(f"unknown plan kind {kind!r}: use one of {', '.join(KINDS)}.")
    family = family_of(teacher_config)
    if kind == "diffusers":
        return family.plain_student(teacher_config, list(remove))
    if not family.free_plans:
        raise PrunekitError(f"free plans are made for U-Nets only; a {family.classes[0]} takes diffusers plans "
                            "(whole blocks): use --kind diffusers.")
    from prunekit.families.unet.free import REMOVED_KEY

    family.named_units(teacher_config, remove)  # every name is a unit of this teacher
    teacher = family.build_meta(teacher_config)
    config = {**canonical_config(teacher_config), REMOVED_KEY: list(remove)}
    return config, {name: name for name, module in teacher.named_children() if module.state_dict()}


def _student_module(config: dict, kind: str, remove: list[str]):
    from prunekit.families import family_of
    from prunekit.families.unet.free import free_unet

    return family_of(config).model_class(config).from_config(config) if kind == "diffusers" \
        else free_unet(config, remove)


def build_student(teacher_unet: nn.Module, plan_or_remove, kind: str = "diffusers", strict: bool = True):
    """The student of a Plan (its kind, stored config and map) or of a list of unit names removed as a plan of
    `kind`, and a SurgeryReport.

    The student lies on the teacher's device in its dtype (a meta teacher gives a meta student) and every
    tensor is copied from the teacher through the weight map. With `strict`, a student tensor without
    exactly one same-shape teacher source raises a PrunekitError; otherwise the report lists it and it
    keeps its fresh initialisation.
    """
    if isinstance(plan_or_remove, (list, tuple)):
        remove = list(plan_or_remove)
        from prunekit.families import config_of

        config, weight_map = derive(config_of(teacher_unet), remove, kind)
    else:
        remove, kind = list(plan_or_remove.remove), plan_or_remove.kind
        config, weight_map = plan_or_remove.student_config, plan_or_remove.weight_map
    device, dtype = teacher_unet.device, teacher_unet.dtype
    with torch.device(device):
        student = _student_module(config, kind, remove)
    if student.dtype != dtype:
        student = student.to(dtype)
    report, sources = check_map(student, teacher_unet, weight_map)
    if strict and not report.ok:
        raise PrunekitError(f"the plan's weight map does not fit this teacher ({report.problems()}): "
                            "make the plan again for this U-Net.")
    if device.type != "meta":
        teacher_state, student_state = teacher_unet.state_dict(), student.state_dict()
        broken = {entry.split(" <- ")[0] for entry in report.unmapped + report.mismatched}
        with torch.no_grad():
            for key, tensor in student_state.items():
                if key not in broken:
                    tensor.copy_(source_tensor(teacher_state, sources[key]))
    return student, report
