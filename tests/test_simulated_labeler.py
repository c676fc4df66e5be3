"""The simulated labeler of bench/bench_loop.py (bench/simulated_labeler.py) on a real FiftyOne
database: it follows the review queue (either order) within its budget and counts exactly what it did,
per action kind, which the cost model turns into a person's seconds; a real pull sees the same counts."""

from __future__ import annotations

import json

import pytest

from bench.simulated_labeler import label, queue_order, random_order
from pipelines.errors import InputError
from pipelines.review.effort import ActionCosts
from pipelines.review.pull import pull_corrections
from pipelines.review.push import push_predictions
from pipelines.review.queue import build_review_queue


def _predictions(gt: dict) -> tuple[list[dict], dict]:
    """Per true object k: k % 3 == 0 found (plus a weaker duplicate), 1 found with the wrong class,
    2 missed; plus one far-off small box per image. Returns results and the expected counts per image
    (`masks_drawn`: the drawn objects that have a mask in the truth)."""
    cats = sorted(c["id"] for c in gt["categories"])
    results, expect = [], {}
    for im in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"]]
        e = {"accepts": 0, "rejects": 1, "boxes_drawn": 0, "masks_drawn": 0}
        results.append({"image_id": im["id"], "category_id": cats[0], "bbox": [0.0, 0.0, 2.0, 2.0], "score": 0.2})
        for k, a in enumerate(anns):
            if k % 3 == 0:
                results.append({"image_id": im["id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9})
                results.append({"image_id": im["id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.6})
                e["accepts"] += 1
                e["rejects"] += 1
            elif k % 3 == 1:
                wrong = next(c for c in cats if c != a["category_id"])
                results.append({"image_id": im["id"], "category_id": wrong, "bbox": a["bbox"], "score": 0.5})
                e["rejects"] += 1
                e["boxes_drawn"] += 1
                e["masks_drawn"] += bool(a.get("segmentation"))
            else:
                e["boxes_drawn"] += 1
                e["masks_drawn"] += bool(a.get("segmentation"))
        expect[im["id"]] = e
    return results, expect


def test_labeler_follows_the_queue_within_budget_and_counts_its_actions(review_sources, tmp_path, fo_dataset_name):
    import fiftyone as fo

    truth = review_sources / "annotations" / "instances_train.json"
    gt = json.loads(truth.read_text())
    results, expect = _predictions(gt)
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(results))
    # pushed like pool pseudo-labels: no ground truth in the dataset, only the categories
    push_predictions(fo_dataset_name, review_sources / "images", pred, "v0001", categories_file=truth, progress=False)
    build_review_queue(fo_dataset_name)
    ds = fo.load_dataset(fo_dataset_name)
    order = queue_order(ds)
    priorities = dict(zip(*ds.values(["id", "review_priority"])))
    assert len(order) == len(gt["images"]) and [priorities[i] for i in order] == sorted(priorities.values(), reverse=True)

    budget = 5
    counts = label(fo_dataset_name, truth, order, budget=budget, mode="review")
    image_of = dict(zip(*ds.values(["id", "image_id"])))
    chosen = [image_of[i] for i in order[:budget]]
    want = {k: sum(expect[i][k] for i in chosen) for k in ("accepts", "rejects", "boxes_drawn", "masks_drawn")}
    got = counts.as_dict()
    assert {k: got[k] for k in ("images", "images_opened", *want, "prompts")} == {
        "images": budget, "images_opened": budget, **want, "prompts": 0}
    assert got["actions"] == want["accepts"] + want["rejects"] + want["boxes_drawn"]
    assert want["accepts"] > 0 and want["masks_drawn"] > 0
    # per action kind: an object drawn with its mask is a draw_mask, one without a draw_box
    kinds = {"accept": want["accepts"], "reject": want["rejects"], "draw_box": want["boxes_drawn"] - want["masks_drawn"],
             "draw_mask": want["masks_drawn"], "image": budget, "prompt": 0}
    assert got["by_kind"] == counts.by_kind() == kinds
    seconds = ActionCosts().seconds(counts.by_kind())
    assert seconds["total"] == pytest.approx(2.0 * (want["accepts"] + want["rejects"]) + 79.2 * want["masks_drawn"]
                                             + 7.0 * (want["boxes_drawn"] - want["masks_drawn"]))
    ds.reload()
    assert sorted(ds.match_tags("reviewed").values("image_id")) == sorted(chosen)  # those images, no other
    assert queue_order(ds) == order[budget:]  # reviewed images leave the queue
    # the cost-aware order reads the field the queue's likely-wrong view sorts on with order="gain_per_s"
    gains = dict(zip(*ds.values(["id", "review_gain_per_s"])))
    by_gain = queue_order(ds, "gain_per_s")
    assert sorted(by_gain) == sorted(order[budget:])
    assert [gains[i] for i in by_gain] == sorted(gains[i] for i in by_gain)[::-1]
    with pytest.raises(InputError, match="unknown review queue order"):
        queue_order(ds, "most-boxes")

    pulled = pull_corrections(fo_dataset_name, tmp_path / "corrections", progress=False)
    assert (pulled["images"], pulled["accepted"], pulled["rejections"], pulled["corrections"]) == (
        budget, want["accepts"], want["rejects"], want["boxes_drawn"])
    coco = json.loads((tmp_path / "corrections" / pulled["version"] / "instances_train.json").read_text())
    drawn = [a for a in coco["annotations"] if a["review_action"] == "correct"]
    assert drawn and all(a.get("segmentation") for a in drawn)  # drawn objects carry their masks


def test_scratch_draws_every_object_and_random_order_is_seeded(review_sources, tmp_path, fo_dataset_name):
    import fiftyone as fo

    truth = review_sources / "annotations" / "instances_train.json"
    gt = json.loads(truth.read_text())
    results, _ = _predictions(gt)
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(results))
    push_predictions(fo_dataset_name, review_sources / "images", pred, "v0001", categories_file=truth, progress=False)
    ds = fo.load_dataset(fo_dataset_name)
    order = random_order(ds, seed=1)
    assert order == random_order(ds, seed=1) != random_order(ds, seed=2)
    counts = label(fo_dataset_name, truth, order, budget=3, mode="scratch")
    image_of = dict(zip(*ds.values(["id", "image_id"])))
    chosen = {image_of[i] for i in order[:3]}
    objects = [a for a in gt["annotations"] if not a["iscrowd"] and a["image_id"] in chosen]
    masks = sum(bool(a.get("segmentation")) for a in objects)
    assert counts.by_kind() == {"accept": 0, "reject": 0, "draw_box": len(objects) - masks, "draw_mask": masks,
                                "image": 3, "prompt": 0}
    assert (counts.images, counts.boxes_drawn, counts.actions) == (3, len(objects), len(objects))
    # self-training: every shown label accepted, no person involved, no time
    rest = label(fo_dataset_name, truth, order[3:], budget=None, mode="accept_all")
    assert rest.images == len(order) - 3 and rest.accepts == 0
    assert ActionCosts().seconds(rest.by_kind())["total"] == 0.0
