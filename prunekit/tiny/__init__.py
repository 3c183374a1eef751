"""tiny-sd and tiny-clip: the small models prunekit trains on the captioned shapes and ships as assets.

- `tokenizer`: a CLIP tokenizer whose vocabulary the project writes itself.
- `architecture`: the configs of tiny-clip, the VAE, the text encoder and the SD-v1.4-topology U-Net.
- `stages`: the training loops (tiny-clip, VAE, latent pool, U-Net + text encoder).
- `train`: the command `python -m prunekit.tiny.train --out DIR`: one training run, from scratch or continued.
- `recipe`: the command `python -m prunekit.tiny.recipe --out DIR`: the shipped models' runs, from scratch.
"""
from prunekit.tiny.tokenizer import build_tokenizer

__all__ = ["build_tokenizer"]
