"""Queue and pull on a real FiftyOne database: evaluation, priorities, saved views, corrections
as numbered COCO versions that `convert_source` accepts, review-work counting, re-runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from pipelines.review.pull import pull_corrections
from pipelines.review.push import push_predictions
from pipelines.review.queue import SESSION_VIEW, VIEWS, build_review_queue, count_review_work
from tests.fixtures_review import write_prediction_input


@pytest.fixture
def pushed(review_sources, tmp_path, fo_dataset_name):
    """GT for the train images, pseudo-labels (no GT) for the val images, one model version."""
    import fiftyone as fo

    train = write_prediction_input(review_sources, tmp_path / "pred" / "train.json", split="train", seed=1)
    val = write_prediction_input(review_sources, tmp_path / "pred" / "val.json", split="val", seed=2)
    images = review_sources / "images"
    push_predictions(fo_dataset_name, images, tmp_path / "pred" / "train.json", "v0001", gt_file=train["gt_file"],
                     heatmaps_dir=train["heatmaps_dir"], progress=False)
    push_predictions(fo_dataset_name, images, tmp_path / "pred" / "val.json", "v0001",
                     heatmaps_dir=val["heatmaps_dir"], categories_file=val["gt_file"], progress=False)
    ds = fo.load_dataset(fo_dataset_name)
    return {"ds": ds, "train": train, "val": val, "images": images}


def test_queue_evaluates_where_gt_exists_and_prioritizes_the_rest(pushed):
    from fiftyone import ViewField as F

    ds, train = pushed["ds"], pushed["train"]
    gt = json.loads(train["gt_file"].read_text())
    q = build_review_queue(ds.name)
    ds.reload()
    with_gt = ds.exists("ground_truth")
    assert len(with_gt) == len(gt["images"]) and len(ds) > len(with_gt)
    # every GT object is matched or missed; every prediction on a GT image matched or not
    assert q["tp"] + q["fn"] == len(gt["annotations"])
    assert q["tp"] + q["fp"] == with_gt.count("predictions.detections")
    assert q["fn"] >= len(train["dropped"]) > 0  # at least the objects the input left out
    assert set(with_gt.distinct("predictions.detections.review_eval")) <= {"tp", "fp"}
    missed_ids = {d.get_field("label_key") for s in with_gt for d in s.ground_truth.detections
                  if d.review_eval == "fn"}
    assert {f"gt:{i}" for i in train["dropped"]} <= missed_ids

    assert q["views"] == [*VIEWS, SESSION_VIEW] and set(ds.list_saved_views()) >= set(q["views"])
    assert ds.load_saved_view(SESSION_VIEW).values("id") == ds.load_saved_view("review/likely-wrong").values("id")[:40]
    order = {"review/likely-wrong": "review_priority", "review/possible-missed": "review_possible_missed",
             "review/low-confidence": "review_uncertain"}
    for name in VIEWS:
        view = ds.load_saved_view(name)
        keys = view.values(order[name])
        assert keys == sorted(keys, reverse=True) and all(k > 0 for k in keys)
        assert len(view) == q["view_counts"][name]
    # with ground truth the errors are exact: FP + FN of the shown predictions
    for n_err, n_fp, n_fn in zip(*with_gt.values(["review_errors", "review_eval_fp", "review_eval_fn"])):
        assert n_err == (n_fp or 0) + (n_fn or 0)
    wrong = ds.load_saved_view("review/likely-wrong")
    on_gt = wrong.exists("ground_truth")
    assert len(on_gt) == len(with_gt.match(F("review_errors") > 0)) > 0
    missed = ds.load_saved_view("review/possible-missed")
    for has_gt, n_fn, expected in zip(*missed.values(["ground_truth", "review_eval_fn", "review_expected_missed"])):
        assert (n_fn or 0) > 0 if has_gt is not None else expected >= 0.5
    assert len(missed.exists("ground_truth")) == len(with_gt.match({"review_eval_fn": {"$gt": 0}})) > 0
    # pseudo-labels (no GT): estimated errors, P(right) = the score when no calibration was recorded
    no_gt = ds.exists("ground_truth", False)
    prios = no_gt.values("review_priority")
    assert all(p is not None for p in prios) and max(prios) > 0
    confs = no_gt.values("predictions.detections.confidence")
    peaks = no_gt.values("heatmap_peaks.keypoints.heat")
    for p, cs, ps in zip(prios, confs, peaks):
        assert p == pytest.approx(sum(1 - c for c in cs) + sum(ps or []), abs=1e-3)
    low = ds.load_saved_view("review/low-confidence")
    assert all(any(0.3 <= c <= 0.7 for c in cs) for cs in low.values("predictions.detections.confidence"))
    assert len(set(q["view_counts"].values())) > 1, "the views should not all hold the same images"


def test_a_sample_tagged_reviewed_leaves_the_queue(pushed):
    ds = pushed["ds"]
    build_review_queue(ds.name)
    top = ds.load_saved_view("review/low-confidence").first()
    top.tags.append("reviewed")
    top.save()
    assert top.id not in ds.load_saved_view("review/low-confidence").values("id")


def _review(ds):
    """What a labeler does in the App / through the Python API: returns what was done."""
    import fiftyone as fo

    samples = list(ds.exists("ground_truth").sort_by("image_id"))
    accept, reject = [], []
    for s in samples[:3]:
        dets = s.predictions.detections
        accept += [d.id for d in dets[:2]]
        reject += [d.id for d in dets[2:3]]
    ds.select_labels(ids=accept).tag_labels("accept")
    ds.select_labels(ids=reject).tag_labels("reject")
    # a correction: a box with a mask the model missed, on the 4th image
    s = samples[3]
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:18, 3:27] = True
    s["corrections"] = fo.Detections(detections=[fo.Detection(label="circle", bounding_box=[0.1, 0.1, 0.3, 0.2],
                                                              mask=mask)])
    s.save()
    return {"accept": accept, "reject": reject, "corrected_image": s.image_id, "images": [x.image_id for x in samples[:4]]}


def _files_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_pull_writes_accepted_and_corrected_labels_as_a_valid_coco_source(pushed, tmp_path):
    from pipelines.convert import convert_source

    ds = pushed["ds"]
    assert count_review_work(ds.name) == 0
    done = _review(ds)
    assert count_review_work(ds.name) == len(done["accept"]) + len(done["reject"]) + 1

    out = pull_corrections(ds.name, tmp_path / "corrections")
    v1 = Path(out["version_dir"])
    assert out["new_version"] and v1.name == "v0001"
    inst = json.loads((v1 / "instances_train.json").read_text())
    assert sorted(im["id"] for im in inst["images"]) == sorted(done["images"])
    assert out["accepted"] == len(done["accept"]) and out["corrections"] == 1
    assert len(inst["annotations"]) == len(done["accept"]) + 1
    by_action = {a["review_action"] for a in inst["annotations"]}
    assert by_action == {"accept", "correct"}
    accepted_v = {a["model_version"] for a in inst["annotations"] if a["review_action"] == "accept"}
    assert accepted_v == {"v0001"}
    rejections = json.loads((v1 / "rejections.json").read_text())
    assert sorted(r["label_id"] for r in rejections) == sorted(done["reject"])
    prov = json.loads((v1 / "provenance.json").read_text())
    assert sorted(p["annotation_id"] for p in prov) == sorted(a["id"] for a in inst["annotations"])
    assert {p["label_id"] for p in prov if p["action"] == "accept"} == set(done["accept"])

    # the accepted masks are the pushed ones, bit for bit
    pred = {(r["image_id"], tuple(r["bbox"])): r for r in json.loads((tmp_path / "pred" / "train.json").read_text())}
    from pycocotools import mask as mu

    compared = 0
    for a in inst["annotations"]:
        r = pred.get((a["image_id"], tuple(a["bbox"])))
        if a["review_action"] == "accept" and r is not None and "segmentation" in r:
            got = mu.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
            want = mu.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
            x0, y0 = int(round(r["bbox"][0])), int(round(r["bbox"][1]))
            x1, y1 = int(round(r["bbox"][0] + r["bbox"][2])), int(round(r["bbox"][1] + r["bbox"][3]))
            crop = np.zeros_like(want)
            crop[y0:y1, x0:x1] = want[y0:y1, x0:x1]
            assert np.array_equal(got, crop)
            compared += 1
    assert compared > 0

    # valid COCO, and a valid input of the conversion: every record accounted, none quarantined
    COCO(str(v1 / "instances_train.json"))
    manifest = convert_source("coco", v1 / "instances_train.json", tmp_path / "shards", images_dir=pushed["images"],
                              input_size=128, progress=False)
    c = manifest["counts"]
    assert c["records_quarantined"] == 0, manifest["quarantine_reasons"]
    assert c["records_read"] >= len(inst["annotations"])

    # no new review work: no new version, same content, nothing counted
    assert count_review_work(ds.name) == 0
    digest = _files_digest(v1)
    again = pull_corrections(ds.name, tmp_path / "corrections")
    assert not again["new_version"] and again["version_dir"] == str(v1)
    assert sorted(p.name for p in (tmp_path / "corrections").iterdir() if p.name != ".pull.lock") == ["v0001"]

    # new work -> v0002; v0001 untouched
    extra = ds.exists("ground_truth").sort_by("image_id").skip(5).first().predictions.detections[0]
    ds.select_labels(ids=[extra.id]).tag_labels("accept")
    assert count_review_work(ds.name) == 1
    third = pull_corrections(ds.name, tmp_path / "corrections")
    assert third["new_version"] and third["version"] == "v0002"
    assert _files_digest(v1) == digest
    assert third["accepted"] == len(done["accept"]) + 1

    # withdrawn review work counts too (a tag removed, a correction deleted)
    ds.select_labels(ids=[extra.id]).untag_labels("accept")
    s = ds.match({"image_id": done["corrected_image"]}).first()
    s["corrections"] = None
    s.save()
    assert count_review_work(ds.name) == 2


def test_count_since_narrows_to_samples_modified_after(pushed):
    from datetime import datetime, timedelta, timezone

    ds = pushed["ds"]
    _review(ds)
    assert count_review_work(ds.name, since=datetime.now(timezone.utc) + timedelta(hours=1)) == 0
    assert count_review_work(ds.name, since=datetime.now(timezone.utc) - timedelta(hours=1)) == count_review_work(ds.name)


def test_pull_that_died_part_way_is_simply_rerun(pushed, tmp_path):
    ds = pushed["ds"]
    _review(ds)
    out_dir = tmp_path / "corrections"
    out_dir.mkdir()
    leftover = out_dir / ".partial-12345-deadbeef"  # what a pull killed while writing leaves
    leftover.mkdir()
    (leftover / "instances_train.json").write_text("{trunc")
    out = pull_corrections(ds.name, out_dir)
    assert out["version"] == "v0001" and not leftover.exists()
    COCO(str(Path(out["version_dir"]) / "instances_train.json"))


def test_push_that_died_part_way_is_simply_rerun(review_sources, tmp_path, fo_dataset_name, monkeypatch):
    """Fault injection: the push dies after its first batch; the re-run completes without duplicates
    and a tag set on a label of the first batch in between survives."""
    import fiftyone as fo

    import pipelines.review.push as push_mod

    info = write_prediction_input(review_sources, tmp_path / "p" / "seg.json", split="train", seed=4)
    real = push_mod._plan_updates
    calls = {"n": 0}

    def dying(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **kw)

    monkeypatch.setattr(push_mod, "_plan_updates", dying)
    with pytest.raises(KeyboardInterrupt):
        push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "p" / "seg.json", "v1",
                         gt_file=info["gt_file"], batch_size=4, progress=False)
    monkeypatch.setattr(push_mod, "_plan_updates", real)
    ds = fo.load_dataset(fo_dataset_name)
    assert len(ds) == 4
    lid = ds.first().predictions.detections[0].id
    ds.select_labels(ids=[lid]).tag_labels("accept")
    out = push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "p" / "seg.json", "v1",
                           gt_file=info["gt_file"], batch_size=4, progress=False)
    ds.reload()
    gt = json.loads(info["gt_file"].read_text())
    assert len(ds) == len(gt["images"]) and out["samples_added"] == len(gt["images"]) - 4
    assert ds.count("predictions.detections") == info["results"]
    assert ds.count_label_tags("predictions") == {"accept": 1}


def test_pull_keypoints_gives_a_valid_keypoints_source(review_sources, tmp_path, fo_dataset_name):
    import fiftyone as fo

    from pipelines.convert import convert_source

    info = write_prediction_input(review_sources, tmp_path / "p" / "pose.json", split="train", seed=5,
                                  keypoints=True, drop=0.0)
    out = push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "p" / "pose.json", "v1",
                           gt_file=info["gt_file"], heatmaps_dir=info["heatmaps_dir"], progress=False)
    assert out["fields"] == ["predictions_keypoints"] and out["keypoint_predictions_pushed"] == info["results"] > 0
    ds = fo.load_dataset(fo_dataset_name)
    assert ds.count("ground_truth_keypoints.keypoints") == len(json.loads(info["gt_file"].read_text())["annotations"])
    labels = ds.values("predictions_keypoints.keypoints.id", unwind=True)
    ds.select_labels(ids=labels[:2]).tag_labels("accept")
    ds.select_labels(ids=labels[2:3]).tag_labels("reject")
    pulled = pull_corrections(ds.name, tmp_path / "corr")
    v = Path(pulled["version_dir"])
    kp = json.loads((v / "person_keypoints_train.json").read_text())
    assert len(kp["annotations"]) == 2 and all(len(a["keypoints"]) == 51 for a in kp["annotations"])
    assert kp["categories"][0]["name"] == "person" and len(kp["categories"][0]["keypoints"]) == 17
    # the pulled keypoints are the predicted ones (to the 0.01 px the COCO file keeps)
    preds = {tuple(r["bbox"]): r for r in json.loads((tmp_path / "p" / "pose.json").read_text())}
    for a in kp["annotations"]:
        want = np.reshape(preds[tuple(a["bbox"])]["keypoints"], (-1, 3))
        got = np.reshape(a["keypoints"], (-1, 3))
        assert np.array_equal(got[:, 2], want[:, 2])
        assert np.allclose(got[:, :2], want[:, :2], atol=0.02)
    manifest = convert_source("coco-keypoints", v / "person_keypoints_train.json", tmp_path / "shards",
                              images_dir=review_sources / "images", input_size=128, progress=False)
    assert manifest["counts"]["records_quarantined"] == 0, manifest["quarantine_reasons"]
    assert manifest["counts"]["records_read"] == 2
