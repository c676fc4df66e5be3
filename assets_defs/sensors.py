"""Sensors: new source files -> ingest; enough review work -> pull corrections, ingest, retrain."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg

from assets_defs.jobs import ingest, pull_corrections_job, retrain
from assets_defs.layout import fingerprint, partition_files
from assets_defs.metadata import latest_metadata
from assets_defs.partitions import corrections_partition, is_corrections, source_partitions
from assets_defs.resources import FiftyOneSettings, LumenPaths
from assets_defs.versions import versions
from pipelines.layout import SOURCES
from pipelines.model_registry import ModelRegistry


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
           description="Watches the sources folder (and pulled corrections versions): a new or changed file "
                       "ingests its partition; a new source or corrections folder becomes a partition.")
def new_source_files(context: dg.SensorEvaluationContext, paths: LumenPaths):
    seen = json.loads(context.cursor) if context.cursor else {}
    have = set(context.instance.get_dynamic_partitions(source_partitions.name))
    candidates = list(SOURCES) + [corrections_partition(v) for v in versions(paths.corrections)]
    add, runs = [], []
    for key in candidates:
        files = partition_files(paths.specs(key))
        if not files or not all(f.exists() for f in files):
            continue
        stamp = fingerprint(files)
        if key not in seen and key in have:  # first look: compare with what was last ingested
            seen[key] = ingested_fingerprint(context.instance, key)
        if seen.get(key) != stamp:
            seen[key] = stamp
            if key not in have:
                add.append(key)
            runs.append(dg.RunRequest(run_key=f"{key}-{stamp}", partition_key=key))
    context.update_cursor(json.dumps(seen))
    return dg.SensorResult(run_requests=runs,
                           dynamic_partitions_requests=[source_partitions.build_add_request(add)] if add else [])


def recorded_corrections(instance: dg.DagsterInstance) -> set[str]:
    """Corrections partitions that have a `corrections` materialization (pulled by Dagster or recorded)."""
    records = instance.fetch_materializations(dg.AssetKey("corrections"), limit=10_000).records
    return {r.asset_materialization.metadata["source_partition"].value for r in records
            if "source_partition" in r.asset_materialization.metadata}


@dg.sensor(jobs=[pull_corrections_job, ingest, retrain], minimum_interval_seconds=120,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Closes the review loop: records pulls made from the command line, pulls corrections once "
                       "more than N labels were reviewed, ingests each new corrections partition, then retrains.")
def corrections_loop(context: dg.SensorEvaluationContext, paths: LumenPaths, fiftyone: FiftyOneSettings):
    from assets_defs.assets.review import corrections_metadata

    instance = context.instance
    requests, events, new_partitions = [], [], []
    # a version folder pulled outside Dagster (`lumen review pull`) is the same event as a Dagster pull
    known = set(instance.get_dynamic_partitions(source_partitions.name))
    recorded = recorded_corrections(instance)
    for v in versions(paths.corrections):
        key = corrections_partition(v)
        if key not in recorded:
            events.append(dg.AssetMaterialization("corrections", metadata=corrections_metadata(
                Path(paths.corrections) / v, pulled_by="command line (recorded by the corrections_loop sensor)")))
        if key not in known:
            new_partitions.append(key)

    shards_done = instance.get_materialized_partitions(dg.AssetKey("shards"))
    in_use = ModelRegistry(paths.model_registry).in_use() or {}
    trained_on = set(in_use.get("partitions") or [])  # the partitions the model in use saw
    untrained = []
    for key in sorted(known | set(new_partitions)):
        if not is_corrections(key):
            continue
        if key not in shards_done:
            requests.append(dg.RunRequest(job_name="ingest", partition_key=key, run_key=f"ingest-{key}"))
        elif key not in trained_on:
            untrained.append(key)
    if untrained:  # one retrain for every ingested round the model in use has not seen
        requests.append(dg.RunRequest(job_name="retrain", run_key="retrain-" + "+".join(untrained)))

    fiftyone.apply()
    from pipelines.review.queue import count_review_work

    reviewed = count_review_work(fiftyone.dataset)  # compared with the last pull, whoever made it
    latest = versions(paths.corrections)[-1] if versions(paths.corrections) else "start"
    if reviewed > fiftyone.min_reviewed_labels:
        requests.append(dg.RunRequest(job_name="pull_corrections", run_key=f"pull-after-{latest}"))
    context.log.info("%d labels reviewed since the last pull (threshold %d); %d pulled versions not yet recorded",
                     reviewed, fiftyone.min_reviewed_labels, len(events))
    return dg.SensorResult(
        run_requests=requests, asset_events=events,
        dynamic_partitions_requests=[source_partitions.build_add_request(new_partitions)] if new_partitions else [],
        skip_reason=None if requests or events else
        f"{reviewed} labels reviewed since the last pull (threshold {fiftyone.min_reviewed_labels})")


SENSORS = [new_source_files, corrections_loop]
