"""Sensors: new source files in the watched folder -> ingest the matching partitions."""


import json

import dagster as dg

from assets_defs.jobs import ingest
from assets_defs.resources import LumenPaths
from pipelines.layout import SOURCES, source_files


@dg.sensor(job=ingest, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Watches the sources folder; a changed or new file re-ingests its partition.")
def new_source_files(context: dg.SensorEvaluationContext, paths: LumenPaths):
    seen = json.loads(context.cursor) if context.cursor else {}
    for source in SOURCES:
        files = [f for f in source_files(source, paths.sources) if f.exists()]
        if not files:
            continue
        stamp = max(f.stat().st_mtime_ns for f in files)
        if seen.get(source) != stamp:
            seen[source] = stamp
            yield dg.RunRequest(run_key=f"{source}-{stamp}", partition_key=source)
    context.update_cursor(json.dumps(seen))


SENSORS = [new_source_files]
