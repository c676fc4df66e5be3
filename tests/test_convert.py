import json
import pickle
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.checks import check_accounting, check_heatmap_peaks
from pipelines.convert import convert_source
from pipelines.errors import InputError
from pipelines.heatmaps import decode_png
from pipelines.schema import SAMPLE_SCHEMA, TASKS
from pipelines.shards import read_manifest, read_quarantine, read_table, shard_files


def _coco(images, anns, cats=None):
    cats = cats or [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 2, "name": "circle", "supercategory": "shape"}]
    return {"images": images, "annotations": anns, "categories": cats}


def _img(i, w=100, h=80):
    return {"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h}


def _ann(i, image_id=1, cat=2, bbox=(10, 10, 20, 20), **kw):
    x, y, w, h = bbox
    a = {"id": i, "image_id": image_id, "category_id": cat, "bbox": list(bbox), "iscrowd": 0, "area": 1.0,
         "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
    a.update(kw)
    return a


def test_every_sample_source_converts_with_full_accounting(sample_shards_dir):
    dirs = sorted(p for p in sample_shards_dir.iterdir() if p.is_dir())
    tasks = set()
    for d in dirs:
        m = read_manifest(d)
        c = m["counts"]
        assert c["records_read"] == c["records_in_samples"] + c["records_quarantined"] > 0, d.name
        ok, meta = check_accounting(d)
        assert ok, (d.name, meta)
        ok, meta = check_heatmap_peaks(d)
        assert ok, (d.name, meta)
        table = read_table(d)
        assert table.schema.equals(SAMPLE_SCHEMA, check_metadata=False)
        tasks |= set(table["task"].to_pylist())
    assert tasks == set(TASKS)


def test_spec_wording_and_targets(sample_shards_dir):
    rows = read_table(sample_shards_dir / "coco-train").to_pylist()
    det = [r for r in rows if r["task"] == "detection" and r["boxes"]]
    neg = [r for r in rows if r["task"] == "detection" and not r["boxes"]]
    assert det and neg
    r = det[0]
    assert r["instruction"] == f"Please find the location of all {r['category']} in the image. Respond with boxes."
    assert r["answer"] == "Sure, the location is [LOC]. [DET]"
    assert neg[0]["answer"] == "Sure, there is none. [DET]"
    assert decode_png(neg[0]["heatmap"]).max() == 0
    # center pixel = floor of the box center through the square-pad transform
    s, m, w, h = r["input_size"], r["heatmap_size"], r["image_width"], r["image_height"]
    scale = s / max(w, h)
    ox, oy = (s - w * scale) / 2, (s - h * scale) / 2
    x, y, bw, bh = r["boxes"][0]
    expect = [int(np.floor(((x + bw / 2) * scale + ox) * m / s)), int(np.floor(((y + bh / 2) * scale + oy) * m / s))]
    assert r["centers"][0] == expect
    assert r["sizes"][0] == pytest.approx([bw * scale / s, bh * scale / s], rel=1e-5)
    seg = read_table(sample_shards_dir / "refcoco-val").to_pylist()
    rs = next(r for r in seg if r["task"] == "referring_segmentation")
    assert rs["instruction"] == f"Please find the location of {rs['expression']}. Respond with a mask."
    assert rs["masks"] and rs["masks"][0]["counts"]


def test_same_input_gives_byte_identical_shards(sample_data_dir, tmp_path):
    src = sample_data_dir / "coco" / "annotations" / "instances_val.json"
    convert_source("coco", src, tmp_path / "a", input_size=128, progress=False)
    convert_source("coco", src, tmp_path / "b", input_size=128, progress=False)
    fa, fb = shard_files(tmp_path / "a"), shard_files(tmp_path / "b")
    assert [open(f, "rb").read() for f in fa] == [open(f, "rb").read() for f in fb]
    assert read_manifest(tmp_path / "a")["content_hash"] == read_manifest(tmp_path / "b")["content_hash"]


def test_rerun_replaces_without_duplicates(sample_data_dir, tmp_path):
    src = sample_data_dir / "coco" / "annotations" / "instances_val.json"
    m1 = convert_source("coco", src, tmp_path / "p", input_size=128, rows_per_shard=50, progress=False)
    m2 = convert_source("coco", src, tmp_path / "p", input_size=128, rows_per_shard=50, progress=False)
    table = read_table(tmp_path / "p")
    assert table.num_rows == m1["counts"]["samples_written"] == m2["counts"]["samples_written"]
    assert len(set(table["sample_id"].to_pylist())) == table.num_rows
    assert len(shard_files(tmp_path / "p")) == len(m2["shards"]) > 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_coco_records_are_quarantined_with_reasons(tmp_path):
    anns = [
        _ann(1), _ann(2, bbox=(5, 5, 0, 10)), _ann(3, bbox=(5, 5, float("nan"), 4)),
        _ann(4, image_id=99), _ann(5, cat=42), _ann(6), _ann(6, bbox=(1, 1, 5, 5)),
        _ann(7, segmentation=[[1, 1, 2, 2]]), _ann(8, segmentation=[[0, 0, 5, 0, 10, 0]]),
        _ann(9, iscrowd=1, segmentation={"size": [80, 100], "counts": [100, 20, 7880]}),
    ]
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(_coco([_img(1), _img(2)], anns)).replace("NaN", "NaN"))
    m = convert_source("coco", path, tmp_path / "out", progress=False)
    q = {r["record_id"]: r["reason"] for r in read_quarantine(tmp_path / "out").to_pylist()}
    assert "non-positive size" in q["ann:2"]
    assert "non-finite" in q["ann:3"]
    assert "unknown image id 99" in q["ann:4"]
    assert "unknown category id 42" in q["ann:5"]
    assert "duplicate annotation id 6" in q["ann:6"]
    assert len(read_quarantine(tmp_path / "out")) == 8  # both copies of id 6
    assert "fewer than 3 points" in q["ann:7"]
    assert "zero area" in q["ann:8"]
    assert "ann:1" not in q and "ann:9" not in q
    c = m["counts"]
    # 10 annotations + image 2, which no annotation refers to (it yields negatives only)
    assert c["records_read"] == 11 == c["records_in_samples"] + c["records_quarantined"]
    rows = read_table(tmp_path / "out").to_pylist()
    crowd_rows = [r for r in rows if r["ignore_boxes"]]
    assert crowd_rows and all(len(r["boxes"]) <= 1 for r in rows)  # the crowd region is no instance
    assert any("ann:9" in r["source_ids"] for r in rows)


def test_bad_keypoints_questions_and_conversations(tmp_path):
    kp = _coco([_img(1)], [_ann(1, cat=1, keypoints=[1.0] * 51, num_keypoints=17),
                           _ann(2, cat=1, keypoints=[1.0] * 50, num_keypoints=17)])
    (tmp_path / "kp.json").write_text(json.dumps(kp))
    convert_source("coco-keypoints", tmp_path / "kp.json", tmp_path / "kp", progress=False)
    q = {r["record_id"]: r["reason"] for r in read_quarantine(tmp_path / "kp").to_pylist()}
    assert list(q) == ["ann:2"] and "51" in q["ann:2"]

    (tmp_path / "q.json").write_text(json.dumps({"questions": [
        {"image_id": 1, "question": "What?", "question_id": 1}, {"image_id": 1, "question": "Who?", "question_id": 2}]}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": [
        {"question_id": 1, "image_id": 1, "multiple_choice_answer": "yes", "answers": [{"answer": "yes"}] * 10}]}))
    m = convert_source("vqav2", tmp_path / "q.json", tmp_path / "vqa", annotations=tmp_path / "a.json", progress=False)
    q = {r["record_id"]: r["reason"] for r in read_quarantine(tmp_path / "vqa").to_pylist()}
    assert q == {"q:2": "question without annotations"} and m["counts"]["samples_written"] == 1

    (tmp_path / "llava.json").write_text(json.dumps([
        {"id": "a", "image": "x.jpg", "conversations": [{"from": "human", "value": "<image>\nHi?"}, {"from": "gpt", "value": "Hello."}]},
        {"id": "b", "conversations": [{"from": "human", "value": "No image?"}, {"from": "gpt", "value": "Right."}]}]))
    m = convert_source("llava", tmp_path / "llava.json", tmp_path / "llava", progress=False)
    q = {r["record_id"]: r["reason"] for r in read_quarantine(tmp_path / "llava").to_pylist()}
    assert q == {"llava:b/turn:0": "conversation without an image"}
    assert read_table(tmp_path / "llava")["instruction"].to_pylist() == ["Hi?"]


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_crafted_refs_pickle_is_refused(sample_data_dir, tmp_path):
    folder = tmp_path / "refcoco"
    folder.mkdir()
    (folder / "instances.json").write_bytes((sample_data_dir / "refcoco" / "instances.json").read_bytes())
    (folder / "refs(unc).p").write_bytes(pickle.dumps([{"ref_id": 1, "payload": _Evil()}]))
    with pytest.raises(InputError, match=r"refused global builtins\.print"):
        convert_source("refcoco", folder, tmp_path / "out", progress=False)


@pytest.mark.parametrize("content, message", [
    (None, "input not found"), ("{not json", "not valid JSON"), ("[1, 2]", "must hold a JSON dict"),
])
def test_unreadable_input_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "instances_train.json"
    if content is not None:
        path.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "convert", "coco", "--input", str(path),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_shards_are_zstd_parquet(sample_shards_dir):
    f = shard_files(sample_shards_dir / "coco-train")[0]
    meta = pq.ParquetFile(f).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
