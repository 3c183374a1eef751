"""The frozen teacher's outputs, kept for distillations that feed it the same inputs again.

A frozen teacher's prediction and features depend on its inputs alone. Distillations that draw their data,
noise and timesteps from the same seeds (the recoverable objective's candidates: one recipe, many students)
hand it the same inputs at every step whatever their students are, so all but the first can skip its forward
pass. A `TeacherMemo` is keyed by a digest of the inputs' bytes, never by step, so a hit is exact: the tensors
a pass would have computed. An entry holds the features of every module path tapped when it was computed,
and a run with a memo taps every point any student may match (the family's `feature_points`); a run that
needs a path an entry lacks runs the teacher again and replaces the entry. Past `max_bytes` nothing new is
kept. One memo serves one teacher: the digest covers the inputs, not the model.
"""
from __future__ import annotations

import hashlib

import torch

GIB = 2 ** 30


def _size(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class TeacherMemo:
    """Teacher outputs by input digest (see the module docstring), in one process and on the device used."""

    def __init__(self, max_bytes: int = 2 * GIB):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._entries: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}

    @staticmethod
    def key(*tensors: torch.Tensor | None) -> str:
        """A digest of the tensors' dtypes, shapes and bytes (None counts as a tensor of its own)."""
        digest = hashlib.sha256()
        for tensor in tensors:
            if tensor is None:
                digest.update(b"none;")
                continue
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)};".encode())
            digest.update(tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def get(self, key: str, paths) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """The prediction and features stored under `key` when they include every one of `paths`, else None."""
        entry = self._entries.get(key)
        if entry is None or not set(paths) <= entry[1].keys():
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, key: str, prediction: torch.Tensor, features: dict[str, torch.Tensor]) -> None:
        """Keep a pass's outputs (replacing what `key` held), unless that would pass `max_bytes`."""
        old = self._entries.get(key)
        grown = _size([prediction, *features.values()]) - (_size([old[0], *old[1].values()]) if old else 0)
        if self.bytes + grown > self.max_bytes:
            return
        self._entries[key] = (prediction.detach(), {path: f.detach() for path, f in features.items()})
        self.bytes += grown
