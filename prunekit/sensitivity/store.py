"""A sweep's run directory (notes/run-directory.md): run.json, sensitivity.csv and its shards, images/.

Every file is written whole to a temporary file that then replaces the target (os.replace), so a kill
leaves the old file or the new one, never half of one: at most the unit in flight is lost. Rows are kept as
the text they were first written as, so merging shards changes no number.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pandas as pd
from PIL import Image

from prunekit.errors import PrunekitError

RUN_JSON = "run.json"
TABLE = "sensitivity.csv"
SHARDS = "shards"  # one CSV per process of a distributed sweep, merged into TABLE at its end
IMAGES = "images"
THUMBNAIL = 128  # pixels, the longer side of a saved image at most
NOT_COMPARED = ("units", "granularity", "batch_size")  # arguments that pick rows or batching, not the numbers


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and os.replace."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def identity(record: dict) -> dict:
    """What must match for a run directory to be resumed: everything that changes a row's numbers."""
    args = {key: value for key, value in record.get("args", {}).items() if key not in NOT_COMPARED}
    model = record.get("model") or {}
    return {"command": record.get("command"), **args, "unet_fingerprint": model.get("unet_fingerprint"),
            "prompts_sha256": record.get("prompts_sha256")}


class Table:
    """sensitivity.csv or one shard of it: its rows as text, the whole file rewritten atomically on each append."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, list(columns)
        self.rows: list[dict[str, str]] = []
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as file:
                reader = csv.DictReader(file)
                if reader.fieldnames != self.columns:
                    raise PrunekitError(f"{path} has other columns than this run writes: "
                                        "pass another --out directory.")
                self.rows = list(reader)

    def units(self) -> set[str]:
        return {row["unit"] for row in self.rows}

    def append(self, *rows: dict) -> None:
        """Add `rows` (values are written as Python prints them: floats round-trip exactly) and save."""
        self.rows += [{column: str(row[column]) for column in self.columns} for row in rows]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, buffer.getvalue())


class RunDir:
    """The run directory `path` of one sweep."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def check(self, record: dict) -> dict | None:
        """Refuse a directory that cannot be written or that holds another run; the run.json found there, or None."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".probe.{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise PrunekitError(f"cannot write to {self.path} ({error.__class__.__name__}): "
                                "pass a writable --out directory.") from None
        info_path = self.path / RUN_JSON
        if not info_path.is_file():
            if (self.path / TABLE).is_file() or (self.path / SHARDS).is_dir():
                raise PrunekitError(f"{self.path} holds sensitivity results but no {RUN_JSON}, so they cannot be "
                                    "resumed safely: pass another --out directory.")
            return None
        try:
            existing = json.loads(info_path.read_text(encoding="utf-8"))
            theirs = identity(existing)
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            raise PrunekitError(f"cannot read {info_path}: pass another --out directory.") from None
        mine = identity(record)
        for key in dict.fromkeys([*theirs, *mine]):
            if theirs.get(key) != mine.get(key):
                raise PrunekitError(f"{self.path} holds a run made by another command ({key}: {theirs.get(key)!r} "
                                    f"there, {mine.get(key)!r} here): repeat that command to resume it, or pass "
                                    "another --out directory.")
        return existing

    def write_info(self, record: dict) -> None:
        write_atomically(self.path / RUN_JSON, json.dumps(record, indent=2, allow_nan=False) + "\n")

    def table(self, columns: list[str]) -> Table:
        return Table(self.path / TABLE, columns)

    def shard(self, rank: int, columns: list[str]) -> Table:
        return Table(self.path / SHARDS / f"rank{rank}.csv", columns)

    def _shard_paths(self) -> list[Path]:
        folder = self.path / SHARDS
        return sorted(folder.glob("rank*.csv")) if folder.is_dir() else []

    def merge(self, columns: list[str], order: list[str]) -> None:
        """Move the shards' rows into sensitivity.csv (after its own rows, in `order`) and delete the shards."""
        paths = self._shard_paths()
        if not paths:
            return
        table = self.table(columns)
        found = {row["unit"]: row for path in paths for row in Table(path, columns).rows}
        rank = {name: index for index, name in enumerate(order)}
        new = sorted((row for unit, row in found.items() if unit not in table.units()),
                     key=lambda row: (rank.get(row["unit"], len(rank)), row["unit"]))
        table.append(*new)
        for path in paths:
            path.unlink()
        (self.path / SHARDS).rmdir()

    def frame(self, columns: list[str]) -> pd.DataFrame:
        """sensitivity.csv as a DataFrame (no rows when there is none yet)."""
        path = self.path / TABLE
        return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=columns)

    def save_prompts(self, prompts: list[str]) -> None:
        (self.path / IMAGES).mkdir(exist_ok=True)
        write_atomically(self.path / IMAGES / "prompts.json", json.dumps(prompts, indent=1) + "\n")

    def save_images(self, folder: str, images: list[Image.Image]) -> None:
        """`images` as images/`folder`/{i}.png, shrunk to at most THUMBNAIL pixels a side."""
        where = self.path / IMAGES / folder
        where.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            image = image.copy()
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            image.save(where / f"{index}.png")
