"""Review thresholds chosen on the evaluation split: per class, the score that maximises F1.

A model's results file holds every box down to a very low score (COCO AP wants them all), far
more than there are objects; pushing all of them buries the few errors under noise. On the
evaluation split (COCO ground truth + COCO results of the same model version) each prediction is
matched greedily, highest score first, to the unmatched ground-truth object of its class with the
highest box IoU >= `iou` (COCO's rule; a box on a crowd region is neither right nor wrong). Because
higher scores match first, the matching of "every prediction at or above t" is a prefix of that
order, so precision, recall and F1 at every cut come from one pass.

The result is a plain dict (saved as json next to the model version):
    {"model_version", "iou", "iou_type": "bbox", "default": {threshold, f1, precision, recall, ...},
     "classes": {"<category_id>": {name, threshold, f1, precision, recall, n_gt, n_pred, source}},
     "calibration": {"<category_id>" | "all": {"score": [...], "precision": [...]}}}
A class without a true positive on the split (or absent from it) gets the threshold of all classes
pooled (`source: "default"`). `calibration` is P(prediction is right | class, score) as a
non-decreasing step function (isotonic fit): the review queue uses it to estimate, without ground
truth, how many errors an image holds.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from pipelines.errors import InputError
from pipelines.review.inputs import read_json

MIN_CALIBRATION_PREDICTIONS = 20  # fewer predictions of a class: use the pooled calibration


@dataclass
class Matching:
    """Each prediction's outcome and each ground-truth object's best match score, per class."""
    scores: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))  # per class, descending
    correct: dict[int, list[bool | None]] = field(default_factory=lambda: defaultdict(list))  # None: on a crowd
    n_gt: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    # per image and class: (prediction scores + outcomes) and GT objects with the score that found them
    per_image: dict[tuple[int, int], dict] = field(default_factory=dict)


def _by_image_class(records) -> dict[tuple[int, int], list[dict]]:
    out = defaultdict(list)
    for r in records:
        out[(r["image_id"], r["category_id"])].append(r)
    return out


def match_results(gt: dict, results: list, iou: float = 0.5) -> Matching:
    """COCO-style greedy matching of `results` (COCO results list) against `gt` (COCO json dict)."""
    images = {im["id"] for im in gt.get("images", []) if isinstance(im, dict) and "id" in im}
    cats = {c["id"] for c in gt.get("categories", []) if isinstance(c, dict) and "id" in c}
    gts = _by_image_class(a for a in gt.get("annotations", []) if isinstance(a, dict) and a.get("image_id") in images
                          and isinstance(a.get("bbox"), list) and len(a["bbox"]) == 4)
    preds = _by_image_class(r for r in results if isinstance(r, dict) and r.get("image_id") in images
                            and r.get("category_id") in cats and isinstance(r.get("bbox"), list)
                            and len(r["bbox"]) == 4 and isinstance(r.get("score"), (int, float))
                            and math.isfinite(r["score"]))
    m = Matching()
    flat = defaultdict(list)  # class -> (score, outcome)
    for key in sorted(set(gts) | set(preds)):
        cid = key[1]
        g = sorted(gts.get(key, []), key=lambda a: bool(a.get("iscrowd")))  # real objects first
        crowd = [bool(a.get("iscrowd")) for a in g]
        m.n_gt[cid] += sum(not c for c in crowd)
        p = sorted(preds.get(key, []), key=lambda r: -r["score"])
        found = [None] * len(g)  # score of the prediction that matched each GT object
        outcomes = []
        if p and g:
            ious = mask_utils.iou([r["bbox"] for r in p], [a["bbox"] for a in g], crowd)
        for i, r in enumerate(p):
            outcome = False
            if g:
                best, best_j = iou, -1
                for j in range(len(g)):
                    if crowd[j] or found[j] is not None or ious[i, j] < best:
                        continue
                    best, best_j = ious[i, j], j
                if best_j >= 0:
                    found[best_j], outcome = r["score"], True
                elif any(c and ious[i, j] >= iou for j, c in enumerate(crowd)):
                    outcome = None
            outcomes.append(outcome)
            flat[cid].append((r["score"], outcome))
        m.per_image[key] = {"scores": [r["score"] for r in p], "correct": outcomes,
                            "gt_found_at": [f for f, c in zip(found, crowd) if not c]}
    for cid, rows in flat.items():
        rows.sort(key=lambda t: -t[0])
        m.scores[cid] = [s for s, _ in rows]
        m.correct[cid] = [o for _, o in rows]
    return m


def best_f1_cut(scores: list[float], correct: list, n_gt: int) -> dict:
    """The cut (keep predictions with score >= threshold) that maximises F1; ties: the higher threshold."""
    best = {"threshold": None, "f1": 0.0, "precision": 0.0, "recall": 0.0, "tp": 0, "fp": 0, "n_gt": n_gt,
            "n_pred": len(scores)}
    tp = fp = 0
    for i, (s, c) in enumerate(zip(scores, correct)):
        tp += c is True
        fp += c is False
        if i + 1 < len(scores) and scores[i + 1] == s:
            continue  # a cut keeps every prediction of equal score
        f1 = 2 * tp / (tp + fp + n_gt) if tp + fp + n_gt else 0.0
        if tp and f1 > best["f1"] + 1e-12:
            best.update(threshold=float(s), f1=round(f1, 4), precision=round(tp / max(tp + fp, 1), 4),
                        recall=round(tp / max(n_gt, 1), 4), tp=tp, fp=fp)
    return best


def _isotonic(scores: list[float], correct: list) -> dict:
    """P(right | score) as a non-decreasing step function (pool-adjacent-violators over ascending scores)."""
    pairs = sorted((s, 1.0 if c else 0.0) for s, c in zip(scores, correct) if c is not None)
    blocks: list[list[float]] = []  # [start score, sum, count]
    for s, y in pairs:
        blocks.append([s, y, 1.0])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            _, ys, n = blocks.pop()
            blocks[-1][1] += ys
            blocks[-1][2] += n
    return {"score": [round(b[0], 6) for b in blocks], "precision": [round(b[1] / b[2], 4) for b in blocks]}


def compute_thresholds(gt_file, results_file, *, iou: float = 0.5, model_version: str | None = None) -> dict:
    """Per-class F1-maximising review thresholds (and score calibration) on the evaluation split."""
    gt = read_json(gt_file, "ground-truth COCO json")
    if not isinstance(gt, dict) or not all(k in gt for k in ("images", "annotations", "categories")):
        raise InputError(f"{gt_file}: a COCO json needs 'images', 'annotations' and 'categories'")
    results = read_json(results_file, "predictions file")
    if not isinstance(results, list):
        raise InputError(f"{results_file}: a COCO results file is a JSON list of predictions")
    if not 0 < iou <= 1:
        raise InputError(f"iou must be in (0, 1], got {iou}")
    m = match_results(gt, results, iou)
    names = {c["id"]: c.get("name", str(c["id"])) for c in gt["categories"] if isinstance(c, dict) and "id" in c}

    pooled = sorted(((s, c) for cid in m.scores for s, c in zip(m.scores[cid], m.correct[cid])), key=lambda t: -t[0])
    default = best_f1_cut([s for s, _ in pooled], [c for _, c in pooled], sum(m.n_gt.values()))
    if default["threshold"] is None:  # no prediction right at all: push everything, nothing to choose on
        default["threshold"] = min([s for s, _ in pooled], default=0.0)
    classes, calibration = {}, {"all": _isotonic([s for s, _ in pooled], [c for _, c in pooled])}
    for cid in sorted(names):
        cut = best_f1_cut(m.scores.get(cid, []), m.correct.get(cid, []), m.n_gt.get(cid, 0))
        source = "class"
        if cut["threshold"] is None:
            cut["threshold"], source = default["threshold"], "default"
        classes[str(cid)] = {"name": names[cid], **cut, "source": source}
        if len(m.scores.get(cid, [])) >= MIN_CALIBRATION_PREDICTIONS:
            calibration[str(cid)] = _isotonic(m.scores[cid], m.correct[cid])
    return {"model_version": model_version, "iou": iou, "iou_type": "bbox", "gt_file": str(gt_file),
            "results_file": str(results_file), "default": default, "classes": classes, "calibration": calibration}


def save_thresholds(thresholds: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(thresholds, indent=1))
    tmp.replace(path)  # never a half-written file under the real name
    return path


def load_thresholds(thresholds) -> dict:
    """A thresholds dict as `compute_thresholds` returns it, or the path of its json."""
    data = thresholds if isinstance(thresholds, dict) else read_json(thresholds, "review thresholds json")
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict) or "default" not in data:
        raise InputError(f"{thresholds if not isinstance(thresholds, dict) else 'thresholds'}: not a review "
                         "thresholds file (expected 'classes' and 'default', as compute_thresholds writes)")
    return data


def threshold_for(thresholds: dict, category_id) -> float:
    c = thresholds["classes"].get(str(category_id))
    return float(c["threshold"] if c else thresholds["default"]["threshold"])


def precision_at(thresholds: dict | None, category_id, score: float) -> float:
    """Estimated P(a prediction of this class and score is right); the score itself without calibration."""
    cal = (thresholds or {}).get("calibration") or {}
    steps = cal.get(str(category_id)) or cal.get("all")
    if not steps or not steps["score"]:
        return float(score)
    i = int(np.searchsorted(steps["score"], score, side="right")) - 1
    return float(steps["precision"][max(i, 0)])


def summary(thresholds: dict) -> dict:
    """What the dataset records per model version: the thresholds, and how they were chosen."""
    return {"iou": thresholds.get("iou"), "iou_type": thresholds.get("iou_type"),
            "default": thresholds["default"]["threshold"],
            "classes": {k: {"name": v.get("name"), "threshold": v["threshold"], "f1": v.get("f1"),
                            "source": v.get("source")} for k, v in thresholds["classes"].items()},
            "calibration": thresholds.get("calibration", {}), "gt_file": thresholds.get("gt_file")}
