"""A drawing of a U-Net for the report: down stages, mid and up stages as rows of boxes, one per unit.

`unet_diagram` lays the drawing out as data (coordinates, labels, removal states); the template draws it
as inline SVG, so every string in it goes through jinja's escaping.
"""
from __future__ import annotations

from dataclasses import dataclass

from prunekit.graph import Removed, Unit
from prunekit.report.plots import KIND_COLORS, OTHER_COLOR

BOX_W, BOX_H, GAP = 50, 26, 4  # a unit's box and the space between boxes
ROW_H, INDENT, MARGIN, MIDDLE, LABEL = 60, 26, 14, 56, 16  # rows, the U's slope, borders, the U's inside
SHORT = {"downsample": "down", "upsample": "up"}


@dataclass(frozen=True)
class Box:
    """One unit: where it is drawn, its colour, and whether the plan removes it (kept / removed / partial)."""

    x: float
    y: float
    label: str
    title: str
    color: str
    state: str


@dataclass(frozen=True)
class Diagram:
    """Everything the template needs to draw the U-Net as one `<svg>`."""

    width: float
    height: float
    boxes: list[Box]
    labels: list[tuple[float, float, str]]  # (x, y, text): a stage's name and resolution above its row
    skips: list[tuple[float, float, float]]  # (x1, x2, y): a skip connection from a down row to its up row
    spine: str  # the SVG points of the U the data flows along
    box_w: int = BOX_W
    box_h: int = BOX_H


def _row_width(units: list[Unit]) -> float:
    return len(units) * (BOX_W + GAP) - GAP


def unet_diagram(units: list[Unit], removed: Removed) -> Diagram:
    """Lay out block-granularity `units` (no transformer layers): row s holds down{s} on the left and the
    up stage at the same resolution on the right; mid lies at the bottom. `removed`: what a plan removes."""
    rows: dict[str, list[Unit]] = {}
    for unit in units:
        rows.setdefault(unit.stage, []).append(unit)
    down = [s for s in rows if s.startswith("down")]
    up = [s for s in rows if s.startswith("up")]
    levels = len(down)
    level = {**{s: i for i, s in enumerate(down)}, **{s: levels - 1 - i for i, s in enumerate(up)}, "mid": levels}
    left = max((_row_width(rows[s]) + level[s] * INDENT for s in down), default=0)
    right = max((_row_width(rows[s]) + level[s] * INDENT for s in up), default=0)
    width = 2 * MARGIN + left + MIDDLE + right
    height = 2 * MARGIN + LABEL + max(level.values(), default=0) * ROW_H + BOX_H

    def x0(stage: str) -> float:
        if stage.startswith("down"):
            return MARGIN + level[stage] * INDENT
        if stage.startswith("up"):
            return width - MARGIN - level[stage] * INDENT - _row_width(rows[stage])
        return (width - _row_width(rows[stage])) / 2

    def y0(stage: str) -> float:
        return MARGIN + LABEL + level[stage] * ROW_H

    boxes, labels = [], []
    for stage, members in rows.items():
        side = members[0].resolution
        labels.append((x0(stage), y0(stage) - 6, f"{stage} · {side}×{side}"))
        for i, unit in enumerate(members):
            state = removed.state(unit)
            boxes.append(Box(x0(stage) + i * (BOX_W + GAP), y0(stage), SHORT.get(unit.kind, unit.name.split(".", 1)[1]),
                             f"{unit.name}: {unit.params:,} parameters, {state}",
                             KIND_COLORS.get(unit.kind, OTHER_COLOR), state))
    skips = [(x0(d) + _row_width(rows[d]), x0(u), y0(d) + BOX_H / 2) for d in down for u in up if level[u] == level[d]]
    centre = BOX_H / 2
    path = [(x0(s) - 6, y0(s) + centre) for s in down]
    if "mid" in rows:
        path += [(x0("mid") - 6, y0("mid") + centre), (x0("mid") + _row_width(rows["mid"]) + 6, y0("mid") + centre)]
    path += [(x0(s) + _row_width(rows[s]) + 6, y0(s) + centre) for s in up]
    spine = " ".join(f"{x:.0f},{y:.0f}" for x, y in path)
    return Diagram(width, height, boxes, labels, skips, spine)
