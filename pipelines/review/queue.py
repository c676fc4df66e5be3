"""The review queue: where should a labeler look first?

- Where ground truth exists, FiftyOne's COCO-style evaluation marks every predicted label `tp` or
  `fp` and every ground-truth label `tp` or `fn` (label attribute `review_eval`; per-sample counts
  `review_eval_tp/fp/fn`).
- Every sample gets a `review_priority`:
      sum of FP confidences (confident mistakes first) + number of FNs
    + sum over predictions of the ambiguity 1 - |2c - 1| (1 at c = 0.5, 0 at c = 0 or 1)
    + sum of the values of heatmap peaks no predicted box explains (`heatmap_peaks`).
  Without ground truth only the last two terms count: that is the pseudo-labels' priority.
- Saved views, each sorted by `review_priority` (highest first), without samples tagged `reviewed`:
  `review/likely-wrong` (an FP, or without GT a prediction below `low`),
  `review/possible-missed` (an FN, or an unexplained heatmap peak),
  `review/low-confidence` (a prediction with confidence in [low, high]).
"""

from __future__ import annotations

import logging
from datetime import datetime

from pipelines.review import fields as F
from pipelines.review.fo_env import fiftyone, load_dataset
from pipelines.review.reviewed import scan

log = logging.getLogger(__name__)

EVAL_KEY = "review_eval"
VIEWS = ("review/likely-wrong", "review/possible-missed", "review/low-confidence")


def _prediction_field(dataset, model_version) -> str:
    info = F.review_info(dataset)
    base = info.get("field", "predictions")
    if model_version is None:
        return base
    for name in (base, F.archive_field(base, model_version)):
        if name in dataset.get_field_schema() and model_version in dataset.distinct(f"{name}.detections.model_version"):
            return name
    from pipelines.errors import InputError

    raise InputError(f"no predictions of model version {model_version!r} in dataset {dataset.name!r}")


def build_review_queue(dataset_name, *, model_version=None, low=0.3, high=0.7) -> dict:
    """Evaluate, prioritize and save the labelers' views; returns the counts per view."""
    fo = fiftyone()
    from fiftyone import ViewField as FF

    dataset = load_dataset(dataset_name)
    field = _prediction_field(dataset, model_version)
    if field not in dataset.get_field_schema():
        from pipelines.errors import InputError

        raise InputError(f"dataset {dataset_name!r} has no field {field!r}: push predictions first")

    tp = fp = fn = 0
    has_gt = F.GROUND_TRUTH in dataset.get_field_schema()
    if EVAL_KEY in dataset.list_evaluations():
        dataset.delete_evaluation(EVAL_KEY)
    if has_gt:
        with_gt = dataset.exists(F.GROUND_TRUTH)
        if len(with_gt):
            results = with_gt.evaluate_detections(field, gt_field=F.GROUND_TRUTH, eval_key=EVAL_KEY, method="coco",
                                                  iou=0.5, compute_mAP=False, progress=False)
            tp, fp, fn = (int(with_gt.sum(f"{EVAL_KEY}_{k}")) for k in ("tp", "fp", "fn"))
            del results

    # per-sample priority from plain values (one query per column, no per-sample save)
    schema = dataset.get_field_schema()
    cols = ["id", f"{field}.detections.confidence"]
    if has_gt:
        cols += [f"{field}.detections.{EVAL_KEY}", F.GROUND_TRUTH]
    peaks_col = f"{F.PEAKS}.keypoints.heat" if F.PEAKS in schema and dataset.get_field(
        f"{F.PEAKS}.keypoints.heat") is not None else None
    if peaks_col:
        cols.append(peaks_col)
    values = dataset.values(cols) if len(dataset) else [[] for _ in cols]
    priority, wrong, missed, uncertain = {}, {}, {}, {}
    gt_fn = dict(zip(values[0], dataset.values(f"{EVAL_KEY}_fn"))) if has_gt and tp + fp + fn else {}
    for i, sid in enumerate(values[0]):
        confs = [c for c in (values[1][i] or []) if c is not None]
        evals = values[2][i] or [] if has_gt else []
        has_truth = has_gt and values[3][i] is not None
        peaks = [v for v in ((values[-1][i] or []) if peaks_col else []) if v is not None]
        fps = [c for c, e in zip(confs, evals) if e == "fp"]
        n_fn = int(gt_fn.get(sid) or 0)
        ambiguity = sum(1 - abs(2 * c - 1) for c in confs)
        priority[sid] = round(sum(fps) + n_fn + ambiguity + sum(peaks), 4)
        wrong[sid] = len(fps) if has_truth else sum(c < low for c in confs)
        missed[sid] = n_fn + len(peaks)
        uncertain[sid] = sum(low <= c <= high for c in confs)
    for name, vals in (("review_priority", priority), ("review_likely_wrong", wrong),
                       ("review_possible_missed", missed), ("review_uncertain", uncertain)):
        if vals:
            dataset.set_values(name, vals, key_field="id", progress=False)

    open_work = dataset.match_tags(F.REVIEWED_SAMPLE_TAG, bool=False)
    views = {
        "review/likely-wrong": (FF("review_likely_wrong") > 0, "false positives, or weak pseudo-labels"),
        "review/possible-missed": (FF("review_possible_missed") > 0, "missed objects or unexplained heatmap peaks"),
        "review/low-confidence": (FF("review_uncertain") > 0, f"predictions with confidence in [{low}, {high}]"),
    }
    counts = {}
    for name, (cond, why) in views.items():
        view = open_work.match(cond).sort_by("review_priority", reverse=True) if priority else open_work.limit(0)
        dataset.save_view(name, view, description=f"{why}; highest review_priority first", overwrite=True)
        counts[name] = len(view)
    info = F.review_info(dataset)
    info["queue"] = {"field": field, "built_at": datetime.utcnow().isoformat(), "low": low, "high": high}
    F.save_review_info(dataset, info)
    log.info("review queue of %s (%s): tp %d, fp %d, fn %d; %s", dataset_name, field, tp, fp, fn, counts)
    return {"dataset": dataset_name, "field": field, "eval_key": EVAL_KEY if has_gt else None,
            "tp": tp, "fp": fp, "fn": fn, "views": list(views), "view_counts": counts,
            "samples_prioritized": len(priority)}


def count_review_work(dataset_name, since=None) -> int:
    """Reviewed labels the last pull has not seen: new or changed accept/reject tags and
    corrections, plus reviews withdrawn since (a tag removed, a correction deleted).

    `since` (a datetime) only narrows the scan to samples modified after it (cheaper for a sensor);
    what counts is always the difference to the last pull. 0 when the dataset does not exist yet.
    """
    fo = fiftyone()
    if not fo.dataset_exists(dataset_name):
        return 0
    dataset = fo.load_dataset(dataset_name)
    states = scan(dataset, since=since)
    changed = sum(1 for s in states if s.signature != s.pulled)
    # corrections deleted after a pull leave no label behind to compare: count them by number
    marked_before = F.review_info(dataset).get("last_pull", {}).get("marked", 0)
    marked_now = sum(1 for s in scan(dataset) if s.pulled is not None) if marked_before else 0
    return changed + max(0, marked_before - marked_now)
