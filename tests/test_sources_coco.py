"""COCO instances and keypoints readers: what is a sample, what is quarantined and why."""

import json

import cv2
import numpy as np

from pipelines.checks import check_accounting
from pipelines.convert import convert_source
from pipelines.shards import read_quarantine, read_table

CATS = [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 2, "name": "circle", "supercategory": "shape"},
        {"id": 3, "name": "square", "supercategory": "shape"}, {"id": 4, "name": "star", "supercategory": "shape"}]


def coco(images, anns, cats=CATS):
    return {"images": images, "annotations": anns, "categories": cats}


def img(i, w=100, h=80):
    return {"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h}


def ann(i, image_id=1, cat=2, bbox=(10, 10, 20, 20), **kw):
    x, y, w, h = bbox
    a = {"id": i, "image_id": image_id, "category_id": cat, "bbox": list(bbox), "iscrowd": 0, "area": 1.0,
         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
    a.update(kw)
    return a


def convert(tmp_path, data, fmt="coco", name="instances_val.json", **kw):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    out = tmp_path / f"out-{fmt}"
    manifest = convert_source(fmt, path, out, progress=False, **kw)
    quarantine = {r["record_id"]: r["reason"] for r in read_quarantine(out).to_pylist()}
    return manifest, read_table(out).to_pylist(), quarantine, out


def test_bad_records_are_quarantined_with_reasons(tmp_path):
    anns = [
        ann(1), ann(2, bbox=(5, 5, 0, 10)), ann(3, bbox=(5, 5, float("nan"), 4)),
        ann(4, image_id=99), ann(5, cat=42), ann(6), ann(6, bbox=(1, 1, 5, 5)),
        ann(7, segmentation=[[1, 1, 2, 2]]), ann(8, segmentation=[[0, 0, 5, 0, 10, 0]]),
        ann(9, iscrowd=1, segmentation={"size": [80, 100], "counts": [100, 20, 7880]}),
        ann(10, bbox=(200, 10, 5, 5)), ann(11, segmentation={"size": [10, 10], "counts": [100]}),
        ann(12, segmentation=[[1, 1, "x", 2, 3, 3]]),
    ]
    m, rows, q, out = convert(tmp_path, coco([img(1), img(2)], anns))
    assert "non-positive size" in q["ann:2"]
    assert "non-finite" in q["ann:3"]
    assert "unknown image id 99" in q["ann:4"]
    assert "unknown category id 42" in q["ann:5"]
    assert "duplicate annotation id 6 (2 copies)" in q["ann:6"]
    assert len(read_quarantine(out)) == 11  # both copies of id 6 are rejected, not one kept
    assert "fewer than 3 points" in q["ann:7"]
    assert "zero area" in q["ann:8"]
    assert "outside" in q["ann:10"]
    assert "does not match the image" in q["ann:11"]
    assert "non-numeric" in q["ann:12"]
    assert "ann:1" not in q and "ann:9" not in q
    c = m["counts"]
    # 12 annotation entries + image 2, which no annotation refers to (it yields negatives only)
    assert c["records_read"] == 14 == c["records_in_samples"] + c["records_quarantined"]
    assert check_accounting(out)[0]
    assert m["quarantine_reasons"]["duplicate annotation id"] == 2
    assert m["quarantine_reasons"]["bbox lies outside the image"] == 1
    crowd_rows = [r for r in rows if r["ignore_boxes"]]
    assert crowd_rows and all(len(r["boxes"]) <= 1 for r in rows)  # the crowd region is no instance
    assert all(r["ignore_masks"][0]["size"] == [80, 100] for r in crowd_rows)
    assert sum("ann:9" in r["source_ids"] for r in rows) == 1


def test_ids_that_are_lists_or_objects_are_quarantined_not_a_traceback(tmp_path):
    anns = [ann(1), ann(2, cat=[2]), ann([3]), ann(4, image_id={"id": 1}), ann(5, cat={"a": 1})]
    for fmt, extra in (("coco", {}), ("coco-keypoints", {"keypoints": [1.0] * 51})):
        data = coco([img(1)], [dict(a, **extra) for a in anns])
        (tmp_path / fmt).mkdir()
        m, rows, q, out = convert(tmp_path / fmt, data, fmt=fmt)
        assert q["ann:2"] == "annotation category_id is a list, not a number"
        assert q["ann:#2"] == "annotation id is a list, not a number"  # no usable id: named by position
        assert q["ann:4"] == "annotation image_id is a dict, not a number"
        assert q["ann:5"] == "annotation category_id is a dict, not a number"
        assert "ann:1" not in q and check_accounting(out)[0]
        assert m["counts"]["records_read"] == 5


def test_one_sample_per_image_and_category_and_task(tmp_path):
    anns = [ann(1, cat=2), ann(2, cat=2, bbox=(50, 40, 10, 10)), ann(3, cat=3)]
    _, rows, q, _ = convert(tmp_path, coco([img(1)], anns), negative_ratio=0)
    assert not q
    pos = {(r["task"], r["category"]): r for r in rows}
    assert set(pos) == {(t, c) for t in ("detection", "instance_segmentation") for c in ("circle", "square")}
    circle = pos[("instance_segmentation", "circle")]
    assert circle["source_ids"] == ["ann:1", "ann:2"] and len(circle["boxes"]) == len(circle["masks"]) == 2
    assert circle["answer"] == "Sure, the location is [LOC]. [SEG]"
    assert circle["instruction"] == "Please find the location of all circle in the image. Respond with masks."
    # the polygon became an RLE of the right place and size
    from pycocotools import mask as mask_utils
    m = mask_utils.decode({"size": circle["masks"][1]["size"], "counts": circle["masks"][1]["counts"].encode()})
    ys, xs = np.nonzero(m)
    assert m.shape == (80, 100) and (xs.min(), ys.min(), xs.max(), ys.max()) == (50, 40, 59, 49)


def test_negatives_never_name_a_category_that_is_there(tmp_path):
    # image 1 shows a circle, a crowd of squares, and a star whose annotation is broken
    anns = [ann(1, cat=2), ann(2, cat=3, iscrowd=1, segmentation={"size": [80, 100], "counts": [0, 8000]}),
            ann(3, cat=4, bbox=(1, 1, 0, 0))]
    _, rows, q, _ = convert(tmp_path, coco([img(1)], anns), negative_ratio=5.0)
    neg = [r for r in rows if r["answer"].startswith("Sure, there is none.")]
    assert {r["category"] for r in neg} == {"person"}  # the only category really absent
    assert {r["task"] for r in neg} == {"detection", "instance_segmentation"}
    assert all(r["boxes"] == [] and r["masks"] == [] for r in neg)
    assert list(q) == ["ann:3"]


def test_negative_ratio_and_images_without_annotations(tmp_path):
    anns = [ann(1, cat=2), ann(2, cat=3)]
    data = coco([img(1), img(2)], anns)
    m, rows, q, _ = convert(tmp_path, data, negative_ratio=1.0, seed=3)
    det = [r for r in rows if r["task"] == "detection"]
    assert sum(r["image_id"] == 1 and not r["boxes"] for r in det) == 2  # 2 categories present -> 2 negatives
    empty = [r for r in det if r["image_id"] == 2]
    assert len(empty) == 1 and empty[0]["source_ids"] == ["img:2"] and empty[0]["answer"] == "Sure, there is none. [DET]"
    assert m["counts"]["records_read"] == 3 and not q
    # seeded: the same seed picks the same negatives, the draw depends on the seed
    _, again, _, _ = convert(tmp_path, data, negative_ratio=1.0, seed=3)
    assert [r["category"] for r in again] == [r["category"] for r in rows]
    # with negatives off, the empty image has no sample to go to: quarantined, still accounted
    m, rows, q, _ = convert(tmp_path, data, negative_ratio=0)
    assert q == {"img:2": "image without annotations, and negatives are off (negative_ratio=0)"}
    assert all(r["boxes"] for r in rows) and m["counts"]["records_read"] == 3


def test_duplicate_image_ids_and_missing_image_files(tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    cv2.imwrite(str(images_dir / "000000000001.jpg"), np.zeros((80, 100, 3), np.uint8))
    data = coco([img(1), img(2), img(3), img(3), img(4)], [ann(1, image_id=1), ann(2, image_id=2), ann(3, image_id=3)])
    m, rows, q, _ = convert(tmp_path, data, images_dir=images_dir)
    assert q["ann:2"] == "image file not found: 000000000002.jpg"
    assert q["ann:3"] == "image id 3 appears 2 times in 'images'"
    assert q["img:4"] == "image file not found: 000000000004.jpg"
    assert {r["image_id"] for r in rows} == {1}
    assert rows[0]["image_path"] == str((images_dir / "000000000001.jpg").resolve())
    assert m["counts"]["records_read"] == 4 == m["counts"]["records_in_samples"] + m["counts"]["records_quarantined"]


def test_keypoints_give_one_pose_sample_per_image_with_people(tmp_path):
    kps = [float(v) for k in range(17) for v in (10 + k, 20 + k, 2)]
    anns = [ann(1, cat=1, keypoints=kps, num_keypoints=17), ann(2, cat=1, bbox=(40, 30, 20, 30), keypoints=kps),
            ann(3, cat=1, keypoints=kps[:-1]), ann(4, cat=1, keypoints=kps[:-1] + [None]),
            ann(5, image_id=2, cat=1, iscrowd=1, segmentation={"size": [80, 100], "counts": [0, 8000]}),
            ann(6, image_id=1, cat=1, iscrowd=1, segmentation={"size": [80, 100], "counts": [0, 8000]})]
    m, rows, q, out = convert(tmp_path, coco([img(1), img(2), img(3)], anns), fmt="coco-keypoints",
                              name="person_keypoints_val.json")
    assert "51 numbers, found 50" in q["ann:3"] and "non-numeric" in q["ann:4"]
    assert q["ann:5"] == "crowd region in an image without people"
    assert len(rows) == 1
    r = rows[0]
    assert r["task"] == "pose" and r["answer"] == "Sure, the location is [LOC]. [POSE]"
    assert r["instruction"] == "Please find the location of all person in the image. Respond with keypoints."
    assert r["source_ids"] == ["ann:1", "ann:2", "ann:6"] and len(r["keypoints"]) == 2 and len(r["keypoints"][0]) == 51
    assert len(r["centers"]) == 2 and r["ignore_boxes"] == [[10.0, 10.0, 20.0, 20.0]]
    assert m["counts"]["records_read"] == 6 and check_accounting(out)[0]  # image 3 (no people) is no record here
