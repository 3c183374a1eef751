"""`build_report`: read whatever a run directory holds and write one self-contained report.html.

Each section of the page appears only when its files exist (the files and their columns are listed in
notes/run-directory.md). Figures and images are embedded, so the page needs no network and no other file,
and jinja2 escapes every string that comes from the run.
"""
from __future__ import annotations

import os
from pathlib import Path

import jinja2

from prunekit.report.rundir import read_run
from prunekit.report.sections import context


def build_report(run_dir, output=None) -> Path:
    """Write the report of run directory `run_dir` to `output` (default `run_dir/report.html`); return its path."""
    run = read_run(Path(run_dir))
    output = Path(output) if output is not None else run.path / "report.html"
    environment = jinja2.Environment(loader=jinja2.PackageLoader("prunekit.report", "templates"),
                                     autoescape=True, undefined=jinja2.StrictUndefined)
    html = environment.get_template("report.html.j2").render(**context(run))
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.{os.getpid()}.tmp")  # replaced in one step: never half-written
    partial.write_text(html, encoding="utf-8")
    os.replace(partial, output)
    return output
