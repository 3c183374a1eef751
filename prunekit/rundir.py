"""The run directory (runs/NAME): every path in it, run.json's record, and the sensitivity table.

This module is the one owner of the layout (docs/design.md); the sweep writes through it and the
planner, the report and the analyses read through it.

Every file is written whole to a temporary file that then replaces the target (os.replace), so a kill leaves
the old file or the new one, never half of one. The table is appended under an exclusive lock on the
directory (`.lock`): an append reads the rows on disk, adds those of units not there yet and replaces the
file, so processes that sweep other units (or the same ones) into one directory at once lose no row. Rows
are kept as the text they were first written as, so merging shards changes no number.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from prunekit.errors import PrunekitError

RUN_JSON = "run.json"
TABLE = "sensitivity.csv"
SHARDS = "shards"  # one CSV per process of a distributed sweep, merged into TABLE at its end
IMAGES = "images"
PLAN = "plan.json"
PARETO = "pareto.csv"
STUDY = "optuna.db"  # the planner's Optuna study
PLANNER_CACHE = "planner_cache.db"  # measured losses and latencies of planner candidates
DISTILL = "distill"  # the demo's distillation (`prunekit distill --out RUN/distill`)
COMPARE = "compare"  # other students retrained the same way, one folder each (the demo's preset: compare/bk-small)
COMPARISON = "comparison.csv"  # the students after equal retraining (prunekit.comparison)
REPORT = "report.html"
LOCK = ".lock"
THUMBNAIL = 128  # pixels, the longer side of a saved image at most
UNIT_COLUMNS = ["unit", "kind", "stage", "params", "macs", "full_macs", "seconds"]  # the table's first columns
INTERVAL_COLUMNS = ["sensitivity_low", "sensitivity_high", "prompts"]  # its last: the interval, prompts measured
NOT_COMPARED = ("units", "granularity", "batch_size")  # arguments that pick rows or batching, not the numbers


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` (its folder created if need be) through a temporary file beside it and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def read_json(path: Path, kind: type):
    """The parsed JSON file at `path` (None when absent), which must be a `kind`."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PrunekitError(f"cannot read {path} ({type(error).__name__}): fix or remove it, then run again.") from None
    if not isinstance(data, kind):
        raise PrunekitError(f"{path} holds a {type(data).__name__}, not a {kind.__name__}: fix or remove it, "
                            "then run again.")
    return data


def read_csv(path: Path, required=()) -> tuple[list[str], list[dict[str, str]] | None]:
    """The columns and rows (as text) of the CSV file at `path`, None rows when it is absent."""
    if not path.is_file():
        return [], None
    try:
        with path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            rows = [{key: value for key, value in row.items() if key is not None} for row in reader]
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise PrunekitError(f"cannot read {path} ({type(error).__name__}): fix or remove it, then run again.") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise PrunekitError(f"{path} lacks the column(s) {', '.join(missing)}: make it again with this prunekit.")
    return columns, rows


@dataclass
class RunRecord:
    """run.json: the command that made the run, its arguments, the model, versions and the baseline's scores."""

    command: str = "sensitivity"
    args: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)  # {"name", "unet_fingerprint"}
    versions: dict = field(default_factory=dict)
    created: str = ""
    baseline: dict = field(default_factory=dict)
    init: str = "pretrained"
    notes: list = field(default_factory=list)
    sensitivity: str | None = None  # the rule of sensitivity.csv's `sensitivity` column
    prompts_sha256: str | None = None

    @classmethod
    def read(cls, path: Path) -> "RunRecord | None":
        """The record in `path` (None when there is none); a garbled one is refused in one sentence."""
        data = read_json(path, dict)
        if data is None:
            return None
        wrong = [key for key, kind in (("command", str), ("args", dict)) if not isinstance(data.get(key, kind()), kind)]
        model = data.get("model") if isinstance(data.get("model"), dict) else {}
        if not isinstance(model.get("unet_fingerprint"), str):
            wrong.append("model.unet_fingerprint")
        if wrong:
            raise PrunekitError(f"{path} lacks or garbles {', '.join(wrong)}: it is not a complete run record; "
                                "run the sweep again into another directory.")
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        return cls(**known)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=False) + "\n"

    @property
    def model_name(self) -> str:
        return str(self.model.get("name", "?"))

    @property
    def fingerprint(self) -> str:
        return self.model["unet_fingerprint"]

    def identity(self) -> dict:
        """What must match for a run directory to be resumed or extended: everything that changes a row's numbers."""
        args = {key: value for key, value in self.args.items() if key not in NOT_COMPARED}
        return {"command": self.command, **args, "unet_fingerprint": self.fingerprint,
                "prompts_sha256": self.prompts_sha256}


@contextmanager
def _locked(path: Path):
    """An exclusive lock on the file `path` for the body of the `with` (waits for another holder)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Table:
    """sensitivity.csv or one shard of it: rows as text, appended under the directory's lock (see the module)."""

    def __init__(self, path: Path, columns: list[str], lock: Path):
        self.path, self.columns, self.lock = path, list(columns), lock

    def rows(self) -> list[dict[str, str]]:
        """The rows on disk now."""
        if not self.path.is_file():
            return []
        with self.path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            if reader.fieldnames != self.columns:
                raise PrunekitError(f"{self.path} has other columns than this run writes: pass another --out "
                                    "directory.")
            return list(reader)

    def units(self) -> set[str]:
        return {row["unit"] for row in self.rows()}

    def append(self, *rows: dict) -> None:
        """Add `rows` of units not on disk yet (values written as Python prints them: floats round-trip exactly)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.lock):
            kept = self.rows()
            known = {row["unit"] for row in kept}
            for row in rows:
                if str(row["unit"]) not in known:
                    kept.append({column: str(row[column]) for column in self.columns})
                    known.add(str(row["unit"]))
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, self.columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)
            write_atomically(self.path, buffer.getvalue())


class RunDir:
    """The run directory `path`: its files (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        (self.record_path, self.table_path, self.plan_path, self.pareto_path, self.study_path, self.cache_path,
         self.images, self.distill, self.compare, self.comparison_path, self.lock_path) = (
            self.path / name for name in (RUN_JSON, TABLE, PLAN, PARETO, STUDY, PLANNER_CACHE, IMAGES, DISTILL,
                                          COMPARE, COMPARISON, LOCK))

    # -- run.json -------------------------------------------------------------------------------------------
    def record(self) -> RunRecord | None:
        """run.json's record, or None when the directory has none."""
        return RunRecord.read(self.record_path)

    def require_record(self) -> RunRecord:
        record = self.record() if self.path.is_dir() else None
        if record is None:
            raise PrunekitError(f"{self.path} holds no {RUN_JSON}: it is not a sensitivity run; run "
                                "`prunekit sensitivity --out` into it first.")
        return record

    def check_model(self, fingerprint: str) -> RunRecord:
        """The record, refused when the run was measured on another U-Net than the one of `fingerprint`."""
        record = self.require_record()
        if record.fingerprint != fingerprint:
            raise PrunekitError(f"{self.path} was measured on another U-Net ({record.model_name}, "
                                f"{record.fingerprint[:19]}) than this one ({fingerprint[:19]}): pass a sensitivity "
                                "run of this model.")
        return record

    def start(self, record: RunRecord) -> RunRecord:
        """Claim the directory for `record`'s run: refuse one that cannot be written or holds another run;
        write run.json when it has none. Returns the record on disk (an earlier one keeps its baseline)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".probe.{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise PrunekitError(f"cannot write to {self.path} ({error.__class__.__name__}): "
                                "pass a writable --out directory.") from None
        with _locked(self.lock_path):
            existing = self.record()
            if existing is None:
                if self.table_path.is_file() or (self.path / SHARDS).is_dir():
                    raise PrunekitError(f"{self.path} holds sensitivity results but no {RUN_JSON}, so they cannot "
                                        "be resumed safely: pass another --out directory.")
                return record
            theirs, mine = existing.identity(), record.identity()
            for key in dict.fromkeys([*theirs, *mine]):
                if theirs.get(key) != mine.get(key):
                    raise PrunekitError(f"{self.path} holds a run made by another command ({key}: "
                                        f"{theirs.get(key)!r} there, {mine.get(key)!r} here): repeat that command to "
                                        "resume it, or pass another --out directory.")
            return existing

    def write_record(self, record: RunRecord) -> None:
        with _locked(self.lock_path):
            write_atomically(self.record_path, record.to_json())

    # -- sensitivity.csv ------------------------------------------------------------------------------------
    def table(self, columns: list[str]) -> Table:
        return Table(self.table_path, columns, self.lock_path)

    def shard(self, rank: int, columns: list[str]) -> Table:
        return Table(self.path / SHARDS / f"rank{rank}.csv", columns, self.lock_path)

    def _shard_paths(self) -> list[Path]:
        folder = self.path / SHARDS
        return sorted(folder.glob("rank*.csv")) if folder.is_dir() else []

    def merge(self, columns: list[str], order: list[str]) -> None:
        """Move the shards' rows into sensitivity.csv (after its own rows, in `order`) and delete the shards."""
        paths = self._shard_paths()
        if not paths:
            return
        found = {row["unit"]: row for path in paths for row in Table(path, columns, self.lock_path).rows()}
        rank = {name: index for index, name in enumerate(order)}
        self.table(columns).append(*sorted(found.values(), key=lambda row: (rank.get(row["unit"], len(rank)),
                                                                            row["unit"])))
        for path in paths:
            path.unlink()
        (self.path / SHARDS).rmdir()

    def frame(self, columns: list[str]) -> pd.DataFrame:
        """sensitivity.csv as a DataFrame (no rows when there is none yet)."""
        return pd.read_csv(self.table_path) if self.table_path.is_file() else pd.DataFrame(columns=columns)

    def table_rows(self) -> tuple[list[str], list[dict[str, str]] | None]:
        """sensitivity.csv's columns and rows as text (None rows when absent), for readers."""
        return read_csv(self.table_path, UNIT_COLUMNS)

    def sensitivities(self) -> dict[str, float]:
        """Each measured unit's `sensitivity` (larger = more harmful to remove); a unit measured twice keeps its
        last row, and a non-finite value (a failed measurement) is left out."""
        if not self.table_path.is_file():
            raise PrunekitError(f"{self.table_path} is missing: run the sensitivity sweep into {self.path} first.")
        _, rows = read_csv(self.table_path, ("unit", "sensitivity"))
        table = {}
        for number, row in enumerate(rows, start=2):
            try:
                value = float(row["sensitivity"])
            except (TypeError, ValueError):
                raise PrunekitError(f"{self.table_path} line {number}: sensitivity {row['sensitivity']!r} is not a "
                                    "number: the file is garbled; run the sweep again.") from None
            if math.isfinite(value):
                table[row["unit"]] = value
        return table

    def intervals(self) -> dict[str, tuple[float, float]]:
        """Each measured unit's sensitivity interval (units whose row has none are left out)."""
        _, rows = read_csv(self.table_path, ("unit",))
        found = {}
        for row in rows or []:
            try:
                low, high = float(row.get("sensitivity_low") or "nan"), float(row.get("sensitivity_high") or "nan")
            except ValueError:
                continue
            if math.isfinite(low) and math.isfinite(high):
                found[row["unit"]] = (low, high)
        return found

    # -- images ---------------------------------------------------------------------------------------------
    def save_prompts(self, prompts: list[str]) -> None:
        self.images.mkdir(exist_ok=True)
        write_atomically(self.images / "prompts.json", json.dumps(prompts, indent=1) + "\n")

    def save_images(self, folder: str, images: list[Image.Image]) -> None:
        """`images` as images/`folder`/{i}.png, shrunk to at most THUMBNAIL pixels a side."""
        save_images(self.images / folder, images, THUMBNAIL)


def save_images(where: Path, images: list[Image.Image], size: int | None = None) -> None:
    """`images` as `where`/{i}.png (the folder made if need be), shrunk to at most `size` pixels a side if given."""
    where.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        if size is not None:
            image = image.copy()
            image.thumbnail((size, size))
        image.save(where / f"{index}.png")
