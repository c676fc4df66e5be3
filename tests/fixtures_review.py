"""Fixtures of the review area: an isolated FiftyOne database and prediction INPUT files.

The FiftyOne database must be chosen before anything imports fiftyone, so this module (loaded
as a pytest plugin by conftest.py, before any test module) points the embedded MongoDB at a temp
folder for the whole session unless an external `FIFTYONE_DATABASE_URI` was given on purpose.

`write_prediction_input` writes what `lumen predict` writes (COCO results json + heatmap PNGs
with index.json) from the demo ground truth, perturbed the way a model errs: boxes jittered,
some objects dropped (misses), some extra boxes (false positives), scores spread over [0.2, 1].
It is test input data, clearly named, not a model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

_DB_PREFIX = "lumen-test-fiftyone-db-"


def _remove_stale_databases() -> None:
    """Earlier sessions' database folders. Not removed at exit: FiftyOne stops mongod only after
    this process ends. A folder whose mongod.lock is non-empty belongs to a running mongod; a
    young one may belong to a session that has not started its mongod yet."""
    import time

    for d in Path(tempfile.gettempdir()).glob(_DB_PREFIX + "*"):
        lock = d / "mongod.lock"
        if time.time() - d.stat().st_mtime > 3 * 3600 and not (lock.exists() and lock.stat().st_size > 0):
            shutil.rmtree(d, ignore_errors=True)


def _remove_if_unused(folder: str) -> None:
    """At exit: this session's database folder when no mongod ever wrote to it (most test runs touch no
    FiftyOne); a used one is left to `_remove_stale_databases` of a later session."""
    try:
        os.rmdir(folder)  # only an empty folder
    except OSError:
        pass


if not os.environ.get("FIFTYONE_DATABASE_URI"):
    import atexit

    _remove_stale_databases()
    if os.environ.get("PYTEST_XDIST_TESTRUNUID"):
        # `pytest -n 2` (the quick tier): FiftyOne attaches every process of the machine to the embedded database
        # that runs already, so the workers of one run share one database folder on purpose (their datasets
        # have unique names) rather than the second one refusing the first one's database
        folder = Path(tempfile.gettempdir()) / f"{_DB_PREFIX}xdist-{os.environ['PYTEST_XDIST_TESTRUNUID']}"
        folder.mkdir(exist_ok=True)
        os.environ["FIFTYONE_DATABASE_DIR"] = str(folder)
    else:
        os.environ["FIFTYONE_DATABASE_DIR"] = tempfile.mkdtemp(prefix=_DB_PREFIX)
    atexit.register(_remove_if_unused, os.environ["FIFTYONE_DATABASE_DIR"])
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

INPUT_SIZE, HEATMAP_SIZE = 128, 32  # the tiny preset's S and M


def write_prediction_input(coco_dir, out_file, *, split="val", seed=0, drop=0.2, extra=0.3, jitter=0.05,
                           masks=True, keypoints=False, heatmaps=True, score_range=(0.2, 1.0), fp_score_range=None,
                           low_score_tail=0) -> dict:
    """Write a COCO results file (+ `<stem>_heatmaps/`) derived from the demo GT; returns what was done:
    which GT annotations were dropped (misses) and how many extra boxes were added.

    `fp_score_range`: scores of the extra (false positive) boxes, when a model is less sure of its
    mistakes than of its hits (default: `score_range`). `low_score_tail`: per image, that many more
    boxes at scores in [0.01, 0.15), like the long low-score tail a detector writes for COCO AP."""
    from pipelines.geometry import SquarePad
    from pipelines.heatmaps import encode_png, gaussian_radius, render_heatmap
    from pipelines.sources.coco import to_rles

    rng = np.random.default_rng(seed)
    coco_dir, out_file = Path(coco_dir), Path(out_file)
    name = f"person_keypoints_{split}.json" if keypoints else f"instances_{split}.json"
    gt = json.loads((coco_dir / "annotations" / name).read_text())
    images = {im["id"]: im for im in gt["images"]}
    cat_ids = [c["id"] for c in gt["categories"]]
    by_image = defaultdict(list)
    for a in gt["annotations"]:
        by_image[a["image_id"]].append(a)
    results, dropped, index = [], [], []
    heat_dir = out_file.with_name(out_file.stem + "_heatmaps")
    if heatmaps:
        heat_dir.mkdir(parents=True, exist_ok=True)
    for image_id, im in sorted(images.items()):
        w, h = im["width"], im["height"]
        anns = by_image.get(image_id, [])
        rles = to_rles([a.get("segmentation") for a in anns], h, w)
        for a, rle in zip(anns, rles):
            if rng.random() < drop:
                dropped.append(a["id"])
                continue
            x, y, bw, bh = a["bbox"]
            dx, dy = rng.normal(0, jitter) * bw, rng.normal(0, jitter) * bh
            box = [round(max(0.0, x + dx), 2), round(max(0.0, y + dy), 2), round(bw, 2), round(bh, 2)]
            r = {"image_id": image_id, "category_id": a["category_id"], "bbox": box,
                 "score": round(float(rng.uniform(*score_range)), 5)}
            if masks and not keypoints and rle is not None:
                r["segmentation"] = rle
            if keypoints:
                kp = np.asarray(a["keypoints"], dtype=float).reshape(-1, 3)
                kp[:, :2] += rng.normal(0, 1.0, (len(kp), 2)) * (kp[:, 2:] > 0)  # unlabeled points stay 0
                r["keypoints"] = [round(float(v), 2) for v in kp.reshape(-1)]
            results.append(r)
        if not keypoints and rng.random() < extra:  # a false positive somewhere in the image
            bw, bh = w * 0.2, h * 0.2
            results.append({"image_id": image_id, "category_id": int(rng.choice(cat_ids)),
                            "bbox": [round(float(rng.uniform(0, w - bw)), 2), round(float(rng.uniform(0, h - bh)), 2),
                                     round(bw, 2), round(bh, 2)],
                            "score": round(float(rng.uniform(*(fp_score_range or score_range))), 5)})
        for _ in range(low_score_tail if not keypoints else 0):
            bw, bh = w * float(rng.uniform(0.1, 0.3)), h * float(rng.uniform(0.1, 0.3))
            results.append({"image_id": image_id, "category_id": int(rng.choice(cat_ids)),
                            "bbox": [round(float(rng.uniform(0, w - bw)), 2), round(float(rng.uniform(0, h - bh)), 2),
                                     round(bw, 2), round(bh, 2)],
                            "score": round(float(rng.uniform(0.01, 0.15)), 5)})
        if heatmaps:  # like predict: one map per (image, category); every GT object shows, dropped ones too
            geo = SquarePad(w, h, INPUT_SIZE, HEATMAP_SIZE)
            for cid in cat_ids:
                boxes = np.array([a["bbox"] for a in anns if a["category_id"] == cid], dtype=float).reshape(-1, 4)
                centers = geo.center_pixels(boxes)
                wh = boxes[:, 2:] * geo.scale / geo.heatmap_stride  # in heatmap pixels
                heat = render_heatmap(centers, gaussian_radius(np.ceil(wh[:, 1]), np.ceil(wh[:, 0])), HEATMAP_SIZE)
                # a model's map never reaches zero: its background sits at 1-2 % of the peak (its own
                # generator: the perturbations above stay what they were)
                floor = np.random.default_rng([image_id, cid]).uniform(0.01, 0.02, heat.shape)
                heat = np.maximum(heat, floor)
                fname = f"{image_id}_{cid}.png"
                (heat_dir / fname).write_bytes(encode_png(heat))
                index.append({"image_id": image_id, "task": "pose" if keypoints else "instance_segmentation",
                              "category_id": cid, "expression": None, "file": fname,
                              "input_size": INPUT_SIZE, "heatmap_size": HEATMAP_SIZE})
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(results))
    if heatmaps:
        (heat_dir / "index.json").write_text(json.dumps(index))
    return {"results": len(results), "dropped": dropped, "heatmaps_dir": heat_dir if heatmaps else None,
            "gt_file": coco_dir / "annotations" / name}


@pytest.fixture(scope="session")
def review_sources(tmp_path_factory):
    """A small demo COCO source of its own (16 images), so review tests need not wait for others."""
    from pipelines.sample_data import write_sample_data

    root = tmp_path_factory.mktemp("review-sources")
    write_sample_data(root, n_images=16, seed=3)
    return root / "coco"


@pytest.fixture
def fo_dataset_name(request):
    """A unique dataset name per test, deleted afterwards. Connects through the project first: a test
    that then uses fiftyone directly is on this session's database, not on one that runs elsewhere."""
    import re
    import uuid

    from pipelines.review.fo_env import fiftyone

    fiftyone()

    name = f"test-{re.sub(r'[^a-z0-9]+', '-', request.node.name.lower())[:40]}-{uuid.uuid4().hex[:6]}"
    yield name
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)
