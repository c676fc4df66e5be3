"""Predict: COCO result format, original-pixel geometry, heatmap PNGs + index, CLI errors."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from lumen_model.decoders.boxes import decode_boxes
from lumen_model.predict import list_images, predict
from pipelines.evaluation import evaluate, refcoco_expressions
from pipelines.geometry import SquarePad



def test_decode_boxes_maps_a_peak_back_to_original_pixels():
    """A wide image (200x100) padded to 128: a box drawn in original pixels comes back from its heatmap."""
    geo = SquarePad(200, 100, 128, 32)
    box = np.array([120.0, 30.0, 40.0, 20.0])  # xywh original px
    center = geo.to_heatmap(box[:2] + box[2:] / 2)  # continuous heatmap coords
    px = np.floor(center).astype(int)
    heat = np.zeros((32, 32), np.float32)
    heat[px[1], px[0]] = 0.9
    sizes = np.zeros((2, 32, 32), np.float32)
    sizes[:, px[1], px[0]] = geo.sizes_normalized(box)[0]
    offsets = np.zeros((2, 32, 32), np.float32)
    offsets[:, px[1], px[0]] = center - px
    boxes, scores = decode_boxes(heat, sizes, offsets, geo, k=10, threshold=0.1)
    assert scores.tolist() == pytest.approx([0.9])
    assert boxes[0] == pytest.approx(box, abs=1e-3)


def test_image_ids_come_from_file_names_when_there_are_no_annotations(tmp_path):
    for name in ("000000000042.jpg", "img_7.png", "cat.jpg"):
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8, 3), np.uint8))
    ids = {im["file_name"]: im["id"] for im in list_images(tmp_path)}
    assert ids["000000000042.jpg"] == 42 and ids["img_7.png"] == 7
    assert ids == {im["file_name"]: im["id"] for im in list_images(tmp_path)}  # deterministic


@pytest.fixture(scope="module")
def val_images(sample_data_dir, tmp_path_factory):
    """A COCO json with the first 4 val images (keeps predict quick)."""
    data = json.loads((sample_data_dir / "coco/annotations/instances_val.json").read_text())
    keep = {im["id"] for im in data["images"][:4]}
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    path = tmp_path_factory.mktemp("val") / "instances_val4.json"
    path.write_text(json.dumps(data))
    return path, data


def test_instance_segmentation_results_are_coco_results_in_original_pixels(tiny_stage2, sample_data_dir, val_images,
                                                                            tmp_path):
    ann_path, data = val_images
    out = tmp_path / "segm.json"
    res = predict(tiny_stage2[0], "instance_segmentation", sample_data_dir / "coco/images", out, annotations=ann_path,
                  batch_size=8, score_threshold=0.0, progress=False)
    results = json.loads(out.read_text())
    assert res["results"] == len(results) > 0
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    cats = {c["id"] for c in data["categories"]}
    for r in results:
        w, h = sizes[r["image_id"]]
        assert r["category_id"] in cats and 0 <= r["score"] <= 1
        x, y, bw, bh = r["bbox"]
        assert 0 <= x <= x + bw <= w + 1e-6 and 0 <= y <= y + bh <= h + 1e-6
        assert r["segmentation"]["size"] == [h, w]
        assert mask_utils.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}).shape == (h, w)
    # the results load into COCOeval as they are
    metrics = evaluate("segm", ann_path, out)
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    # one heatmap per (image, category) instruction, M x M, listed in index.json
    index = json.loads((tmp_path / "segm_heatmaps" / "index.json").read_text())
    assert len(index) == len(data["images"]) * len(data["categories"])
    for entry in index:
        png = cv2.imread(str(tmp_path / "segm_heatmaps" / entry["file"]), cv2.IMREAD_UNCHANGED)
        assert png.shape == (32, 32) and png.dtype == np.uint8
        assert entry["task"] == "instance_segmentation" and entry["category_id"] in cats


def test_pose_grounding_and_vqa_outputs(tiny_stage2, sample_data_dir, val_images, tmp_path):
    images = sample_data_dir / "coco/images"
    kp = sample_data_dir / "coco/annotations/person_keypoints_val.json"
    predict(tiny_stage2[0], "pose", images, tmp_path / "pose.json", annotations=kp, score_threshold=0.0,
            progress=False, max_images=3)
    for r in json.loads((tmp_path / "pose.json").read_text()):
        assert len(r["keypoints"]) == 51 and r["category_id"] == 1
    expr = refcoco_expressions(sample_data_dir / "refcoco", "val")[:5]
    (tmp_path / "expr.json").write_text(json.dumps(expr))
    predict(tiny_stage2[0], "referring_segmentation", images, tmp_path / "rseg.json", expressions=tmp_path / "expr.json",
            progress=False)
    rseg = json.loads((tmp_path / "rseg.json").read_text())
    assert sorted(r["sent_id"] for r in rseg) == sorted(e["sent_id"] for e in expr)  # one per expression
    assert all(r["segmentation"]["size"] == [e["height"], e["width"]] for r, e in zip(rseg, expr))
    assert 0 <= evaluate("refseg", tmp_path / "expr.json", tmp_path / "rseg.json")["cIoU"] <= 1
    index = json.loads((tmp_path / "rseg_heatmaps" / "index.json").read_text())
    assert [i["expression"] for i in index] == [e["expression"] for e in expr]
    q = json.loads((sample_data_dir / "vqa/v2_OpenEnded_mscoco_val_questions.json").read_text())
    q["questions"] = q["questions"][:4]
    (tmp_path / "q.json").write_text(json.dumps(q))
    predict(tiny_stage2[0], "vqa", images, tmp_path / "vqa.json", questions=tmp_path / "q.json", progress=False)
    answers = json.loads((tmp_path / "vqa.json").read_text())
    assert [a["question_id"] for a in answers] == [x["question_id"] for x in q["questions"]]
    assert all(isinstance(a["answer"], str) for a in answers)


def test_predict_cli_reports_bad_input_in_one_line(tiny_stage2, tmp_path):
    proc = subprocess.run([".venv/bin/lumen", "predict", "--checkpoint", str(tiny_stage2[0]), "--task", "grounding",
                           "--images", str(tmp_path), "--out", str(tmp_path / "o.json")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--expressions" in proc.stderr
    proc = subprocess.run([".venv/bin/lumen", "predict", "--checkpoint", str(tmp_path / "nope"), "--task", "detection",
                           "--images", str(tmp_path), "--categories", "circle", "--out", str(tmp_path / "o.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
