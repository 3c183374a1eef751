"""Options: the checks that every command's options share, and options dataclasses from parsed arguments.

Each command has one frozen dataclass of options (prunekit.sensitivity.SweepOptions, prunekit.planner.
PlanOptions, prunekit.distill.DistillOptions, ...); its `__post_init__` checks every value with the
functions here, so bad values are refused in one sentence before anything is loaded. Messages name the
command-line flag (`--batch-size`), which is also how the Python API's fields are spelled with dashes.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch

from prunekit.errors import PrunekitError


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_count(name: str, value, minimum: int = 1, optional: bool = False) -> None:
    """Refuse anything but a whole number of at least `minimum` (or None when `optional`)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PrunekitError(f"{flag(name)} must be a whole number of at least {minimum}, not {value!r}.")


def check_number(name: str, value, minimum: float | None = None, above: float | None = None,
                 optional: bool = False, maximum: float | None = None) -> None:
    """Refuse anything but a finite number, at least `minimum`, above `above` and at most `maximum` where given."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PrunekitError(f"{flag(name)} must be a finite number, not {value!r}.")
    if minimum is not None and value < minimum:
        raise PrunekitError(f"{flag(name)} must be at least {minimum:g}, not {value:g}.")
    if above is not None and value <= above:
        raise PrunekitError(f"{flag(name)} must be above {above:g}, not {value:g}.")
    if maximum is not None and value > maximum:
        raise PrunekitError(f"{flag(name)} must be at most {maximum:g}, not {value:g}.")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        shown = ", ".join(str(choice) for choice in choices if choice is not None)
        raise PrunekitError(f"unknown {name.replace('_', ' ')} {value!r} ({flag(name)}): use one of {shown}.")


def resolve_device(device: str | None) -> str:
    """`device` checked against this machine; None or 'auto' is CUDA where a GPU is visible, else the CPU."""
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise PrunekitError(f"unknown --device {device!r}: use cpu, cuda or cuda:N.") from None
    if parsed.type not in ("cpu", "cuda"):
        raise PrunekitError(f"--device {device!r} is not supported: use cpu, cuda or cuda:N.")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise PrunekitError(f"--device {device} but no CUDA GPU is visible here: use --device cpu, or run on a "
                                "machine with a GPU.")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise PrunekitError(f"--device {device} but this machine has {torch.cuda.device_count()} GPU(s): use "
                                "cuda:0 to cuda:{}.".format(torch.cuda.device_count() - 1))
    return device


def from_namespace(cls, namespace, **extra):
    """An options dataclass `cls` from parsed command-line arguments (fields it lacks take their defaults)."""
    given = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if hasattr(namespace, f.name)}
    return cls(**{**given, **extra})


def merged(cls, options, changes: dict):
    """`options` (default: `cls()`) with `changes` applied; an unknown field is refused in one sentence."""
    if options is not None and not isinstance(options, cls):
        raise TypeError(f"options must be a {cls.__name__}, not {type(options).__name__}: pass values by keyword")
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise PrunekitError(f"{cls.__name__} has no option(s) {', '.join(unknown)}.")
    return dataclasses.replace(options if options is not None else cls(), **changes)


def _writable_folder(folder: Path) -> bool:
    """Whether a file can be created in `folder`: its nearest existing ancestor is a folder that takes a file
    (one is written there and deleted; no folder is created to find out)."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return False
    probe = existing / f".prunekit-probe.{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
        return True
    except OSError:
        return False


def check_output_file(path, what: str, replace=False) -> Path:
    """Refuse an output file path that is a directory, lies in a folder that cannot be written, or names an
    existing file that `replace` does not allow replacing (False: none; True: any; a callable: those it accepts)."""
    if not str(path).strip():
        raise PrunekitError(f"the {what} file's path is empty: give the path to write it to.")
    path = Path(path)
    if path.is_dir():
        raise PrunekitError(f"{path} is a directory: give the path of the {what} file to write.")
    if not _writable_folder(path.parent):
        raise PrunekitError(f"cannot write the {what} to {path}: {path.parent} is not a folder this user can write "
                            "into.")
    if path.exists() and not (replace(path) if callable(replace) else replace):
        raise PrunekitError(f"{path} exists already: pass --force to replace it, or write the {what} elsewhere.")
    return path


def check_output_dir(path, what: str) -> Path:
    """Refuse an output folder path that is a file or cannot be written."""
    if not str(path).strip():
        raise PrunekitError(f"the {what}'s folder is empty: give a folder to write it to.")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PrunekitError(f"{path} is a file: give a folder for the {what}.")
    if not _writable_folder(path):
        raise PrunekitError(f"cannot write the {what} to {path}: it is not a folder that can be written.")
    return path
