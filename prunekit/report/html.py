"""`build_report`: read whatever a run directory holds and write one self-contained report.html.

Each section of the page appears only when its files exist (prunekit.rundir, docs/design.md). Figures and images are embedded, so the page needs no network and no other file,
and jinja2 escapes every string that comes from the run.
"""
from __future__ import annotations

from pathlib import Path

import jinja2

from prunekit.options import check_output_file
from prunekit.rundir import REPORT, write_atomically

from prunekit.report.rundir import read_run
from prunekit.report.sections import context

GENERATOR = b'<meta name="generator" content="prunekit'  # in the template's head


def is_report(path: Path) -> bool:
    """Whether the file at `path` is a report prunekit wrote (so another may replace it)."""
    try:
        with path.open("rb") as file:
            return GENERATOR in file.read(4096)
    except OSError:
        return False


def build_report(run_dir, output=None) -> Path:
    """Write the report of run directory `run_dir` to `output` (default `run_dir/report.html`) and return its
    path. An existing file there is replaced only when it is a prunekit report itself."""
    run = read_run(Path(run_dir))
    output = Path(output) if output is not None else run.path / REPORT
    check_output_file(output, "report", replace=is_report)
    environment = jinja2.Environment(loader=jinja2.PackageLoader("prunekit.report", "templates"),
                                     autoescape=True, undefined=jinja2.StrictUndefined)
    html = environment.get_template("report.html.j2").render(**context(run))
    write_atomically(output, html)  # replaced in one step: never half-written
    return output
