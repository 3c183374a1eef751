"""Feature distillation points: forward hooks keyed by module path, and which features a student matches.

Which features are matched is the denoiser family's choice (prunekit.families): a U-Net's are its stage
outputs, each matched to the teacher stage its weights came from, or (`layers="self-attn"`, KOALA's finding
for SDXL students) every self-attention the student keeps (prunekit.families.unet.features has the rule); a
transformer's are its kept blocks' outputs (the image stream), each with the teacher block's it was copied
from, or their attentions.

Hooks are registered on the unwrapped model's modules and keyed by module path, so they work unchanged
when the model is then wrapped for DDP (no "module." prefixes to get wrong, BK-SDM's multi-GPU bug).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from prunekit.errors import PrunekitError

LAYERS = ("block-out", "self-attn")  # what features are matched: stage outputs (BK-SDM's), self-attentions (KOALA's)


class FeatureTaps:
    """Forward hooks that keep the outputs of some modules of one model, keyed by module path.

    Outputs are kept only inside `capture()`, so recomputation during the backward pass (gradient
    checkpointing) neither overwrites them nor keeps extra tensors alive.
    """

    def __init__(self, model: nn.Module, paths):
        from prunekit.families import config_of, family_of

        self._family = family_of(config_of(model))
        modules = dict(model.named_modules())
        self.paths = list(paths)
        missing = [path for path in self.paths if path not in modules]
        if missing:
            raise PrunekitError(f"the model has no module(s) {', '.join(missing)}: the plan does not fit this U-Net.")
        self.features: dict[str, torch.Tensor] = {}
        self._active = False
        self._handles = [modules[path].register_forward_hook(self._keeper(path)) for path in self.paths]

    def _keeper(self, path: str):
        def keep(module, args, output):
            if self._active:
                self.features[path] = self._family.feature(path, output)
        return keep

    @contextmanager
    def capture(self, enabled: bool = True):
        """Keep the hooked outputs of the forward passes run inside; yields the dict they go to."""
        self.features = {}
        self._active = enabled
        try:
            yield self.features
        finally:
            self._active = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def feature_pairs(student: nn.Module, teacher: nn.Module, weight_map: dict[str, str],
                  layers: str = "block-out") -> list[tuple[str, str]]:
    """(student path, teacher path) of every feature to match, as the denoiser's family chooses them."""
    from prunekit.families import config_of, family_of

    return family_of(config_of(teacher)).feature_pairs(student, teacher, weight_map, layers)


