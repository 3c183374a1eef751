"""Write a benchmark's measurements to reports/NAME/: table.md, table.csv and ratios.png.

Each row is one measurement: {"measure", "value", "unit", "target"} where target is a text such as
"<= 1.2" or ">= 20" (or "" when the row only gives context); "met" is filled in from it.
"""
from __future__ import annotations

import operator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

_COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def _met(value: float, target: str) -> str:
    if not target:
        return ""
    sign, bound = target.split()
    return "yes" if _COMPARE[sign](value, float(bound)) else "no"


def write(out: str | Path, title: str, context: str, rows: list[dict]) -> Path:
    """The rows as markdown, CSV and a bar chart of the rows that have a target; returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame["met"] = [_met(v, t) for v, t in zip(frame["value"], frame["target"])]
    frame.to_csv(out / "table.csv", index=False)
    lines = [f"# {title}", "", context, "", "| measure | value | target | met |", "| --- | ---: | --- | --- |"]
    lines += [f"| {r.measure} | {r.value:.3g} {r.unit} | {r.target} | {r.met} |" for r in frame.itertuples()]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    targeted = frame[frame["target"] != ""]
    if len(targeted):
        figure, axis = plt.subplots(figsize=(7, 0.5 + 0.45 * len(targeted)))
        colours = ["#2a9d8f" if met == "yes" else "#e76f51" for met in targeted["met"]]
        axis.barh(targeted["measure"], targeted["value"], color=colours)
        for y, (value, target) in enumerate(zip(targeted["value"], targeted["target"])):
            axis.text(value, y, f"  {value:.3g} (target {target})", va="center", fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel("value (green: target met)")
        axis.set_title(title, fontsize=10)
        figure.tight_layout()
        figure.savefig(out / "ratios.png", dpi=110)
        plt.close(figure)
    return out
