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


def table(rows: list[dict], columns: list[str] | None = None, missing: str = "") -> dg.MetadataValue:
    """An inline table (numbers rounded; missing cells `missing`: "n/a" where a metric had nothing to measure)."""
    if not rows:
        return dg.MetadataValue.md("(none)")
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    types = {c: _column_type([r.get(c) for r in rows]) for c in columns}
    records = [dg.TableRecord({c: missing if r.get(c) is None and missing else _cell(r.get(c), types[c])
                               for c in columns}) for r in rows]
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


NOT_APPLICABLE = "n/a"  # a metric pycocotools marks -1: nothing of that kind to measure (e.g. APl, no large object)


def metric_values(flat: dict[str, float | None]) -> dict:
    """Each metric as its own metadata entry: a float Dagster plots across materializations (the
    asset's Plots tab, one line per metric over the versions), or "n/a"."""
    return {k: dg.MetadataValue.float(float(v)) if v is not None else dg.MetadataValue.text(NOT_APPLICABLE)
            for k, v in flat.items()}


def _figure(width: float = 7.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=90)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def metrics_by_version_png(by_version: dict[str, dict[str, float | None]], title: str = "metrics by version") -> bytes:
    """One line per metric over the versions in order (a gap where a version has no value)."""
    plt, fig, ax = _figure()
    versions = sorted(by_version)
    names = sorted({k for m in by_version.values() for k in m})
    for name in names:
        ys = [by_version[v].get(name) for v in versions]
        ax.plot(versions, [float("nan") if y is None else y for y in ys], marker="o", label=name)
    ax.set_title(title)
    ax.set_xlabel("stage-2 version")
    ax.set_ylabel("score (higher is better)")
    ax.grid(alpha=0.3)
    if names:
        ax.legend(fontsize=7, ncol=2, loc="best")
    return _png(plt, fig)


def loss_overlay_png(curves: dict[str, tuple[list[float], list[float]]], title: str = "training loss") -> bytes:
    """Loss curves of several versions on one axis: label -> (steps, losses)."""
    plt, fig, ax = _figure()
    for label, (steps, losses) in curves.items():
        ax.plot(steps, losses, linewidth=1.2, label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(plt, fig)


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
