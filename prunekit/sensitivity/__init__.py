"""Block sensitivity: ablate each unit of a U-Net alone, score what its removal does, write runs/NAME.

    from prunekit.sensitivity import sensitivity
    table = sensitivity("tiny-sd", out="runs/demo")          # a pandas DataFrame of sensitivity.csv

Modules: settings (arguments checked, defaults, run.json's record), prompts (built-in prompt sets), pipelines
(trained or random-weight pipeline), sampling (prompts encoded once, batched generation from fixed noise),
scoring (full-mode metrics), proxy (noise-prediction error with the intact activations reused), store (the
run directory, atomic writes, shards), runner (the sweep, resumable and distributed).
"""
from prunekit.sensitivity.runner import sensitivity

__all__ = ["sensitivity"]
