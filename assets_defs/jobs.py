"""Jobs the three users launch from the UI (and the main command runs)."""

from __future__ import annotations

import dagster as dg


ingest = dg.define_asset_job(
    "ingest", selection=dg.AssetSelection.groups("data"),
    description="Data engineers: source files -> shards (blocking checks) -> catalog, per source partition.")

retrain = dg.define_asset_job(
    "retrain", selection=dg.AssetSelection.assets("stage1_model", "stage2_model", "evaluation", "model_in_use"),
    description="ML engineers: stage 1 -> stage 2 -> evaluation vs the model in use; a version that passes "
                "no_regression goes into use. Edit stage, preset, steps, learning rate and partitions in the Launchpad.")

promote_model = dg.define_asset_job(
    "promote_model", selection=dg.AssetSelection.assets("model_in_use"),
    description="ML engineers: put an evaluated stage-2 version into use on purpose (Launchpad: "
                "ops.model_in_use.config.version and reason), e.g. a version rejected by no_regression.")

pull_corrections_job = dg.define_asset_job(
    "pull_corrections", selection=dg.AssetSelection.assets("corrections"),
    description="Labelers' reviewed labels -> a new corrections version and source partition.")

label = dg.define_asset_job(
    "label", selection=dg.AssetSelection.assets("model_in_use", "pseudo_labels", "review_dataset"),
    description="Pseudo-label the unlabeled pool with the model in use and refresh the FiftyOne review dataset.")

# the pool's partitioned assets run per pool partition (label_pool), never in a run over the source partitions
POOL_ASSETS = dg.AssetSelection.assets("pool_pseudo_labels", "pool_review")

label_pool = dg.define_asset_job(
    "label_pool", selection=POOL_ASSETS,
    description="Pseudo-label one pool partition with the model in use and push it into the review dataset; the "
                "new_pool_images sensor launches one run per new partition (a backfill: one per partition, spread "
                "over every gpu worker).")

main = dg.define_asset_job(
    "main", selection=dg.AssetSelection.all() - POOL_ASSETS,
    description="The whole loop: sources -> shards -> catalog -> stage 1 -> stage 2 -> evaluation -> "
                "model in use -> pseudo-labels -> review dataset -> corrections. Launch it over all source partitions "
                "(one run; `python -m assets_defs.main` does that).")

JOBS = [ingest, retrain, promote_model, pull_corrections_job, label, label_pool, main]
