"""Sensors: new source files -> ingest; enough review work -> pull corrections, ingest, retrain."""


import json

import dagster as dg

from assets_defs.jobs import ingest, pull_corrections_job, retrain
from assets_defs.layout import fingerprint, partition_files
from assets_defs.metadata import latest_metadata
from assets_defs.partitions import corrections_partition, is_corrections, source_partitions
from assets_defs.resources import FiftyOneSettings, LumenPaths
from assets_defs.versions import versions
from pipelines.layout import SOURCES


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
            meta = latest_metadata(context.instance, "source_data", key)
            seen[key] = json.loads(meta["fingerprints"]).get(key) if meta and "fingerprints" in meta else None
        if seen.get(key) != stamp:
            seen[key] = stamp
            if key not in have:
                add.append(key)
            runs.append(dg.RunRequest(run_key=f"{key}-{stamp}", partition_key=key))
    context.update_cursor(json.dumps(seen))
    return dg.SensorResult(run_requests=runs,
                           dynamic_partitions_requests=[source_partitions.build_add_request(add)] if add else [])


@dg.sensor(jobs=[pull_corrections_job, ingest, retrain], minimum_interval_seconds=120,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Closes the review loop: more than N labels reviewed since the last pull -> pull "
                       "corrections; a new corrections partition -> ingest it; its shards -> retrain.")
def corrections_loop(context: dg.SensorEvaluationContext, paths: LumenPaths, fiftyone: FiftyOneSettings):
    requests = []
    instance = context.instance
    shards_done = instance.get_materialized_partitions(dg.AssetKey("shards"))
    model = latest_metadata(instance, "stage2_model") or {}
    trained_on = set(model.get("partitions") or [])  # the partitions the latest stage-2 model saw
    for key in instance.get_dynamic_partitions(source_partitions.name):
        if not is_corrections(key):
            continue
        if key not in shards_done:
            requests.append(dg.RunRequest(job_name="ingest", partition_key=key, run_key=f"ingest-{key}"))
        elif key not in trained_on:
            requests.append(dg.RunRequest(job_name="retrain", run_key=f"retrain-{key}"))

    fiftyone.apply()
    from datetime import datetime

    from pipelines.review.queue import count_review_work

    last = latest_metadata(instance, "corrections")
    since = datetime.fromisoformat(last["pulled_at"]) if last else None
    reviewed = count_review_work(fiftyone.dataset, since=since)
    if reviewed > fiftyone.min_reviewed_labels:
        requests.append(dg.RunRequest(job_name="pull_corrections",
                                      run_key=f"pull-after-{last['pulled_at'] if last else 'start'}"))
    if not requests:
        return dg.SkipReason(f"{reviewed} labels reviewed since the last pull (threshold {fiftyone.min_reviewed_labels})")
    return requests


SENSORS = [new_source_files, corrections_loop]
