"""Jobs the three users launch from the UI."""

from __future__ import annotations

import dagster as dg

from assets_defs.assets.sources import source_partitions

ingest = dg.define_asset_job(
    "ingest", selection=dg.AssetSelection.groups("data"), partitions_def=source_partitions,
    description="Data engineers: source files -> shards (with blocking checks) -> catalog, per source partition.")

JOBS = [ingest]
