"""Nightly ingest of every source partition (off until turned on in the UI)."""


import dagster as dg

from assets_defs.jobs import ingest

@dg.schedule(cron_schedule="0 2 * * *", job=ingest, default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Nightly: re-ingest every source partition (idempotent; off until turned on).")
def nightly_ingest(context: dg.ScheduleEvaluationContext):
    from pipelines.layout import SOURCES

    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for source in SOURCES:
        yield dg.RunRequest(run_key=f"{source}-{day}", partition_key=source)


SCHEDULES = [nightly_ingest]
