"""RefCOCO reader: sentences are records; refs pickles load without running code."""

import json
import os
import pickle

import pytest

from pipelines.checks import check_accounting
from lumen_cli import main
from pipelines.convert import convert_source
from pipelines.errors import InputError
from pipelines.shards import read_quarantine, read_table
from pipelines.sources.safe_pickle import load_plain_pickle


def _write_refcoco(folder, refs, anns=None):
    folder.mkdir(parents=True, exist_ok=True)
    anns = anns if anns is not None else [
        {"id": 10, "image_id": 1, "category_id": 2, "bbox": [10, 10, 20, 20], "iscrowd": 0, "area": 400,
         "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
        {"id": 11, "image_id": 1, "category_id": 2, "bbox": [50, 40, 10, 10], "iscrowd": 1, "area": 100,
         "segmentation": {"size": [80, 100], "counts": [0, 8000]}},
    ]
    (folder / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 100, "height": 80}],
        "annotations": anns, "categories": [{"id": 2, "name": "circle", "supercategory": "shape"}]}))
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs))
    return folder


def _ref(ref_id, sents, ann_id=10, split="val"):
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": 1, "category_id": 2, "split": split,
            "sentences": [{"sent_id": sid, "sent": text, "raw": text} for sid, text in sents]}


def test_every_sentence_gives_grounding_and_referring_seg(tmp_path):
    folder = _write_refcoco(tmp_path / "refcoco", [
        _ref(1, [(100, "the red circle"), (101, "left  circle")]), _ref(2, [(102, "other")], split="train")])
    m = convert_source("refcoco", folder, tmp_path / "out", split="val", progress=False)
    rows = read_table(tmp_path / "out").to_pylist()
    assert m["counts"]["records_read"] == 2 and m["counts"]["per_task"] == {"grounding": 2, "referring_segmentation": 2}
    g = next(r for r in rows if r["task"] == "grounding" and r["source_ids"] == ["ref:1/sent:101"])
    assert g["instruction"] == "Please find the location of left circle. Respond with a box."
    assert g["answer"] == "Sure, the location is [LOC]. [GRD]" and g["expression"] == "left circle"
    rs = next(r for r in rows if r["task"] == "referring_segmentation" and r["source_ids"] == ["ref:1/sent:100"])
    assert rs["answer"] == "Sure, the location is [LOC]. [RSEG]" and rs["masks"][0]["size"] == [80, 100]
    assert rs["boxes"] == [[10.0, 10.0, 20.0, 20.0]] and len(rs["centers"]) == 1


def test_bad_refs_are_quarantined_per_sentence(tmp_path):
    refs = [_ref(1, [(1, "ok")]), _ref(2, [(2, "a"), (2, "b")]), _ref(3, [(3, "x")]), _ref(3, [(4, "y")]),
            _ref(4, [(5, "unknown")], ann_id=999), _ref(5, [(6, "   ")]), _ref(6, [(7, "crowd")], ann_id=11),
            {"ref_id": 7, "ann_id": 10, "image_id": 1, "split": "val", "sentences": []}, "not a ref"]
    folder = _write_refcoco(tmp_path / "refcoco", refs)
    m = convert_source("refcoco", folder, tmp_path / "out", split="val", progress=False)
    q = [(r["record_id"], r["reason"]) for r in read_quarantine(tmp_path / "out").to_pylist()]
    reasons = dict(q)
    assert reasons["ref:2/sent:2"].startswith("duplicate sent_id 2 in ref 2")
    assert sum(rid == "ref:2/sent:2" for rid, _ in q) == 2
    assert reasons["ref:3/sent:3"].startswith("duplicate ref id 3") and reasons["ref:3/sent:4"].startswith("duplicate ref id 3")
    assert reasons["ref:4/sent:5"] == "unknown annotation id 999"
    assert reasons["ref:5/sent:6"] == "sentence is empty"
    assert "crowd region" in reasons["ref:6/sent:7"]
    assert reasons["ref:7"] == "ref has no sentences" and reasons["ref:#8"] == "ref is not a dict"
    c = m["counts"]
    assert c["records_read"] == 10 and c["records_in_samples"] == 1 and c["records_quarantined"] == 9
    assert check_accounting(tmp_path / "out")[0]


class _Shell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Print:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("payload, forbidden", [("shell", r"(posix|os)\.system"), ("print", r"builtins\.print")])
def test_crafted_refs_pickle_is_refused_without_running_code(tmp_path, capsys, payload, forbidden):
    marker = tmp_path / "ran"
    evil = _Shell(marker) if payload == "shell" else _Print()
    folder = _write_refcoco(tmp_path / "refcoco", [{"ref_id": 1, "payload": evil}])
    with pytest.raises(InputError, match=rf"refused global {forbidden}: only plain containers and scalars"):
        convert_source("refcoco", folder, tmp_path / "out", progress=False)
    assert not marker.exists() and not (tmp_path / "out").exists()
    # the CLI says the same in one line, without a traceback
    assert main(["convert", "refcoco", "--input", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "refused global" in err
    assert not marker.exists()


def test_plain_pickles_load_and_broken_ones_are_one_clear_error(tmp_path):
    data = [{"ref_id": 1, "sentences": [{"sent": "a", "sent_id": 2}], "box": (1.5, 2), "ok": True, "none": None}]
    (tmp_path / "plain.p").write_bytes(pickle.dumps(data, protocol=2))
    assert load_plain_pickle(tmp_path / "plain.p") == data
    (tmp_path / "cut.p").write_bytes(pickle.dumps(data)[:20])
    with pytest.raises(InputError, match="not a readable pickle"):
        load_plain_pickle(tmp_path / "cut.p")
    with pytest.raises(InputError, match="file not found"):
        load_plain_pickle(tmp_path / "missing.p")
    folder = _write_refcoco(tmp_path / "refcoco", {"not": "a list"})
    with pytest.raises(InputError, match="must hold a list of refs"):
        convert_source("refcoco", folder, tmp_path / "out", progress=False)
    (tmp_path / "set.p").write_bytes(pickle.dumps([{"ids": {1, 2}}], protocol=4))
    with pytest.raises(InputError, match="refused set.p: it holds a set"):
        load_plain_pickle(tmp_path / "set.p")
