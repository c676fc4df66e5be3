"""Push throughput: 5,000 images x ~7 predicted detections with masks, three cases against the loop.

    .venv/bin/python bench/bench_push.py [--images 5000] [--baseline-images 500] [--tagged 0.1]

Compares `push_predictions` with the obvious loop of one `dataset.add_sample(sample)` per image,
built from the same labels, in three cases: a fresh dataset; a re-push of the same version onto it
(idempotent: no label rewritten, checked); a new version pushed onto it after 10% of the labels
were tagged accept/reject (the old version moves to `predictions_v1`; the bench checks every tag
survived exactly, and nothing is duplicated). The loop runs on a subset and is extrapolated
(printed as such), half of it before the pushes and half after. Every image is a distinct small JPEG file (160x120): samples
are keyed by file path. Uses its own embedded database in a temp folder (or FIFTYONE_DATABASE_URI
if set, with throwaway dataset names).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

W, H = 160, 120


def make_inputs(root: Path, n_images: int, per_image: int, seed: int = 0):
    """Tiny JPEGs and a COCO results file with `per_image` boxes + RLE masks on each."""
    import cv2
    import numpy as np
    from pycocotools import mask as mu

    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    base = (rng.random((H, W, 3)) * 255).astype(np.uint8)
    results = []
    for i in range(1, n_images + 1):
        img = base.copy()
        img[i % H, :] = 255  # distinct content per file, cheaply
        cv2.imwrite(str(images / f"{i:012d}.jpg"), img)
        for _ in range(per_image):
            w, h = int(rng.integers(10, 50)), int(rng.integers(10, 50))
            x, y = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
            m = np.zeros((H, W), dtype=np.uint8)
            cv2.ellipse(m, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, 1, -1)
            rle = mu.encode(np.asfortranarray(m))
            results.append({"image_id": i, "category_id": int(rng.integers(1, 6)), "bbox": [x, y, w, h],
                            "score": round(float(rng.random()), 4),
                            "segmentation": {"size": [H, W], "counts": rle["counts"].decode()}})
    pred = root / "pred.json"
    pred.write_text(json.dumps(results))
    cats = root / "categories.json"
    cats.write_text(json.dumps({"categories": [{"id": k, "name": f"class{k}"} for k in range(1, 6)]}))
    return images, pred, cats, len(results)


def baseline(images: Path, pred: Path, cats: Path, part: slice) -> tuple[float, float]:
    """The obvious code: read the same files, build each image's `fo.Detection`s (boxes, mask crops,
    scores, model_version) and `add_sample` it. Returns (seconds reading the inputs, seconds of the
    loop over the images in `part` of the sorted ids)."""
    import fiftyone as fo
    import numpy as np
    from pycocotools import mask as mu

    from pipelines.review.inputs import list_folder_images, read_predictions
    from pipelines.review.labels import crop_window, relative_box

    t0 = time.perf_counter()
    rows = list_folder_images(images)
    by_image = {}
    for r in read_predictions(pred):
        by_image.setdefault(r["image_id"], []).append(r)
    names = {c["id"]: c["name"] for c in json.loads(cats.read_text())["categories"]}
    ds = fo.Dataset()
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    chosen = sorted(rows)[part]
    for image_id in chosen:
        im = rows[image_id]
        dets = []
        for r in by_image.get(image_id, []):
            full = mu.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
            x0, y0, x1, y1 = crop_window(r["bbox"], im.width, im.height)
            dets.append(fo.Detection(label=names[r["category_id"]], bounding_box=relative_box(r["bbox"], im.width, im.height),
                                     mask=np.ascontiguousarray(full[y0:y1, x0:x1].astype(bool)), confidence=r["score"],
                                     model_version="v1", category_id=r["category_id"]))
        ds.add_sample(fo.Sample(filepath=im.path, image_id=im.image_id, file_name=im.file_name,
                                metadata=fo.ImageMetadata(width=im.width, height=im.height),
                                predictions=fo.Detections(detections=dets)))
    elapsed = time.perf_counter() - t0
    assert len(ds) == len(chosen) and ds.count("predictions.detections.mask") == sum(len(by_image.get(i, [])) for i in chosen)
    ds.delete()
    return setup, elapsed


def tag_labels(ds, share: float, seed: int = 0) -> dict:
    """Tag `share` of the prediction labels accept/reject as a labeler would; returns the tag counts."""
    import random

    ids = ds.values("predictions.detections.id", unwind=True)
    rng = random.Random(seed)
    picked = rng.sample(ids, int(len(ids) * share))
    half = len(picked) // 2
    ds.select_labels(ids=picked[:half]).tag_labels("accept")
    ds.select_labels(ids=picked[half:]).tag_labels("reject")
    return ds.count_label_tags("predictions")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--per-image", type=int, default=7)
    ap.add_argument("--baseline-images", type=int, default=500, help="subset the add_sample loop runs on")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--tagged", type=float, default=0.1, help="share of labels tagged before the new-version push")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-push-"))
    if not os.environ.get("FIFTYONE_DATABASE_URI"):
        os.environ["FIFTYONE_DATABASE_DIR"] = str(tmp / "db")
    from pipelines.review.fo_env import describe_database, fiftyone

    fo = fiftyone()
    t = time.perf_counter()
    images, pred, cats, n_labels = make_inputs(tmp / "data", args.images, args.per_image)
    print(f"inputs: {args.images} JPEGs {W}x{H}, {n_labels} detections with masks ({time.perf_counter() - t:.1f} s)")
    print(f"database: {describe_database()}")
    fo.list_datasets()  # start the database before timing anything

    from pipelines.review.push import push_predictions

    # the loop runs on half its subset before the pushes and half after: a load that changes
    # while the bench runs (a shared machine) weighs on both sides of the ratio alike
    n_base = min(args.baseline_images, args.images)
    baseline(images, pred, cats, slice(0, 1))  # warm-up, untimed: first imports and dataset creation
    before = baseline(images, pred, cats, slice(0, n_base // 2))

    name = f"bench-push-{os.getpid()}"
    kw = dict(categories_file=cats, batch_size=args.batch_size, progress=False)
    t = time.perf_counter()
    out = push_predictions(name, images, pred, "v1", **kw)
    fresh_s = time.perf_counter() - t
    assert out["samples_added"] == args.images and out["predictions_pushed"] == n_labels
    ds = fo.load_dataset(name)
    assert ds.count("predictions.detections") == n_labels and ds.count("predictions.detections.mask") == n_labels

    ids_before = sorted(ds.values("predictions.detections.id", unwind=True))
    t = time.perf_counter()
    again = push_predictions(name, images, pred, "v1", **kw)
    same_s = time.perf_counter() - t
    assert again["samples_added"] == 0 and ds.count("predictions.detections") == n_labels
    assert sorted(ds.values("predictions.detections.id", unwind=True)) == ids_before  # nothing rewritten

    tags = tag_labels(ds, args.tagged)
    t = time.perf_counter()
    v2 = push_predictions(name, images, pred, "v2", **kw)
    new_s = time.perf_counter() - t
    ds.reload()
    assert v2["archived_fields"] == ["predictions_v1"], v2["archived_fields"]
    assert ds.count_label_tags("predictions_v1") == tags, "labeler tags lost or duplicated by the version move"
    assert ds.count("predictions_v1.detections") == n_labels and ds.count("predictions.detections") == n_labels
    assert set(ds.distinct("predictions.detections.model_version")) == {"v2"}
    assert ds.count_label_tags("predictions") == {}
    ds.delete()

    after = baseline(images, pred, cats, slice(n_base // 2, n_base))
    setup_s, loop_s = (before[0] + after[0]) / 2, before[1] + after[1]
    base_total = setup_s + loop_s * args.images / n_base
    base_rate = args.images / base_total
    print(f"add_sample loop: reading inputs {setup_s:.1f} s + {n_base} samples in {loop_s:.1f} s"
          f" (half before the pushes, half after: {before[1]:.1f} s + {after[1]:.1f} s)"
          + (f", extrapolated: {base_total:.0f} s for all {args.images}" if n_base < args.images else "")
          + f" = {base_rate:.0f} samples/s")
    n_tags = sum(tags.values())
    for what, sec in ((f"fresh dataset", fresh_s), ("re-push of the same version (idempotent)", same_s),
                      (f"new version onto a reviewed dataset ({n_tags} of {n_labels} labels tagged, all kept)",
                       new_s)):
        rate = args.images / sec
        print(f"push_predictions, {what}: {args.images} samples in {sec:.1f} s = {rate:.0f} samples/s, "
              f"{rate / base_rate:.1f}x the loop (goal >= 10x)")
    import shutil

    shutil.rmtree(tmp / "data", ignore_errors=True)  # the database folder goes when its mongod has stopped
    return 0


if __name__ == "__main__":
    sys.exit(main())
