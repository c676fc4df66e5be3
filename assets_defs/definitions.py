"""The one Dagster code location (`workspace.yaml` loads `defs` from here)."""

from __future__ import annotations

import dagster as dg

from assets_defs.assets import review, sources, training
from assets_defs.checks import heatmap_peaks_at_centers, no_eval_images_in_training, records_accounted
from assets_defs.executors import executor_from_env
from assets_defs.handover import handover_io_manager
from assets_defs.jobs import JOBS
from assets_defs.resources import Compute, FiftyOneSettings, LoopRetrain, LumenPaths
from assets_defs.schedules import SCHEDULES
from assets_defs.sensors import SENSORS
from assets_defs.slot_polling import cap_slot_recheck_interval


def build_defs(paths: LumenPaths | None = None, compute: Compute | None = None,
               fiftyone: FiftyOneSettings | None = None) -> dg.Definitions:
    """The definitions with these resources (the main command and tests run the same graph smaller)."""
    paths = paths or LumenPaths()
    return dg.Definitions(
        assets=dg.load_assets_from_modules([sources, training, review]),
        asset_checks=[records_accounted, heatmap_peaks_at_centers, no_eval_images_in_training],
        jobs=JOBS,
        schedules=SCHEDULES,
        sensors=SENSORS,
        resources={"paths": paths, "compute": compute or Compute(), "fiftyone": fiftyone or FiftyOneSettings(),
                   "loop_retrain": LoopRetrain(), "io_manager": handover_io_manager},
        executor=executor_from_env(),
    )


# every run process loads this module: its waiting gpu steps re-check for a free slot every 2 s
cap_slot_recheck_interval()
defs = build_defs()
