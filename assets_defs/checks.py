"""Blocking checks: bad shards never reach training."""


import dagster as dg

from assets_defs.assets.sources import shards
from assets_defs.resources import LumenPaths
from pipelines.checks import check_accounting, check_heatmap_peaks
from pipelines.layout import source_specs


def _run(check, context, paths: LumenPaths) -> dg.AssetCheckResult:
    source = context.partition_key if context.has_partition_key else None
    results = {}
    for spec in source_specs(source, paths.sources):
        passed, meta = check(spec.shard_dir(paths.shards))
        results[spec.split] = {"passed": passed, **meta}
    return dg.AssetCheckResult(passed=all(r["passed"] for r in results.values()),
                               metadata={"per_split": dg.MetadataValue.json(results)})


@dg.asset_check(asset=shards, blocking=True, description="Every source record is in a sample or in the quarantine.")
def records_accounted(context: dg.AssetCheckExecutionContext, paths: LumenPaths) -> dg.AssetCheckResult:
    return _run(check_accounting, context, paths)


@dg.asset_check(asset=shards, blocking=True, description="Each heatmap peaks (255) exactly at its instance centers.")
def heatmap_peaks_at_centers(context: dg.AssetCheckExecutionContext, paths: LumenPaths) -> dg.AssetCheckResult:
    return _run(check_heatmap_peaks, context, paths)
