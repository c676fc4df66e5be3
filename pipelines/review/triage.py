"""How well does a review view triage? The share of all prediction errors on its first pages.

An error is a shown prediction that matches no ground-truth object (false positive) or a
ground-truth object no shown prediction matches (miss), with the matching of
`pipelines.review.thresholds.match_results` (IoU >= 0.5, same class) and "shown" meaning at or
above the class's review threshold (every prediction when no thresholds are given). The view's
first pages are its first `fraction` x (number of images in the dataset) samples; a labeler who
pages through them in order finds `share` of all errors. Paging in random order finds `fraction`;
no order finds more than `best_possible_share` (the images with the most errors first).
"""

from __future__ import annotations

import math
from collections import Counter

from pipelines.review.fo_env import load_dataset
from pipelines.review.inputs import read_json
from pipelines.review.thresholds import load_thresholds, match_results, threshold_for


def errors_per_image(gt_file, results_file, thresholds=None, iou: float = 0.5) -> Counter:
    """image_id -> number of false positives + misses of the shown predictions."""
    gt = read_json(gt_file, "ground-truth COCO json")
    results = read_json(results_file, "predictions file")
    th = load_thresholds(thresholds) if thresholds is not None else None
    m = match_results(gt, results, iou)
    errors: Counter = Counter({im["id"]: 0 for im in gt["images"]})
    for (image_id, cid), d in m.per_image.items():
        t = threshold_for(th, cid) if th is not None else -math.inf
        errors[image_id] += sum(1 for s, c in zip(d["scores"], d["correct"]) if s >= t and c is False)
        errors[image_id] += sum(1 for f in d["gt_found_at"] if f is None or f < t)
    return errors


def error_share_in_view(dataset_name, view_name, gt_file, results_file, thresholds=None,
                        fraction: float = 0.2) -> dict:
    """Share of all errors in the first `fraction` of the images (in the view's order)."""
    dataset = load_dataset(dataset_name)
    errors = errors_per_image(gt_file, results_file, thresholds)
    order = dataset.load_saved_view(view_name).values("image_id")
    n_images = len(dataset)
    k = max(1, math.ceil(fraction * n_images))
    k_view = max(1, math.ceil(fraction * len(order))) if order else 0
    total = sum(errors.values())
    found = sum(errors.get(i, 0) for i in order[:k])
    return {"view": view_name, "images": n_images, "view_images": len(order), "errors_total": total,
            "first_images": k, "errors_found": found, "share": round(found / total, 4) if total else None,
            "first_view_images": k_view, "share_of_view_first_fifth":
                round(sum(errors.get(i, 0) for i in order[:k_view]) / total, 4) if total else None,
            "errors_in_view": sum(errors.get(i, 0) for i in order),
            # an oracle that knows every error: the most any order can find on those pages
            "best_possible_share": round(sum(sorted(errors.values(), reverse=True)[:k]) / total, 4) if total else None,
            "random_share": round(k / n_images, 4) if n_images else None}
