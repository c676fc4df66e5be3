"""Metrics against hand-computed cases: COCOeval tasks, grounding acc@0.5, refseg cIoU/gIoU, VQAv2 accuracy."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipelines.errors import InputError
from pipelines.evaluation import evaluate, normalize_answer, shuffled_questions


def _coco(with_keypoints=False):
    images = [{"id": 1, "width": 200, "height": 150, "file_name": "a.jpg"},
              {"id": 2, "width": 120, "height": 160, "file_name": "b.jpg"}]
    boxes = {(1, 1): [10, 20, 50, 40], (1, 2): [100, 60, 30, 30], (2, 1): [20, 30, 80, 100]}
    anns = []
    for i, ((img, cat), (x, y, w, h)) in enumerate(boxes.items(), 1):
        a = {"id": i, "image_id": img, "category_id": cat, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
             "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}
        if with_keypoints:
            kps = []
            for k in range(17):
                kps += [x + w * (k % 4 + 1) / 5, y + h * (k // 4 + 1) / 6, 2]
            a.update(keypoints=kps, num_keypoints=17, category_id=1)
        anns.append(a)
    cats = [{"id": 1, "name": "person", "keypoints": [str(k) for k in range(17)], "skeleton": []}, {"id": 2, "name": "x"}]
    return {"images": images, "annotations": anns, "categories": cats}


def _as_results(gt, shift=0.0, task="bbox"):
    out = []
    for a in gt["annotations"]:
        r = {"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
             "bbox": [a["bbox"][0] + shift, a["bbox"][1], a["bbox"][2], a["bbox"][3]]}
        if task == "segm":
            img = next(im for im in gt["images"] if im["id"] == a["image_id"])
            x, y, w, h = r["bbox"]
            rle = mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], img["height"], img["width"])[0]
            r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        if task == "keypoints":
            r["keypoints"] = [v + (shift if j % 3 == 0 else 0) for j, v in enumerate(a["keypoints"])]
        out.append(r)
    return out


@pytest.mark.parametrize("task", ["bbox", "segm"])
def test_coco_ap_perfect_and_shifted(task):
    gt = _coco()
    perfect = evaluate(task, gt, _as_results(gt, 0, task))
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AP50"] == pytest.approx(1.0)
    # shifting every box by 40% of the smallest width: IoU drops under 0.5 for the 30-px box only
    shifted = evaluate(task, gt, _as_results(gt, 12, task))
    assert shifted["AP50"] < 1.0 and shifted["AP"] < perfect["AP"]
    assert set(perfect) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}


def test_keypoint_ap_perfect_and_shifted():
    gt = _coco(with_keypoints=True)
    gt["annotations"] = [a for a in gt["annotations"]]
    assert evaluate("keypoints", gt, _as_results(gt, 0, "keypoints"))["AP"] == pytest.approx(1.0)
    assert evaluate("keypoints", gt, _as_results(gt, 15, "keypoints"))["AP"] < 0.5


def test_no_predictions_give_zero_not_an_error():
    assert evaluate("bbox", _coco(), [])["AP"] == 0.0


def test_grounding_accuracy_counts_iou_at_least_half_and_missing_as_wrong():
    gt = [{"sent_id": 1, "bbox": [0, 0, 10, 10]}, {"sent_id": 2, "bbox": [0, 0, 10, 10]},
          {"sent_id": 3, "bbox": [0, 0, 10, 10]}, {"sent_id": 4, "bbox": [0, 0, 10, 10]}]
    pred = [{"sent_id": 1, "bbox": [0, 0, 10, 10]},  # IoU 1
            {"sent_id": 2, "bbox": [0, 0, 10, 5]},  # IoU 0.5 exactly: a hit
            {"sent_id": 3, "bbox": [5, 5, 10, 10]}]  # IoU 25/175: a miss; sent 4 missing: a miss
    m = evaluate("grounding", gt, pred)
    assert m["acc@0.5"] == pytest.approx(0.5) and m["predicted"] == 3


def test_grounding_accuracy_reports_spatial_expressions_apart():
    box = [0, 0, 10, 10]
    gt = [{"sent_id": 1, "bbox": box, "expression": "the man on the left"},
          {"sent_id": 2, "bbox": box, "expression": "Top-right cat"},
          {"sent_id": 3, "bbox": box, "expression": "the red circle"}]
    pred = [{"sent_id": 1, "bbox": box}, {"sent_id": 3, "bbox": box}]
    kinds = evaluate("grounding", gt, pred)["by_kind"]
    assert kinds["spatial"] == {"acc@0.5": 0.5, "sentences": 2}
    assert kinds["non_spatial"] == {"acc@0.5": 1.0, "sentences": 1}


def _rle(mask):
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def test_refseg_ciou_is_pooled_and_giou_is_averaged():
    a = np.zeros((20, 20), bool)
    a[:10, :10] = True  # 100 px
    b = np.zeros((20, 20), bool)
    b[:2, :2] = True  # 4 px
    gt = [{"sent_id": 1, "height": 20, "width": 20, "segmentation": _rle(a)},
          {"sent_id": 2, "height": 20, "width": 20, "segmentation": _rle(b)}]
    half = a.copy()
    half[:, 5:] = False  # IoU 0.5 on the big one
    pred = [{"sent_id": 1, "segmentation": _rle(half)}, {"sent_id": 2, "segmentation": _rle(np.zeros((20, 20), bool))}]
    m = evaluate("refseg", gt, pred)
    assert m["gIoU"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["cIoU"] == pytest.approx(50 / 104)


def test_vqa_normalization_and_human_agreement_rule():
    assert normalize_answer("Two.") == "2"
    assert normalize_answer("the Red") == "red"
    assert normalize_answer("yes!") == "yes"
    answers = [{"answer": "2"}] * 2 + [{"answer": "3"}] * 8  # 2 of 10 humans said "two"
    gt = {"annotations": [{"question_id": 1, "answers": answers},
                          {"question_id": 2, "answers": [{"answer": "red"}] * 10}]}
    m = evaluate("vqa", gt, [{"question_id": 1, "answer": "two"}, {"question_id": 2, "answer": "Red"}])
    # q1: leave-one-out over 10 humans: 8 subsets keep both "2"s (2/3), 2 keep one (1/3) -> 0.6
    assert m["accuracy"] == pytest.approx((0.6 + 1.0) / 2)



def _vqa_case():
    """Four images; per image a colour question (its answer differs per image) and a yes/no one."""
    colours = {1: "red", 2: "blue", 3: "green", 4: "yellow"}
    qs, anns = [], []
    for img, c in colours.items():
        for k, (text, qtype, atype, ans) in enumerate((("What color is the square?", "what color is the", "other", c),
                                                        ("Is there a star in the image?", "is there a", "yes/no", "yes"))):
            qid = img * 10 + k
            qs.append({"question_id": qid, "image_id": img, "question": text})
            anns.append({"question_id": qid, "image_id": img, "question_type": qtype, "answer_type": atype,
                         "answers": [{"answer": ans}] * 10})
    return colours, {"questions": qs}, {"annotations": anns}


def test_vqa_shuffled_images_tell_looking_from_guessing():
    colours, questions, gt = _vqa_case()
    moved = shuffled_questions(questions, seed=3)
    assert [q["question_id"] for q in moved["questions"]] == [q["question_id"] for q in questions["questions"]]
    assert all(m["image_id"] != q["image_id"] for m, q in zip(moved["questions"], questions["questions"]))
    assert sorted(q["image_id"] for q in moved["questions"]) == sorted(q["image_id"] for q in questions["questions"])

    def looking(qs):  # answers from the image it is given
        return [{"question_id": q["question_id"], "answer": colours[q["image_id"]] if "color" in q["question"] else "yes"}
                for q in qs["questions"]]

    def guessing(qs):  # answers from the question alone
        return [{"question_id": q["question_id"], "answer": "red" if "color" in q["question"] else "yes"}
                for q in qs["questions"]]

    right, shuffled = evaluate("vqa", gt, looking(questions)), evaluate("vqa", gt, looking(moved))
    assert right["accuracy"] == pytest.approx(1.0)
    assert shuffled["by_kind"]["colour"]["accuracy"] == pytest.approx(0.0)  # every square got another image's colour
    assert shuffled["by_kind"]["yes/no"]["accuracy"] == pytest.approx(1.0)
    assert right["by_kind"]["colour"]["questions"] == 4
    # a model that does not look scores the same either way
    assert evaluate("vqa", gt, guessing(questions))["accuracy"] == evaluate("vqa", gt, guessing(moved))["accuracy"]


def test_vqa_shuffle_needs_two_images():
    with pytest.raises(InputError):
        shuffled_questions({"questions": [{"question_id": 1, "image_id": 5, "question": "?"}]})

def test_bad_input_is_one_line_error(tmp_path):
    with pytest.raises(InputError):
        evaluate("bbox", tmp_path / "missing.json", [])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError):
        evaluate("grounding", tmp_path / "bad.json", [])
    proc = subprocess.run([".venv/bin/lumen", "evaluate", "--task", "vqa", "--gt", str(tmp_path / "bad.json"),
                           "--pred", str(tmp_path / "bad.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_evaluate_cli_prints_and_writes_json(tmp_path):
    gt = _coco()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(_as_results(gt)))
    proc = subprocess.run([".venv/bin/lumen", "evaluate", "--task", "bbox", "--gt", str(tmp_path / "gt.json"),
                           "--pred", str(tmp_path / "pred.json"), "--out", str(tmp_path / "m.json")],
                          capture_output=True, text=True, check=True)
    printed = json.loads(proc.stdout)
    assert printed["AP"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "m.json").read_text()) == printed
