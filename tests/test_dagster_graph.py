"""The shape of the Dagster layer: graph lineage, jobs, partitions, sensors, schedule, regression rule.

Fast tests against a real sqlite-backed instance; the end-to-end run is in test_dagster_e2e.py.
"""

import json
import os

import dagster as dg
import pytest

from assets_defs.definitions import defs
from assets_defs.layout import partition_specs
from assets_defs.partitions import corrections_partition, ensure_source_partitions, source_partitions
from assets_defs.regression import find_regressions
from assets_defs.resources import LumenPaths
from assets_defs.versions import next_version, versions
from pipelines.layout import SOURCES

LOOP = ["source_data", "shards", "catalog", "stage1_model", "stage2_model", "evaluation", "model_in_use",
        "pseudo_labels", "review_dataset", "corrections"]


def test_graph_is_one_chain_from_sources_to_corrections():
    graph = defs.resolve_asset_graph()
    for upstream, downstream in zip(LOOP, LOOP[1:]):
        parents = {k.to_user_string() for k in graph.get(dg.AssetKey(downstream)).parent_keys}
        assert upstream in parents, f"{downstream} should depend on {upstream}, has {parents}"
    checks = {k.name for k in graph.asset_check_keys}
    assert {"records_accounted", "heatmap_peaks_at_centers", "no_regression"} <= checks


def test_jobs_and_their_assets():
    def keys(name):
        return {k.to_user_string() for k in defs.resolve_job_def(name).asset_layer.executable_asset_keys}

    assert keys("ingest") == {"source_data", "shards", "catalog"}
    assert keys("retrain") == {"stage1_model", "stage2_model", "evaluation", "model_in_use"}
    assert keys("label") == {"model_in_use", "pseudo_labels", "review_dataset"}  # never "the latest stage 2"
    assert keys("promote_model") == {"model_in_use"}
    assert keys("main") == set(LOOP)
    assert defs.resolve_job_def("ingest").partitions_def == source_partitions


def test_retrain_config_defaults_are_usable():
    from assets_defs.assets.training import RetrainConfig

    cfg = RetrainConfig()
    assert cfg.stage == "1+2" and cfg.preset == "tiny" and cfg.partitions == []
    assert cfg.stage1_steps > 0 and cfg.stage2_steps > 0 and 0 < cfg.lr < 1


def test_launchpad_shows_every_config_field_with_its_default():
    """The Launchpad scaffolds fields that have a default in the config schema; a default_factory has none."""
    from dagster._config import Shape

    def fields(job, op):
        schema = defs.resolve_job_def(job).run_config_schema.config_type.fields["ops"].config_type.fields[op]
        return schema.config_type.fields["config"].config_type.fields

    models = fields("retrain", "models")
    assert models["partitions"].default_value == [] and models["stage1_steps"].default_value > 0
    assert fields("retrain", "evaluation")["tasks"].default_value == ["bbox", "segm", "keypoints", "grounding", "refseg", "vqa"]
    assert fields("promote_model", "model_in_use")["version"].default_value == ""
    for job, op in (("retrain", "models"), ("retrain", "evaluation"), ("label", "pseudo_labels")):
        missing = [name for name, f in fields(job, op).items() if not f.default_provided]
        assert not missing, f"{job}/{op}: no default shown for {missing}"
    assert Shape  # the schema classes used above are Dagster's own


def test_regression_rule():
    prev = {"bbox": {"AP50": 0.60, "AP": 0.30}, "vqa": {"accuracy": 0.5}}
    assert find_regressions({"bbox": {"AP50": 0.58, "AP": 0.31}, "vqa": {"accuracy": 0.5}}, prev, 0.05) == []
    drops = find_regressions({"bbox": {"AP50": 0.50, "AP": 0.31}, "vqa": {"accuracy": 0.2}}, prev, 0.05)
    assert [d["metric"] for d in drops] == ["bbox/AP50", "vqa/accuracy"]
    assert find_regressions({"bbox": {"AP50": 0.0}}, None, 0.05) == []  # first model: nothing to compare
    # counts are context, not quality: fewer detections or questions is no regression
    assert find_regressions({"bbox": {"AP50": 0.6, "detections": 12}, "vqa": {"accuracy": 0.5, "questions": 3}},
                            {"bbox": {"AP50": 0.6, "detections": 291}, "vqa": {"accuracy": 0.5, "questions": 90}},
                            0.05) == []


def test_numbered_versions(tmp_path):
    assert next_version(tmp_path) == "v0001"
    for v in ("v0001", "v0002", "v0010", "notes"):
        (tmp_path / v).mkdir()
    assert versions(tmp_path) == ["v0001", "v0002", "v0010"]
    assert next_version(tmp_path) == "v0011"


def test_corrections_partition_reads_the_pulled_coco_json(tmp_path):
    version = tmp_path / "corrections" / "v0002"
    version.mkdir(parents=True)
    (version / "instances.json").write_text("{}")
    (version / "person_keypoints.json").write_text("{}")
    (version / "rejections.json").write_text("[]")
    specs = partition_specs(corrections_partition("v0002"), tmp_path / "sources", tmp_path / "shards", tmp_path / "corrections")
    assert [(s.fmt, s.shard_dir.name) for s in specs] == [("coco", "train"), ("coco-keypoints", "train-keypoints")]
    assert all(s.split == "train" for s in specs)


def test_watched_folder_sensor_ingests_new_and_changed_files(tmp_path, dagster_instance):
    from assets_defs.sensors import new_source_files
    from pipelines.sample_data import write_sample_data

    paths = LumenPaths(root=str(tmp_path / "data"))

    def tick(cursor):
        ctx = dg.build_sensor_context(instance=dagster_instance, cursor=cursor, resources={"paths": paths})
        result = new_source_files(ctx)
        return result, ctx.cursor

    result, cursor = tick(None)
    assert result.run_requests == []  # nothing in the watched folder yet
    write_sample_data(paths.sources, n_images=12)
    result, cursor = tick(cursor)
    assert sorted(r.partition_key for r in result.run_requests) == sorted(SOURCES)
    result, cursor = tick(cursor)
    assert result.run_requests == []  # nothing changed
    vqa = paths.sources / "vqa" / "v2_mscoco_val_annotations.json"
    vqa.write_text(vqa.read_text() + "\n")
    os.utime(vqa, ns=(vqa.stat().st_atime_ns, vqa.stat().st_mtime_ns + 10**9))
    result, cursor = tick(cursor)
    assert [r.partition_key for r in result.run_requests] == ["vqav2"]
    # a corrections version dropped into the corrections folder is the corrections_loop sensor's to add and
    # ingest (tests/test_dagster_round2.py), not this one's too: one run per version, not one per sensor
    (paths.corrections / "v0001").mkdir(parents=True)
    (paths.corrections / "v0001" / "instances.json").write_text("{}")
    result, cursor = tick(cursor)
    assert result.run_requests == [] and not result.dynamic_partitions_requests


def test_watched_folder_sensor_on_an_instance_that_already_ingested(tmp_path, dagster_instance):
    """The README's flow on a used instance: materialize, change one source file, tick: that partition only."""
    from assets_defs.assets.sources import source_data
    from assets_defs.sensors import new_source_files

    paths = LumenPaths(root=str(tmp_path / "data"), demo_images=12)
    for key in SOURCES:  # what the main command leaves behind
        assert dg.materialize([source_data], partition_key=key, instance=dagster_instance,
                              resources={"paths": paths}).success
    meta = dagster_instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("source_data"), asset_partitions=["coco"]), limit=1).records[0]
    assert {"files", "bytes", "fingerprint"} <= set(meta.asset_materialization.metadata)  # per partition

    def tick(cursor):
        ctx = dg.build_sensor_context(instance=dagster_instance, cursor=cursor, resources={"paths": paths})
        return new_source_files(ctx), ctx.cursor

    result, cursor = tick(None)  # a freshly turned-on sensor: compares with what was ingested
    assert result.run_requests == []
    refs = paths.sources / "refcoco" / "instances.json"
    refs.write_text(refs.read_text() + "\n")
    os.utime(refs, ns=(refs.stat().st_atime_ns, refs.stat().st_mtime_ns + 10**9))
    result, cursor = tick(cursor)
    assert [r.partition_key for r in result.run_requests] == ["refcoco"]
    result, cursor = tick(cursor)
    assert result.run_requests == []


def test_nightly_schedule_is_off_and_covers_every_partition(dagster_instance):
    from assets_defs.schedules import nightly_ingest

    assert nightly_ingest.default_status == dg.DefaultScheduleStatus.STOPPED
    from datetime import datetime, timezone

    ctx = dg.build_schedule_context(instance=dagster_instance, scheduled_execution_time=datetime(2026, 1, 2, 2, tzinfo=timezone.utc))
    req = nightly_ingest.evaluate_tick(ctx).run_requests[0]
    assert req.run_key == "nightly-2026-01-02"
    keys = dagster_instance.get_dynamic_partitions("sources")
    assert req.tags["dagster/asset_partition_range_start"] == keys[0]
    assert req.tags["dagster/asset_partition_range_end"] == keys[-1]


def test_pools_limit_gpu_and_catalog_writer(dagster_instance):
    from assets_defs.assets.sources import catalog
    from assets_defs.assets.training import evaluation, models

    assert catalog.op.pool == "catalog_writer"
    assert models.op.pool == "gpu" and evaluation.op.pool == "gpu"
    assert dagster_instance.get_concurrency_config().pool_config.default_pool_limit == 1


def test_seeding_partitions_is_idempotent(dagster_instance):
    before = dagster_instance.get_dynamic_partitions("sources")
    assert before == list(SOURCES)
    assert ensure_source_partitions(dagster_instance) == before


def test_the_hand_over_follows_the_data_root_of_the_runs_config(tmp_path):
    """The `io_manager` is built from the run's own `paths` resource: a data root given in the run's config
    (the Launchpad, `dagster job execute -c`) holds the hand-over too, not the definitions' default var/."""
    from assets_defs.handover import Checkpoint, handover_io_manager

    assert defs.resources["io_manager"] is handover_io_manager
    init = dg.build_init_resource_context(resources={"paths": LumenPaths(root=str(tmp_path / "data"))})
    manager = handover_io_manager(init)
    out = dg.build_output_context(asset_key=dg.AssetKey("stage1_model"), run_id="r1")
    manager.handle_output(out, Checkpoint(stage=1, version="v0001", checkpoint_dir="/x", partitions=["coco"]))
    written = tmp_path / "data" / "handover" / "stage1_model" / "r1.json"
    assert json.loads(written.read_text())["value"]["version"] == "v0001"
