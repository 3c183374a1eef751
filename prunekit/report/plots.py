"""The report's figures: matplotlib figures rendered to base64 PNG data URIs (no pyplot, no global state).

Every function takes plain numbers and names and returns `data:image/png;base64,...` strings that the
template puts in `<img>`s, so the page needs no other file: one per chart, so that charts side by side on a
desktop stack on a phone.
"""
from __future__ import annotations

import base64
import io
import itertools

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from prunekit.costs import scale

# Okabe-Ito colours (readable by colour-blind readers); the plan drawing uses the same ones.
KIND_COLORS = {
    "res": "#0072B2", "attn": "#E69F00", "pair": "#009E73", "transformer": "#CC79A7",
    "downsample": "#56B4E9", "upsample": "#56B4E9", "mid": "#D55E00", "stage": "#7F6BB0", "block": "#009E73",
    "ff": "#0072B2", "cross": "#F0E442",
}
OTHER_COLOR = "#999999"
INK, MUTED, GRID = "#1f2328", "#57606a", "#e5e7eb"
PRESET_MARKERS = {"bk-base": "s", "bk-small": "D", "bk-tiny": "^"}
_STYLE = {
    "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "axes.edgecolor": MUTED, "axes.labelcolor": INK, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.color": GRID, "grid.linewidth": 0.8, "axes.axisbelow": True,
    "xtick.color": MUTED, "ytick.color": MUTED, "legend.frameon": False,
}


def _figure(width: float, height: float, **subplots):
    """A Figure with axes from `subplots` (passed to Figure.subplots); call it inside the report's rc_context."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(**subplots)


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _legend(ax, kinds, **kwargs) -> None:
    """A legend of unit kinds; kinds that share a colour share an entry ("downsample/upsample")."""
    labels: dict[str, list[str]] = {}
    for kind in kinds:
        labels.setdefault(KIND_COLORS.get(kind, OTHER_COLOR), []).append(kind)
    handles = [Patch(color=color, label="/".join(names)) for color, names in labels.items()]
    ax.legend(handles=handles, fontsize=8, **kwargs)


def stage_costs(stages: list[str], kinds: list[str], params: dict, macs: dict) -> list[str]:
    """Stacked bars of parameters and of MACs per stage, by unit kind; `params[kind][i]` is stage i's share."""
    charts = []
    for values, label in ((params, "parameters"), (macs, "MACs per step")):
        with matplotlib.rc_context(_STYLE):
            fig, ax = _figure(4.3, 3.0)
            divisor, suffix = scale(max(sum(column) for column in zip(*values.values())))
            bottom = [0.0] * len(stages)
            for kind in kinds:
                heights = [v / divisor for v in values[kind]]
                ax.bar(stages, heights, bottom=bottom, color=KIND_COLORS.get(kind, OTHER_COLOR), width=0.7)
                bottom = [b + h for b, h in zip(bottom, heights)]
            ax.set_ylabel(f"{label} ({suffix})" if suffix else label)
            ax.tick_params(axis="x", labelrotation=45)
            ax.grid(axis="x", visible=False)
            _legend(ax, kinds, loc="upper left")
            charts.append(_png(fig))
    return charts


def sensitivity_bars(names: list[str], kinds: list[str], values: list[float], saved: list[str], xlabel: str,
                     errors: list[tuple[float, float]] | None = None) -> str:
    """Horizontal bars, one per unit in the given order (top first), coloured by kind, `saved` written beside;
    `errors` (below, above) draw each value's interval."""
    with matplotlib.rc_context(_STYLE):
        fig, ax = _figure(8.6, 0.9 + 0.21 * len(names))
        positions = range(len(names))
        xerr = np.array(errors).T if errors else None
        ax.barh(positions, values, color=[KIND_COLORS.get(k, OTHER_COLOR) for k in kinds], height=0.72, xerr=xerr,
                error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": INK})
        ax.set_yticks(list(positions), names, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color=MUTED, linewidth=0.8)
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        side = ax.get_yaxis_transform()
        for y, text in zip(positions, saved):
            ax.text(1.02, y, text, transform=side, va="center", fontsize=7.5, color=MUTED, clip_on=False)
        ax.text(1.02, -1, "params saved", transform=side, va="center", fontsize=7.5, color=INK, clip_on=False)
        _legend(ax, dict.fromkeys(kinds), loc="lower right")
        return _png(fig)


def pareto(points: list[dict], front: dict[str, list[dict]], presets: dict[str, dict], chosen: dict | None,
           ylabel: str = "predicted loss") -> list[str]:
    """Loss against the params fraction, and against the MACs fraction: every candidate, the front, the BK
    presets (in the legend, not on the points, so their names never overlap) and the chosen plan.

    `points` and the values of `front` / `presets` / `chosen` are dicts with params_fraction, macs_fraction
    and loss; `front` maps each of the two x keys to its front, sorted by that key.
    """
    charts = []
    for key, label in (("params_fraction", "parameters kept (fraction)"), ("macs_fraction", "MACs kept (fraction)")):
        with matplotlib.rc_context(_STYLE):
            fig, ax = _figure(4.3, 3.4)
            ax.scatter([p[key] for p in points], [p["loss"] for p in points], s=12, color=OTHER_COLOR,
                       alpha=0.6, label="Pareto plans", linewidths=0)
            ax.step([p[key] for p in front[key]], [p["loss"] for p in front[key]], where="post",
                    color=KIND_COLORS["res"], linewidth=1.6, label="front")
            for name, point in presets.items():
                ax.scatter(point[key], point["loss"], s=46, marker=PRESET_MARKERS.get(name, "o"), color=INK, zorder=3,
                           label=name)
            if chosen is not None:
                ax.scatter(chosen[key], chosen["loss"], s=140, marker="*", color=KIND_COLORS["mid"], zorder=4,
                           label="this plan")
            ax.set_xlabel(label)
            ax.set_ylabel(ylabel)
            ax.legend(loc="upper right", fontsize=7.5)
            charts.append(_png(fig))
    return charts


def distill_curves(steps: list[float], losses: dict[str, list[float]], lr: list[float] | None) -> list[str]:
    """Training losses (mean squared errors) against step, log scale when all positive, a moving average over the
    raw line; then the learning rate, when given (the caller leaves out a constant one)."""
    with matplotlib.rc_context(_STYLE):
        fig, ax = _figure(5.2, 3.2)
        colors = itertools.cycle(KIND_COLORS[k] for k in ("res", "attn", "pair", "transformer", "mid"))
        window = max(1, len(steps) // 40)
        for color, (name, values) in zip(colors, losses.items()):
            pairs = [(s, v) for s, v in zip(steps, values) if v is not None]
            xs, ys = [s for s, _ in pairs], [v for _, v in pairs]
            smooth = 1 < window <= len(ys)
            ax.plot(xs, ys, color=color, alpha=0.25 if smooth else 1.0, linewidth=0.8, label=None if smooth else name)
            if smooth:
                ax.plot(xs[window - 1:], _moving_average(ys, window), color=color, linewidth=1.6, label=name)
        if all(v > 0 for values in losses.values() for v in values if v is not None):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (MSE)")
        ax.legend(fontsize=8)
        charts = [_png(fig)]
    if lr:
        with matplotlib.rc_context(_STYLE):
            fig, ax = _figure(3.6, 3.2)
            ax.plot(steps, lr, color=INK, linewidth=1.2)
            ax.set_xlabel("step")
            ax.set_ylabel("learning rate")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
            charts.append(_png(fig))
    return charts


def _moving_average(values: list[float], window: int):
    return np.convolve(values, np.ones(window) / window, mode="valid")
