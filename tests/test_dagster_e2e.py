"""The SAME main graph the README's command runs, at a small size, in a real temp DAGSTER_HOME:
sources -> shards -> catalog -> stage 1 -> stage 2 -> evaluation -> model in use -> pseudo-labels of the
unlabeled pool -> review dataset; then the regression gate, a retrain and a label run at once (two
processes, as two people would start them), a promotion, and a labeler's review pulled from the command
line -> a corrections partition."""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets_defs.definitions import build_defs
from assets_defs.main import run_main
from assets_defs.metadata import latest_metadata
from assets_defs.resources import FiftyOneSettings, LumenPaths
from pipelines.layout import pool_file
from pipelines.model_registry import ModelRegistry

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

SMALL = {"ops": {"models": {"config": {"stage1_steps": 6, "stage2_steps": 4, "batch_size": 8}},
                 "pseudo_labels": {"config": {"batch_size": 8}}}}
TRAINING = ["source_data", "shards", "catalog", "stage1_model", "stage2_model", "evaluation", "model_in_use"]
REVIEW = ["pseudo_labels", "review_dataset"]


def _checks(result) -> dict:
    return {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def _materialized(result) -> dict:
    """asset -> its materialization's metadata (plain values), of this run only."""
    return {e.asset_key.to_user_string(): {k: v.value for k, v in e.step_materialization_data.materialization.metadata.items()}
            for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"}


@pytest.mark.timeout(3600)  # a few minutes on 2 idle cores; generous for a loaded machine
def test_main_graph_small_then_gate_handover_and_review_loop(tmp_path, dagster_home, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    data = tmp_path / "data"
    # the database is the session's temp one (tests/fixtures_review.py); a dataset of our own in it
    fo = FiftyOneSettings(dataset=f"lumen-e2e-{uuid.uuid4().hex[:8]}")
    result, instance = run_main(data_root=str(data), dagster_home=str(dagster_home), images=24, run_config=SMALL,
                                fiftyone=fo)
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]

    # launched against the code location: the UI lists it under Jobs -> main (the repository label tag)
    label = instance.get_run_by_id(result.run_id).remote_job_origin.repository_origin.get_label()
    listed = instance.get_runs(filters=dg.RunsFilter(job_name="main", tags={".dagster/repository": label}))
    assert [r.run_id for r in listed] == [result.run_id]  # the filter of the UI's Jobs -> main -> Runs page

    done = _materialized(result)
    assert set(TRAINING + REVIEW) <= set(done)
    assert "corrections" not in done  # nobody reviewed anything yet: no empty corrections partition
    assert _checks(result) == {"records_accounted": True, "heatmap_peaks_at_centers": True,
                               "no_eval_images_in_training": True, "no_regression": True}
    assert instance.get_materialized_partitions(dg.AssetKey("shards")) == set(instance.get_dynamic_partitions("sources"))
    # per-partition metadata: each partition's page shows its own numbers
    coco, vqa = latest_metadata(instance, "shards", "coco"), latest_metadata(instance, "shards", "vqav2")
    assert coco["samples_written"] != vqa["samples_written"]

    assert done["stage2_model"]["init"] == done["stage1_model"]["checkpoint_dir"]
    assert done["model_in_use"]["model_version"] == "v0001" and done["model_in_use"]["why"] == "first evaluated model"
    # pseudo-labels went to the unlabeled pool, never to an evaluation split
    paths = LumenPaths(root=str(data), demo_images=24)
    assert done["pseudo_labels"]["images"] == str(pool_file(paths.sources))
    assert done["pseudo_labels"]["model_in_use_from"] == "this run"
    # made with flip TTA, and the review thresholds were chosen on val detections made the same way
    assert done["pseudo_labels"]["flip_tta"] is True
    eval_dir = paths.predictions / "eval" / "v0001"
    assert json.loads((eval_dir / "review_thresholds.json").read_text())["flip_tta"] is True
    assert (eval_dir / "review_bbox.json").is_file() and "pseudo_label_detection" in done["evaluation"]

    defs = build_defs(paths=paths, fiftyone=fo)
    _gate_holds_while_a_label_run_goes_on(instance, defs, paths, fo, tmp_path)
    _promotion_on_purpose(instance, defs)
    _review_pulled_from_the_command_line_is_seen(instance, defs, paths, fo)


def _launch(job: str, run_config: dict, paths: LumenPaths, fo: FiftyOneSettings, tmp: Path) -> subprocess.Popen:
    """`dagster job execute` of the code location's job in its own process, as a person would start it."""
    config = tmp / f"{job}.yaml"
    config.write_text(yaml.safe_dump({**run_config, "resources": {
        "paths": {"config": {"root": str(paths.base), "demo_images": paths.demo_images}},
        "fiftyone": {"config": {"dataset": fo.dataset}}}}))
    return subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m", "assets_defs.definitions",
                             "-a", "defs", "-j", job, "-c", str(config), "--tags", json.dumps({"e2e": job})],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_of(instance, job: str):
    (run,) = instance.get_runs(filters=dg.RunsFilter(tags={"e2e": job}))
    records = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    mats = {r.event_log_entry.dagster_event.asset_key.to_user_string():
            {k: v.value for k, v in r.event_log_entry.asset_materialization.metadata.items()} for r in records}
    checks = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    verdicts = {r.event_log_entry.dagster_event.event_specific_data.check_name:
                r.event_log_entry.dagster_event.event_specific_data.passed for r in checks}
    return run, mats, verdicts


def _gate_holds_while_a_label_run_goes_on(instance, defs, paths, fo, tmp):
    """A retrain whose model regresses (tolerance below zero: any model regresses) and a label run, started at
    once in two processes: each uses its own inputs, and the regressed v0002 never pseudo-labels. The model in use
    was evaluated under an older protocol (as every version before the masks were pasted at the image's pixels):
    the gate evaluates it again before comparing, and keeps the old numbers beside the new."""
    from pipelines.evaluation import PROTOCOL

    registry_file = Path(paths.model_registry)
    data = json.loads(registry_file.read_text())
    v1 = data["models"]["v0001"]
    measured = v1["metrics"]["bbox"]["AP"]
    del v1["protocol"]  # a registry written before the protocol was kept: protocol 1
    v1["metrics"]["bbox"]["AP"] = -1.0  # what protocol 1 said (made up: the gate must not compare with it)
    registry_file.write_text(json.dumps(data))
    procs = [_launch("retrain", {"ops": {"models": {"config": {"stage1_steps": 4, "stage2_steps": 2, "batch_size": 8}},
                                         "evaluation": {"config": {"tolerance": -1.0, "tasks": ["bbox"]}}}}, paths, fo, tmp),
             _launch("label", {"ops": {"pseudo_labels": {"config": {"batch_size": 8, "task": "detection"}}}}, paths, fo, tmp)]
    outputs = [p.communicate(timeout=3000)[0] for p in procs]
    retrain_run, r, checks = _run_of(instance, "retrain")
    label_run, labelled, _ = _run_of(instance, "label")
    # the hand-over lies under the data root the run's config names, not the definitions' default (var/)
    assert (paths.base / "handover" / "stage2_model" / f"{retrain_run.run_id}.json").is_file()
    assert label_run.status == dg.DagsterRunStatus.SUCCESS, outputs[1][-3000:]
    assert checks == {"no_regression": False}, outputs[0][-3000:]
    assert r["stage2_model"]["model_version"] == "v0002" and r["evaluation"]["model_version"] == "v0002"
    assert r["evaluation"]["stage2_model"] == "this run" and r["evaluation"]["compared_with"] == "v0001"
    # the failed gate is a warning, not a failed run: model_in_use runs, keeps v0001 and lists v0002 as rejected
    assert retrain_run.status == dg.DagsterRunStatus.SUCCESS
    assert r["model_in_use"]["model_version"] == "v0001"
    assert {row.data["version"]: row.data["status"] for row in r["model_in_use"]["versions"].records} == {
        "v0001": "in use", "v0002": "rejected"}
    assert labelled["pseudo_labels"]["model_version"] == "v0001"
    registry = ModelRegistry(paths.model_registry)
    assert registry.in_use()["version"] == "v0001" and registry.get("v0002")["status"] == "rejected"
    v1 = registry.get("v0001")
    assert v1["protocol"] == PROTOCOL and v1["metrics"]["bbox"]["AP"] == pytest.approx(measured, abs=1e-6)
    assert [(e["protocol"], e["metrics"]["bbox"]["AP"]) for e in v1["earlier_metrics"]] == [(1, -1.0)]
    assert registry.get("v0002")["verdict"].endswith(f"(v0001 evaluated again under evaluation protocol {PROTOCOL})")
    assert registry.get("v0002")["protocol"] == PROTOCOL

    # the next label run, after the failed retrain, stays on v0001 too
    again = defs.resolve_job_def("label").execute_in_process(
        run_config={"ops": {"pseudo_labels": {"config": {"batch_size": 8, "task": "detection"}}}}, instance=instance)
    assert _materialized(again)["pseudo_labels"]["model_version"] == "v0001"


def _promotion_on_purpose(instance, defs):
    refused = defs.resolve_job_def("promote_model").execute_in_process(
        run_config={"ops": {"model_in_use": {"config": {"version": "v0002"}}}}, instance=instance, raise_on_error=False)
    assert not refused.success  # a promotion says why
    promoted = defs.resolve_job_def("promote_model").execute_in_process(
        run_config={"ops": {"model_in_use": {"config": {"version": "v0002", "reason": "accepted: test"}}}},
        instance=instance)
    meta = _materialized(promoted)["model_in_use"]
    assert meta["model_version"] == "v0002" and meta["why"] == "promoted: accepted: test"


def _review_pulled_from_the_command_line_is_seen(instance, defs, paths: LumenPaths, fo: FiftyOneSettings):
    import fiftyone as fol

    from assets_defs.resources import LoopRetrain
    from assets_defs.sensors import corrections_loop
    from pipelines.review.pull import pull_corrections

    ds = fol.load_dataset(fo.dataset)
    try:
        assert len(ds) > 0
        accepted = 0  # a labeler accepts one predicted label on a few images
        for sample in ds.select_fields("predictions").limit(20):
            dets = sample["predictions"].detections if sample["predictions"] else []
            if dets:
                dets[0].tags.append("accept")
                sample.save()
                accepted += 1
        assert accepted > 0
        pulled = pull_corrections(fo.dataset, str(paths.corrections), progress=False)  # = `lumen review pull`
        partition = f"corrections-{pulled['version']}"

        # the sensor records the command-line pull as a `corrections` materialization, adds the partition
        # and asks to ingest it
        resources = {"paths": paths, "fiftyone": fo, "loop_retrain": LoopRetrain(stage1_steps=4, stage2_steps=2)}
        result = corrections_loop(dg.build_sensor_context(instance=instance, resources=resources))
        recorded = instance.fetch_materializations(dg.AssetKey("corrections"), limit=10).records
        assert [m.asset_materialization.metadata["source_partition"].value for m in recorded] == [partition]
        assert result.dynamic_partitions_requests[0].partition_keys == [partition]
        assert [(r.job_name, r.partition_key) for r in result.run_requests] == [("ingest", partition)]
        instance.add_dynamic_partitions("sources", [partition])
        ingest = defs.resolve_job_def("ingest").execute_in_process(partition_key=partition, instance=instance)
        assert ingest.success and _checks(ingest)["records_accounted"]
        result = corrections_loop(dg.build_sensor_context(instance=instance, resources=resources))
        assert len(instance.fetch_materializations(dg.AssetKey("corrections"), limit=10).records) == 1  # once
        assert [r.job_name for r in result.run_requests] == ["retrain"]
    finally:
        ds.delete()
