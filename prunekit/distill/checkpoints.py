"""Checkpoints of a distillation run: where they are, which is newest, what a resume must agree with.

DIR/checkpoints/step-00000500/ holds accelerate's state (the student, optimizer, LR scheduler, gradient
scaler and RNG states), `ema/` (the EMA weights, safetensors) when EMA is on, `noise-{process}.safetensors`
(each process's noise generator) and `trainer_state.json` (step, data position, elapsed seconds and
the settings a resumed run must share). A checkpoint is written under a `.partial` name and renamed
when complete, so a run killed while saving never leaves a half checkpoint that looks whole.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prunekit.errors import PrunekitError

STATE = "trainer_state.json"
_NAME = re.compile(r"step-(\d{8})")


@dataclass
class State:
    """Where a run stands: optimizer steps done, micro-batches consumed per process, wall seconds so far."""

    step: int = 0
    batches: int = 0
    seconds: float = 0.0
    settings: dict = field(default_factory=dict)


def name(step: int) -> str:
    return f"step-{step:08d}"


def partial(directory: Path, step: int) -> Path:
    return directory / f".{name(step)}.partial"


def complete(directory: Path) -> list[Path]:
    """The finished checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = [path for path in directory.iterdir() if _NAME.fullmatch(path.name) and (path / STATE).is_file()]
    return sorted(found, key=lambda path: path.name)


def write_state(path: Path, state: State) -> None:
    (path / STATE).write_text(json.dumps(asdict(state), indent=2) + "\n")


def read_state(path: Path) -> State:
    return State(**json.loads((path / STATE).read_text()))


def finish(directory: Path, step: int, keep: int) -> Path:
    """Rename the partial checkpoint of `step` to its final name and delete all but the newest `keep`."""
    final = directory / name(step)
    if final.exists():
        shutil.rmtree(final)
    partial(directory, step).rename(final)
    for old in complete(directory)[:-keep]:
        shutil.rmtree(old)
    return final


def clear_partials(directory: Path) -> None:
    """Delete checkpoints a killed run left half-written."""
    if directory.is_dir():
        for path in directory.glob(".step-*.partial"):
            shutil.rmtree(path)


def newest(directory: Path, settings: dict) -> tuple[Path, State]:
    """The newest checkpoint in `directory` and its state; refuses none, or one made with other settings."""
    found = complete(directory)
    if not found:
        raise PrunekitError(f"nothing to resume: {directory} holds no checkpoint; run without --resume to start.")
    path = found[-1]
    state = read_state(path)
    changed = [f"{key} {state.settings.get(key)!r} -> {value!r}" for key, value in settings.items()
               if state.settings.get(key) != value]
    if changed:
        raise PrunekitError(f"{path} was made with other settings ({'; '.join(changed)}): resume with the "
                            "same ones, or start a new run in another --out folder.")
    return path, state


def check_start(directory: Path, resume: bool, settings: dict) -> None:
    """Refuse, before any work, a resume with nothing (or something else) to resume, or a fresh start over a run."""
    if resume:
        newest(directory, settings)
    elif complete(directory):
        raise PrunekitError(f"{directory.parent} already holds checkpoints of a run: pass --resume to continue it, "
                            "or choose another --out folder.")
