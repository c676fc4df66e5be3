"""`lumen review push|queue|app|pull`: model-in-the-loop review in FiftyOne (pipelines.review)."""

from __future__ import annotations

import argparse
import json

from pipelines.review.settings import (ReviewAppSettings, ReviewPushSettings, ReviewQueueSettings,
                                      ReviewThresholdSettings)
from pipelines.settings import add_arguments, values_from_args

DB_NOTE = ("Database: the embedded MongoDB (files in $FIFTYONE_DATABASE_DIR, default ~/.fiftyone), or an external "
           "one with FIFTYONE_DATABASE_URI=mongodb://HOST:PORT.")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("review", help="review predictions in FiftyOne and pull corrections back",
                       description="Model-in-the-loop review: push predictions into a FiftyOne dataset, build the "
                                   "review queue, open the App for labelers, pull their corrections as a new COCO "
                                   "source version. " + DB_NOTE)
    rsub = p.add_subparsers(dest="review_command", metavar="ACTION", required=True)
    _register_thresholds(rsub)
    _register_push(rsub)
    _register_queue(rsub)
    _register_app(rsub)
    _register_pull(rsub)


def _register_push(sub) -> None:
    p = sub.add_parser("push", help="create/update the review dataset with GT, predictions and heatmaps",
                       description="One sample per image: `ground_truth` (where --gt is given), `predictions` "
                                   "(boxes, masks, scores; keypoints go to `predictions_keypoints`), each label "
                                   "carrying model_version; `heatmap` and `heatmap_peaks` from --heatmaps. "
                                   "Re-pushing creates no duplicates; a new --model-version moves the previous "
                                   "version's labels to `predictions_<version>`. Then builds the review queue. "
                                   + DB_NOTE)
    p.add_argument("--dataset", required=True, metavar="NAME", help="FiftyOne dataset (created when absent)")
    p.add_argument("--images", required=True, metavar="DIR", help="image folder the COCO file names are relative to")
    p.add_argument("--gt", metavar="COCO_JSON", help="ground truth: COCO instances or person_keypoints json")
    p.add_argument("--pred", required=True, metavar="COCO_RESULTS", help="predictions: COCO results json (lumen predict)")
    p.add_argument("--heatmaps", metavar="DIR", help="heatmap folder with index.json (default: <pred stem>_heatmaps "
                                                     "next to --pred, when it exists)")
    p.add_argument("--model-version", required=True, metavar="V", help="version of the model that predicted")
    p.add_argument("--categories", metavar="COCO_JSON", help="category names when there is no --gt")
    add_arguments(p, ReviewPushSettings)  # --field, --batch-size
    p.add_argument("--thresholds", metavar="JSON", help="review thresholds (`lumen review thresholds`): only "
                   "detections at or above their class's threshold go to the prediction field, the rest to "
                   "<field>_below_threshold")
    p.add_argument("--no-queue", action="store_true", help="do not rebuild the review queue after the push")
    p.set_defaults(func=_push)


def _push(args) -> int:
    settings = ReviewPushSettings(**values_from_args(args, ReviewPushSettings))  # checked before the database
    from pathlib import Path

    from pipelines.review.push import push_predictions
    from pipelines.review.queue import build_review_queue

    heatmaps = args.heatmaps
    if heatmaps is None:
        guess = Path(args.pred).with_name(Path(args.pred).stem + "_heatmaps")
        heatmaps = str(guess) if (guess / "index.json").is_file() else None
    out = push_predictions(args.dataset, args.images, args.pred, args.model_version, gt_file=args.gt,
                           heatmaps_dir=heatmaps, categories_file=args.categories, thresholds=args.thresholds,
                           **settings.model_dump())
    if not args.no_queue:
        out["queue"] = build_review_queue(args.dataset)
    print(json.dumps(out, indent=2))
    return 0


def _register_thresholds(sub) -> None:
    p = sub.add_parser("thresholds", help="per-class review thresholds (F1-max) from an evaluation split",
                       description="Per class, the score that maximises F1 on the evaluation split (COCO matching, "
                                   "box IoU >= --iou, same class) and a score calibration; written as json for "
                                   "`lumen review push --thresholds`.")
    p.add_argument("--gt", required=True, metavar="COCO_JSON", help="ground truth of the evaluation split")
    p.add_argument("--pred", required=True, metavar="COCO_RESULTS", help="the model version's results on it")
    p.add_argument("--out", required=True, metavar="JSON", help="where to write the thresholds")
    p.add_argument("--model-version", metavar="V", help="recorded in the file")
    add_arguments(p, ReviewThresholdSettings)  # --iou
    p.set_defaults(func=_thresholds)


def _thresholds(args) -> int:
    from pipelines.review.thresholds import compute_thresholds, save_thresholds

    settings = ReviewThresholdSettings(**values_from_args(args, ReviewThresholdSettings))
    th = compute_thresholds(args.gt, args.pred, model_version=args.model_version, **settings.model_dump())
    path = save_thresholds(th, args.out)
    print(json.dumps({"thresholds_file": str(path), "default": th["default"]["threshold"],
                      "classes": {v["name"]: {"threshold": v["threshold"], "f1": v["f1"], "source": v["source"]}
                                  for v in th["classes"].values()}}, indent=2))
    return 0


def _register_queue(sub) -> None:
    p = sub.add_parser("queue", help="(re)build the review queue: evaluation, priorities, saved views",
                       description="COCO-style evaluation against `ground_truth` where it exists (per-label tp/fp/fn), "
                                   "a review_priority per sample (FP confidence, FNs, ambiguous confidence, unexplained "
                                   "heatmap peaks) and the saved views review/likely-wrong, review/possible-missed, "
                                   "review/low-confidence sorted by priority. " + DB_NOTE)
    p.add_argument("--dataset", required=True, metavar="NAME")
    p.add_argument("--model-version", metavar="V", help="evaluate this version's field (default: the latest)")
    add_arguments(p, ReviewQueueSettings)  # --low, --high, --labelers, --session-size, --order
    p.add_argument("--count-since-pull", action="store_true",
                   help="only print how many labels were reviewed since the last pull")
    p.set_defaults(func=_queue)


def _queue(args) -> int:
    settings = ReviewQueueSettings(**values_from_args(args, ReviewQueueSettings))  # checked before the database
    from pipelines.review.queue import build_review_queue, count_review_work

    if args.count_since_pull:
        print(json.dumps({"dataset": args.dataset, "reviewed_since_last_pull": count_review_work(args.dataset)}))
        return 0
    print(json.dumps(build_review_queue(args.dataset, model_version=args.model_version, **settings.model_dump()),
                     indent=2))
    return 0


def _register_app(sub) -> None:
    p = sub.add_parser("app", help="launch the FiftyOne App and print its URL (Ctrl-C stops it)",
                       description="Serve the FiftyOne App on 127.0.0.1 (use --address 0.0.0.0 to let other machines "
                                   "in, e.g. labelers on the network) and print the URL; runs until Ctrl-C. " + DB_NOTE)
    p.add_argument("--dataset", metavar="NAME", help="dataset to open (default: the App's dataset picker)")
    add_arguments(p, ReviewAppSettings)  # --port, --address
    p.add_argument("--labelers", type=int, metavar="N",
                   help="one App per labeler on ports PORT..PORT+N-1, each on its own share of the queue "
                        "(review/labeler-i; review/next for N=1; needs --dataset and `lumen review queue --labelers N`)")
    p.set_defaults(func=_app)


def _app(args) -> int:
    app = ReviewAppSettings(**values_from_args(args, ReviewAppSettings))
    from pipelines.review.app import launch_app, launch_labeler_apps, wait_app

    if args.labelers is not None:
        if not args.dataset:
            raise SystemExit("lumen review app: --labelers needs --dataset")
        for i, url in enumerate(launch_labeler_apps(args.dataset, args.labelers, app.port, app.address), 1):
            print(f"labeler {i}: {url}", flush=True)
        wait_app()
        return 0
    url = launch_app(args.dataset, port=app.port, address=app.address)
    print(url, flush=True)
    wait_app(app.port)
    return 0


def _register_pull(sub) -> None:
    p = sub.add_parser("pull", help="write labelers' corrections as a new numbered COCO version",
                       description="Writes DIR/vNNNN/ (never overwriting): instances_train.json (accepted predictions + "
                                   "corrections per reviewed image, no rejected or unreviewed ones), "
                                   "person_keypoints_train.json where there are keypoints, rejections.json (hard "
                                   "negatives), provenance.json, skipped.json, manifest.json. Without new review work "
                                   "since the last pull, no new version is written and the latest is reported. "
                                   + DB_NOTE)
    p.add_argument("--dataset", required=True, metavar="NAME")
    p.add_argument("--out", required=True, metavar="DIR", help="corrections folder holding the numbered versions")
    p.set_defaults(func=_pull)


def _pull(args) -> int:
    from pipelines.review.pull import pull_corrections

    print(json.dumps(pull_corrections(args.dataset, args.out), indent=2))
    return 0
