"""Block-stack denoisers (diffusion transformers): their units, stand-ins, plain students and presets, from data.

A diffusion transformer is a few stacks of identical blocks between an embedding and an output head. Its
family says, as data (`Stack`, `Part`), which module lists hold the blocks, which config key counts them, what
a block returns (both streams of a joint block, or the image stream) and which of its children are its
attention and feed-forward sub-units; `BlockFamily` derives the rest. Units: `{prefix}{k}` per block
(`joint3`, `single10`, `block7`) and, at block granularity, `{prefix}{k}.{part}` inside it (`joint3.attn`,
`block7.ff`); pair granularity lists whole blocks only (a U-Net's pair is its coarser unit too).

- Ablating a block swaps it for the identity on every stream it carries; ablating a part swaps each of its
  children for zeros of its output's shape, so the block's gated residual adds nothing (prunekit.ablation).
- A plain student keeps a subset of each stack's blocks in order: the same config with a smaller count, every
  kept block's tensors copied from the teacher block it was. Parts cannot go alone in a diffusers config.
- Presets: `half-depth` removes every second block of every stack (blocks 1, 3, 5, ...). `flux-lite-like`, for
  a family with double-stream (MMDiT) blocks, keeps the first 8 of every 19 of them and every other block:
  Freepik's Flux.1-Lite-8B (model card) cut FLUX.1-dev's 12B to 8B with every single-stream block kept,
  choosing blocks by the mean squared error between each block's input and output, and reports that skipping
  an early double-stream block hurts most; 19 -> 8 double-stream blocks gives 8,163,264,064 parameters, the
  card's 8B. Which blocks the card removed is not published, so this is "-like". SD3's blocks are all
  double-stream, so there it keeps the first 8/19 of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.errors import PrunekitError
from prunekit.families import Family, denoiser_config

LITE_KEEPS = 8 / 19  # Flux.1-Lite-8B's share of FLUX.1-dev's double-stream blocks


@dataclass(frozen=True)
class Part:
    """A sub-unit of a block: children of the block, each with the stand-in that zeroes it."""

    name: str  # attn | ff | cross
    children: tuple[tuple[str, str], ...]  # (child name, stand-in kind: zeros | zeros-out | zero-pair)


@dataclass(frozen=True)
class Stack:
    """One list of identical blocks."""

    prefix: str  # unit names: f"{prefix}{k}"
    attr: str  # the model's ModuleList
    count_key: str  # the config entry that counts its blocks
    parts: tuple[Part, ...]
    streams: int  # 2: a block takes and returns (encoder_hidden_states, hidden_states); 1: hidden_states only
    mmdit: bool = False  # double-stream (MMDiT) blocks: text and image each with their own weights


class BlockFamily(Family):
    """A diffusion transformer family, described by its stacks; subclasses give the class, inputs and sizes."""

    folder = "transformer"
    granularities = ("block", "pair")  # block: blocks and their parts; pair: whole blocks only
    free_plans = False
    runs_pipelines = False
    drawing = "stacks"
    space = "blocks"
    proxy_sweeps = False

    def __init__(self, name: str, class_name: str, stacks: tuple[Stack, ...], tokens: int):
        self.name, self.classes, self.stacks, self.tokens = name, (class_name,), stacks, tokens

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    # -- building -------------------------------------------------------------------------------------------
    def model_class(self, config: dict):
        import diffusers

        return getattr(diffusers, self.classes[0])

    def build_meta(self, config: dict):
        with torch.device("meta"):
            return self.model_class(config).from_config(denoiser_config(config, self))

    def check_config(self, config: dict, source: str) -> None:
        for stack in self.stacks:
            count = config.get(stack.count_key, 1)
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise PrunekitError(f"{source} has {stack.count_key}={count!r}: it must be a whole number of at "
                                    "least 1.")
        self.check_builds(config, source, self.classes[0])

    def width(self, config: dict) -> int:
        """The width of the blocks' hidden states."""
        return int(config["num_attention_heads"]) * int(config["attention_head_dim"])

    def grid(self, config: dict) -> int:
        """The side of the image-token grid at the config's sample size."""
        return int(config["sample_size"]) // int(config.get("patch_size") or 1)

    # -- units ----------------------------------------------------------------------------------------------
    def add_units(self, builder, module, granularity: str) -> None:
        config = dict(module.config)
        width, grid = self.width(config), self.grid(config)
        for stack in self.stacks:
            for k, block in enumerate(getattr(module, stack.attr)):
                name, path = f"{stack.prefix}{k}", f"{stack.attr}.{k}"
                builder.add(name, "block", stack.prefix, [path], width, width, grid)
                for part in stack.parts if granularity == "block" else ():
                    paths = [f"{path}.{child}" for child, _ in part.children if getattr(block, child, None) is not None]
                    if paths:
                        builder.add(f"{name}.{part.name}", part.name, stack.prefix, paths, width, width, grid,
                                    parent=name)

    def _position(self, config: dict) -> dict[str, int]:
        """Every block's place in forward order, by unit name."""
        names = [f"{s.prefix}{k}" for s in self.stacks for k in range(int(config.get(s.count_key) or 0))]
        return {name: i for i, name in enumerate(names)}

    def depth(self, unit, config: dict) -> int:
        return self._position(config)[unit.parent or unit.name]

    def footnote(self, config: dict) -> str:
        return ("MACs count linears and convolutions as torch-pruning does; MACs+attn is torch's FLOP counter halved, "
                "which adds the attention matmuls. depth: the block's place in forward "
                "order (0 runs first). attn, ff and cross are a block's attention, feed-forward and cross-attention: "
                "ablated, they add nothing to the block's residual; only whole blocks go in a diffusers student.")

    # -- ablation -------------------------------------------------------------------------------------------
    def standins(self, module, unit, table: dict) -> list:
        from prunekit.standins import Passthrough, StreamsPassthrough, ZeroOutput, ZeroPair

        stack = next(s for s in self.stacks if s.prefix == unit.stage)
        if unit.kind == "block":
            path = unit.modules[0]
            original = module.get_submodule(path)
            standin = (StreamsPassthrough(getattr(original, "context_pre_only", False)) if stack.streams == 2
                       else Passthrough())
            return [(path, standin)]
        kinds = dict(next(p for p in stack.parts if p.name == unit.kind).children)
        swaps = []
        for path in unit.modules:
            kind = kinds[path.rpartition(".")[2]]
            child = module.get_submodule(path)
            swaps.append((path, ZeroPair() if kind == "zero-pair" else
                          ZeroOutput(child.out_features if kind == "zeros-out" else None)))
        return swaps

    # -- surgery --------------------------------------------------------------------------------------------
    def kept_blocks(self, config: dict, remove: list[str]) -> dict[str, list[int]]:
        """Per stack (by prefix), the teacher indices of the blocks a plain student keeps."""
        parts = [unit.name for unit in self.named_units(config, remove) if unit.kind != "block"]
        if parts:
            raise PrunekitError(f"a {self.classes[0]} config cannot drop {', '.join(parts)} alone (a block's "
                                "attention or feed-forward): remove whole blocks, or ablate parts only to measure "
                                "them.")
        kept = {}
        for stack in self.stacks:
            count = int(config.get(stack.count_key) or 0)
            kept[stack.prefix] = [k for k in range(count) if f"{stack.prefix}{k}" not in remove]
            if count and not kept[stack.prefix]:
                raise PrunekitError(f"the plan removes every {stack.prefix} block: keep at least one of them.")
        return kept

    def student_config(self, config: dict, kept: dict[str, list[int]]) -> dict:
        """The student's config: the teacher's with each stack's new count."""
        student = denoiser_config(config, self)
        for stack in self.stacks:
            if stack.count_key in student or kept[stack.prefix]:
                student[stack.count_key] = len(kept[stack.prefix])
        return student

    def block_map(self, stack: Stack, j: int, k: int, student_count: int, teacher_count: int) -> dict[str, str]:
        """Weight map entries for student block j of `stack`, copied from teacher block k."""
        return {f"{stack.attr}.{j}": f"{stack.attr}.{k}"}

    def plain_student(self, teacher_config: dict, remove: list[str]) -> tuple[dict, dict[str, str]]:
        from prunekit.weightmap import check_map

        kept = self.kept_blocks(teacher_config, remove)
        config = self.student_config(teacher_config, kept)
        teacher = self.build_meta(teacher_config)
        stacks = {stack.attr for stack in self.stacks}
        weight_map = {name: name for name, child in teacher.named_children()
                      if name not in stacks and child.state_dict()}
        weight_map.update({name: name for name, _ in teacher.named_parameters(recurse=False)})
        for stack in self.stacks:
            indices = kept[stack.prefix]
            teacher_count = len(getattr(teacher, stack.attr))
            for j, k in enumerate(indices):
                weight_map.update(self.block_map(stack, j, k, len(indices), teacher_count))
        report, _ = check_map(self.build_meta(config), teacher, weight_map)
        if not report.ok:
            raise PrunekitError(f"this removal leaves blocks that no longer fit a {self.classes[0]} "
                                f"({report.problems()}): remove other blocks.")
        return config, weight_map

    # -- distillation ---------------------------------------------------------------------------------------
    def feature_pairs(self, student, teacher, weight_map: dict[str, str], layers: str) -> list[tuple[str, str]]:
        """Every student block's output with the teacher block's it was copied from (`block-out`), or every
        kept block's attention with its teacher's (`self-attn`)."""
        attrs = {stack.attr for stack in self.stacks}
        blocks = [(path, source) for path, source in weight_map.items()
                  if path.count(".") == 1 and path.split(".")[0] in attrs]
        if layers == "block-out":
            return blocks
        return [(f"{path}.attn", f"{source}.attn") for path, source in blocks]

    def feature_points(self, teacher, layers: str) -> list[str]:
        blocks = [f"{stack.attr}.{k}" for stack in self.stacks for k in range(len(getattr(teacher, stack.attr)))]
        return blocks if layers == "block-out" else [f"{path}.attn" for path in blocks]

    def feature(self, path: str, output):
        """The image stream in what the module at `path` returned: a joint block returns (text, image), a joint
        attention (image, text)."""
        if isinstance(output, torch.Tensor):
            return output
        return output[-1] if path.count(".") == 1 else output[0]

    # -- presets --------------------------------------------------------------------------------------------
    def presets(self, config: dict) -> dict:
        counts = {s.prefix: int(config.get(s.count_key) or 0) for s in self.stacks}
        found = {"half-depth": [f"{s.prefix}{k}" for s in self.stacks for k in range(counts[s.prefix]) if k % 2]}
        if any(s.mmdit for s in self.stacks):
            found["flux-lite-like"] = [f"{s.prefix}{k}" for s in self.stacks if s.mmdit
                                       for k in range(max(1, round(counts[s.prefix] * LITE_KEEPS)), counts[s.prefix])]
        return found
