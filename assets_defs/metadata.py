"""Small helpers that turn results into Dagster UI metadata (tables, images, links)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import dagster as dg


def md_table(rows: list[dict], columns: list[str] | None = None) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("(none)")
    columns = columns or list(rows[0])
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(_cell(r.get(c)) for c in columns) + " |\n" for r in rows)
    return dg.MetadataValue.md(head + body)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v).replace("|", "\\|")


def png_markdown(png: bytes, alt: str = "image") -> str:
    """Inline PNG (a data URI), so the picture shows in the asset's metadata with no file server."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def image_file_markdown(path, alt: str = "image") -> str:
    p = Path(path)
    return png_markdown(p.read_bytes(), alt) if p.is_file() else f"({alt}: {p} not found)"


def latest_metadata(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> dict | None:
    """The metadata of the latest materialization of `asset` (plain Python values), or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None),
        limit=1).records
    if not records:
        return None
    meta = records[0].asset_materialization.metadata
    return {k: v.value for k, v in meta.items()}


def json_value(meta: dict | None, key: str, default=None):
    if not meta or key not in meta:
        return default
    v = meta[key]
    return json.loads(v) if isinstance(v, str) else v
