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


@dg.asset_check(asset="catalog", blocking=True,
                description="No training image has the content of a val-split image (SHA-256 of the files, so a "
                            "copy under another name counts). Blocking: training never starts on a leak.")
def no_eval_images_in_training(context: dg.AssetCheckExecutionContext, paths: LumenPaths) -> dg.AssetCheckResult:
    from assets_defs.assets.training import eval_overlap
    from assets_defs.metadata import table

    train_dirs = [d for d in paths.shard_dirs() if d.name != "val"]
    leaks = eval_overlap(paths, train_dirs)
    context.log.info("leak check: %d training folders against the val splits: %d overlapping images",
                     len(train_dirs), len(leaks))
    return dg.AssetCheckResult(passed=not leaks, metadata={
        "training_folders": len(train_dirs),
        "overlapping_images": len(leaks),
        "overlap": table([{"training image": o.train_image, "evaluation image": o.eval_image, "in": o.eval_in}
                          for o in leaks[:50]]) if leaks else dg.MetadataValue.md("none"),
    })
