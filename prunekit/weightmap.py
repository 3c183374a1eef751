"""Weight maps: which teacher tensor fills each student tensor, and the check that every one fits.

A weight map names, for student modules (or single tensors), the teacher module (or tensor) their tensors come
from; the longest prefix of a student tensor's name decides. A source naming a tensor may select rows of it
(`SOURCE#chunks=N:i,j`: SD3's text-free last block takes two of an ordinary block's six modulations). Surgery
(prunekit.surgery) and every family's plain students (prunekit.families) are checked here: each student tensor
must come from exactly one same-shape teacher tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class SurgeryReport:
    """How the student's tensors were filled: each must come from exactly one same-shape teacher tensor."""

    copied: int = 0  # student tensors copied (or, on the meta device, matched) from the teacher
    unmapped: list[str] = field(default_factory=list)  # student tensors with no teacher source
    mismatched: list[str] = field(default_factory=list)  # "student <- teacher: shape vs shape"
    reused: list[str] = field(default_factory=list)  # teacher tensors that fed more than one student tensor
    dropped: int = 0  # teacher tensors the student does not use

    @property
    def ok(self) -> bool:
        return not (self.unmapped or self.mismatched or self.reused)

    def problems(self, limit: int = 3) -> str:
        items = self.unmapped + self.mismatched + self.reused
        more = f" and {len(items) - limit} more" if len(items) > limit else ""
        return "; ".join(items[:limit]) + more


def tensor_sources(student_keys, weight_map: dict[str, str]) -> dict[str, str | None]:
    """For each student tensor name, the teacher tensor name the map gives it (None where none covers it): the
    entry of its longest prefix, the tensor's own name included. An entry naming a tensor may select rows of it
    (`SOURCE#chunks=N:i,j`: split dimension 0 into N chunks and stack chunks i, j; see `source_tensor`)."""
    sources = {}
    for key in student_keys:
        parts = key.split(".")
        sources[key] = None
        for i in range(len(parts), 0, -1):
            prefix = ".".join(parts[:i])
            if prefix in weight_map:
                sources[key] = weight_map[prefix] + key[len(prefix):]
                break
    return sources


def source_tensor(state: dict, source: str) -> torch.Tensor:
    """The teacher tensor a weight-map source names: `state[name]`, or with `#chunks=N:i,j` the chunks i, j (in
    that order) of its dimension 0 split N ways. Works on meta tensors too."""
    name, _, spec = source.partition("#chunks=")
    tensor = state[name]
    if not spec:
        return tensor
    count, picks = spec.split(":")
    chunks = tensor.chunk(int(count), dim=0)
    return torch.cat([chunks[int(i)] for i in picks.split(",")], dim=0)


def check_map(student: nn.Module, teacher: nn.Module, weight_map: dict[str, str]) -> tuple[SurgeryReport, dict]:
    """Match every student tensor to its teacher tensor through `weight_map`; works on any device, meta too."""
    teacher_state = {k: v.to("meta") for k, v in teacher.state_dict().items()}
    sources = tensor_sources(student.state_dict().keys(), weight_map)
    report, users = SurgeryReport(), {}
    for key, tensor in student.state_dict().items():
        source = sources[key]
        if source is None or source.partition("#")[0] not in teacher_state:
            report.unmapped.append(f"{key} <- {source or 'nothing'}")
            continue
        shape = tuple(source_tensor(teacher_state, source).shape)
        if shape != tuple(tensor.shape):
            report.mismatched.append(f"{key} <- {source}: {tuple(tensor.shape)} vs {shape}")
        else:
            report.copied += 1
            users.setdefault(source, []).append(key)
    report.reused = [f"{source} -> {', '.join(keys)}" for source, keys in users.items() if len(keys) > 1]
    report.dropped = len(teacher_state) - len({source.partition("#")[0] for source in users})
    return report, sources
