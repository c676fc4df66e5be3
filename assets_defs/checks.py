"""Blocking checks: bad shards never reach training (downstream steps of the run are skipped)."""


import dagster as dg

from assets_defs.assets.sources import shards
from assets_defs.resources import LumenPaths
from pipelines.checks import check_accounting, check_heatmap_peaks


def _run(check, context: dg.AssetCheckExecutionContext, paths: LumenPaths) -> dg.AssetCheckResult:
    results = {}
    for source in context.op_execution_context.partition_keys:
        for spec in paths.specs(source):
            passed, meta = check(spec.shard_dir)
            results[f"{source}/{spec.shard_dir.name}"] = {"passed": passed, **meta}
    failed = sorted(k for k, r in results.items() if not r["passed"])
    return dg.AssetCheckResult(passed=not failed, metadata={
        "per_folder": dg.MetadataValue.json(results),
        "failed_folders": dg.MetadataValue.json(failed),
    })


@dg.asset_check(asset=shards, blocking=True, description="Every source record is in a sample or in the quarantine.")
def records_accounted(context: dg.AssetCheckExecutionContext, paths: LumenPaths) -> dg.AssetCheckResult:
    return _run(check_accounting, context, paths)


@dg.asset_check(asset=shards, blocking=True, description="Each heatmap peaks (255) exactly at its instance centers.")
def heatmap_peaks_at_centers(context: dg.AssetCheckExecutionContext, paths: LumenPaths) -> dg.AssetCheckResult:
    return _run(check_heatmap_peaks, context, paths)
