"""Predict: COCO result format, original-pixel geometry, heatmap PNGs + index, CLI errors."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from lumen_model.decoders.boxes import boxes_toward_masks, decode_boxes
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


def _rle(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def test_a_box_moves_toward_its_masks_extent_by_the_weight_and_an_empty_mask_leaves_it():
    full = np.zeros((50, 60), np.uint8)
    full[10:30, 20:50] = 1  # the mask's tight box: x 20, y 10, w 30, h 20
    boxes = np.array([[10.0, 6.0, 44.0, 30.0], [1.0, 2.0, 3.0, 4.0]])
    masks = [_rle(full), _rle(np.zeros((50, 60)))]
    assert boxes_toward_masks(boxes, masks, 0.0) == pytest.approx(boxes)
    assert boxes_toward_masks(boxes, masks, 1.0)[0] == pytest.approx([20, 10, 30, 20])
    moved = boxes_toward_masks(boxes, masks, 0.5)
    assert moved[0] == pytest.approx([15, 8, 37, 25]) and moved[1] == pytest.approx(boxes[1])
    assert boxes_toward_masks(np.zeros((0, 4)), [], 0.5).shape == (0, 4)


@pytest.mark.parametrize("task", ["instance_segmentation", "detection"])
def test_the_model_s_boxes_are_the_mean_of_its_box_decoder_s_and_its_masks_extent(task, tiny_stage2, sample_data_dir):
    """What `lumen predict` and `lumen ask` write: each box half way from the box decoder's box to its mask's
    tight box (the tiny preset's mask_box_weight). A mask task answers those masks; a box task (detection) has
    the mask head's masks made for this only and still answers boxes alone."""
    from lumen_model.answers import located_answers
    from lumen_model.predict import Predictor, plan_jobs

    p = Predictor(tiny_stage2[0], score_threshold=0.0)
    assert p.cfg.mask_box_weight == 0.5
    made = []  # the real masks_for, its masks kept to compare with (detection's answer carries none)
    masks_for = p.masks_for
    p.masks_for = lambda *a, **k: made.append(masks_for(*a, **k)) or made[-1]
    ann = sample_data_dir / "coco/annotations/instances_val.json"
    jobs = plan_jobs(tiny_stage2[0], task, sample_data_dir / "coco/images", annotations=ann)
    chunk = [jobs[0]]
    refined = located_answers(p, task, chunk)[0]
    p.cfg.mask_box_weight = 0.0
    own = located_answers(p, task, chunk)[0]
    assert len(own.boxes) == len(refined.boxes) > 0 and made
    if task == "detection":
        assert refined.masks is None and own.masks is None and len(made) == 1  # no masks made at weight 0
    else:
        assert own.masks == refined.masks == made[0] == made[1]
    tight = mask_utils.toBbox(made[0])
    drawn = tight[:, 2] > 0
    assert drawn.any() and np.abs(own.boxes[drawn] - tight[drawn]).max() > 1  # the two estimates differ
    assert refined.boxes[drawn] == pytest.approx((own.boxes[drawn] + tight[drawn]) / 2)
    assert refined.boxes[~drawn] == pytest.approx(own.boxes[~drawn])


def test_masks_are_the_heads_logits_sampled_at_each_original_pixel(tiny_stage2, sample_data_dir):
    """The roi head's mask logits reach the image's own pixels by one bilinear sample at each pixel's centre, found
    on the input where `pad_image` put it: not pasted on the S x S input first and resized (that moved masks about a
    pixel right and down: segm AP 0.578 against 0.742 on the demo's val). Checked against a plain bilinear
    interpolation of the head's crop."""
    import torch

    from lumen_model.predict import Predictor
    from pipelines.instructions import instruction_for

    p = Predictor(tiny_stage2[0], score_threshold=0.0)
    coco = json.loads((sample_data_dir / "coco/annotations/instances_val.json").read_text())
    image = next(im for im in coco["images"] if im["width"] != im["height"])  # offsets on one axis, scale < or > 1
    ann = next(a for a in coco["annotations"] if a["image_id"] == image["id"])
    path = str(sample_data_dir / "coco/images" / image["file_name"])
    name = next(c["name"] for c in coco["categories"] if c["id"] == ann["category_id"])
    out = p.locate([path], [instruction_for("instance_segmentation", category=name)])
    geo = p.geometry(path)
    assert (geo.width, geo.height) == (image["width"], image["height"]) and geo.size != geo.width
    box = np.array([ann["bbox"]], dtype=np.float64)
    with torch.no_grad():
        pasted = p._mask_logits(out, 0, box, geo, path, flip=False)[0]
    assert pasted.shape == (geo.height, geo.width)

    xyxy = np.concatenate([geo.to_input(box[:, :2]), geo.to_input(box[:, :2] + box[:, 2:])], 1)
    crop, roi = p.model.masks.roi_logits(out["dense"][:1], out["heatmap_logits"][:1], out["pixels"][:1],
                                         [torch.tensor(xyxy, dtype=torch.float32)])
    crop, (x0, y0, x1, y1) = crop[0].detach().numpy(), roi[0].detach().numpy()
    n = crop.shape[0]
    ys, xs = np.mgrid[0:geo.height, 0:geo.width]
    cx0, cy0, cx1, cy1 = geo.content_box_input()  # the image's pixels on the input, as pad_image resized them
    centres = np.stack([cx0 + (xs.ravel() + 0.5) * (cx1 - cx0) / geo.width,
                        cy0 + (ys.ravel() + 0.5) * (cy1 - cy0) / geo.height], 1)
    fx = (centres[:, 0] - x0) / (x1 - x0) * n - 0.5  # crop cell coordinates, cell centres at integers
    fy = (centres[:, 1] - y0) / (y1 - y0) * n - 0.5
    inside = (fx > -0.5) & (fx < n - 0.5) & (fy > -0.5) & (fy < n - 0.5)
    assert inside.sum() > 100
    fx, fy = np.clip(fx[inside], 0, n - 1), np.clip(fy[inside], 0, n - 1)
    ix, iy = np.minimum(fx.astype(int), n - 2), np.minimum(fy.astype(int), n - 2)
    ax, ay = fx - ix, fy - iy
    expected = ((1 - ay) * ((1 - ax) * crop[iy, ix] + ax * crop[iy, ix + 1])
                + ay * ((1 - ax) * crop[iy + 1, ix] + ax * crop[iy + 1, ix + 1]))
    assert pasted.ravel()[inside] == pytest.approx(expected, abs=1e-3)
    assert (pasted.ravel()[~inside] < -10).all()  # nothing outside the enlarged box


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


def test_fuse_views_averages_matched_boxes_and_halves_the_rest():
    from lumen_model.decoders.boxes import fuse_views, unflip_boxes

    here = np.array([[10.0, 10, 20, 20], [60, 60, 10, 10]])
    there = np.array([[12.0, 10, 20, 20], [100, 0, 5, 5]])
    boxes, scores = fuse_views(here, np.array([0.8, 0.6]), there, np.array([0.6, 0.4]))
    assert scores.tolist() == pytest.approx([0.7, 0.3, 0.2])  # matched mean, then each view's lone box at half
    assert boxes[0].tolist() == pytest.approx([11, 10, 20, 20])
    assert boxes[1].tolist() == pytest.approx([60, 60, 10, 10]) and boxes[2].tolist() == pytest.approx([100, 0, 5, 5])
    assert unflip_boxes(np.array([[10.0, 5, 20, 8]]), 100).tolist() == [[70, 5, 20, 8]]
    empty, none = fuse_views(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 4)), np.zeros(0))
    assert empty.shape == (0, 4) and none.shape == (0,)


def test_flip_tta_sees_an_image_and_its_mirror_image_alike(tiny_stage2, sample_data_dir, val_images, tmp_path):
    """Fusing both views makes prediction mirror-equivariant: on the mirrored images, the results are the mirror of
    the results on the images (boxes, scores, masks), which one view alone is not."""
    ann_path, data = val_images
    mirror_dir = tmp_path / "mirror"
    mirror_dir.mkdir()
    for im in data["images"]:
        img = cv2.imread(str(sample_data_dir / "coco/images" / im["file_name"]))
        cv2.imwrite(str(mirror_dir / im["file_name"]), img[:, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    widths = {im["id"]: im["width"] for im in data["images"]}

    def run(images, name, **kw):
        predict(tiny_stage2[0], "instance_segmentation", images, tmp_path / name, annotations=ann_path,
                score_threshold=0.2, progress=False, **kw)
        return json.loads((tmp_path / name).read_text())

    def unmirror(rows):
        for r in rows:
            x, y, w, h = r["bbox"]
            r["bbox"] = [widths[r["image_id"]] - x - w, y, w, h]
            m = mask_utils.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()})
            r["mask"] = m[:, ::-1]
        return rows

    def disagreement(a, b):
        """How many of a's results have no twin in b (same image and class, near-same box, score and mask)."""
        missing = 0
        for r in a:
            m = mask_utils.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()})
            twins = [q for q in b if q["image_id"] == r["image_id"] and q["category_id"] == r["category_id"]
                     and np.allclose(q["bbox"], r["bbox"], atol=1.0) and abs(q["score"] - r["score"]) < 0.02
                     and (q["mask"] != m).mean() < 0.02]
            missing += not twins
        return missing

    # the mirrored JPEGs are not bit-exact mirrors, so "alike" has a tolerance; one view alone is far outside it
    tta, tta_mirrored = run(sample_data_dir / "coco/images", "tta.json", flip_tta=True), unmirror(
        run(mirror_dir, "tta_m.json", flip_tta=True))
    plain, plain_mirrored = run(sample_data_dir / "coco/images", "p.json"), unmirror(run(mirror_dir, "p_m.json"))
    assert len(tta) > 0 and len(plain) > 0
    assert disagreement(tta, tta_mirrored) <= 0.1 * len(tta)
    assert disagreement(plain, plain_mirrored) > 0.1 * len(plain)
    with pytest.raises(Exception, match="flip TTA is for detection and instance_segmentation"):
        predict(tiny_stage2[0], "pose", sample_data_dir / "coco/images", tmp_path / "k.json", flip_tta=True,
                annotations=sample_data_dir / "coco/annotations/person_keypoints_val.json", progress=False)
