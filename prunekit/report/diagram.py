"""A drawing of a denoiser for the report, one box per unit: a U-Net's down stages, mid and up stages as the
rows of a U; a transformer's stacks of blocks as rows in forward order.

`diagram(config, units, removed)` lays the drawing its family asks for (`Family.drawing`) out as data
(coordinates, labels, removal states); the template draws it as inline SVG, so every string in it goes through
jinja's escaping.
"""
from __future__ import annotations

from dataclasses import dataclass

from prunekit.units import Removed, Unit
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
    spine: str  # the SVG points of the path the data flows along
    label: str  # what the drawing shows, for screen readers
    legend: str  # how to read it
    kinds: tuple[str, ...]  # the unit kinds whose colours the legend shows
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
    return Diagram(width, height, boxes, labels, skips, spine,
                   "the U-Net's stages with the units the plan removes struck out",
                   "Down stages on the left, up stages on the right, joined by their skip connections (dashed); the "
                   "mid block at the bottom.", ("res", "attn", "downsample"))


PER_ROW = 12  # blocks per row of a stack's drawing


def stack_diagram(units: list[Unit], removed: Removed) -> Diagram:
    """Lay out a transformer's blocks (`units`, top level): each stack's blocks in rows of PER_ROW, forward order
    left to right and down, the stacks one under the other; the spine joins the rows in the order they run."""
    stacks: dict[str, list[Unit]] = {}
    for unit in units:
        stacks.setdefault(unit.stage, []).append(unit)
    boxes, labels, path, y = [], [], [], MARGIN
    for stage, members in stacks.items():
        side = members[0].resolution
        labels.append((MARGIN, y + LABEL - 6, f"{stage} · {len(members)} blocks · {side}×{side} tokens"))
        for start in range(0, len(members), PER_ROW):
            row_y = y + LABEL
            for i, unit in enumerate(members[start:start + PER_ROW]):
                state = removed.state(unit)
                boxes.append(Box(MARGIN + i * (BOX_W + GAP), row_y, unit.name.removeprefix(stage),
                                 f"{unit.name}: {unit.params:,} parameters, {state}",
                                 KIND_COLORS.get(unit.kind, OTHER_COLOR), state))
            count = len(members[start:start + PER_ROW])
            path += [(MARGIN - 6, row_y + BOX_H / 2), (MARGIN + count * (BOX_W + GAP) - GAP + 6, row_y + BOX_H / 2)]
            y += BOX_H + GAP + (LABEL if start == 0 else 0)
        y += ROW_H - BOX_H
    width = 2 * MARGIN + min(PER_ROW, max((len(m) for m in stacks.values()), default=0)) * (BOX_W + GAP)
    spine = " ".join(f"{x:.0f},{y:.0f}" for x, y in path)
    return Diagram(width, y + MARGIN - (ROW_H - BOX_H), boxes, labels, [], spine,
                   "the transformer's blocks with those the plan removes struck out",
                   "Each stack's blocks in the order they run, left to right and down.", ("block",))


def diagram(config: dict, units: list[Unit], removed: Removed) -> Diagram:
    """The drawing of the denoiser of `config` that its family asks for."""
    from prunekit.families import family_of

    return {"u-net": unet_diagram, "stacks": stack_diagram}[family_of(config).drawing](units, removed)
