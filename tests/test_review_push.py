"""Push into a real FiftyOne database: samples, labels, heatmaps, idempotent re-push, versions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.errors import InputError
from pipelines.review.push import push_predictions
from tests.fixtures_review import write_prediction_input


@pytest.fixture
def seg_input(review_sources, tmp_path):
    info = write_prediction_input(review_sources, tmp_path / "pred" / "seg.json", split="train", seed=1)
    return info


def test_push_writes_one_sample_per_image_with_gt_predictions_and_heatmaps(review_sources, seg_input, fo_dataset_name,
                                                                           tmp_path):
    import fiftyone as fo

    pred = tmp_path / "pred" / "seg.json"
    out = push_predictions(fo_dataset_name, review_sources / "images", pred, "v0001", gt_file=seg_input["gt_file"],
                           heatmaps_dir=seg_input["heatmaps_dir"], batch_size=4, progress=False)
    gt = json.loads(seg_input["gt_file"].read_text())
    results = json.loads(pred.read_text())
    ds = fo.load_dataset(fo_dataset_name)
    assert len(ds) == len(gt["images"]) == out["samples_added"]
    assert len(set(ds.values("filepath"))) == len(ds)
    assert ds.count("ground_truth.detections") == len(gt["annotations"])
    assert ds.count("predictions.detections") == len(results) == out["predictions_pushed"]
    assert out["results_skipped"] == 0
    assert set(ds.distinct("predictions.detections.model_version")) == {"v0001"}
    # every predicted mask is a crop of its box; the score is the confidence
    with_masks = sum(1 for r in results if "segmentation" in r)
    masks = [m for ms in ds.values("predictions.detections.mask") for m in ms if m is not None]
    assert len(masks) == with_masks > 0
    assert sorted(ds.values("predictions.detections.confidence", unwind=True)) == sorted(r["score"] for r in results)
    # heatmaps on every image with objects, in the image's aspect ratio
    for s in ds.select_fields(["heatmap", "metadata"]):
        hm = s.heatmap.map
        assert hm.dtype == np.uint8 and hm.max() > 128  # peaks are 255 on the grid; resampling blurs them a bit
        assert abs(hm.shape[1] / hm.shape[0] - s.metadata.width / s.metadata.height) < 0.05


def test_dropped_objects_show_up_as_uncovered_heatmap_peaks(review_sources, seg_input, fo_dataset_name, tmp_path):
    """The input's heatmaps show every GT object; the ones left out of the predictions (misses)
    must come back as `heatmap_peaks` of their category inside their box."""
    import fiftyone as fo

    push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred" / "seg.json", "v0001",
                     gt_file=seg_input["gt_file"], heatmaps_dir=seg_input["heatmaps_dir"], progress=False)
    gt = json.loads(seg_input["gt_file"].read_text())
    cats = {c["id"]: c["name"] for c in gt["categories"]}
    images = {im["id"]: im for im in gt["images"]}
    results = json.loads((tmp_path / "pred" / "seg.json").read_text())
    ds = fo.load_dataset(fo_dataset_name)
    peaks = {s.image_id: s.heatmap_peaks.keypoints for s in ds.select_fields(["image_id", "heatmap_peaks"])}
    dropped = [a for a in gt["annotations"] if a["id"] in set(seg_input["dropped"])]
    assert dropped, "the input should miss some objects"
    checked = 0
    for a in dropped:
        x, y, w, h = a["bbox"]
        cx, cy = x + w / 2, y + h / 2
        covered = any(r["image_id"] == a["image_id"] and r["category_id"] == a["category_id"]
                      and r["bbox"][0] <= cx <= r["bbox"][0] + r["bbox"][2]
                      and r["bbox"][1] <= cy <= r["bbox"][1] + r["bbox"][3] for r in results)
        if covered:
            continue  # another box of that class explains the peak
        im = images[a["image_id"]]
        hits = [p for p in peaks[a["image_id"]] if p.label == cats[a["category_id"]]
                and x <= p.points[0][0] * im["width"] <= x + w and y <= p.points[0][1] * im["height"] <= y + h]
        assert hits, f"no uncovered peak for missed annotation {a['id']}"
        checked += 1
    assert checked > 0


def test_repush_is_idempotent_and_keeps_labelers_tags(review_sources, seg_input, fo_dataset_name, tmp_path):
    import fiftyone as fo

    pred = tmp_path / "pred" / "seg.json"
    args = dict(gt_file=seg_input["gt_file"], heatmaps_dir=seg_input["heatmaps_dir"], progress=False, batch_size=5)
    push_predictions(fo_dataset_name, review_sources / "images", pred, "v0001", **args)
    ds = fo.load_dataset(fo_dataset_name)
    ids_before = sorted(ds.values("predictions.detections.id", unwind=True))
    first = ds.first().predictions.detections[0]
    ds.select_labels(ids=[first.id]).tag_labels("accept")

    again = push_predictions(fo_dataset_name, review_sources / "images", pred, "v0001", **args)
    assert again["samples_added"] == 0 and again["samples_updated"] == len(ds)
    ds.reload()
    assert sorted(ds.values("predictions.detections.id", unwind=True)) == ids_before
    assert ds.count("ground_truth.detections") == len(json.loads(seg_input["gt_file"].read_text())["annotations"])
    assert ds.count_label_tags("predictions") == {"accept": 1}

    # a later file without that prediction: the untouched labels go, the accepted one stays
    results = json.loads(pred.read_text())
    key_of_first = ds.first().predictions.detections[0].label_key
    shorter = tmp_path / "pred" / "seg_short.json"
    shorter.write_text(json.dumps([r for r in results if r["image_id"] != ds.first().image_id]))
    out = push_predictions(fo_dataset_name, review_sources / "images", shorter, "v0001", **args)
    ds.reload()
    assert out["reviewed_labels_kept"] == 1
    assert [d.label_key for d in ds.first().predictions.detections] == [key_of_first]


def test_a_new_model_version_keeps_the_old_labels_in_their_own_field(review_sources, seg_input, fo_dataset_name,
                                                                     tmp_path):
    import fiftyone as fo

    args = dict(gt_file=seg_input["gt_file"], heatmaps_dir=seg_input["heatmaps_dir"], progress=False)
    push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred" / "seg.json", "v0001", **args)
    ds = fo.load_dataset(fo_dataset_name)
    old = ds.first().predictions.detections[0]
    ds.select_labels(ids=[old.id]).tag_labels("reject")
    n_old = ds.count("predictions.detections")

    v2 = write_prediction_input(review_sources, tmp_path / "pred2" / "seg.json", split="train", seed=7)
    out = push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred2" / "seg.json", "v0002",
                           gt_file=v2["gt_file"], heatmaps_dir=v2["heatmaps_dir"], progress=False)
    ds.reload()
    assert out["archived_fields"] == ["predictions_v0001"]
    assert set(ds.distinct("predictions.detections.model_version")) == {"v0002"}
    assert ds.count("predictions.detections") == v2["results"]
    assert set(ds.distinct("predictions_v0001.detections.model_version")) == {"v0001"}
    assert ds.count("predictions_v0001.detections") == n_old
    assert ds.count_label_tags("predictions_v0001") == {"reject": 1}  # the labeler's work moved along

    # pushing v0001 again makes it the latest again; v0002 is archived; nothing duplicated
    push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred" / "seg.json", "v0001", **args)
    ds.reload()
    assert set(ds.distinct("predictions.detections.model_version")) == {"v0001"}
    assert ds.count("predictions.detections") == n_old
    assert ds.count("predictions_v0002.detections") == v2["results"]
    assert "predictions_v0001" not in ds.get_field_schema()
    assert ds.count_label_tags("predictions") == {"reject": 1}


def test_a_new_version_for_other_images_leaves_the_partitions_labels_in_view(review_sources, fo_dataset_name,
                                                                              tmp_path):
    """A dataset filled partition by partition (the pool, `mixed_versions`), then a push of a new version for
    other images (the main job's review_dataset): archiving the field took every partition's labels out of the
    labeler's view. Only the images of the push change now."""
    import fiftyone as fo

    part = write_prediction_input(review_sources, tmp_path / "part" / "seg.json", split="train", seed=1)
    push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "part" / "seg.json", "v0001",
                     gt_file=part["gt_file"], progress=False, mixed_versions=True)
    ds = fo.load_dataset(fo_dataset_name)
    train_paths = set(ds.values("filepath"))
    n_part = ds.count("predictions.detections")
    assert n_part > 0

    main = write_prediction_input(review_sources, tmp_path / "main" / "seg.json", split="val", seed=2)
    out = push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "main" / "seg.json", "v0002",
                           gt_file=main["gt_file"], progress=False)
    ds.reload()
    assert out["archived_fields"] == [] and out["other_images_with_labels"] == len(train_paths)
    assert "predictions_v0001" not in ds.get_field_schema()
    part_view = ds.select_by("filepath", sorted(train_paths))
    assert part_view.count("predictions.detections") == n_part  # still shown, as they were
    assert set(part_view.distinct("predictions.detections.model_version")) == {"v0001"}
    main_view = ds.exclude_by("filepath", sorted(train_paths))
    assert set(main_view.distinct("predictions.detections.model_version")) == {"v0002"}
    assert main_view.count("predictions.detections") == main["results"]


def test_bad_prediction_records_are_skipped_with_reasons_and_counted(review_sources, seg_input, fo_dataset_name,
                                                                      tmp_path):
    pred = tmp_path / "pred" / "seg.json"
    results = json.loads(pred.read_text())
    good = results[0]
    bad = [
        {**good, "image_id": 999999},
        {**good, "category_id": 4242},
        {**good, "bbox": [1, 2, 0, 5]},
        {**good, "bbox": [1, 2, "x", 5]},
        {**good, "score": None},
        {**good, "keypoints": [1, 2, 3]},
        {**good, "segmentation": {"size": [3, 3], "counts": "abc"}},
        {"image_id": good["image_id"], "sent_id": 3, "bbox": good["bbox"], "score": 0.5, "category_id": 1},
        "not an object",
    ]
    mixed = tmp_path / "pred" / "mixed.json"
    mixed.write_text(json.dumps(results + bad))
    out = push_predictions(fo_dataset_name, review_sources / "images", mixed, "v0001", gt_file=seg_input["gt_file"],
                           progress=False)
    assert out["results_read"] == len(results) + len(bad)
    assert out["predictions_pushed"] == len(results)
    assert out["results_skipped"] == len(bad)
    reasons = out["skip_reasons"]
    assert reasons["image_id not among the images"] == 1
    assert reasons["unknown category_id"] == 1
    assert reasons["keypoints must be 51 finite numbers"] == 1
    assert any(k.startswith("segmentation:") for k in reasons)
    assert any(k.startswith("grounding") for k in reasons)


def test_unusable_files_raise_one_clear_error(review_sources, tmp_path, fo_dataset_name):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        push_predictions(fo_dataset_name, review_sources / "images", broken, "v1", progress=False)
    with pytest.raises(InputError, match="images folder not found"):
        push_predictions(fo_dataset_name, tmp_path / "nope", broken, "v1", progress=False)
    obj = tmp_path / "obj.json"
    obj.write_text("{}")
    with pytest.raises(InputError, match="JSON list"):
        push_predictions(fo_dataset_name, review_sources / "images", obj, "v1", progress=False)
    with pytest.raises(InputError, match="model version"):
        push_predictions(fo_dataset_name, review_sources / "images", obj, "  ", progress=False)


def test_push_without_ground_truth_uses_the_folder_and_predict_image_ids(review_sources, tmp_path, fo_dataset_name):
    """Pseudo-labels of unlabeled images: ids from the file names, as `lumen predict` gives them;
    a sample for each image the model ran on (it has a result or a heatmap), no other."""
    import fiftyone as fo

    info = write_prediction_input(review_sources, tmp_path / "p" / "seg.json", split="train", seed=2)
    out = push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "p" / "seg.json", "v9",
                           heatmaps_dir=info["heatmaps_dir"], categories_file=info["gt_file"], progress=False)
    ds = fo.load_dataset(fo_dataset_name)
    ran_on = {e["image_id"] for e in json.loads((info["heatmaps_dir"] / "index.json").read_text())}
    assert len(ds) == len(ran_on) == out["images"]
    assert sorted(ds.values("file_name")) == sorted(f"{i:012d}.jpg" for i in ran_on)
    assert "ground_truth" not in ds.get_field_schema()
    assert out["predictions_pushed"] == info["results"]
    names = {c["name"] for c in json.loads(info["gt_file"].read_text())["categories"]}
    assert set(ds.distinct("predictions.detections.label")) <= names


def test_a_push_leaves_the_garbage_collector_as_it_found_it(review_sources, tmp_path, fo_dataset_name):
    """The push pauses Python's GC while it builds labels; it must come back on, also after an error."""
    import gc

    assert gc.isenabled()
    with pytest.raises(InputError):
        push_predictions(fo_dataset_name, tmp_path / "no-such-folder", tmp_path / "p.json", "v1", progress=False)
    assert gc.isenabled()


def test_every_label_attribute_pushed_is_declared_without_a_full_scan(review_sources, seg_input, fo_dataset_name,
                                                                      tmp_path):
    """Attributes are declared from one sample per attribute set: afterwards a full scan must find
    nothing left undeclared, on a fresh push (GT, predictions, heatmaps, peaks) and on a new version."""
    import fiftyone as fo

    args = dict(gt_file=seg_input["gt_file"], heatmaps_dir=seg_input["heatmaps_dir"], batch_size=3, progress=False)
    push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred" / "seg.json", "v0001", **args)
    ds = fo.load_dataset(fo_dataset_name)
    assert ds.get_dynamic_field_schema() == {}
    declared = ds.get_field_schema(flat=True)
    for path in ("predictions.detections.label_key", "predictions.detections.model_version",
                 "predictions.detections.category_id", "ground_truth.detections.iscrowd", "heatmap.label_key",
                 "heatmap_peaks.keypoints.heat"):
        assert path in declared, path
    v2 = write_prediction_input(review_sources, tmp_path / "pred2" / "seg.json", split="train", seed=7)
    push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred2" / "seg.json", "v0002",
                     **{**args, "gt_file": v2["gt_file"], "heatmaps_dir": v2["heatmaps_dir"]})
    ds.reload()
    assert ds.get_dynamic_field_schema() == {}
    assert "predictions.detections.model_version" in ds.get_field_schema(flat=True)
