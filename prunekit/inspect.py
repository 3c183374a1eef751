"""`prunekit inspect`: a denoiser (U-Net or transformer) as a table of removable units with their costs."""
from __future__ import annotations

import json
from dataclasses import dataclass

from prunekit.costs import Costs, denoiser_costs, human
from prunekit.families import family_of
from prunekit.graph import enumerate_units
from prunekit.units import Unit, top_level
from prunekit.models import resolve_model


@dataclass(frozen=True)
class Inspection:
    """The units of one model at one granularity, and the whole denoiser's costs."""

    model: str
    granularity: str
    units: list[Unit]
    total: Costs
    config: dict  # the denoiser's
    tokens: int  # the text tokens of one step that the MACs are counted at

    def rows(self) -> list[dict]:
        return [
            {"unit": u.name, "kind": u.kind, "stage": u.stage, "depth": family_of(self.config).depth(u, self.config),
             "params": u.params, "params_pct": 100 * u.params / self.total.params, "macs": u.macs,
             "full_macs": u.full_macs,
             "channels": f"{u.channels_in}->{u.channels_out}" + (f" (+{u.skip_channels} skip)" if u.skip_channels else ""),
             "resolution": u.resolution, "parent": u.parent or ""}
            for u in self.units
        ]

    def summary(self) -> dict:
        listed = top_level(self.units)
        return {"model": self.model, "granularity": self.granularity, "units": len(self.units), "tokens": self.tokens,
                "params": self.total.params, "macs": self.total.macs, "full_macs": self.total.full_macs,
                "removable_params": sum(u.params for u in listed), "removable_macs": sum(u.macs for u in listed)}


def inspect_model(model: str, granularity: str = "block") -> Inspection:
    """The units of `model`'s denoiser at `granularity`, counted on the meta device (no weights needed) at the
    text length of the model's pipeline."""
    resolved = resolve_model(model)
    config, tokens = resolved.config, resolved.tokens
    return Inspection(model, granularity, enumerate_units(config, granularity, tokens), denoiser_costs(config, tokens),
                      config, tokens)


def format_table(rows: list[dict], columns: list[tuple[str, str]], formats: dict | None = None) -> str:
    """Rows as an aligned text table; `columns` are (key, heading) pairs, `formats` key -> callable."""
    formats = formats or {}
    cells = [[heading for _, heading in columns]]
    cells += [[formats.get(key, str)(row[key]) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(inspection: Inspection, fmt: str = "table") -> str:
    """The inspection as a text table (with totals), CSV or JSON."""
    rows = inspection.rows()
    if fmt == "json":
        return json.dumps({"summary": inspection.summary(), "units": rows}, indent=2)
    if fmt == "csv":
        import pandas as pd

        return pd.DataFrame(rows).to_csv(index=False).rstrip("\n")
    columns = [("unit", "unit"), ("kind", "kind"), ("depth", "depth"), ("params", "params"), ("params_pct", "% params"),
               ("macs", "MACs"), ("full_macs", "MACs+attn"), ("channels", "channels"), ("resolution", "res")]
    formats = {"params": human, "macs": human, "full_macs": human, "params_pct": lambda v: f"{v:.2f}"}
    summary = inspection.summary()
    total = inspection.total
    footer = (
        f"{inspection.model}: {summary['units']} units at {inspection.granularity} granularity; "
        f"{family_of(inspection.config).classes[0]} "
        f"{total.params:,} params, {human(total.macs)} MACs per step at {inspection.tokens} text tokens "
        f"({human(total.full_macs)} with attention); "
        f"top-level units hold {summary['removable_params'] / total.params:.1%} of params, "
        f"{summary['removable_macs'] / total.macs:.1%} of MACs."
    )
    footnote = family_of(inspection.config).footnote(inspection.config)
    return "\n\n".join([format_table(rows, columns, formats), footer, footnote])
