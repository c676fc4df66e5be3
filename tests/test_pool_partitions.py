"""The unlabeled pool in partitions (issue 33): the rule, the planner, the sensor, per-partition labels."""

from __future__ import annotations

import json

import pytest

from pipelines.errors import InputError
from pipelines.pool_partitions import (assign, partition_images, plan_pool, read_assignments, read_plan,
                                       read_quarantine)

CATS = [{"id": 1, "name": "square"}, {"id": 2, "name": "star"}]


def pool_json(path, images, categories=CATS):
    path.write_text(json.dumps({"images": images, "categories": categories}))
    return path


def images(lo, hi):
    return [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in range(lo, hi)]


def test_the_rule_is_stable_under_growth_and_bounded(tmp_path):
    plan_dir = tmp_path / "plan"
    first = plan_pool([pool_json(tmp_path / "a.json", images(0, 250))], plan_dir, max_size=100)
    assert first.new_partitions == ["pool-0000", "pool-0001", "pool-0002"]
    assert sorted(first.partitions.values()) == [50, 100, 100]
    before = dict(zip(*(read_assignments(plan_dir).column(c).to_pylist() for c in ("file_name", "partition"))))

    # the pool grows (the old images listed again, in another order, plus 130 new ones)
    grown = images(0, 380)[::-1]
    second = plan_pool([pool_json(tmp_path / "b.json", grown)], plan_dir, max_size=100)
    after = dict(zip(*(read_assignments(plan_dir).column(c).to_pylist() for c in ("file_name", "partition"))))
    assert {n: after[n] for n in before} == before  # no image moved
    assert second.images_known == 250 and second.images_new == 130
    assert second.new_partitions == ["pool-0003", "pool-0004"]  # new images open new partitions only
    assert max(second.partitions.values()) <= 100 and sum(second.partitions.values()) == 380
    assert partition_images(plan_dir, "pool-0000") == json.loads((plan_dir / "partitions/pool-0000.json").read_text())

    # re-planning the same file writes nothing and adds nothing
    stamp = (plan_dir / "manifest.json").stat().st_mtime_ns
    third = plan_pool([tmp_path / "b.json"], plan_dir, max_size=100)
    assert third.new_partitions == [] and third.images_known == 380
    assert (plan_dir / "manifest.json").stat().st_mtime_ns == stamp


def test_the_order_of_the_pool_file_does_not_matter():
    names = [f"{i}.jpg" for i in range(30)]
    assert assign(names, 0, 7) == assign(names[::-1], 0, 7)


def test_bad_records_are_quarantine_rows_saying_why(tmp_path):
    bad = [{"id": 1, "file_name": "ok.jpg"},
           {"id": "2", "file_name": "a.jpg"},  # id not a number
           {"id": 3, "file_name": "../etc/passwd"},  # outside the images folder
           {"id": 4, "file_name": "b.jpg", "width": 0, "height": 5},
           {"id": 1, "file_name": "c.jpg"},  # id names another file
           {"id": 5, "file_name": "ok.jpg"},  # name listed twice, another id
           "not an object",
           {"id": 6}]
    plan = plan_pool([pool_json(tmp_path / "p.json", bad)], tmp_path / "plan", max_size=10)
    assert plan.images_new == 1 and plan.quarantined == 7 and plan.images_read == 8
    rows = read_quarantine(tmp_path / "plan")
    reasons = {r["record_id"]: r["reason"] for r in rows}
    assert "whole number" in reasons["2"] and "outside the images folder" in reasons["3"]
    assert "width" in reasons["4"] and "already names another file" in reasons["1"]
    assert "already has image id 1" in reasons["5"] and "must be an object" in reasons["#7"]
    assert "file_name" in reasons["6"]
    assert all(r["source_file"].endswith("p.json") for r in rows)
    # a re-plan of the same file does not count its bad records twice
    plan_pool([tmp_path / "p.json"], tmp_path / "plan", max_size=10)
    assert len(read_quarantine(tmp_path / "plan")) == 7 and read_plan(tmp_path / "plan")["quarantined"] == 7


def test_a_bad_pool_file_is_one_line(tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [{"id": 1,')
    with pytest.raises(InputError, match="broken.json"):
        plan_pool([tmp_path / "broken.json"], tmp_path / "plan")
    with pytest.raises(InputError, match="no categories"):
        plan_pool([pool_json(tmp_path / "nocats.json", images(0, 3), categories=[])], tmp_path / "plan2")


# -- Dagster: the sensor, per-partition labels ------------------------------------------------------------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import dagster as dg  # noqa: E402

from pipelines.pool_partitions import labels_done, labels_dir, mark_labels_done  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pool_sources(tmp_path_factory):
    """Demo sources with a pool of 12 images (their files in coco/images), in a data root's sources/."""
    from pipelines.sample_data import write_sample_data

    root = tmp_path_factory.mktemp("pool-data-src")
    write_sample_data(root / "sources", n_images=8, seed=5, pool=12)
    return root / "sources"


def data_root(tmp_path, pool_sources, max_size):
    """A data root whose sources are the module's (linked) and whose pool plan starts with `max_size`."""
    from assets_defs.partitions import pool_plan_dir
    from assets_defs.resources import LumenPaths
    from pipelines.pool_partitions import plan_pool, pool_files

    paths = LumenPaths(root=str(tmp_path / "data"))
    paths.base.mkdir(parents=True)
    os.symlink(pool_sources, paths.sources)
    plan_pool(pool_files(paths.sources), pool_plan_dir(paths.base), max_size=max_size)
    return paths


def evaluate_sensor(instance, paths, cursor=None):
    from assets_defs.sensors import new_pool_images

    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"paths": paths})
    result = new_pool_images(ctx)
    for req in getattr(result, "dynamic_partitions_requests", None) or []:  # what the daemon applies
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result, ctx.cursor


def put_in_use(paths, version, checkpoint):
    from pipelines.model_registry import ModelRegistry

    ModelRegistry(paths.model_registry).decide({"version": version, "checkpoint_dir": str(checkpoint), "metrics": {}},
                                               passed=True, reason=f"test: {version}")


def test_sensor_adds_pool_partitions_and_asks_each_once(tmp_path, pool_sources, dagster_instance):
    from assets_defs.partitions import pool_partitions

    paths = data_root(tmp_path, pool_sources, max_size=5)
    result, cursor = evaluate_sensor(dagster_instance, paths)
    assert dagster_instance.get_dynamic_partitions(pool_partitions.name) == ["pool-0000", "pool-0001", "pool-0002"]
    assert not result.run_requests  # partitions only: no model to label them
    result, cursor = evaluate_sensor(dagster_instance, paths, cursor)
    assert not result.dynamic_partitions_requests and "no model in use" in result.skip_reason.skip_message

    put_in_use(paths, "v0001", tmp_path / "ckpt")
    result, cursor = evaluate_sensor(dagster_instance, paths, cursor)
    assert [(r.partition_key, r.run_key) for r in result.run_requests] == [
        (f"pool-000{i}", f"pool-000{i}@v0001") for i in range(3)]  # stable keys: the daemon asks each once
    assert not result.dynamic_partitions_requests

    # the pool grows: a second image_info json dropped into sources/pool/
    info = json.loads((pool_sources / "coco/annotations/image_info_unlabeled.json").read_text())
    extra = [dict(im, id=900_000 + k, file_name=f"extra_{k}.jpg") for k, im in enumerate(info["images"][:4])]
    drop = tmp_path / "pool-drop"
    drop.mkdir()
    pool_json(drop / "week2.json", extra, info["categories"])
    os.unlink(paths.sources)  # the sources folder becomes a real one holding the demo files and the drop
    paths.sources.mkdir()
    for name in os.listdir(pool_sources):
        os.symlink(pool_sources / name, paths.sources / name)
    os.symlink(drop, paths.sources / "pool")
    for k in range(3):  # the first three were labelled meanwhile
        mark_labels_done(paths.predictions, "v0001", f"pool-000{k}", {"images": 5, "labelled": 5, "kept_reviewed": 0})
    result, cursor = evaluate_sensor(dagster_instance, paths, cursor)
    assert dagster_instance.get_dynamic_partitions(pool_partitions.name)[-1] == "pool-0003"
    assert [r.run_key for r in result.run_requests] == ["pool-0003@v0001"]  # only the new partition

    mark_labels_done(paths.predictions, "v0001", "pool-0003", {"images": 4, "labelled": 4, "kept_reviewed": 0})
    result, cursor = evaluate_sensor(dagster_instance, paths, cursor)
    assert not result.run_requests and "every one labelled by model v0001" in result.skip_reason.skip_message
    put_in_use(paths, "v0002", tmp_path / "ckpt")  # a new model version: each partition once more
    result, _ = evaluate_sensor(dagster_instance, paths, cursor)
    assert [r.run_key for r in result.run_requests] == [f"pool-000{i}@v0002" for i in range(4)]


def pool_resources(paths, dataset):
    from assets_defs.handover import handover_io_manager
    from assets_defs.resources import Compute, FiftyOneSettings

    return {"paths": paths, "compute": Compute(device="cpu"), "io_manager": handover_io_manager,
            "fiftyone": FiftyOneSettings(dataset=dataset, database_dir=os.environ.get("FIFTYONE_DATABASE_DIR", ""),
                                         database_uri=os.environ.get("FIFTYONE_DATABASE_URI", ""))}


SMALL_RUN = {"ops": {"pool_pseudo_labels": {"config": {"flip_tta": False, "batch_size": 8}}}}


def materialize(instance, paths, dataset, selection, partition_key=None, tags=None):
    from assets_defs.assets.review import pool_pseudo_labels, pool_review
    from assets_defs.assets.training import model_in_use

    config = SMALL_RUN if "pool_pseudo_labels" in selection else {}
    result = dg.materialize([model_in_use, pool_pseudo_labels, pool_review], selection=selection,
                            partition_key=partition_key, instance=instance, resources=pool_resources(paths, dataset),
                            run_config=config, tags=tags)
    assert result.success
    return result


def label_partition(instance, paths, dataset, key):
    materialize(instance, paths, dataset, ["pool_pseudo_labels", "pool_review"], key)


@pytest.mark.slow
def test_a_new_model_version_relabels_only_unreviewed_images(tmp_path, pool_sources, tiny_stage2, dagster_instance,
                                                             fo_dataset_name):
    import fiftyone as fo

    from pipelines.review import fields as F

    paths = data_root(tmp_path, pool_sources, max_size=6)
    evaluate_sensor(dagster_instance, paths)
    put_in_use(paths, "v0001", tiny_stage2[0])
    materialize(dagster_instance, paths, fo_dataset_name, ["model_in_use"])
    label_partition(dagster_instance, paths, fo_dataset_name, "pool-0000")
    ds = fo.load_dataset(fo_dataset_name)
    assert len(ds) == 6 and set(ds.distinct("predictions.detections.model_version")) == {"v0001"}
    # a labeler finishes one image, accepts a box on another
    samples = list(ds.sort_by("filepath"))
    samples[0].tags.append(F.REVIEWED_SAMPLE_TAG)
    samples[0].save()
    with_box = next(s for s in samples[1:] if s.predictions and s.predictions.detections)
    with_box.predictions.detections[0].tags.append(F.ACCEPT)
    with_box.save()
    kept = {samples[0].filepath: [d.id for d in (samples[0].predictions.detections if samples[0].predictions else [])],
            with_box.filepath: [d.id for d in with_box.predictions.detections]}

    from pipelines.review.queue import build_review_queue

    build_review_queue(fo_dataset_name, labelers=2, session_size=3)  # two labelers' shares, as a lead set them
    put_in_use(paths, "v0002", tiny_stage2[0])  # a new version: the same weights, another name
    materialize(dagster_instance, paths, fo_dataset_name, ["model_in_use"])
    label_partition(dagster_instance, paths, fo_dataset_name, "pool-0000")
    done = labels_done(paths.predictions, "v0002", "pool-0000")
    assert done["kept_reviewed"] == 2 and done["labelled"] == 4
    assert {im["file_name"] for im in json.loads(Path(done["images_file"]).read_text())["images"]}.isdisjoint(
        {Path(p).name for p in kept})
    ds.reload()
    for s in ds.sort_by("filepath"):
        versions = {d.model_version for d in (s.predictions.detections if s.predictions else [])}
        if s.filepath in kept:  # reviewed: its labels, ids and tags as they were
            assert [d.id for d in (s.predictions.detections if s.predictions else [])] == kept[s.filepath]
            assert versions <= {"v0001"}
        else:
            assert versions <= {"v0002"}
    assert F.REVIEWED_SAMPLE_TAG in ds[samples[0].filepath].tags
    assert F.ACCEPT in ds[with_box.filepath].predictions.detections[0].tags
    assert ds.count("review_priority") == 6  # the queue scored the new labels (and kept the others' numbers)
    assert {"review/labeler-1", "review/labeler-2"} <= set(ds.list_saved_views())  # the shares stay
    assert F.review_info(ds)["queue"]["labelers"] == 2

    # the same version again: nothing is labelled twice
    before = Path(done["images_file"]).stat().st_mtime_ns
    materialize(dagster_instance, paths, fo_dataset_name, ["pool_pseudo_labels"], "pool-0000")
    assert Path(done["images_file"]).stat().st_mtime_ns == before


KILLED_CHILD = """
import os, sys
import dagster as dg
sys.path.insert(0, {root!r})
from tests.test_pool_partitions import materialize
from assets_defs.recovery import owner_tags
from assets_defs.resources import LumenPaths
with dg.DagsterInstance.from_config({home!r}) as instance:  # tagged with its pid, as the main command's runs
    materialize(instance, LumenPaths(root={data!r}), {dataset!r}, ["pool_pseudo_labels"], {key!r},
                tags={{**owner_tags(), "lumen/model_version": "v0001"}})
"""


@pytest.mark.slow
def test_a_killed_partition_is_relabelled_alone_and_every_image_once(tmp_path, pool_sources, tiny_stage2,
                                                                      dagster_home, dagster_instance, fo_dataset_name):
    paths = data_root(tmp_path, pool_sources, max_size=6)
    result, cursor = evaluate_sensor(dagster_instance, paths)
    put_in_use(paths, "v0001", tiny_stage2[0])
    materialize(dagster_instance, paths, fo_dataset_name, ["model_in_use"])
    label_partition(dagster_instance, paths, fo_dataset_name, "pool-0000")

    # a worker labelling pool-0001 is killed (kill -9) mid-partition: after its first heatmaps, before the end
    heat = labels_dir(paths.predictions, "v0001", "pool-0001") / "instance_segmentation_heatmaps"
    code = KILLED_CHILD.format(root=str(ROOT), home=str(dagster_home), data=str(paths.base), dataset=fo_dataset_name,
                               key="pool-0001")
    child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"},
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while not (heat.is_dir() and any(heat.glob("*.png"))) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() is None, "the labelling ended before it could be killed"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert labels_done(paths.predictions, "v0001", "pool-0001") is None  # not counted as labelled
    # the dead run still holds the gpu slot; recovery (the main command's, run monitoring under the daemon) frees it
    from assets_defs.recovery import recover_dead_runs

    assert len(recover_dead_runs(dagster_instance, log=lambda line: None)) == 1

    # what is missing is asked again, and only that
    result, cursor = evaluate_sensor(dagster_instance, paths, cursor)
    # a new run key: the daemon never repeats one, and pool-0001@v0001 was the killed run's
    assert [r.run_key for r in result.run_requests] == ["pool-0001@v0001-retry1"]
    label_partition(dagster_instance, paths, fo_dataset_name, "pool-0001")
    result, _ = evaluate_sensor(dagster_instance, paths, cursor)
    assert not result.run_requests

    # every pool image labelled exactly once, in exactly one partition
    labelled = []
    for key in ("pool-0000", "pool-0001"):
        done = labels_done(paths.predictions, "v0001", key)
        ids = [im["id"] for im in json.loads(Path(done["images_file"]).read_text())["images"]]
        index = json.loads((Path(done["heatmaps_dir"]) / "index.json").read_text())
        assert {e["image_id"] for e in index} == set(ids)
        labelled += ids
    pool = json.loads((pool_sources / "coco/annotations/image_info_unlabeled.json").read_text())["images"]
    assert sorted(labelled) == sorted(im["id"] for im in pool) and len(set(labelled)) == len(labelled)
    import fiftyone as fo

    assert len(fo.load_dataset(fo_dataset_name)) == len(pool)


# -- the real local stack: PostgreSQL + Redis + Celery, two gpu workers (tests/test_deploy_celery.py's stack) ------

POOL_IMAGES, POOL_PART = 1000, 200  # 5 partitions


@pytest.fixture(scope="module")
def pool_stack(tmp_path_factory, tiny_stage2):
    from tests.services import missing_services

    reason = missing_services()
    if reason:
        pytest.skip(reason)
    from deploy.local_stack import LocalStack
    from pipelines.model_registry import ModelRegistry
    from pipelines.pool_partitions import plan_pool, pool_files
    from pipelines.sample_data import write_sample_data

    s = LocalStack(tmp_path_factory.mktemp("pool-stack"), images=20, gpu_workers=2)
    s.data_root.mkdir(parents=True)
    write_sample_data(s.data_root / "sources", n_images=20, seed=7, pool=POOL_IMAGES)
    plan_pool(pool_files(s.data_root / "sources"), s.data_root / "pool_plan", max_size=POOL_PART)
    ModelRegistry(s.data_root / "models" / "registry.json").decide(
        {"version": "v0001", "checkpoint_dir": str(tiny_stage2[0]), "metrics": {}}, passed=True, reason="pool drill")
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _gpu_worker_of(stack, run_id) -> str | None:
    from deploy.stack_runs import step_events

    for e in step_events(stack, run_id):
        if e["type"] == "ENGINE_EVENT" and e["step"] == "pool_pseudo_labels" and "celery worker" in e["message"]:
            names = [w for w in stack.gpu_worker_names if f"{w}@" in e["raw"]]
            return names[0] if len(names) == 1 else None
    return None


def _label_runs(stack, keys) -> tuple[float, list[str]]:
    """Launch one label_pool run per partition at once; wall seconds until all succeeded."""
    from deploy.stack_runs import launch, timeline, wait_run
    from tests.test_deploy_celery import _failures

    ops = {"pool_pseudo_labels": {"config": {"flip_tta": False, "batch_size": 16}}}
    t0, epoch = time.monotonic(), time.time()
    runs = [launch(stack, "label_pool", ops, {"dagster/partition": k}) for k in keys]
    for r in runs:
        assert wait_run(stack, r, timeout=1800) == "SUCCESS", _failures(stack, r)
    for r in runs:
        print(f"[pool] {timeline(stack, r, epoch)}")  # -s shows where the seconds go
    return time.monotonic() - t0, runs


@pytest.mark.slow
def test_pool_on_celery_two_gpu_workers_each_image_once_and_a_killed_worker_costs_one_partition(pool_stack,
                                                                                                 artifacts_dir):
    from assets_defs.partitions import pool_partitions
    from deploy.stack_runs import add_dynamic_partition, launch, step_error, step_events, step_span, wait_run
    from tests.test_deploy_celery import _failures

    stack = pool_stack
    keys = sorted(json.loads((stack.data_root / "pool_plan" / "manifest.json").read_text())["partitions"])
    assert len(keys) == POOL_IMAGES // POOL_PART
    for k in keys:
        add_dynamic_partition(stack, pool_partitions.name, k)
    promote = launch(stack, "promote_model", {})
    assert wait_run(stack, promote) == "SUCCESS", _failures(stack, promote)

    # one gpu slot, then two: the same partition size, for the speed-up
    stack.set_gpu_slots(1)
    one_s, one_runs = _label_runs(stack, keys[0:2])
    # the first partitions are in the review dataset (labelers can start) while the others are not labelled yet
    from pipelines.pool_partitions import labels_dir, labels_done

    assert _review_samples(stack) == 2 * POOL_PART
    assert all(labels_done(stack.data_root / "predictions", "v0001", k) is None for k in keys[2:])
    stack.set_gpu_slots(2)
    two_s, two_runs = _label_runs(stack, keys[2:4])
    workers = {_gpu_worker_of(stack, r) for r in two_runs}
    speedup = one_s / two_s
    one_label_s, two_label_s = (step_span(stack, one_runs, "pool_pseudo_labels"),
                                 step_span(stack, two_runs, "pool_pseudo_labels"))
    print(f"\n[pool] 2 x {POOL_PART} images: one gpu worker {one_s:.0f}s ({2 * POOL_PART / one_s:.2f} images/s), "
          f"two {two_s:.0f}s ({2 * POOL_PART / two_s:.2f} images/s): x{speedup:.2f}; the labelling steps alone "
          f"(first start to last success) {one_label_s:.0f}s and {two_label_s:.0f}s: x{one_label_s / two_label_s:.2f}; "
          f"workers {sorted(workers)}")
    assert workers == {"worker-gpu", "worker-gpu-2"}  # the two partitions went to both gpu workers

    # a gpu worker killed mid-partition: that run fails, nothing is marked labelled, a new run of that partition
    # alone finishes it; the other partitions' labels stay as they were
    before = {k: (labels_dir(stack.data_root / "predictions", "v0001", k) / "done.json").stat().st_mtime_ns
              for k in keys[:4]}
    last = keys[4]
    run_id = launch(stack, "label_pool", {"pool_pseudo_labels": {"config": {"flip_tta": False}}},
                    {"dagster/partition": last})
    heat = labels_dir(stack.data_root / "predictions", "v0001", last) / "instance_segmentation_heatmaps"
    deadline, pid = time.monotonic() + 600, None
    while time.monotonic() < deadline and not (pid and heat.is_dir() and any(heat.glob("*.png"))):
        pid = pid or next((e["pid"] for e in step_events(stack, run_id)
                           if e["type"] == "STEP_START" and e["step"] == "pool_pseudo_labels"), None)
        time.sleep(0.2)
    assert pid and labels_done(stack.data_root / "predictions", "v0001", last) is None
    os.kill(pid, signal.SIGKILL)
    assert wait_run(stack, run_id, timeout=300) == "FAILURE"
    assert "pool_pseudo_labels" in step_error(stack, run_id)
    assert labels_done(stack.data_root / "predictions", "v0001", last) is None
    _, retry = _label_runs(stack, [last])
    done = {e["step"] for e in step_events(stack, retry[0]) if e["type"] == "STEP_SUCCESS"}
    assert done == {"pool_pseudo_labels", "pool_review"}
    assert {k: (labels_dir(stack.data_root / "predictions", "v0001", k) / "done.json").stat().st_mtime_ns
            for k in keys[:4]} == before  # no other partition was labelled again

    # every image labelled exactly once, each partition by exactly one successful step
    labelled = []
    for k in keys:
        rec = labels_done(stack.data_root / "predictions", "v0001", k)
        ids = [im["id"] for im in json.loads(Path(rec["images_file"]).read_text())["images"]]
        index = json.loads((Path(rec["heatmaps_dir"]) / "index.json").read_text())
        assert {e["image_id"] for e in index} == set(ids)
        labelled += ids
    assert len(labelled) == len(set(labelled)) == POOL_IMAGES
    successes = stack.sql("select count(*) from event_logs where dagster_event_type = 'STEP_SUCCESS' "
                          "and step_key = 'pool_pseudo_labels'")[0][0]
    assert successes == len(keys)
    assert _review_samples(stack) == POOL_IMAGES
    # kept for the README's numbers (pytest's temp folders do not last)
    (artifacts_dir / "pool_celery_speedup.json").write_text(json.dumps({
        "images_per_phase": 2 * POOL_PART, "one_gpu_worker_s": round(one_s, 1), "two_gpu_workers_s": round(two_s, 1),
        "one_worker_images_per_s": round(2 * POOL_PART / one_s, 3),
        "two_workers_images_per_s": round(2 * POOL_PART / two_s, 3), "speedup": round(speedup, 2),
        "labelling_steps_s": {"one_gpu_worker": round(one_label_s, 1), "two_gpu_workers": round(two_label_s, 1)},
        "labelling_speedup": round(one_label_s / two_label_s, 2),
        "load_average": os.getloadavg(), "flip_tta": False, "cpu_cores": os.cpu_count()}, indent=1))


def _review_samples(stack) -> int:
    """Samples in the stack's review dataset, counted in its MongoDB."""
    import pymongo

    db = pymongo.MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=5000)["fiftyone"]
    coll = db["datasets"].find_one({"name": "lumen-review"})["sample_collection_name"]
    return db[coll].count_documents({})


def test_reviewed_images_are_the_ones_a_labeler_touched(review_sources, fo_dataset_name, tmp_path):
    """What a new model version must not label again: tagged reviewed, a judged prediction, a correction."""
    import fiftyone as fo

    from pipelines.review import fields as F
    from pipelines.review.push import push_predictions, reviewed_images
    from tests.fixtures_review import write_prediction_input

    inp = write_prediction_input(review_sources, tmp_path / "pred" / "seg.json", split="train")
    push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred" / "seg.json", "v0001",
                     gt_file=inp["gt_file"], progress=False)
    ds = fo.load_dataset(fo_dataset_name)
    samples = [s for s in ds.sort_by("filepath") if s.predictions and s.predictions.detections]
    a, b, c, untouched = samples[:4]
    a.tags.append(F.REVIEWED_SAMPLE_TAG)
    a.save()
    b.predictions.detections[0].tags.append(F.REJECT)
    b.save()
    c[F.CORRECTIONS] = fo.Detections(detections=[fo.Detection(label="star", bounding_box=[0.1, 0.1, 0.2, 0.2])])
    c.save()
    assert reviewed_images(fo_dataset_name, [s.filepath for s in samples]) == {a.filepath, b.filepath, c.filepath}
    assert reviewed_images(fo_dataset_name, [untouched.filepath]) == set()
    assert reviewed_images("no-such-dataset-" + fo_dataset_name, [a.filepath]) == set()
