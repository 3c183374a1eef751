"""`prunekit demo` at a tiny size: every stage runs, the plan's student and the preset's are compared, the report
leads with the verdict, the terminal carries no library noise, and a rerun resumes instead of retraining."""
from __future__ import annotations

import re
import subprocess
import sys

from prunekit import comparison

def run_demo(out) -> subprocess.CompletedProcess:
    code = ("import sys; from prunekit.quiet import quiet_libraries; quiet_libraries(); "  # as the CLI does
            "from prunekit.demo import DemoSettings, demo; "
            "demo(sys.argv[1], DemoSettings(num_prompts=2, steps=4, distill_steps=4, eval_num_prompts=2, "
            "num_examples=64), progress=False)")
    return subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=900)


def test_the_demo_runs_every_stage_and_compares_with_the_preset(tmp_path):
    out = tmp_path / "demo"
    first = run_demo(out)
    assert first.returncode == 0, first.stderr[-2000:]
    assert re.findall(r"^== (\d)/6 ", first.stdout, re.M) == [str(i) for i in range(1, 7)]
    assert "U-Net step" in first.stdout and "student_after" in first.stdout
    assert first.stderr.strip() == "", first.stderr[-2000:]  # no third-party warnings
    rows = comparison.read(out / "comparison.csv")
    assert [row["candidate"] for row in rows] == ["prunekit (optuna)", "bk-small"]
    assert all(row["params_fraction"] <= rows[1]["params_fraction"] + 1e-4 for row in rows)
    page = (out / "report.html").read_text()
    assert page.index('id="verdict"') < page.index('id="students"') < page.index('id="comparison"')
    assert "bk-small" in page.split('id="verdict"')[1].split("</header>")[0]  # the rival, in the verdict
    evaluations = [out / "distill" / "eval.json", out / "compare" / "bk-small" / "distill" / "eval.json"]
    written = [path.stat().st_mtime_ns for path in evaluations]

    again = run_demo(out)  # resumes: nothing is retrained or scored again, the same comparison is written
    assert again.returncode == 0, again.stderr[-2000:]
    assert [path.stat().st_mtime_ns for path in evaluations] == written
    assert comparison.read(out / "comparison.csv") == rows
