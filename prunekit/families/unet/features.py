"""The U-Net's feature distillation points: its stage outputs, each matched to the teacher stage its weights came from.

A U-Net's features are the outputs of every stage (`down_blocks.i`, `up_blocks.i`). A student stage is
matched to the teacher stage its weights came from (read off the plan's weight map). Where the two stage outputs
differ in shape, an earlier point of equal shape is taken by one general rule (`match_points`): walking
back from the end of the teacher's stage through the outputs of its parts (resnets, attentions,
samplers), the first teacher point whose shape the student's stage also produces is paired with the
student's latest point of that shape. For BK-SDM-Tiny this pairs the student's last down stage (which
lost its downsampler with the innermost stage) with the teacher's last attention before its downsampler,
as BK-SDM did.

`layers="self-attn"` (KOALA's finding: self-attention features matter most for SDXL students) matches instead
the output of every self-attention (`attn1` of each transformer layer) that the student keeps, with the
teacher's self-attention it was copied from, read off the weight map as the stages are: a student transformer
layer maps to one teacher layer. A stage's attention that the student keeps whole maps layer for layer.
"""
from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.weightmap import tensor_sources

STAGES = ("down_blocks", "up_blocks")
_PARTS = ("resnets", "attentions", "downsamplers", "upsamplers")


def stage_map(weight_map: dict[str, str]) -> dict[str, str]:
    """Student stage -> teacher stage ("up_blocks.0" -> "up_blocks.1"), read off a plan's weight map."""
    stages: dict[str, set[str]] = {}
    for student_path, teacher_path in weight_map.items():
        student, teacher = student_path.split("."), teacher_path.split(".")
        if student[0] in STAGES and len(student) > 2:
            stages.setdefault(".".join(student[:2]), set()).add(".".join(teacher[:2]))
    mixed = {stage: sorted(sources) for stage, sources in stages.items() if len(sources) != 1}
    if mixed:
        stage, sources = next(iter(mixed.items()))
        raise PrunekitError(f"the plan's weight map fills student stage {stage} from several teacher stages "
                            f"({', '.join(sources)}): make the plan again with `prunekit plan`.")
    return {stage: sources.pop() for stage, sources in sorted(stages.items())}


def candidate_points(model: nn.Module, stage: str) -> list[str]:
    """`stage` and the paths of its parts (resnets.i, attentions.i, samplers): where features may be taken."""
    block = model.get_submodule(stage)
    parts = [f"{stage}.{group}.{i}" for group in _PARTS for i in range(len(getattr(block, group, None) or []))]
    return parts + [stage]


def point_shapes(meta: nn.Module, points: list[str], inputs: dict) -> list[tuple[str, tuple]]:
    """(path, output shape) of `points` in the order a forward pass of `meta` (a U-Net on the meta device) on
    `inputs` reaches them."""
    modules = dict(meta.named_modules())
    shapes: dict[str, tuple] = {}

    def recorder(path: str):
        def record(module, args, output) -> None:
            shapes.setdefault(path, tuple((output if isinstance(output, torch.Tensor) else output[0]).shape))
        return record

    hooks = [modules[path].register_forward_hook(recorder(path)) for path in points]
    try:
        with torch.device("meta"):
            meta(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return list(shapes.items())


def match_points(student: list[tuple[str, tuple]], teacher: list[tuple[str, tuple]]) -> tuple[str, str] | None:
    """The (student path, teacher path) pair of one matched stage, from each side's (path, shape) in forward order.

    The latest teacher point whose shape the student also produces, with the student's latest point of that
    shape; None when no shapes agree.
    """
    for teacher_path, shape in reversed(teacher):
        same = [path for path, student_shape in student if student_shape == shape]
        if same:
            return same[-1], teacher_path
    return None


def self_attention_pairs(student: nn.Module, weight_map: dict[str, str]) -> list[tuple[str, str]]:
    """(student path, teacher path) of every self-attention the student keeps, in forward order."""
    paths = [path for path, _ in student.named_modules() if path.endswith(".attn1")]
    sources = tensor_sources([f"{path}.to_q.weight" for path in paths], weight_map)
    return [(path, sources[f"{path}.to_q.weight"][:-len(".to_q.weight")]) for path in paths]


def feature_points(teacher: nn.Module, layers: str) -> list[str]:
    """Every teacher path a student's pairs may take: each self-attention (`self-attn`), or each candidate point
    of each stage."""
    if layers == "self-attn":
        return [path for path, _ in teacher.named_modules() if path.endswith(".attn1")]
    return [point for name in STAGES for i in range(len(getattr(teacher, name)))
            for point in candidate_points(teacher, f"{name}.{i}")]


def feature_pairs(student: nn.Module, teacher: nn.Module, weight_map: dict[str, str], layers: str,
                  probe) -> list[tuple[str, str]]:
    """(student path, teacher path) of every feature to match: one per student stage that has a teacher stage
    (`block-out`), or one per self-attention the student keeps (`self-attn`). `probe(model, points)` gives
    the output shapes of `points` in `model` (`point_shapes` on a meta copy)."""
    if layers == "self-attn":
        return self_attention_pairs(student, weight_map)
    stages = stage_map(weight_map)
    student_points = {stage: candidate_points(student, stage) for stage in stages}
    teacher_points = {stage: candidate_points(teacher, stage) for stage in stages.values()}
    student_shapes = dict(_grouped(probe(student, sum(student_points.values(), []))))
    teacher_shapes = dict(_grouped(probe(teacher, sum(teacher_points.values(), []))))
    pairs = []
    for student_stage, teacher_stage in stages.items():
        pair = match_points(student_shapes[student_stage], teacher_shapes[teacher_stage])
        if pair is not None:
            pairs.append(pair)
    return pairs


def _grouped(shapes: list[tuple[str, tuple]]):
    """(stage, [(path, shape), ...]) for each stage among `shapes`, keeping forward order within a stage."""
    groups: dict[str, list] = {}
    for path, shape in shapes:
        groups.setdefault(".".join(path.split(".")[:2]), []).append((path, shape))
    return groups.items()
