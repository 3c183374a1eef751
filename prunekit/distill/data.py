"""Training data for distillation: captioned images from a world's generator, an image folder or the hub.

`--data` is one of
- a world's named training data (prunekit.worlds: `shapes`, the captioned-shapes generator's train split;
  a source may refuse flips, as the shapes do, since a flip would swap the left/right positions its
  captions name);
- a folder in the Hugging Face imagefolder layout that BK-SDM's LAION subsets use: images and a
  `metadata.jsonl` or `metadata.csv` naming each image's `file_name` (relative to the folder) and `text`;
- a Hugging Face dataset name with `image` and `text` columns (needs the network and the `datasets` package).

Folder and hub images are resized (shorter side) and centre-cropped to the training resolution and
flipped at random as BK-SDM did; each flip is drawn from (seed, epoch, index), so it does not depend on
the order, the batch or the process an image is loaded in. Every example is {"pixel_values": 3xHxW
in [-1, 1], "text": caption}.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from prunekit import worlds
from prunekit.errors import PrunekitError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def square(image: Image.Image, resolution: int) -> Image.Image:
    """`image` in RGB, its shorter side resized to `resolution` and centre-cropped to a square."""
    image = image.convert("RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    if scale != 1:
        size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        width, height = image.size
    left, top = (width - resolution) // 2, (height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a 3xHxW float tensor in [-1, 1], the range diffusers' VAEs expect."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def flips(seed: int, epoch: int, index: int) -> bool:
    """Whether example `index` is mirrored in `epoch` of a run seeded `seed`."""
    return bool(np.random.default_rng([seed, epoch, index]).random() < 0.5)


class Captioned(torch.utils.data.Dataset):
    """Captioned images from a source, squared to `resolution` and, if `flip`, mirrored at random per epoch.

    A source has `__len__` and `item(index)` -> (PIL image, caption); `set_epoch` is called by the data
    loader at the start of every epoch.
    """

    def __init__(self, source, resolution: int, flip: bool, seed: int):
        self.source, self.resolution, self.flip, self.seed = source, resolution, flip, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def pixels(self, image: Image.Image, mirrored: bool) -> torch.Tensor:
        """`image` squared to the resolution, mirrored if asked, as a 3xHxW tensor in [-1, 1]."""
        image = square(image, self.resolution)
        if mirrored:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_tensor(image)

    def __getitem__(self, index: int) -> dict:
        image, text = self.source.item(index)
        mirrored = self.flip and flips(self.seed, self.epoch, index)
        return {"pixel_values": self.pixels(image, mirrored), "text": text}


def _metadata(folder: Path) -> tuple[Path, list[dict]]:
    """The metadata file of an imagefolder and its rows."""
    for name in ("metadata.jsonl", "metadata.csv"):
        path = folder / name
        if path.is_file():
            break
    else:
        images = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise PrunekitError(f"the data folder {folder} holds no images: add images and a metadata.jsonl "
                                "(or metadata.csv) with their file_name and text.")
        raise PrunekitError(f"the data folder {folder} has images but no metadata.jsonl or metadata.csv: write one "
                            "with a file_name and a text (the caption) for each image.")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as error:
        raise PrunekitError(f"cannot parse {path} ({type(error).__name__}): write one record per image "
                            "with file_name and text.") from None
    if not all(isinstance(row, dict) for row in rows):
        raise PrunekitError(f"{path} must hold one JSON object per line, with file_name and text.")
    missing = [key for key in ("file_name", "text") if rows and key not in rows[0]]
    if missing:
        raise PrunekitError(f"{path} lacks the column(s) {', '.join(missing)}: give each image its file_name and text.")
    return path, rows


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


class FolderSource:
    """An imagefolder: every captioned image of the metadata that can be read; unreadable ones are counted.

    Fails with one sentence for an empty folder, a missing metadata file, or an image without a caption.
    """

    def __init__(self, folder: str | os.PathLike, limit: int | None = None):
        folder = Path(folder)
        meta, rows = _metadata(folder)
        captions = {}
        for row in rows:
            captions[str(Path(str(row["file_name"])))] = str(row.get("text") or "").strip()
        uncaptioned = sorted(name for name, text in captions.items() if not text)
        on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
        uncaptioned += sorted(on_disk - set(captions))
        if uncaptioned:
            raise PrunekitError(f"{len(uncaptioned)} image(s) of {folder} have no caption in {meta.name} "
                                f"(first: {uncaptioned[0]}): give each its text or move it out of the folder.")
        if not captions:
            raise PrunekitError(f"the data folder {folder} holds no images: {meta.name} lists none.")
        names = sorted(captions)[:limit]
        readable = [name for name in names if _readable(folder / name)]
        kept = set(readable)
        self.skipped = [name for name in names if name not in kept]
        if not readable:
            raise PrunekitError(f"none of the {len(names)} images listed in {meta} could be read: check the files.")
        self.folder, self.names, self.captions = folder, readable, captions
        self.description = f"image folder {folder} ({len(readable)} images)"

    def __len__(self) -> int:
        return len(self.names)

    def item(self, index: int) -> tuple[Image.Image, str]:
        name = self.names[index]
        with Image.open(self.folder / name) as image:
            return image.convert("RGB"), self.captions[name]


class HubSource:
    """A Hugging Face dataset (train split) with `image` and `text` columns."""

    def __init__(self, name: str, limit: int | None = None):
        from prunekit.models import hub_reachable

        if not hub_reachable():
            raise PrunekitError(f"{name!r} is neither named data nor a local folder, and the Hugging Face Hub cannot be "
                                "reached to fetch it as a dataset: check the path, or go online.")
        try:
            import datasets
        except ImportError:
            raise PrunekitError("reading a Hugging Face dataset needs the `datasets` package: pip install datasets, "
                                "or pass a local image folder.") from None
        try:
            data = datasets.load_dataset(name, split="train")
        except (OSError, ValueError) as error:  # datasets' not-found errors are FileNotFoundErrors
            raise PrunekitError(f"cannot load the dataset {name!r} ({type(error).__name__}): check its name.") from None
        missing = [column for column in ("image", "text") if column not in data.column_names]
        if missing:
            raise PrunekitError(f"the dataset {name!r} has columns {', '.join(data.column_names)} but no "
                                f"{', '.join(missing)}: use a dataset with image and text columns.")
        self.data = data.select(range(min(limit, len(data)))) if limit else data
        self.skipped: list[str] = []
        self.description = f"hub dataset {name} ({len(self.data)} examples)"

    def __len__(self) -> int:
        return len(self.data)

    def item(self, index: int) -> tuple[Image.Image, str]:
        row = self.data[index]
        return row["image"], str(row["text"])


def open_source(data: str, num_examples: int | None = None, seed: int = 0):
    """The source `data` names (a world's named data, a folder or a hub dataset), limited to `num_examples`
    examples. A source has `__len__`, `item(index)` -> (image, caption), `skipped`, `description` and may set
    `flip = False`."""
    if num_examples is not None and num_examples < 1:
        raise PrunekitError("num_examples must be at least 1.")
    named = worlds.data_source(data, num_examples, seed)
    if named is not None:
        return named
    names = ", ".join(name for world in worlds.WORLDS for name in world.data)
    if os.path.isdir(data):
        return FolderSource(data, num_examples)
    if os.path.exists(data):
        raise PrunekitError(f"{data} is a file: pass named data ({names}), an image folder or a Hugging Face "
                            "dataset name.")
    if data.startswith((".", "/", "~")) or data.count("/") > 1:
        raise PrunekitError(f"there is no folder {data}: pass named data ({names}), an image folder or a Hugging "
                            "Face dataset name.")
    return HubSource(data, num_examples)


class EpochSampler(torch.utils.data.Sampler):
    """A seeded shuffle of `n` indices per epoch, which can start part-way into an epoch (to resume)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch, self.start = n, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, count: int) -> None:
        """Start the next epoch's iteration after its first `count` indices (once)."""
        self.start = count

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        start, self.start = self.start, 0
        return iter(order[start:].tolist())
