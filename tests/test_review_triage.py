"""Review that triages: F1 thresholds per class, only confident predictions shown, views that rank
images so the first pages hold most errors (also without ground truth)."""

from __future__ import annotations

import json

import pytest

from pipelines.errors import InputError
from pipelines.review.push import push_predictions
from pipelines.review.queue import build_review_queue
from pipelines.review.thresholds import compute_thresholds, load_thresholds, save_thresholds, threshold_for
from pipelines.review.triage import error_share_in_view, errors_per_image
from tests.fixtures_review import write_prediction_input


def _coco(tmp_path, annotations, results, n_images=2):
    gt = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in range(1, n_images + 1)],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
          "annotations": [{"id": k + 1, "iscrowd": 0, "area": 1, **a} for k, a in enumerate(annotations)]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    return tmp_path / "gt.json", tmp_path / "res.json"


def test_thresholds_maximise_f1_per_class(tmp_path):
    box1, box2, far = [10, 10, 20, 20], [60, 60, 20, 20], [40, 5, 10, 10]
    anns = [{"image_id": 1, "category_id": 1, "bbox": box1}, {"image_id": 2, "category_id": 1, "bbox": box2},
            {"image_id": 1, "category_id": 2, "bbox": box2},
            {"image_id": 2, "category_id": 2, "bbox": box1, "iscrowd": 1}]
    res = [  # class a: TP 0.9, FP 0.8, TP 0.7, FP 0.2 -> F1 0.67, 0.5, 0.8, 0.67: the cut is 0.7
        {"image_id": 1, "category_id": 1, "bbox": [11, 10, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": far, "score": 0.8},
        {"image_id": 2, "category_id": 1, "bbox": [60, 61, 20, 20], "score": 0.7},
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.2},  # duplicate: GT taken
        # class b: an FP above the TP; the box on the crowd region is neither right nor wrong
        {"image_id": 1, "category_id": 2, "bbox": far, "score": 0.95},
        {"image_id": 1, "category_id": 2, "bbox": box2, "score": 0.6},
        {"image_id": 2, "category_id": 2, "bbox": [12, 12, 10, 10], "score": 0.99},
        # class c: no ground truth at all -> the pooled threshold
        {"image_id": 2, "category_id": 3, "bbox": far, "score": 0.5},
    ]
    th = compute_thresholds(*_coco(tmp_path, anns, res), model_version="v7")
    a, b, c = (th["classes"][k] for k in ("1", "2", "3"))
    assert a["threshold"] == 0.7 and a["f1"] == 0.8 and (a["tp"], a["fp"], a["n_gt"]) == (2, 1, 2)
    assert b["threshold"] == 0.6 and (b["tp"], b["fp"], b["n_gt"]) == (1, 1, 1) and b["source"] == "class"
    assert c["source"] == "default" and c["threshold"] == th["default"]["threshold"]
    assert th["model_version"] == "v7"
    # calibration: P(right) never decreases with the score
    cal = th["calibration"]["all"]["precision"]
    assert cal == sorted(cal) and 0 < cal[-1] <= 1
    # saved as json, loaded back; a foreign json is refused in one line
    path = save_thresholds(th, tmp_path / "th" / "thresholds.json")
    assert load_thresholds(path) == json.loads(json.dumps(th)) and threshold_for(load_thresholds(path), 1) == 0.7
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(InputError, match="not a review thresholds file"):
        load_thresholds(tmp_path / "other.json")


@pytest.fixture(scope="module")
def triage_sources(tmp_path_factory):
    """60 demo images; predictions whose mistakes score lower than their hits, plus a low-score tail."""
    from pipelines.sample_data import write_sample_data

    root = tmp_path_factory.mktemp("triage")
    write_sample_data(root, n_images=60, seed=11)
    coco = root / "coco"
    info = write_prediction_input(coco, root / "pred" / "seg.json", split="train", seed=5, drop=0.15, extra=0.5,
                                  score_range=(0.35, 1.0), fp_score_range=(0.1, 0.6), low_score_tail=3)
    th = compute_thresholds(info["gt_file"], root / "pred" / "seg.json", model_version="v0001")
    return {"coco": coco, "pred": root / "pred" / "seg.json", "info": info, "thresholds": th}


def test_push_with_thresholds_shows_only_confident_predictions(triage_sources, fo_dataset_name):
    import fiftyone as fo

    src, th = triage_sources, triage_sources["thresholds"]
    results = json.loads(src["pred"].read_text())
    out = push_predictions(fo_dataset_name, src["coco"] / "images", src["pred"], "v0001",
                           gt_file=src["info"]["gt_file"], heatmaps_dir=src["info"]["heatmaps_dir"],
                           thresholds=th, progress=False)
    shown = [r for r in results if r["score"] >= threshold_for(th, r["category_id"])]
    # an F1 cut always sits on a hit's score: above the whole low-score tail (< 0.15)
    assert all(v["threshold"] >= 0.35 for v in th["classes"].values())
    assert 0 < len(shown) < len(results) - 3 * 40
    ds = fo.load_dataset(fo_dataset_name)
    assert out["predictions_pushed"] == ds.count("predictions.detections") == len(shown)
    assert out["predictions_below_threshold"] == ds.count("predictions_below_threshold.detections") \
        == len(results) - len(shown)
    cats = {int(k): v["threshold"] for k, v in th["classes"].items()}
    for cid, conf in zip(*ds.values(["predictions.detections.category_id", "predictions.detections.confidence"],
                                    unwind=True)):
        assert conf >= cats[cid]
    recorded = ds.info["lumen_review"]["thresholds"]["v0001"]
    assert {k: v["threshold"] for k, v in recorded["classes"].items()} == {str(k): v for k, v in cats.items()}
    # the App opens on predictions + the heatmap no box explains; ground truth, the whole heatmap and
    # the hidden predictions stay off
    active = ds.app_config.active_fields.paths
    assert "predictions" in active and "heatmap_unexplained" in active and "heatmap" not in active
    assert "ground_truth" not in active and "predictions_below_threshold" not in active
    scheme = ds.app_config.color_scheme
    assert scheme.color_by == "value" and 0 < scheme.opacity < 1
    assert [c["path"] for c in scheme.colorscales] == ["heatmap", "heatmap_unexplained", "prompted_heatmap"]

    # a new version archives the hidden field along with the shown one, labeler tags included
    ds.select_labels(ids=[ds.first().predictions_below_threshold.detections[0].id]).tag_labels("accept")
    out2 = push_predictions(fo_dataset_name, src["coco"] / "images", src["pred"], "v0002",
                            gt_file=src["info"]["gt_file"], thresholds=th, progress=False)
    ds.reload()
    assert set(out2["archived_fields"]) == {"predictions_v0001", "predictions_below_threshold_v0001"}
    assert ds.count_label_tags("predictions_below_threshold_v0001") == {"accept": 1}
    assert set(ds.distinct("predictions_below_threshold.detections.model_version")) == {"v0002"}


def _pushed_queue(src, name, *, with_gt: bool, thresholds):
    info = src["info"]
    push_predictions(name, src["coco"] / "images", src["pred"], "v0001", heatmaps_dir=info["heatmaps_dir"],
                     thresholds=thresholds, progress=False,
                     **({"gt_file": info["gt_file"]} if with_gt else {"categories_file": info["gt_file"]}))
    return build_review_queue(name)


def test_likely_wrong_ranks_errors_first_without_ground_truth(triage_sources, fo_dataset_name):
    """Pseudo-labels (no GT in the dataset): the first fifth of `review/likely-wrong` must hold more
    of the errors than a random fifth of the images would."""
    src = triage_sources
    q = _pushed_queue(src, fo_dataset_name, with_gt=False, thresholds=src["thresholds"])
    assert q["eval_key"] is None
    m = error_share_in_view(fo_dataset_name, "review/likely-wrong", src["info"]["gt_file"], src["pred"],
                            src["thresholds"])
    assert m["errors_total"] > 10
    assert m["share"] > m["random_share"] + 0.15, m
    assert len(set(q["view_counts"].values())) > 1, q["view_counts"]


def test_with_ground_truth_the_first_pages_hold_most_errors(triage_sources, fo_dataset_name):
    src = triage_sources
    q = _pushed_queue(src, fo_dataset_name, with_gt=True, thresholds=src["thresholds"])
    errors = errors_per_image(src["info"]["gt_file"], src["pred"], src["thresholds"])
    # FiftyOne's evaluation (relative coordinates) and ours (pixels) agree up to a box at IoU ~0.5
    assert abs(q["fp"] + q["fn"] - sum(errors.values())) <= 1
    m = error_share_in_view(fo_dataset_name, "review/likely-wrong", src["info"]["gt_file"], src["pred"],
                            src["thresholds"])
    assert m["share"] >= 0.6, m
    assert abs(m["view_images"] - sum(1 for v in errors.values() if v)) <= 1 and m["view_images"] < m["images"]


def test_cli_thresholds_then_push_with_them(triage_sources, fo_dataset_name, tmp_path, capsys):
    import fiftyone as fo

    from lumen_cli import main

    src = triage_sources
    out = tmp_path / "th.json"
    assert main(["review", "thresholds", "--gt", str(src["info"]["gt_file"]), "--pred", str(src["pred"]),
                 "--out", str(out), "--model-version", "v0001"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["thresholds_file"] == str(out) and load_thresholds(out)["model_version"] == "v0001"
    assert main(["review", "push", "--dataset", fo_dataset_name, "--images", str(src["coco"] / "images"),
                 "--gt", str(src["info"]["gt_file"]), "--pred", str(src["pred"]), "--model-version", "v0001",
                 "--thresholds", str(out), "--no-queue"]) == 0
    pushed = json.loads(capsys.readouterr().out)
    assert pushed["predictions_below_threshold"] > 0
    assert fo.load_dataset(fo_dataset_name).count("predictions.detections") == pushed["predictions_pushed"]
    (tmp_path / "bad.json").write_text("[]")
    assert main(["review", "push", "--dataset", fo_dataset_name, "--images", str(src["coco"] / "images"),
                 "--pred", str(src["pred"]), "--model-version", "v0001", "--thresholds", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a review thresholds file" in err and "\n" not in err
