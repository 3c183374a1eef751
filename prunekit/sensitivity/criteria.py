"""The field's cheap block scores: how far each unit moves what passes through it, in one pass of the intact
denoiser over calibration latents, with no ablated run at all.

For every module a unit would swap, the intact module's output is compared with what the unit's own
stand-in (prunekit.ablation) returns for the same input: the identity for a transformer block, so that
`cosine` is one minus the cosine similarity of a block's input and output (ShortGPT's Block Influence, the
similarity SANA-1.5 pruned by) and `mse` the mean squared difference of its output and input (Flux.1-Lite's
criterion). Both are averaged over tokens (or pixels) and kept per latent; a unit of several modules sums its
modules' mse and averages their cosine; a module whose stand-in returns another shape (a removed stage's
downsampler) is left out. Calibration latents are noised at fixed levels of the pipeline's own training noise
(prunekit.schedules), one level per latent, as the proxy does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from prunekit.units import Unit


def _tokens(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as (batch, positions, features): channels last for images, as they are for token sequences."""
    if a.dim() == 4:
        a, b = a.flatten(2).transpose(1, 2), b.flatten(2).transpose(1, 2)
    return a.float(), b.float()


def deviation(output: torch.Tensor, standin: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per batch item: 1 - the mean cosine similarity of the two over positions, and their mean squared
    difference."""
    a, b = _tokens(output, standin)
    cosine = F.cosine_similarity(a, b, dim=-1, eps=1e-8).mean(dim=1)
    return {"cosine": (1 - cosine).double(), "mse": (a - b).pow(2).flatten(1).mean(1).double()}


class BlockScores:
    """Both criteria of `units`, for every calibration latent, from one pass of the intact `denoiser` (its
    `family` calls it and picks each module's hidden states)."""

    def __init__(self, denoiser, family, units: list[Unit], batches):
        """`batches` yields (noisy latents, model timesteps, conditioning), each one forward pass."""
        from prunekit.ablation import unit_table

        table = unit_table(denoiser)  # every unit: a stage's stand-ins are its parts'
        swaps: dict[str, list[tuple[str, torch.nn.Module]]] = {}
        for unit in units:
            for path, standin in family.standins(denoiser, unit, table):
                swaps.setdefault(path, []).append((unit.name, standin))
        found: dict[str, dict[str, list[torch.Tensor]]] = {unit.name: {"cosine": [], "mse": []} for unit in units}
        current: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

        def hook(path):
            def compare(module, args, kwargs, output):
                mine = family.feature(path, output)
                for name, standin in swaps[path]:
                    theirs = family.feature(path, standin(*args, **kwargs))
                    if isinstance(theirs, torch.Tensor) and theirs.shape == mine.shape:
                        current[name, path] = deviation(mine, theirs)
            return compare

        modules = dict(denoiser.named_modules())
        handles = [modules[path].register_forward_hook(hook(path), with_kwargs=True) for path in swaps]
        try:
            with torch.no_grad():
                for sample, timestep, conditioning in batches:
                    current.clear()
                    family.predict(denoiser, sample, timestep, conditioning)
                    for unit in units:
                        parts = [values for (name, _), values in current.items() if name == unit.name]
                        if parts:
                            found[unit.name]["cosine"].append(torch.stack([p["cosine"] for p in parts]).mean(0))
                            found[unit.name]["mse"].append(torch.stack([p["mse"] for p in parts]).sum(0))
        finally:
            for handle in handles:
                handle.remove()
        self.values = {name: {key: torch.cat(parts).cpu() if parts else None for key, parts in scores.items()}
                       for name, scores in found.items()}

    def __call__(self, unit: Unit, criterion: str) -> torch.Tensor | None:
        """Each calibration latent's score of `unit` by `criterion` (None: no module of it compares)."""
        return self.values[unit.name][criterion]
