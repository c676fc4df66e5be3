"""Does the review queue triage? The share of all prediction errors in the first 20% of `review/likely-wrong`.

    .venv/bin/python bench/bench_triage.py [--gt GT.json] [--pred RESULTS.json] [--images DIR] [--heatmaps DIR]
    .venv/bin/python bench/bench_triage.py --synthetic    # no trained model needed

Defaults: the main command's outputs on the demo val split (`var/sources/coco/annotations/
instances_val.json`, the newest `var/predictions/eval/vNNNN/segm.json`, its `*_heatmaps` folder or
the pseudo-labels' one when present). Uses its own embedded FiftyOne database in a temp folder.

Runs the push + queue three ways and prints, for each, the view sizes and the share of all errors
(false positives + misses of the shown predictions, IoU >= 0.5, same class) on the first 20% of the
images in `review/likely-wrong` order (random order finds 20%; goal >= 60%):
1. before: every prediction pushed (no thresholds), ground truth in the dataset;
2. thresholds (per-class F1 cut on this same split) + ground truth in the dataset (the demo's case);
3. thresholds, no ground truth in the dataset (pseudo-labels of an unlabeled pool): the estimate
   from calibrated scores, hidden predictions and heatmap peaks, scored afterwards against the GT.
The thresholds are chosen on the split they are measured on (in-sample: the demo evaluates and
pseudo-labels the same val split); `--thresholds-gt/--thresholds-pred` choose them elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _newest(pattern: str) -> Path | None:
    found = sorted(ROOT.glob(pattern))
    return found[-1] if found else None


def _synthetic(root: Path) -> tuple[str, str, str, str]:
    from pipelines.sample_data import write_sample_data
    from tests.fixtures_review import write_prediction_input

    write_sample_data(root, n_images=400, seed=0)
    info = write_prediction_input(root / "coco", root / "pred" / "segm.json", split="val", seed=5, drop=0.15,
                                  extra=0.5, score_range=(0.35, 1.0), fp_score_range=(0.1, 0.6), low_score_tail=8)
    return str(info["gt_file"]), str(root / "pred" / "segm.json"), str(root / "coco" / "images"), str(info["heatmaps_dir"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gt", default=str(ROOT / "var/sources/coco/annotations/instances_val.json"))
    ap.add_argument("--pred", default=None, help="COCO results (default: newest var/predictions/eval/v*/segm.json)")
    ap.add_argument("--images", default=str(ROOT / "var/sources/coco/images"))
    ap.add_argument("--heatmaps", default=None, help="heatmap folder with index.json (default: found next to --pred "
                                                     "or under var/predictions/pseudo/)")
    ap.add_argument("--thresholds-gt", default=None, help="choose thresholds on this GT (default: --gt)")
    ap.add_argument("--thresholds-pred", default=None, help="... and these results (default: --pred)")
    ap.add_argument("--fraction", type=float, default=0.2)
    ap.add_argument("--synthetic", action="store_true",
                    help="no model needed: the demo sources (400 images, seed 0) and predictions derived from their "
                         "val GT (tests/fixtures_review.py: hits scored 0.35-1, 15%% missed, false positives 0.1-0.6 "
                         "on half the images, 8 low-score boxes per image, seed 5)")
    args = ap.parse_args()
    if args.synthetic:
        args.gt, args.pred, args.images, args.heatmaps = _synthetic(Path(tempfile.mkdtemp(prefix="bench-triage-data-")))
    pred = Path(args.pred) if args.pred else _newest("var/predictions/eval/v*/segm.json")
    if pred is None or not pred.is_file() or not Path(args.gt).is_file():
        print(f"no predictions / GT found (pred={pred}, gt={args.gt}): run `bash scripts/main.sh` first "
              "or pass --gt/--pred/--images", file=sys.stderr)
        return 2
    heatmaps = args.heatmaps
    if heatmaps is None:
        for cand in [pred.with_name(pred.stem + "_heatmaps"),
                     *sorted(ROOT.glob("var/predictions/pseudo/v*/*_heatmaps"))[-1:]]:
            if (cand / "index.json").is_file():
                heatmaps = str(cand)
                break

    tmp = Path(tempfile.mkdtemp(prefix="bench-triage-"))
    if not os.environ.get("FIFTYONE_DATABASE_URI"):
        os.environ["FIFTYONE_DATABASE_DIR"] = str(tmp / "db")
    from pipelines.review.fo_env import fiftyone
    from pipelines.review.push import push_predictions
    from pipelines.review.queue import build_review_queue
    from pipelines.review.thresholds import compute_thresholds, save_thresholds
    from pipelines.review.triage import error_share_in_view, errors_per_image

    fo = fiftyone()
    fo.list_datasets()
    th = compute_thresholds(args.thresholds_gt or args.gt, args.thresholds_pred or pred)
    save_thresholds(th, tmp / "thresholds.json")
    gt = json.loads(Path(args.gt).read_text())
    results = json.loads(pred.read_text())
    print(f"ground truth: {len(gt['images'])} images, {len(gt['annotations'])} objects; predictions: {len(results)} "
          f"({pred}); heatmaps: {heatmaps or 'none'}")
    print("review thresholds (per class, F1-max at IoU 0.5): " + ", ".join(
        f"{c['name']} {c['threshold']:.3f} (F1 {c['f1']:.2f}{'' if c['source'] == 'class' else ', pooled'})"
        for c in th["classes"].values()))
    cases = [("before: all predictions, GT in dataset", None, True),
             ("thresholds, GT in dataset", th, True),
             ("thresholds, no GT (pseudo-label estimate)", th, False)]
    rows = []
    for i, (what, thresholds, with_gt) in enumerate(cases):
        name = f"bench-triage-{os.getpid()}-{i}"
        t = time.perf_counter()
        kw = {"gt_file": args.gt} if with_gt else {"categories_file": args.gt}
        out = push_predictions(name, args.images, pred, "v0001", heatmaps_dir=heatmaps, thresholds=thresholds,
                               progress=False, **kw)
        q = build_review_queue(name)
        seconds = time.perf_counter() - t
        m = error_share_in_view(name, "review/likely-wrong", args.gt, pred, thresholds, fraction=args.fraction)
        errors = errors_per_image(args.gt, pred, thresholds)
        rows.append((what, out, q, m, seconds, sum(errors.values())))
        fo.delete_dataset(name)
    for what, out, q, m, seconds, n_err in rows:
        print(f"\n{what}:")
        print(f"  predictions shown {out['predictions_pushed']}, hidden {out['predictions_below_threshold']}; "
              f"errors of the shown ones (FP + misses): {n_err}")
        print("  views: " + ", ".join(f"{k} {v}" for k, v in q["view_counts"].items()) + f" of {m['images']} images")
        print(f"  share of all errors in the first {m['first_images']} images ({args.fraction:.0%}) of "
              f"review/likely-wrong: {m['share']:.1%} (random order: {m['random_share']:.0%}, best possible order: "
              f"{m['best_possible_share']:.1%}); "
              f"in the first {args.fraction:.0%} of the view itself ({m['first_view_images']} images): "
              f"{m['share_of_view_first_fifth']:.1%}  [{seconds:.1f} s push + queue]")
    goal = rows[1][3]["share"]
    print(f"\nRESULT share of errors in the first {args.fraction:.0%} of review/likely-wrong (thresholds, GT): "
          f"{goal:.1%} (goal >= 60%; best possible {rows[1][3]['best_possible_share']:.1%}); without GT: {rows[2][3]['share']:.1%}; before: {rows[0][3]['share']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
