"""Shard checks that gate training (wrapped as blocking Dagster asset checks)."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from pipelines.heatmaps import decode_png
from pipelines.shards import read_manifest, read_quarantine, read_table


def check_accounting(out_dir) -> tuple[bool, dict]:
    """Every record read is in a sample's source_ids or in the quarantine, never both."""
    manifest = read_manifest(out_dir)
    ids = read_table(out_dir, columns=["source_ids"])["source_ids"]
    in_samples = set(pc.list_flatten(ids).to_pylist()) if len(ids) else set()
    quarantined = read_quarantine(out_dir)["record_id"].to_pylist()
    overlap = in_samples & set(quarantined)
    read = manifest["counts"]["records_read"]
    accounted = len(in_samples) + len(quarantined)
    meta = {"records_read": read, "in_samples": len(in_samples), "quarantined": len(quarantined),
            "unaccounted": read - accounted, "in_both": len(overlap)}
    return accounted == read and not overlap, meta


def check_heatmap_peaks(out_dir, max_samples: int = 200) -> tuple[bool, dict]:
    """The decoded heatmap is exactly 255 at every instance center (and all zero without one)."""
    table = read_table(out_dir, columns=["sample_id", "task", "heatmap", "centers"])
    table = table.filter(pc.invert(pc.is_null(table["heatmap"])))
    n = table.num_rows
    idx = np.linspace(0, n - 1, num=min(n, max_samples)).astype(int) if n else []
    bad = []
    for i in idx:
        row = {k: table[k][int(i)].as_py() for k in ("sample_id", "heatmap", "centers")}
        heat = np.rint(decode_png(row["heatmap"]) * 255).astype(np.uint8)
        centers = row["centers"] or []
        if centers:
            ok = all(heat[y, x] == 255 for x, y in centers) and heat.max() == 255
        else:
            ok = heat.max() == 0
        if not ok:
            bad.append(row["sample_id"])
    return not bad, {"checked": len(idx), "bad": len(bad), "bad_sample_ids": bad[:10]}
