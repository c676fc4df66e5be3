"""The review queue: where should a labeler look first?

Every image gets numbers from its shown predictions (`predictions`, at or above the review
thresholds), its hidden ones (`predictions_below_threshold`) and its heatmap peaks:
- P(right) of each prediction: the calibration recorded with the model version's thresholds
  (precision of that class at that score on the evaluation split); without thresholds, the score;
- `review_expected_fp` = sum over shown predictions of 1 - P(right): how many are likely wrong;
- `review_expected_missed` = sum over hidden predictions of P(right) + sum of the values of heatmap
  peaks no shown box explains: how many objects are likely missing;
- `review_uncertain` = number of predictions (shown or hidden) with P(right) in [low, high];
- `review_gain_per_s` = errors a labeler is expected to fix per second of review: the image's errors
  (as in `review_priority`) over its expected review seconds (effort.py's `ActionCosts`: verify each
  shown prediction, draw each (likely) missed object, mask included where `draw_masks`).
Where ground truth exists, FiftyOne's COCO-style evaluation (IoU 0.5) marks every shown prediction
`tp`/`fp` and every ground-truth object `tp`/`fn` (label attribute `review_eval`, per-sample
`review_eval_tp/fp/fn`), and the exact counts replace the estimates: `review_errors` = FP + FN.

`review_priority` (the order of `review/likely-wrong` by default, `order="errors"`) is the number of
errors: exact where ground truth exists (the estimate only breaks ties), estimated
(`review_expected_fp + review_expected_missed`) on pseudo-labels without ground truth. That order gives
a labeler the most work per image, not the most fixed errors per second of their time: with
`order="gain_per_s"` likely-wrong (and so `review/next` and the labelers' shares) is sorted by
`review_gain_per_s` instead, so an image with one cheap likely error comes before one with as many
expected errors among many boxes to verify. Saved views, without images tagged `reviewed`:
- `review/likely-wrong`: an error (GT), or at least half an expected error (no GT), in the chosen order;
- `review/possible-missed`: a missed object (GT), or at least half an expected miss, by
  `review_possible_missed` (misses, then expected misses);
- `review/low-confidence`: a prediction with P(right) in [low, high], by `review_uncertain`.

The likely-wrong view is most of the dataset on a weak model, no list a person finishes. So the
queue also deals its order out in working sessions:
- `review/next`: the first `session_size` open images of likely-wrong, in its order: what one
  labeler does in one sitting; it refills as images are tagged `reviewed`;
- with `labelers=N` > 1, `review/labeler-1` ... `review/labeler-N`: likely-wrong dealt round-robin
  (sample field `review_share`), each sized to a session: every labeler gets an equal share of the
  most useful images, and no image is in two labelers' views.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from pipelines.review import fields as F
from pipelines.review.effort import ActionCosts, gain_per_second
from pipelines.review.fo_env import database_errors, fiftyone, load_dataset
from pipelines.review.reviewed import scan
from pipelines.review.thresholds import precision_at

log = logging.getLogger(__name__)

EVAL_KEY = "review_eval"
VIEWS = ("review/likely-wrong", "review/possible-missed", "review/low-confidence")
SESSION_VIEW = "review/next"  # one working session of likely-wrong (see the module doc)
MIN_EXPECTED = 0.5  # without ground truth: an image joins a view from half an expected error
SESSION_SIZE = F.SESSION_SIZE
SHARE_FIELD = "review_share"
# the orders of review/likely-wrong: name -> the per-sample field sorted on, most first
ORDERS = F.QUEUE_ORDERS


def order_field(order: str) -> str:
    from pipelines.errors import InputError

    if order not in ORDERS:
        raise InputError(f"unknown review queue order {order!r}; expected one of {', '.join(ORDERS)}")
    return ORDERS[order]


def labeler_view_name(i: int) -> str:
    return f"review/labeler-{i}"


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


def _tiebreak(x: float) -> float:
    """Maps [0, inf) into [0, 1), keeping the order: an estimate that never outranks one exact error."""
    return x / (1.0 + x)


def _columns(dataset, paths: list[str]) -> list[list]:
    """`dataset.values` of each path that exists (None lists for the others), in one query."""
    have = [p for p in paths if p == "id" or dataset.get_field(p) is not None]
    vals = dict(zip(have, dataset.values(have))) if len(dataset) and have else {}
    return [vals.get(p, [None] * len(dataset)) for p in paths]


def _evaluate(dataset, field: str) -> tuple[int, int, int]:
    if EVAL_KEY in dataset.list_evaluations():
        dataset.delete_evaluation(EVAL_KEY)
    if F.GROUND_TRUTH not in dataset.get_field_schema():
        return 0, 0, 0
    with_gt = dataset.exists(F.GROUND_TRUTH)
    if not len(with_gt):
        return 0, 0, 0
    with_gt.evaluate_detections(field, gt_field=F.GROUND_TRUTH, eval_key=EVAL_KEY, method="coco", iou=0.5,
                                compute_mAP=False, progress=False)
    return tuple(int(with_gt.sum(f"{EVAL_KEY}_{k}")) for k in ("tp", "fp", "fn"))


def score_samples(dataset, field: str, *, low: float, high: float, has_eval: bool, costs: ActionCosts | None = None,
                  draw_masks: bool = True, view=None) -> dict[str, dict]:
    """Per-sample queue numbers (column name -> {sample id: value}) from plain column reads; of `view`'s
    samples only when given (the images a pool partition just added)."""
    costs = costs or ActionCosts()
    info = F.review_info(dataset)
    dataset = dataset if view is None else view  # the info is the dataset's; the columns are the view's
    versions = dataset.distinct(f"{field}.detections.model_version") if field in dataset.get_field_schema() else []
    thresholds = (info.get("thresholds") or {}).get(versions[0]) if len(versions) == 1 else None
    below = F.below_threshold_field(field)
    sid, conf, cat, bconf, bcat, evals, gt, peaks, fn = _columns(dataset, [
        "id", f"{field}.detections.confidence", f"{field}.detections.category_id", f"{below}.detections.confidence",
        f"{below}.detections.category_id", f"{field}.detections.{EVAL_KEY}", F.GROUND_TRUTH,
        f"{F.PEAKS}.keypoints.heat", f"{EVAL_KEY}_fn"])
    out = {k: {} for k in ("review_priority", "review_errors", "review_expected_fp", "review_expected_missed",
                           "review_likely_wrong", "review_possible_missed", "review_uncertain",
                           "review_gain_per_s")}

    def p_right(cs, ks):
        ks = ks or [None] * len(cs or [])
        return [precision_at(thresholds, k, c) for c, k in zip(cs or [], ks) if c is not None]

    for i, s in enumerate(sid):
        shown, hidden = p_right(conf[i], cat[i]), p_right(bconf[i], bcat[i])
        heat = [v for v in (peaks[i] or []) if v is not None]
        exp_fp = sum(1 - p for p in shown)
        exp_missed = sum(hidden) + sum(heat)
        uncertain = sum(low <= p <= high for p in shown + hidden)
        truth = has_eval and gt[i] is not None
        if truth:
            n_fp = sum(e == "fp" for e in (evals[i] or []))
            n_fn = int(fn[i] or 0)
            errors = n_fp + n_fn
            out["review_errors"][s] = errors
            priority = errors + _tiebreak(exp_fp + exp_missed)
            wrong = errors
            missed = n_fn + _tiebreak(exp_missed)
            in_missed = n_fn > 0
            # what the labeler will do: accept the tp, reject the fp, draw the fn
            review_s = costs.expected_review_s(max(0, len(shown) - n_fp), n_fp, n_fn, masks=draw_masks)
        else:
            priority = wrong = exp_fp + exp_missed
            missed = exp_missed
            in_missed = exp_missed >= MIN_EXPECTED
            review_s = costs.expected_review_s(sum(shown), exp_fp, exp_missed, masks=draw_masks)
        out["review_gain_per_s"][s] = round(gain_per_second(wrong, review_s), 6)
        out["review_priority"][s] = round(priority, 4)
        out["review_expected_fp"][s] = round(exp_fp, 4)
        out["review_expected_missed"][s] = round(exp_missed, 4)
        # the views' membership, as a number > 0 (0 = not in the view)
        out["review_likely_wrong"][s] = round(wrong, 4) if (wrong > 0 if truth else wrong >= MIN_EXPECTED) else 0.0
        out["review_possible_missed"][s] = round(missed, 4) if in_missed else 0.0
        out["review_uncertain"][s] = uncertain
    return out


@database_errors("queue")  # mongod gone mid-way: one line
def build_review_queue(dataset_name, *, model_version=None, low=0.3, high=0.7, labelers: int = 1,
                       session_size: int = SESSION_SIZE, order: str = "errors", costs: ActionCosts | None = None,
                       draw_masks: bool = True, images=None) -> dict:
    """Evaluate, prioritize and save the labelers' views; returns the counts per view. `order`: how
    likely-wrong (and so review/next and the labelers' shares) is sorted, one of `ORDERS`; `costs`,
    `draw_masks`: the seconds behind `review_gain_per_s`.

    `images` (file paths; a pool partition just pushed): only those samples are scored, the others keep
    their numbers, and the saved views (queries, not lists) take the new images in at once. Images with
    ground truth need the whole evaluation: with them the whole dataset is scored as without `images`."""
    from pipelines.errors import InputError

    wrong_order = order_field(order)
    if not isinstance(labelers, int) or labelers < 1:
        raise InputError(f"labelers must be a whole number >= 1, got {labelers!r}")
    if not isinstance(session_size, int) or session_size < 1:
        raise InputError(f"session_size must be a whole number >= 1, got {session_size!r}")
    from fiftyone import ViewField as FF

    fiftyone()
    dataset = load_dataset(dataset_name)
    field = _prediction_field(dataset, model_version)
    if field not in dataset.get_field_schema():
        from pipelines.errors import InputError

        raise InputError(f"dataset {dataset_name!r} has no field {field!r}: push predictions first")
    subset = _new_images_view(dataset, images)
    if subset is None:
        tp, fp, fn = _evaluate(dataset, field)
    else:  # pool images: no ground truth, nothing to evaluate; the stored evaluation of the others stays
        tp = fp = fn = 0
    scores = score_samples(dataset, field, low=low, high=high, has_eval=tp + fp + fn > 0, costs=costs,
                           draw_masks=draw_masks, view=subset)
    for name, vals in scores.items():
        if vals:
            dataset.set_values(name, vals, key_field="id", progress=False)

    open_work = dataset.match_tags(F.REVIEWED_SAMPLE_TAG, bool=False)
    views = {
        "review/likely-wrong": ("review_likely_wrong", wrong_order,
                                "false positives and misses (estimated where there is no ground truth), "
                                + ("most first" if order == "errors" else "most per expected review second first")),
        "review/possible-missed": ("review_possible_missed", "review_possible_missed",
                                   "missed objects, hidden below-threshold predictions, unexplained heatmap peaks"),
        "review/low-confidence": ("review_uncertain", "review_uncertain",
                                  f"predictions whose estimated precision is in [{low}, {high}]"),
    }
    counts = {}
    scored = bool(scores["review_priority"]) or (subset is not None and dataset.has_sample_field("review_priority"))
    for name, (member, sort_field, why) in views.items():
        view = (open_work.match(FF(member) > 0).sort_by(sort_field, reverse=True) if scored
                else open_work.limit(0))
        dataset.save_view(name, view, description=f"{why}; sorted by {sort_field}", overwrite=True)
        counts[name] = len(view)
    counts.update(_save_sessions(dataset, dataset.load_saved_view("review/likely-wrong"), labelers, session_size))
    info = F.review_info(dataset)
    built_at = datetime.now(timezone.utc).replace(tzinfo=None)  # naive UTC text, as datetime.utcnow() gave
    info["queue"] = {"field": field, "built_at": built_at.isoformat(), "low": low, "high": high,
                     "labelers": labelers, "session_size": session_size, "order": order,
                     "costs": (costs or ActionCosts()).as_dict(), "draw_masks": draw_masks}
    F.save_review_info(dataset, info)
    log.info("review queue of %s (%s): tp %d, fp %d, fn %d; %s", dataset_name, field, tp, fp, fn, counts)
    return {"dataset": dataset_name, "field": field, "eval_key": EVAL_KEY if tp + fp + fn else None,
            "tp": tp, "fp": fp, "fn": fn, "views": list(counts), "view_counts": counts,
            "samples_prioritized": len(scores["review_priority"]), "incremental": subset is not None}


def _new_images_view(dataset, images):
    """The view of `images` to score alone, or None when the whole dataset must be scored (no `images`,
    or some of them have ground truth, whose evaluation is over the whole dataset)."""
    if images is None:
        return None
    view = dataset.select_by("filepath", [str(p) for p in images])
    if F.GROUND_TRUTH in dataset.get_field_schema() and len(view.exists(F.GROUND_TRUTH)):
        return None
    return view


def _save_sessions(dataset, likely_wrong, labelers: int, session_size: int) -> dict[str, int]:
    """`review/next` and, for several labelers, their disjoint shares (see the module doc)."""
    from fiftyone import ViewField as FF

    counts = {}
    view = likely_wrong.limit(session_size)
    dataset.save_view(SESSION_VIEW, view, overwrite=True,
                      description=f"the next {session_size} images of review/likely-wrong: one working session")
    counts[SESSION_VIEW] = len(view)
    stale = [n for n in dataset.list_saved_views() if n.startswith("review/labeler-")]
    for name in stale:  # a queue for fewer labelers than before must not leave old shares behind
        dataset.delete_saved_view(name)
    if labelers == 1:
        return counts
    ids = likely_wrong.values("id")
    dataset.set_values(SHARE_FIELD, {sid: 1 + k % labelers for k, sid in enumerate(ids)}, key_field="id",
                       progress=False)
    for i in range(1, labelers + 1):
        share = likely_wrong.match(FF(SHARE_FIELD) == i).limit(session_size)
        dataset.save_view(labeler_view_name(i), share, overwrite=True,
                          description=f"labeler {i} of {labelers}: every {labelers}th image of review/likely-wrong, "
                                      f"the next {session_size}")
        counts[labeler_view_name(i)] = len(share)
    return counts


@database_errors("queue")  # mongod gone mid-way: one line
def count_review_work(dataset_name, since=None) -> int:
    """Reviewed labels the last pull has not seen: new or changed accept/reject tags and
    corrections, plus reviews withdrawn since (a tag removed, a correction deleted).

    `since` (a datetime) only narrows the scan to samples modified after it (cheaper for a sensor);
    what counts is always the difference to the last pull. 0 when the dataset does not exist yet.
    """
    fo = fiftyone()
    if not fo.dataset_exists(dataset_name):
        return 0
    dataset = load_dataset(dataset_name)  # reloaded: a long-lived process (the sensor's) may hold a stale one
    states = scan(dataset, since=since)
    marked_before = F.review_info(dataset).get("last_pull", {}).get("marked", 0)
    all_states = (states if since is None else scan(dataset)) if marked_before else None
    return review_work_count(dataset, states, all_states)


def review_work_count(dataset, states, all_states=None) -> int:
    """`count_review_work` from review states already scanned: `states` (changed since the last pull?) and,
    after a pull that marked labels, `all_states` (every label, to count the deleted corrections)."""
    changed = sum(1 for s in states if s.signature != s.pulled)
    # corrections deleted after a pull leave no label behind to compare: count them by number
    marked_before = F.review_info(dataset).get("last_pull", {}).get("marked", 0)
    if not marked_before:
        return changed
    marked_now = sum(1 for s in all_states if s.pulled is not None)
    return changed + max(0, marked_before - marked_now)


def refresh_review_queue(dataset_name, images) -> dict:
    """Score `images` (just pushed) into the queue as it was last built: the same labelers, session size,
    order and uncertainty band (a pool partition's push must not drop the labelers' shares)."""
    fiftyone()
    settings = F.review_info(load_dataset(dataset_name)).get("queue") or {}
    try:
        costs = ActionCosts(**settings["costs"]) if isinstance(settings.get("costs"), dict) else None
    except TypeError:  # recorded by another version of ActionCosts: the default seconds
        costs = None
    keep = {k: settings[k] for k in ("low", "high", "labelers", "session_size", "order", "draw_masks") if k in settings}
    return build_review_queue(dataset_name, images=images, costs=costs, **keep)
