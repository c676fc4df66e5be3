"""Nightly ingest of every source partition (off until turned on in the UI)."""


import dagster as dg

from assets_defs.jobs import ingest
from assets_defs.partitions import source_partitions


@dg.schedule(cron_schedule="0 2 * * *", job=ingest, default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Nightly: re-ingest every source partition in one run (idempotent; off until turned on).")
def nightly_ingest(context: dg.ScheduleEvaluationContext):
    keys = context.instance.get_dynamic_partitions(source_partitions.name)
    if not keys:
        return dg.SkipReason("no source partitions yet: turn on the new_source_files sensor or run the main command")
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return dg.RunRequest(run_key=f"nightly-{day}", tags={"dagster/asset_partition_range_start": keys[0],
                                                         "dagster/asset_partition_range_end": keys[-1]})


SCHEDULES = [nightly_ingest]
