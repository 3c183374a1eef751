"""Block sensitivity: ablate each unit of a U-Net alone, score what its removal does, write runs/NAME.

    from prunekit.sensitivity import SweepOptions, sensitivity
    table = sensitivity("tiny-sd", out="runs/demo", num_prompts=16)     # a pandas DataFrame of sensitivity.csv

Modules: settings (SweepOptions checked, defaults, run.json's record), pipelines (trained or random-weight
pipeline), sampling (prompts encoded once, batched generation from fixed noise), scoring (full-mode metrics),
proxy (noise-prediction error with the intact activations reused), runner (the sweep, resumable, distributed,
and safe beside other sweeps into the same directory). The run directory itself is prunekit.rundir's.
"""
from prunekit.sensitivity.runner import sensitivity
from prunekit.sensitivity.settings import SweepOptions

__all__ = ["SweepOptions", "sensitivity"]
