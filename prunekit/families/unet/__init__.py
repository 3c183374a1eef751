"""The U-Net family (`UNet2DConditionModel`: SD-1.x, SD-2.x, SDXL), one object over the modules of this package.

`units` lists a U-Net's units and the stand-ins that ablate them, `surgery` the plain diffusers student that
removing them leaves, `free` a free plan's student (the teacher with stand-ins in place), `features` the stage
outputs distillation matches, and `presets` the BK-SDM, KOALA- and SSD-like presets.
"""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from prunekit.errors import PrunekitError
from prunekit.families import Family
from prunekit.families.unet import features, presets, surgery, units
from prunekit.families.unet.free import REMOVED_KEY, FreeUNet2DConditionModel
from prunekit.units import Removed

UNET_CLASS = "UNet2DConditionModel"


class UNetFamily(Family):
    name = "unet"
    classes = (UNET_CLASS, "FreeUNet2DConditionModel")  # the second: a free plan's student (free.py)
    folder = "unet"
    tokens = 77
    granularities = units.GRANULARITIES
    free_plans = True
    runs_pipelines = True
    drawing = "u-net"
    space = "layout"
    proxy_sweeps = True

    def __repr__(self) -> str:
        return "<family unet>"

    def model_class(self, config: dict):
        return FreeUNet2DConditionModel if config.get(REMOVED_KEY) else UNet2DConditionModel

    def build_meta(self, config: dict):
        """The U-Net of `config` on the meta device; a config naming removed units (a free student's,
        prunekit.students) gives that student."""
        with torch.device("meta"):
            return self.model_class(config).from_config(config)

    def check_config(self, config: dict, source: str) -> None:
        blocks = [config.get(key) for key in ("down_block_types", "up_block_types", "block_out_channels")]
        if not all(isinstance(value, list) and value for value in blocks) or len({len(value) for value in blocks}) != 1:
            raise PrunekitError(f"{source} must name its blocks: down_block_types, up_block_types and "
                                "block_out_channels, lists of one length.")
        numbers = [config.get("sample_size", 1), config.get("cross_attention_dim", 1), *blocks[2]]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                   for value in numbers for n in (value if isinstance(value, list) else [value])):
            raise PrunekitError(f"{source} has a size that is not a positive whole number (block_out_channels, "
                                "sample_size or cross_attention_dim): fix it or pass another model.")
        self.check_builds(config, source, "U-Net")

    def pipeline_tokens(self, index: dict, tokenizer_length: int) -> int:
        return tokenizer_length  # SDXL's two encoders concatenate per token: the same length

    def example_inputs(self, config: dict, batch: int, tokens: int, device) -> dict:
        size = int(config.get("sample_size") or 64)
        inputs = {
            "sample": torch.zeros(batch, config.get("in_channels", 4), size, size, device=device),
            "timestep": torch.tensor([10], device=device),
            "encoder_hidden_states": torch.zeros(batch, tokens, config["cross_attention_dim"], device=device),
        }
        if config.get("addition_embed_type") == "text_time":
            time_ids = 6
            text_dim = config["projection_class_embeddings_input_dim"] - time_ids * config["addition_time_embed_dim"]
            inputs["added_cond_kwargs"] = {
                "text_embeds": torch.zeros(batch, text_dim, device=device),
                "time_ids": torch.zeros(batch, time_ids, device=device),
            }
        return inputs

    def predict(self, module, sample, timestep, conditioning):
        return module(sample, timestep, **conditioning.unet_kwargs()).sample

    def add_units(self, b, unet, granularity: str) -> None:
        units.add_units(b, unet, granularity)

    def depth(self, unit, config: dict) -> int:
        return units.depth(unit.stage, len(config["down_block_types"]))

    def footnote(self, config: dict) -> str:
        return ("MACs count convolutions and linears as torch-pruning does (BK-SDM's figures; biases and norms "
                "included); MACs+attn is torch's FLOP counter halved, which adds the attention matmuls but leaves out "
                "biases and norms, so a unit without attention shows a little less. depth: levels in from the "
                "input and output (0: down0 and the last up stage; {levels}: mid); stage{{k}} is the k-th level from "
                "the innermost.").format(levels=len(config["down_block_types"]))

    def standins(self, unet, unit, table: dict) -> list:
        return units.standins(unet, unit, table)

    def plain_student(self, teacher_config: dict, remove: list[str]) -> tuple[dict, dict[str, str]]:
        teacher = self.build_meta(teacher_config)
        return surgery.plain_student(teacher, Removed.of(self.named_units(teacher, list(remove))))

    def feature_pairs(self, student, teacher, weight_map: dict[str, str], layers: str) -> list[tuple[str, str]]:
        size = teacher.config.sample_size

        def probe(model, points):
            config = {**dict(model.config), "sample_size": size}
            return features.point_shapes(self.build_meta(config), points, self.example_inputs(config, 1, 1, "meta"))

        return features.feature_pairs(student, teacher, weight_map, layers, probe)

    def feature_points(self, teacher, layers: str) -> list[str]:
        return features.feature_points(teacher, layers)

    def feature(self, path: str, output):
        return output if isinstance(output, torch.Tensor) else output[0]

    def presets(self, config: dict) -> dict:
        return presets.presets(config)

    def preset_problem(self, name: str, config: dict) -> str:
        return presets.preset_problem(name, config)


UNET = UNetFamily()
