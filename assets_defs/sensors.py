"""Sensors: new source files -> ingest; enough review work -> pull corrections, ingest, retrain.

Each partition has one watcher: `new_source_files` the built-in sources, `corrections_loop` the
corrections versions, so one new version is ingested once, not once per sensor. A tick that asks
for nothing says why (its skip reason)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from assets_defs.jobs import ingest, label_pool, pull_corrections_job, retrain
from assets_defs.layout import fingerprint, partition_files
from assets_defs.metadata import latest_metadata
from assets_defs.partitions import corrections_partition, pool_partitions, pool_plan_dir, source_partitions
from assets_defs.resources import FiftyOneSettings, LoopRetrain, LumenPaths
from assets_defs.versions import versions
from pipelines.layout import SOURCES, pool_file
from pipelines.model_registry import ModelRegistry
from pipelines.training_partitions import training_partitions


def ingested_fingerprint(instance: dg.DagsterInstance, partition: str) -> str | None:
    """The fingerprint of a partition's files when `source_data` last ingested it (None: never)."""
    meta = latest_metadata(instance, "source_data", partition)
    if not meta:
        return None
    if "fingerprint" in meta:
        return meta["fingerprint"]
    # materializations made before per-partition metadata hold every partition's stamp in one dict
    stamps = meta.get("fingerprints")
    stamps = json.loads(stamps) if isinstance(stamps, str) else (stamps or {})
    return stamps.get(partition)


@dg.sensor(job=ingest, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Watches the built-in sources' folders: a new or changed file ingests its partition; a new "
                       "source becomes a partition. Corrections versions are the corrections_loop sensor's.")
def new_source_files(context: dg.SensorEvaluationContext, paths: LumenPaths):
    seen = json.loads(context.cursor) if context.cursor else {}
    have = set(context.instance.get_dynamic_partitions(source_partitions.name))
    add, runs, missing, unchanged = [], [], [], []
    # corrections versions are not watched here: `corrections_loop` ingests them (one run, not one per sensor)
    for key in SOURCES:
        files = partition_files(paths.specs(key))
        if not files or not all(f.exists() for f in files):
            missing.append(key)
            continue
        stamp = fingerprint(files)
        if key not in seen and key in have:  # first look: compare with what was last ingested
            seen[key] = ingested_fingerprint(context.instance, key)
        if seen.get(key) != stamp:
            seen[key] = stamp
            if key not in have:
                add.append(key)
            runs.append(dg.RunRequest(run_key=f"{key}-{stamp}", partition_key=key))
        else:
            unchanged.append(key)
    context.update_cursor(json.dumps(seen))
    return dg.SensorResult(run_requests=runs,
                           dynamic_partitions_requests=[source_partitions.build_add_request(add)] if add else [],
                           skip_reason=None if runs or add else _unchanged_reason(paths, unchanged, missing))


def _unchanged_reason(paths: LumenPaths, unchanged: list[str], missing: list[str]) -> dg.SkipReason:
    parts = []
    if unchanged:
        parts.append(f"no file changed since the last ingest of {', '.join(unchanged)}")
    if missing:
        parts.append(f"no complete source files yet for {', '.join(missing)} under {paths.sources}")
    return dg.SkipReason("; ".join(parts))


def recorded_corrections(instance: dg.DagsterInstance) -> set[str]:
    """Corrections partitions that have a `corrections` materialization (pulled by Dagster or recorded)."""
    records = instance.fetch_materializations(dg.AssetKey("corrections"), limit=10_000).records
    return {r.asset_materialization.metadata["source_partition"].value for r in records
            if "source_partition" in r.asset_materialization.metadata}


def record_command_line_pulls(instance: dg.DagsterInstance, paths: LumenPaths) -> list[str]:
    """Record each version folder pulled outside Dagster (`lumen review pull`) as a `corrections`
    materialization, at once. Done here rather than returned as the tick's asset events, which only
    the daemon's ticks apply: a "Preview tick result" and its "Apply" in the UI record it too."""
    from assets_defs.assets.review import corrections_metadata

    recorded = recorded_corrections(instance)
    new = []
    for v in versions(paths.corrections):
        if corrections_partition(v) not in recorded:
            instance.report_runless_asset_event(dg.AssetMaterialization("corrections", metadata=corrections_metadata(
                Path(paths.corrections) / v, pulled_by="command line (recorded by the corrections_loop sensor)")))
            new.append(corrections_partition(v))
    return new


@dg.sensor(jobs=[pull_corrections_job, ingest, retrain], minimum_interval_seconds=120,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Closes the review loop: records pulls made from the command line, pulls corrections once "
                       "more than N labels were reviewed, ingests each new corrections partition, then retrains "
                       "(its size: the loop_retrain resource).")
def corrections_loop(context: dg.SensorEvaluationContext, paths: LumenPaths, fiftyone: FiftyOneSettings,
                     loop_retrain: LoopRetrain):
    instance = context.instance
    recorded = record_command_line_pulls(instance, paths)
    known = set(instance.get_dynamic_partitions(source_partitions.name))
    corrections = [corrections_partition(v) for v in versions(paths.corrections)]
    new_partitions = [k for k in corrections if k not in known]

    requests = []
    shards_done = instance.get_materialized_partitions(dg.AssetKey("shards"))
    for key in corrections:
        if key not in shards_done:
            requests.append(dg.RunRequest(job_name="ingest", partition_key=key, run_key=f"ingest-{key}"))
    # a retrain reads only the newest corrections version (each pull holds every review so far)
    trains_on = [k for k in training_partitions(corrections)[0] if k in shards_done]
    in_use = ModelRegistry(paths.model_registry).in_use() or {}
    untrained = [k for k in trains_on if k not in set(in_use.get("partitions") or [])]
    if untrained:  # one retrain for the ingested round the model in use has not seen
        requests.append(dg.RunRequest(job_name="retrain", run_key="retrain-" + "+".join(untrained),
                                      run_config=loop_retrain.run_config(),
                                      tags={"lumen/retrain_size": loop_retrain.size()}))

    fiftyone.apply()
    from pipelines.review.work import review_work

    work = review_work(fiftyone.dataset)  # fresh from the database, whoever pulled last
    if work.reviewed > fiftyone.min_reviewed_labels:
        requests.append(dg.RunRequest(job_name="pull_corrections", run_key=f"pull-{work.key}"))
    summary = (f"{work.reviewed} labels reviewed since the last pull (threshold {fiftyone.min_reviewed_labels}); "
               f"recorded {len(recorded)} command-line pull(s); loop retrain size: {loop_retrain.size()}")
    context.log.info(summary)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[source_partitions.build_add_request(new_partitions)] if new_partitions else [],
        skip_reason=None if requests or new_partitions else dg.SkipReason(summary))


@dg.sensor(job=label_pool, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Watches the unlabeled pool (coco/annotations/image_info_unlabeled.json and every json "
                       "dropped into <sources>/pool/): plans new images into new pool partitions, adds them, and "
                       "asks one label_pool run per partition the model in use has not labelled.")
def new_pool_images(context: dg.SensorEvaluationContext, paths: LumenPaths):
    from pipelines.errors import InputError
    from pipelines.pool_partitions import labels_done, plan_pool, pool_files, read_plan

    files = pool_files(paths.sources)
    plan_dir = pool_plan_dir(paths.base)
    if not files:
        return dg.SkipReason(f"no pool file yet: {pool_file(paths.sources)} or {paths.sources}/pool/*.json")
    stamp = fingerprint(files)
    if stamp != context.cursor:  # planning is idempotent; skipped only to spare the read of an unchanged pool
        try:
            plan = plan_pool(files, plan_dir)
        except InputError as exc:
            return dg.SkipReason(f"the pool cannot be planned: {exc}")
        context.log.info("pool plan: %s", plan.as_dict())
        context.update_cursor(stamp)
    planned = sorted(read_plan(plan_dir).get("partitions", {}))
    have = set(context.instance.get_dynamic_partitions(pool_partitions.name))
    add = [k for k in planned if k not in have]
    in_use = ModelRegistry(paths.model_registry).in_use()
    version = (in_use or {}).get("version")
    runs = []
    if version:
        todo = [k for k in planned if not labels_done(paths.predictions, version, k)]
        tried = _label_runs_by_partition(context.instance, version) if todo else {}
        for k in todo:
            runs_of_k = tried.get(k, [])
            if any(not r.is_finished for r in runs_of_k):
                continue  # being labelled now
            # run keys name the partition and the version, so each is asked once; a failed (killed) run's
            # partition is asked again under a new key, since the daemon never repeats a key
            failed = sum(r.status != dg.DagsterRunStatus.SUCCESS for r in runs_of_k)
            runs.append(dg.RunRequest(run_key=f"{k}@{version}" + (f"-retry{failed}" if failed else ""),
                                      partition_key=k, tags={MODEL_VERSION_TAG: version}))
    why = (f"{len(planned)} pool partitions planned, "
           + (f"every one labelled by model {version}" if version else "no model in use yet to label them"))
    return dg.SensorResult(run_requests=runs,
                           dynamic_partitions_requests=[pool_partitions.build_add_request(add)] if add else [],
                           skip_reason=None if runs or add else dg.SkipReason(why))


MODEL_VERSION_TAG = "lumen/model_version"


def _label_runs_by_partition(instance: dg.DagsterInstance, version: str) -> dict[str, list]:
    """partition -> the runs that labelled (or tried to label) it with this model version."""
    out: dict[str, list] = {}
    for run in instance.get_runs(filters=dg.RunsFilter(tags={MODEL_VERSION_TAG: version})):
        key = run.tags.get("dagster/partition")
        if key:
            out.setdefault(key, []).append(run)
    return out


SENSORS = [new_source_files, corrections_loop, new_pool_images]
