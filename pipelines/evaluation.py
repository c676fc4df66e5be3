"""Metrics: COCO AP (pycocotools COCOeval), grounding Acc@0.5, referring-seg cIoU/gIoU, VQAv2 accuracy.

Grounding / referring-segmentation ground truth is a JSON list, one entry per sentence:
    {"sent_id", "ref_id", "image_id", "expression", "bbox": [x, y, w, h], "segmentation", "width", "height"}
`refcoco_expressions` writes it from a RefCOCO folder; the same file is `lumen predict --expressions`.
Predictions are a JSON list with the same `sent_id` and a `bbox` (and `segmentation` RLE for refseg).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from pipelines.errors import InputError
from pipelines.tasks import EVAL_NAMES, task_named
from pipelines.tasks import TASKS as REGISTRY

# What an evaluation's numbers mean, bumped whenever the same checkpoint would get other numbers: the regression
# gate compares two versions only under the same protocol (it re-evaluates the model in use first when its numbers
# are older; assets_defs/assets/training.py). 1: masks pasted through the S x S canvas, about a pixel right and
# down; 2: masks pasted at the image's own pixels (8882369).
PROTOCOL = 2

# from the task registry (pipelines/tasks.py): the evaluation's names, and pycocotools' iouType of each COCO one
TASKS = EVAL_NAMES
COCO_TASKS = {t.eval_name: t.eval_name for t in REGISTRY if t.metric == "coco_metrics"}


def _load(x):
    """A path is read (one clear line when missing or broken); data already loaded passes through."""
    if isinstance(x, (str, Path)):
        from pipelines.sources.common import load_json

        return load_json(x, object, "evaluate")
    return x


def coco_metrics(task: str, gt, pred) -> dict:
    """COCOeval's AP summary; None ("n/a") for a metric with nothing to measure (pycocotools' -1)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_data, preds = _load(gt), _load(pred)
    names = ["AP", "AP50", "AP75", "APs", "APm", "APl"] if task != "keypoints" else ["AP", "AP50", "AP75", "APm", "APl"]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt_data
        coco.createIndex()
        if not preds:
            return {n: 0.0 for n in names} | {"detections": 0}
        dt = coco.loadRes(preds)
        ev = COCOeval(coco, dt, COCO_TASKS[task])
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # pycocotools says -1 where a metric has nothing to measure (APl with no large object): None, shown "n/a",
    # never 0, which would read as a model that found none of them (and would gate a later version on it)
    return {n: float(v) if v >= 0 else None for n, v in zip(names, ev.stats)} | {"detections": len(preds)}


def box_iou(a, b) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


# words that make an expression spatial ("the man on the left"): RefCOCO's hardest kind, reported apart
SPATIAL_WORDS = frozenset("left right top bottom middle center centre front behind above below upper lower".split())


def grounding_accuracy(gt, pred) -> dict:
    gt_list, preds = _load(gt), {p["sent_id"]: p for p in _load(pred)}
    hits = [box_iou(g["bbox"], preds[g["sent_id"]]["bbox"]) >= 0.5 if g["sent_id"] in preds else False for g in gt_list]
    spatial = [bool(SPATIAL_WORDS & set(re.findall(r"[a-z]+", g.get("expression", "").lower()))) for g in gt_list]
    by_kind = {}
    for kind, want in (("spatial", True), ("non_spatial", False)):
        sel = [h for h, sp in zip(hits, spatial) if sp == want]
        by_kind[kind] = {"acc@0.5": float(np.mean(sel)) if sel else 0.0, "sentences": len(sel)}
    return {"acc@0.5": float(np.mean(hits)) if hits else 0.0, "sentences": len(gt_list),
            "predicted": sum(g["sent_id"] in preds for g in gt_list), "by_kind": by_kind}


def _mask(seg, h, w) -> np.ndarray:
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = {"size": seg["size"], "counts": seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]}
    return mask_utils.decode(rle).astype(bool)


def refseg_iou(gt, pred) -> dict:
    gt_list, preds = _load(gt), {p["sent_id"]: p for p in _load(pred)}
    inter_sum = union_sum = 0
    ious = []
    for g in gt_list:
        gm = _mask(g["segmentation"], g["height"], g["width"])
        p = preds.get(g["sent_id"])
        pm = _mask(p["segmentation"], g["height"], g["width"]) if p and p.get("segmentation") else np.zeros_like(gm)
        inter, union = np.logical_and(gm, pm).sum(), np.logical_or(gm, pm).sum()
        inter_sum += inter
        union_sum += union
        ious.append(inter / union if union else 1.0)
    return {"cIoU": float(inter_sum / union_sum) if union_sum else 0.0, "gIoU": float(np.mean(ious)) if ious else 0.0,
            "sentences": len(gt_list)}


_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """VQAv2's answer normalization (lower case, punctuation, number words, articles)."""
    t = text.lower().replace("\n", " ").replace("\t", " ").strip()
    t = re.sub(r"(?<=\d),(?=\d)", "", t)
    t = re.sub(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$]", " ", t)
    t = re.sub(r"(?<!\d)\.(?!\d)", "", t)
    words = [_NUMBERS.get(w, w) for w in t.split() if w not in _ARTICLES]
    return " ".join(words)


def question_kind(annotation: dict) -> str:
    """count / colour / shape / yes/no / other, from VQAv2's answer_type and question_type fields."""
    qtype, atype = annotation.get("question_type", ""), annotation.get("answer_type", "")
    if atype == "yes/no":
        return "yes/no"
    if atype == "number":
        return "count"
    for prefix, kind in (("what color", "colour"), ("what shape", "shape")):
        if qtype.startswith(prefix):
            return kind
    return "other"


def vqa_accuracy(gt, pred) -> dict:
    """min(#humans who gave the answer / 3, 1), averaged over the 10-choose-9 subsets as VQAv2 does;
    also per question kind (`question_kind`)."""
    data = _load(gt)
    anns = {a["question_id"]: a for a in (data["annotations"] if isinstance(data, dict) else data)}
    preds = {p["question_id"]: normalize_answer(p["answer"]) for p in _load(pred)}
    scores, by_kind = [], {}
    for qid, a in anns.items():
        humans = [normalize_answer(x["answer"]) for x in a["answers"]]
        ans = preds.get(qid)
        score = 0.0
        if ans is not None:
            score = float(np.mean([min(1.0, sum(h == ans for j, h in enumerate(humans) if j != i) / 3)
                                   for i in range(len(humans))]))
        scores.append(score)
        by_kind.setdefault(question_kind(a), []).append(score)
    kinds = {k: {"accuracy": float(np.mean(v)), "questions": len(v)} for k, v in sorted(by_kind.items())}
    return {"accuracy": float(np.mean(scores)) if scores else 0.0, "questions": len(anns), "answered": len(preds),
            "by_kind": kinds}


def shuffled_questions(questions, seed: int = 0) -> dict:
    """The same questions, each asked about another image (VQAv2 questions json in, out).

    Accuracy on these against the true answers says how much the answers come from priors rather
    than from the image: a model that looks loses most of its accuracy, one that guesses keeps it.
    Distinct images are put in a seeded random cycle and each question moves to the next image of
    the cycle, so no question keeps its own image (given two or more images).
    """
    data = _load(questions)
    qs = data["questions"] if isinstance(data, dict) else data
    images = sorted({q["image_id"] for q in qs})
    if len(images) < 2:
        raise InputError("vqa shuffle: needs questions about at least two images")
    cycle = [images[i] for i in np.random.default_rng(seed).permutation(len(images))]
    nxt = {a: cycle[(k + 1) % len(cycle)] for k, a in enumerate(cycle)}
    moved = [dict(q, image_id=nxt[q["image_id"]]) for q in qs]
    return dict(data, questions=moved) if isinstance(data, dict) else moved


# Each task's `metric` (pipelines/tasks.py) -> its function of (evaluation name, gt, pred).
METRICS = {
    "coco_metrics": coco_metrics,
    "grounding_accuracy": lambda task, gt, pred: grounding_accuracy(gt, pred),
    "refseg_iou": lambda task, gt, pred: refseg_iou(gt, pred),
    "vqa_accuracy": lambda task, gt, pred: vqa_accuracy(gt, pred),
}


def evaluate(task: str, gt, pred) -> dict:
    """The metrics of one evaluation task ("bbox", ..., "vqa")."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return METRICS[task_named(task).metric](task, gt, pred)


def refcoco_expressions(folder, split: str = "val", split_by: str = "unc") -> list[dict]:
    """One ground-truth entry per sentence of a RefCOCO split (the grounding/refseg GT format)."""
    from pipelines.sources.safe_pickle import load_plain_pickle

    folder = Path(folder)
    refs = load_plain_pickle(folder / f"refs({split_by}).p")
    inst = _load(folder / "instances.json")
    anns = {a["id"]: a for a in inst["annotations"]}
    images = {im["id"]: im for im in inst["images"]}
    out = []
    for ref in refs:
        if ref.get("split") != split or ref.get("ann_id") not in anns:
            continue
        a, im = anns[ref["ann_id"]], images.get(ref["image_id"])
        if im is None:
            continue
        for s in ref["sentences"]:
            out.append({"sent_id": s["sent_id"], "ref_id": ref["ref_id"], "image_id": ref["image_id"],
                        "file_name": im["file_name"], "expression": s["sent"], "bbox": a["bbox"],
                        "segmentation": a.get("segmentation"), "width": im["width"], "height": im["height"],
                        "category_id": a["category_id"]})
    return out
