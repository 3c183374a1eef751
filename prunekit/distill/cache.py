"""The frozen encoders of the teacher, and `--cache-latents`: their outputs computed once and kept on disk.

Training needs, for every example, the VAE's posterior over latents (its mean and log-variance, the
"moments") and the caption's conditioning (prunekit.conditioning: the text encoders' states, and for SDXL
the pooled embedding). Without a cache they are computed every step; with one they are read from DIR/cache/:

    cache.json     what the cache was made from; a cache made from anything else is rebuilt
    moments.npy    N x F x 2C x h x w float32: the posterior of each example (F = 2 with flips: as is, mirrored)
    captions.npy   N int64: each example's row in text.npy
    text.npy       U x L x D: the embedding of each distinct caption (float16 under mixed precision)
    pooled.npy     U x P: its pooled embedding (SDXL only; the time ids are the same for every example)

Latents are sampled from the moments at every step in both cases, as Stable Diffusion's training does.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from prunekit.conditioning import Conditioning, encode
from prunekit.distill.data import Captioned, flips

FORMAT = "prunekit.latent-cache/1"


class Encoder:
    """The teacher's VAE encoder and text encoder(s), frozen, on `device` in `dtype`."""

    def __init__(self, pipe, device: torch.device, dtype: torch.dtype):
        self.pipe, self.vae = pipe, pipe.vae.to(device, dtype).eval().requires_grad_(False)
        self.text_encoders = [encoder.to(device, dtype).eval().requires_grad_(False) for encoder in
                              (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if encoder is not None]
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def moments(self, pixels: torch.Tensor) -> torch.Tensor:
        """The VAE posterior's parameters (mean and log-variance, stacked on channels) of B x 3 x H x W images."""
        return self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist.parameters

    def text(self, captions: list[str]) -> Conditioning:
        """The conditioning of `captions`, as the pipeline encodes them."""
        return encode(self.pipe, list(captions), device=self.device)[0]

    def unconditional(self) -> Conditioning:
        """The unconditional branch's conditioning (one row), as the pipeline samples it under guidance."""
        return encode(self.pipe, [""], negative=True, device=self.device)[1]

    def offload(self) -> None:
        """Move the encoders to the CPU (training from a cache needs neither)."""
        for module in (self.vae, *self.text_encoders):
            module.to("cpu")


class CachedDataset(torch.utils.data.Dataset):
    """Examples read from a cache: {"moments": 2C x h x w, "text_embeds": L x D, and for SDXL "pooled": P},
    mirrored per epoch like the images."""

    def __init__(self, directory: Path, seed: int):
        self.directory, self.seed, self.epoch = Path(directory), seed, 0
        self._arrays = None  # opened lazily, so that data-loader workers each map the files themselves
        self.length = len(np.load(self.directory / "captions.npy", mmap_mode="r"))

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _open(self):
        if self._arrays is None:
            pooled = (self.directory / "pooled.npy").is_file()
            names = ("moments", "captions", "text") + (("pooled",) if pooled else ())
            self._arrays = [np.load(self.directory / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                            for name in names]
        return self._arrays

    def __getitem__(self, index: int) -> dict:
        moments, captions, text, *pooled = self._open()
        variant = int(moments.shape[1] == 2 and flips(self.seed, self.epoch, index))
        row = captions[index]
        item = {"moments": torch.from_numpy(np.array(moments[index, variant])),
                "text_embeds": torch.from_numpy(np.array(text[row]))}
        return item | ({"pooled": torch.from_numpy(np.array(pooled[0][row]))} if pooled else {})


def cache_key(dataset: Captioned, teacher: str, dtype: torch.dtype) -> dict:
    """What a cache depends on: the data, its resolution and flips, the teacher and the compute dtype."""
    return {"format": FORMAT, "data": dataset.source.description, "examples": len(dataset),
            "resolution": dataset.resolution, "flips": dataset.flip, "teacher": teacher, "dtype": str(dtype)}


def build_cache(directory: Path, dataset: Captioned, encoder: Encoder, key: dict, batch_size: int = 64,
                progress: bool = True) -> Path:
    """Encode every example of `dataset` into `directory` (kept as is when it already holds the same cache); the
    build's wall time goes to directory/build.json ({"seconds"}), so runs that share the cache can tell its cost."""
    started = time.perf_counter()
    directory = Path(directory)
    meta = directory / "cache.json"
    if meta.is_file() and json.loads(meta.read_text()) == {**key, "complete": True}:
        return directory
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    variants = (False, True) if dataset.flip else (False,)
    n = len(dataset)
    text_dtype = np.float32 if encoder.dtype == torch.float32 else np.float16
    moments = None
    rows: dict[str, int] = {}
    captions = np.empty(n, dtype=np.int64)
    with tqdm(total=n, desc="caching latents", unit="image", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            indices = range(start, min(start + batch_size, n))
            items = [dataset.source.item(index) for index in indices]
            encoded = [encoder.moments(torch.stack([dataset.pixels(image, mirrored) for image, _ in items]))
                       for mirrored in variants]
            batch = torch.stack(encoded, dim=1).float().cpu().numpy()
            if moments is None:
                moments = np.lib.format.open_memmap(directory / "moments.npy", mode="w+", dtype=np.float32,
                                                    shape=(n, *batch.shape[1:]))
            moments[start:start + len(items)] = batch
            for index, (_, text) in zip(indices, items):
                captions[index] = rows.setdefault(text, len(rows))
            bar.update(len(items))
    moments.flush()
    np.save(directory / "captions.npy", captions)
    texts = list(rows)
    encoded = [encoder.text(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    np.save(directory / "text.npy",
            np.concatenate([c.embeds.float().cpu().numpy() for c in encoded]).astype(text_dtype))
    if encoded[0].pooled is not None:
        np.save(directory / "pooled.npy",
                np.concatenate([c.pooled.float().cpu().numpy() for c in encoded]).astype(text_dtype))
    (directory / "build.json").write_text(json.dumps({"seconds": time.perf_counter() - started}) + "\n")
    meta.write_text(json.dumps({**key, "complete": True}, indent=2) + "\n")
    return directory
