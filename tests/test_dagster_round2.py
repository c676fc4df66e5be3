"""Issue 35, round two (Dagster side): the loop's sensor, settings checked before slow work, a
registry that remembers, model history to look at, and what data engineers see. Real parts: a
sqlite Dagster instance, the session's FiftyOne database, `lumen review pull` in its own process."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from assets_defs.definitions import build_defs, defs
from assets_defs.resources import FiftyOneSettings, LoopRetrain, LumenPaths
from pipelines.model_registry import REJECTED, ModelRegistry

ROOT = Path(__file__).resolve().parents[1]


def _meta(values) -> dict:
    return {k: v.value for k, v in values.items()}


# ML engineers: settings ----------------------------------------------------------------------------------------

def test_bad_settings_are_refused_in_the_launchpad_or_in_one_line():
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.execution.validate_run_config import validate_run_config

    from assets_defs.assets.training import RetrainConfig
    from lumen_model.train_config import TrainConfig
    from pipelines.settings import field_bounds

    retrain = defs.resolve_job_def("retrain")
    for bad in ({"stage": "3"}, {"preset": "huge"}):  # enums: the Launchpad itself refuses to launch
        with pytest.raises(DagsterInvalidConfigError, match="not in enum type"):
            validate_run_config(retrain, {"ops": {"models": {"config": bad}}})
    # ranges: the config fails as the step builds it, in one line naming every bad setting
    with pytest.raises(dg.Failure) as err:
        RetrainConfig(lr=-1, hflip=1.5, stage1_steps=0)
    assert err.value.description == ("retrain config: lr=-1.0: must be > 0.0; hflip=1.5: must be within [0.0, 1.0]; "
                                     "stage1_steps=0: must be >= 1")
    with pytest.raises(dg.Failure, match=r"^evaluation config: tasks=\['box'\]: unknown task\(s\) \['box'\]"):
        __import__("assets_defs.assets.training", fromlist=["EvaluationConfig"]).EvaluationConfig(tasks=["box"])
    with pytest.raises(DagsterInvalidConfigError, match="not in enum type"):
        validate_run_config(defs.resolve_job_def("label"), {"ops": {"pseudo_labels": {"config": {"task": "pose"}}}})
    # the range is train_config's, not a copy
    assert field_bounds(TrainConfig, "hflip") == {"ge": 0.0, "le": 1.0}
    assert repr(RetrainConfig.model_fields["hflip"].metadata) == "[Ge(ge=0.0), Le(le=1.0)]"


def test_unknown_partition_fails_the_step_at_once_naming_the_known_ones(tmp_path, dagster_instance):
    paths = LumenPaths(root=str(tmp_path / "data"))
    result = defs.resolve_job_def("retrain").execute_in_process(
        run_config={"ops": {"models": {"config": {"partitions": ["cocoo"]}}}}, instance=dagster_instance,
        resources={"paths": paths}, raise_on_error=False)
    assert not result.success
    said = result.failure_data_for_node("models").user_failure_data.description
    assert said.startswith("unknown source partitions ['cocoo']; known: [") and "'coco'" in said and "\n" not in said


# ML engineers: the registry and its history ------------------------------------------------------------------

def _entry(v, ap, ckpt_root: Path | None = None):
    ckpt = (ckpt_root / v) if ckpt_root else Path(f"/m/stage2/{v}")
    return {"version": v, "checkpoint_dir": str(ckpt), "init_dir": f"/m/stage1/{v}", "partitions": ["coco"],
            "metrics": {"bbox": {"AP": ap, "AP50": ap + 0.2, "APl": None, "detections": 40}}}


def test_registry_keeps_every_status_change_and_warns_on_a_rejected_promotion(tmp_path):
    reg = ModelRegistry(tmp_path / "registry.json")
    reg.decide(_entry("v0001", 0.5), passed=True, reason="first evaluated model", by="evaluation (run a)")
    reg.decide(_entry("v0002", 0.2), passed=False, reason="regressed vs v0001: bbox/AP 0.5->0.2", by="evaluation (run b)")
    promoted = reg.promote("v0002", "new classes", by="promote_model (run c, ana)")
    assert "v0002 was rejected by its evaluation (regressed vs v0001: bbox/AP 0.5->0.2)" in promoted["warning"]
    assert reg.get("v0002")["verdict"] == "regressed vs v0001: bbox/AP 0.5->0.2"  # the gate's words stay
    assert reg.get("v0001")["verdict"] == "first evaluated model"
    assert [(h["version"], h["status"], h["by"]) for h in reg.history()] == [
        ("v0001", "in use", "evaluation (run a)"), ("v0002", REJECTED, "evaluation (run b)"),
        ("v0001", "retired", "promote_model (run c, ana)"), ("v0002", "in use", "promote_model (run c, ana)")]
    assert all(h["at"] for h in reg.history())
    assert reg.promote("v0001", "back", by="x")["warning"] == ""  # a version that passed: no warning


def test_model_in_use_lists_every_version_with_its_history_and_plots(tmp_path, dagster_instance):
    paths = LumenPaths(root=str(tmp_path / "data"))
    reg = ModelRegistry(paths.model_registry)
    reg.decide(_entry("v0001", 0.5), passed=True, reason="first evaluated model", by="evaluation")
    reg.decide(_entry("v0002", 0.2), passed=False, reason="regressed vs v0001", by="evaluation")
    result = build_defs(paths=paths).resolve_job_def("promote_model").execute_in_process(
        run_config={"ops": {"model_in_use": {"config": {"version": "v0002", "reason": "accepted"}}}},
        instance=dagster_instance, tags={"user": "ana"})
    assert result.success
    (mat,) = result.asset_materializations_for_node("model_in_use")
    meta = mat.metadata
    assert "rejected by its evaluation" in meta["warning"].value
    versions = {r.data["version"]: r.data for r in meta["versions"].value.records}
    assert versions["v0002"]["status"] == "in use" and versions["v0002"]["verdict"] == "regressed vs v0001"
    assert versions["v0001"]["status"] == "retired" and versions["v0001"]["bbox/AP"] == 0.5
    assert [r.data["by"].split(" (")[0] for r in meta["history"].value.records][:2] == ["promote_model"] * 2
    assert "ana)" in meta["history"].value.records[0].data["by"]
    assert meta["metrics_by_version"].value.startswith("![metrics by version](data:image/png;base64,")


def test_no_regression_failing_is_a_warning_and_model_in_use_still_runs():
    evaluation = defs.resolve_assets_def("evaluation")
    (spec,) = evaluation.check_specs
    assert spec.name == "no_regression" and not spec.blocking


# ML engineers: metrics to look at ----------------------------------------------------------------------------

def test_metrics_are_numbers_and_na_where_pycocotools_has_nothing_to_measure(tmp_path):
    from assets_defs.assets.training import _evaluation_metadata, _loss_overlay
    from assets_defs.handover import Checkpoint
    from pipelines.evaluation import coco_metrics

    gt = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 1, "name": "cat"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0}]}  # small objects only: no large one to measure APl on
    m = coco_metrics("bbox", gt, [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}])
    assert m["APl"] is None and m["APm"] is None and m["AP"] == pytest.approx(1.0)

    for v, losses in (("v0001", [2.0, 1.0, 0.5]), ("v0002", [2.0, 1.5, 1.2])):
        (tmp_path / v).mkdir()
        (tmp_path / v / "trainer_state.json").write_text(json.dumps(
            {"history": [{"step": i + 1, "loss": x} for i, x in enumerate(losses)]}))
    model = Checkpoint(stage=2, version="v0002", checkpoint_dir=str(tmp_path / "v0002"), partitions=["coco"])
    meta = _evaluation_metadata(model, {"bbox": m}, _entry("v0001", 0.5, tmp_path), "regressed", tmp_path)
    assert isinstance(meta["bbox/AP"], dg.FloatMetadataValue) and meta["bbox/AP"].value == pytest.approx(1.0)
    rows = {r.data["metric"]: r.data for r in meta["metrics"].value.records}
    assert rows["bbox/APl"]["v0002"] == "n/a" and rows["bbox/APl"]["change"] == "n/a"
    overlay = _loss_overlay(model, _entry("v0001", 0.5, tmp_path))["loss_overlay"].value
    assert overlay.startswith("![loss overlay](data:image/png;base64,")


# The review loop's sensor ---------------------------------------------------------------------------------------

def _tag_accept(ds, which: int) -> int:
    """A labeler accepts the `which`-th predicted label of every image."""
    done = 0
    for sample in ds.select_fields("predictions"):
        dets = sample["predictions"].detections if sample["predictions"] else []
        if len(dets) > which:
            dets[which].tags.append("accept")
            sample.save()
            done += 1
    return done


def _pull_in_another_process(dataset: str, out: Path) -> dict:
    """`lumen review pull`, as a person runs it beside the long-running code server."""
    proc = subprocess.run([str(Path(sys.executable).parent / "lumen"), "review", "pull", "--dataset", dataset,
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, env=os.environ)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_corrections_loop_reads_the_review_fresh_and_records_a_command_line_pull(review_sources, tmp_path,
                                                                                 fo_dataset_name, dagster_instance):
    import fiftyone as fo

    from assets_defs.sensors import corrections_loop
    from pipelines.review.push import push_predictions
    from tests.fixtures_review import write_prediction_input

    val = write_prediction_input(review_sources, tmp_path / "pred" / "val.json", split="val", seed=2)
    push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred" / "val.json", "v0001",
                     heatmaps_dir=val["heatmaps_dir"], categories_file=val["gt_file"], progress=False)
    paths = LumenPaths(root=str(tmp_path / "data"))
    resources = {"paths": paths, "fiftyone": FiftyOneSettings(dataset=fo_dataset_name, min_reviewed_labels=1),
                 "loop_retrain": LoopRetrain(stage1_steps=7, stage2_steps=3)}

    def tick():  # one evaluation, as a daemon tick or the UI's "Preview tick result" makes it
        return corrections_loop(dg.build_sensor_context(instance=dagster_instance, resources=resources))

    ds = fo.load_dataset(fo_dataset_name)  # this process keeps the object, as the code server does
    assert _tag_accept(ds, 0) >= 2
    first = tick()
    (pull,) = first.run_requests
    assert pull.job_name == "pull_corrections"

    pulled = _pull_in_another_process(fo_dataset_name, paths.corrections)
    partition = f"corrections-{pulled['version']}"
    second = tick()
    # fresh: nothing reviewed since the command-line pull, so no pull; the pull itself is recorded at once
    assert [r.job_name for r in second.run_requests] == ["ingest"] and second.run_requests[0].partition_key == partition
    (rec,) = dagster_instance.fetch_materializations(dg.AssetKey("corrections"), limit=10).records
    assert rec.asset_materialization.metadata["source_partition"].value == partition
    assert rec.asset_materialization.metadata["pulled_by"].value.startswith("command line")
    assert second.dynamic_partitions_requests[0].partition_keys == [partition]
    tick()
    assert len(dagster_instance.fetch_materializations(dg.AssetKey("corrections"), limit=10).records) == 1  # once

    # more review: a new state, a new run key (not "once per version")
    assert _tag_accept(ds, 1) >= 2
    (again,) = [r for r in tick().run_requests if r.job_name == "pull_corrections"]
    assert again.run_key != pull.run_key

    # the ingested round gets one retrain, of the configured size
    dagster_instance.add_dynamic_partitions("sources", [partition])
    dagster_instance.report_runless_asset_event(dg.AssetMaterialization("shards", partition=partition))
    (retrain,) = [r for r in tick().run_requests if r.job_name == "retrain"]
    assert retrain.run_config["ops"]["models"]["config"] == {"stage": "1+2", "stage1_steps": 7, "stage2_steps": 3}
    assert retrain.tags["lumen/retrain_size"] == "stage 1+2, 7+3 steps"


def test_watched_folder_sensor_leaves_corrections_to_the_loop_and_says_why_it_skips(tmp_path, dagster_instance):
    from assets_defs.sensors import new_source_files
    from pipelines.sample_data import write_sample_data

    paths = LumenPaths(root=str(tmp_path / "data"))
    write_sample_data(paths.sources, n_images=8)
    version = paths.corrections / "v0001"
    version.mkdir(parents=True)
    shutil.copy(paths.sources / "coco" / "annotations" / "instances_train.json", version / "instances_train.json")

    ctx = dg.build_sensor_context(instance=dagster_instance, resources={"paths": paths})
    first = new_source_files(ctx)
    assert "corrections-v0001" not in {r.partition_key for r in first.run_requests}  # the loop's, not twice
    assert len(first.run_requests) == 5
    second = new_source_files(dg.build_sensor_context(instance=dagster_instance, cursor=ctx.cursor,
                                                      resources={"paths": paths}))
    assert second.run_requests == []
    assert second.skip_reason.skip_message == ("no file changed since the last ingest of coco, coco-keypoints, "
                                               "refcoco, vqav2, llava")


# Data engineers ------------------------------------------------------------------------------------------------

def _check_evaluations(instance, run_id=None) -> list:
    runs = [run_id] if run_id else [r.run_id for r in instance.get_runs()]
    return [e.dagster_event.asset_check_evaluation_data for rid in runs
            for e in instance.all_logs(rid, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)]


def test_shard_checks_per_partition_with_numbers_and_logs_without_repeats(tmp_path, dagster_instance):
    from assets_defs.partitions import ensure_source_partitions

    ensure_source_partitions(dagster_instance)
    paths = LumenPaths(root=str(tmp_path / "data"), demo_images=16)
    ingest = defs.resolve_job_def("ingest")
    one = ingest.execute_in_process(partition_key="llava", instance=dagster_instance, resources={"paths": paths})
    checks = {c.check_name: c for c in _check_evaluations(dagster_instance, one.run_id)}
    accounted = checks["records_accounted"]
    assert accounted.partition == "llava"  # not "Partition -"
    assert isinstance(accounted.metadata["records_read"], dg.IntMetadataValue)
    assert accounted.metadata["unaccounted"].value == 0 and accounted.metadata["folders_checked"].value == 1
    assert isinstance(accounted.metadata["per_folder"], dg.TableMetadataValue)

    # one run over two partitions (as the main job runs): each partition's own result beside the run's
    both = ingest.execute_in_process(
        tags={"dagster/asset_partition_range_start": "vqav2", "dagster/asset_partition_range_end": "llava"},
        instance=dagster_instance, resources={"paths": paths})
    assert both.success
    per_partition = {(c.check_name, c.partition) for c in _check_evaluations(dagster_instance) if c.partition}
    assert {("records_accounted", "vqav2"), ("heatmap_peaks_at_centers", "vqav2")} <= per_partition
    lines = [r.user_message for r in dagster_instance.all_logs(both.run_id)
             if not r.is_dagster_event and r.step_key == "shards"]
    assert lines and len(lines) == len(set(lines)), lines
    assert sum("vqav2/train" in line for line in lines) == 1  # each folder once
    again = ingest.execute_in_process(  # the same run again (the main command re-run): no duplicate-key error
        tags={"dagster/asset_partition_range_start": "vqav2", "dagster/asset_partition_range_end": "llava"},
        instance=dagster_instance, resources={"paths": paths})
    assert again.success
    assert {("records_accounted", "vqav2")} <= {(c.check_name, c.partition)
                                                for c in _check_evaluations(dagster_instance, again.run_id)}


def test_progress_lines_say_how_long_is_left(caplog):
    from pipelines.progress import LogProgress, duration

    with caplog.at_level(logging.INFO, logger="lumen.progress"):
        bar = LogProgress(total=100, desc="stage 1", unit="step", every_s=0.0)
        bar.t0 -= 30.0  # 30 s so far for the first 10 steps: 90 steps at 1/3 step/s left
        bar.update(10)
        bar.update(90)
    first, last = caplog.messages[0], caplog.messages[-1]
    assert "10/100 step" in first and "about 4 min left" in first
    assert last.startswith("stage 1: 100/100 step") and ", done" in last
    assert (duration(45), duration(600), duration(3900)) == ("45 s", "10 min", "1 h 05 min")
