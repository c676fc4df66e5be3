"""The one Dagster code location (`workspace.yaml` loads `defs` from here)."""

from __future__ import annotations

import dagster as dg

from assets_defs.assets import review, sources, training
from assets_defs.checks import heatmap_peaks_at_centers, records_accounted
from assets_defs.jobs import JOBS
from assets_defs.resources import Compute, FiftyOneSettings, LumenPaths
from assets_defs.schedules import SCHEDULES
from assets_defs.sensors import SENSORS

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([sources, training, review]),
    asset_checks=[records_accounted, heatmap_peaks_at_centers],
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources={"paths": LumenPaths(), "compute": Compute(), "fiftyone": FiftyOneSettings()},
)
