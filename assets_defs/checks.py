"""Blocking checks: bad shards never reach training (downstream steps of the run are skipped).

The shard checks are partitioned like `shards`: a run of one partition records its result under
that partition. A run over several partitions (the main job: one run for all) gives one result
for the step, which blocks, and records each partition's own result beside it, so every
partition's Checks tab says how it stands. Metadata are numbers and inline tables, not JSON.
"""


import dagster as dg

from assets_defs.assets.sources import shards
from assets_defs.metadata import table
from assets_defs.partitions import source_partitions
from assets_defs.resources import LumenPaths
from pipelines.checks import check_accounting, check_heatmap_peaks


def _folder_rows(check, source: str, paths: LumenPaths) -> list[dict]:
    rows = []
    for spec in paths.specs(source):
        passed, meta = check(spec.shard_dir)
        rows.append({"partition": source, "folder": spec.shard_dir.name, "passed": passed,
                     **{k: v for k, v in meta.items() if isinstance(v, (int, float))}})
    return rows


def _check_metadata(rows: list[dict]) -> dict:
    failed = [f"{r['partition']}/{r['folder']}" for r in rows if not r["passed"]]
    totals = {k: sum(r[k] for r in rows) for k in rows[0] if k not in ("partition", "folder", "passed")} if rows else {}
    return {"folders_checked": len(rows), "folders_failed": len(failed), **totals,
            "failed_folders": dg.MetadataValue.text(", ".join(failed) or "none"),
            "per_folder": table(rows)}


def _checked_materialization(instance: dg.DagsterInstance, partition: str):
    """The partition's latest `shards` materialization (this run's): the UI counts a partition's check
    result as current only against it."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData)

    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=shards.key, asset_partitions=[partition]),
                                              limit=1).records
    if not records:
        return None
    r = records[0]
    return AssetCheckEvaluationTargetMaterializationData(storage_id=r.storage_id, run_id=r.run_id, timestamp=r.timestamp)


def _run(check, context: dg.AssetCheckExecutionContext, paths: LumenPaths) -> dg.AssetCheckResult:
    op = context.op_execution_context
    by_partition = {source: _folder_rows(check, source, paths) for source in op.partition_keys}
    rows = [r for rs in by_partition.values() for r in rs]
    if not op.has_partition_key:  # a run over several partitions: each partition's own result too
        check_name = context.check_specs[0].name
        for source, rs in by_partition.items():
            # logged in the run: it fills the row the run planned for this partition. (A runless report
            # inserts a row under run id "" each time, and Dagster's unique index refuses the second
            # run's: a re-run of the main job failed here.)
            op.log_event(dg.AssetCheckEvaluation(
                asset_key=shards.key, check_name=check_name, passed=all(r["passed"] for r in rs),
                metadata=_check_metadata(rs), partition=source,
                target_materialization_data=_checked_materialization(context.instance, source)))
    return dg.AssetCheckResult(passed=all(r["passed"] for r in rows), metadata=_check_metadata(rows))


@dg.asset_check(asset=shards, blocking=True, partitions_def=source_partitions,
                description="Every source record is in a sample or in the quarantine.")
def records_accounted(context: dg.AssetCheckExecutionContext, paths: LumenPaths) -> dg.AssetCheckResult:
    return _run(check_accounting, context, paths)


@dg.asset_check(asset=shards, blocking=True, partitions_def=source_partitions,
                description="Each heatmap peaks (255) exactly at its instance centers.")
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
