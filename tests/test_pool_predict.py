"""Pseudo-labels for the unlabeled pool: images without ground truth -> predict -> push -> review queue."""

from __future__ import annotations

import json
import shutil

import pytest

from lumen_model.predict import predict
from lumen_cli import main
from pipelines.layout import pool_file


@pytest.fixture(scope="module")
def pool4(sample_data_dir, tmp_path_factory):
    """The demo pool's image_info json cut to its first 4 images (keeps predict quick)."""
    info = json.loads(pool_file(sample_data_dir).read_text())
    assert "annotations" not in info
    info["images"] = info["images"][:4]
    path = tmp_path_factory.mktemp("pool") / "image_info_pool4.json"
    path.write_text(json.dumps(info))
    return path, info


def test_pool_prediction_from_an_image_info_json_goes_to_review(tiny_stage2, sample_data_dir, pool4, tmp_path,
                                                                fo_dataset_name):
    from pipelines.review.push import push_predictions
    from pipelines.review.queue import build_review_queue

    info_path, info = pool4
    images = sample_data_dir / "coco" / "images"
    out = tmp_path / "pool" / "segm.json"
    res = predict(tiny_stage2[0], "instance_segmentation", images, out, annotations=info_path, score_threshold=0.0,
                  progress=False)
    results = json.loads(out.read_text())
    pool_ids = {im["id"] for im in info["images"]}
    assert res["results"] == len(results) > 0 and {r["image_id"] for r in results} <= pool_ids
    index = json.loads((tmp_path / "pool" / "segm_heatmaps" / "index.json").read_text())
    assert {e["image_id"] for e in index} == pool_ids and len(index) == len(pool_ids) * len(info["categories"])

    # what push expects: no --gt, categories from the same image_info json, heatmaps beside the results
    pushed = push_predictions(fo_dataset_name, images, out, "v0001", heatmaps_dir=tmp_path / "pool" / "segm_heatmaps",
                              categories_file=info_path, progress=False)
    assert pushed["samples_added"] == len(pool_ids) and pushed["results_skipped"] == 0
    assert pushed["predictions_pushed"] == len(results) and pushed["ground_truth_labels"] == 0
    queue = build_review_queue(fo_dataset_name)
    assert queue["samples_prioritized"] == len(pool_ids) and queue["eval_key"] is None


def test_plain_folder_takes_its_categories_from_the_checkpoint(tiny_stage2, sample_data_dir, pool4, tmp_path, capsys):
    _, info = pool4
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    for im in info["images"][:2]:
        shutil.copyfile(sample_data_dir / "coco" / "images" / im["file_name"], folder / im["file_name"])
    ckpt_cats = json.loads((tiny_stage2[0] / "config.json").read_text())["categories"]
    assert {c["name"] for c in ckpt_cats} == {c["name"] for c in info["categories"]}  # training recorded them
    out = tmp_path / "det.json"
    assert main(["predict", "--checkpoint", str(tiny_stage2[0]), "--task", "detection", "--images", str(folder),
                 "--out", str(out), "--score-threshold", "0"]) == 0
    capsys.readouterr()
    index = json.loads((tmp_path / "det_heatmaps" / "index.json").read_text())
    assert {(e["image_id"], e["category_id"]) for e in index} == {
        (im["id"], c["id"]) for im in info["images"][:2] for c in ckpt_cats}
    # a checkpoint that names no categories: one clear line, not a traceback
    bare = tmp_path / "bare"
    shutil.copytree(tiny_stage2[0], bare)
    config = json.loads((bare / "config.json").read_text())
    config.pop("categories")
    (bare / "config.json").write_text(json.dumps(config))
    assert main(["predict", "--checkpoint", str(bare), "--task", "detection", "--images", str(folder),
                 "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "names no categories" in err
