"""Turn results into Dagster UI metadata people can read: inline tables, rounded numbers, pictures.

How the Dagster UI shows metadata decides the choices here: a `MetadataValue.table` is drawn inline
as a table; markdown and JSON are drawn inline only while shorter than 1,000 characters, longer ones
hide behind a "[Show Markdown]" link. So tables are tables, a picture that must be seen at a glance
is a small SVG (a loss sparkline fits in 1,000 characters), and the full-size PNG goes behind the link.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path

import dagster as dg


def number(v):
    """Integers as integers, other numbers to 3 significant digits (what a person compares)."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 1):
        return int(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return float(f"{v:.3g}")
    return v


def table(rows: list[dict], columns: list[str] | None = None) -> dg.MetadataValue:
    """An inline table (numbers rounded; missing cells empty)."""
    if not rows:
        return dg.MetadataValue.md("(none)")
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    types = {c: _column_type([r.get(c) for r in rows]) for c in columns}
    records = [dg.TableRecord({c: _cell(r.get(c), types[c]) for c in columns}) for r in rows]
    schema = dg.TableSchema(columns=[dg.TableColumn(c, types[c]) for c in columns])
    return dg.MetadataValue.table(records=records, schema=schema)


def _column_type(values) -> str:
    vals = [number(v) for v in values if v is not None]
    if vals and all(isinstance(v, bool) for v in vals):
        return "bool"
    if vals and all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return "int"
    if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return "float"
    return "string"


def _cell(v, kind: str):
    v = number(v)
    if v is None:
        return ""
    if kind == "float":
        return float(v)
    if kind in ("int", "bool"):
        return v
    return str(v)


def png_markdown(png: bytes, alt: str = "image") -> str:
    """Inline PNG (a data URI): shown behind the UI's "[Show Markdown]" link, no file server needed."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def image_file_markdown(path, alt: str = "image") -> str:
    p = Path(path)
    return png_markdown(p.read_bytes(), alt) if p.is_file() else f"({alt}: {p} not found)"


def sparkline(values: list[float], label: str, width: int = 240, height: int = 48, points: int = 40) -> dg.MetadataValue:
    """A small SVG line of `values` (down-sampled to `points`), short enough to be drawn inline."""
    if not values:
        return dg.MetadataValue.md("(no values)")
    step = max(1, math.ceil(len(values) / points))
    vals = [sum(values[i:i + step]) / len(values[i:i + step]) for i in range(0, len(values), step)]
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    xs = [round(i * (width - 4) / max(1, len(vals) - 1)) + 2 for i in range(len(vals))]
    ys = [round((hi - v) / span * (height - 4)) + 2 for v in vals]
    svg = (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"
           f"<polyline fill='none' stroke='#d9480f' stroke-width='2' points='"
           + " ".join(f"{x},{y}" for x, y in zip(xs, ys)) + "'/></svg>")
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
    return dg.MetadataValue.md(f"{label}: {number(vals[0])} → {number(vals[-1])}\n\n![{label}]({uri})")


def latest_metadata(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dict | None:
    """The metadata of the latest materialization of `asset` (plain Python values), or None.

    For what a person looks at (main's summary, sensors' cursors), never to pick a model or a file
    for the next step: that is the hand-over's job (assets_defs/handover.py)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1).records
    if not records:
        return None
    meta = records[0].asset_materialization.metadata
    return {k: v.value for k, v in meta.items()}
