"""The simulated labeler of bench/bench_loop.py (bench/simulated_labeler.py) on a real FiftyOne
database: it follows the review queue (either order) within its budget and counts exactly what it did,
per action kind, which the cost model turns into a person's seconds; a real pull sees the same counts."""

from __future__ import annotations

import json

import pytest

from bench.simulated_labeler import label, queue_order, random_order
from pipelines.errors import InputError
from pipelines.review import fields as F
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


# ---- arm F: prompted corrections ---------------------------------------------------------------------
POOL_SEED = 5


@pytest.fixture(scope="module")
def pool_sources(tmp_path_factory):
    """A demo set whose unlabeled pool (8 images) and its oracle truth the labeler works on."""
    from pipelines.sample_data import write_sample_data

    root = tmp_path_factory.mktemp("pool-sources")
    write_sample_data(root, n_images=2, seed=POOL_SEED, val_fraction=0.5, pool=8)
    return root


def _pool_predictions(gt: dict) -> tuple[list[dict], dict]:
    """Per image: true objects 0, 2, 4 found; 1, 3, 5 missed, each under a prediction of the wrong class
    on its box (so an instruction made from the prediction would name the wrong class)."""
    cats = sorted(c["id"] for c in gt["categories"])
    results, missed = [], {}
    for im in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == im["id"] and not a["iscrowd"]]
        missed[im["id"]] = [a for k, a in enumerate(anns) if k % 2]
        for k, a in enumerate(anns):
            cid = a["category_id"] if k % 2 == 0 else next(c for c in cats if c != a["category_id"])
            results.append({"image_id": im["id"], "category_id": cid, "bbox": a["bbox"], "score": 0.9})
    return results, missed


def _colour_under(image_file, ann: dict) -> str:
    """The demo colour nearest to the object's mean pixel colour (what a person sees)."""
    import cv2
    import numpy as np
    from pycocotools import mask as mask_utils

    from pipelines.sample_data import COLORS

    rgb = cv2.cvtColor(cv2.imread(str(image_file)), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w))).astype(bool)
    mean = rgb[m].mean(axis=0)
    return min(COLORS, key=lambda c: float(np.sum((np.asarray(COLORS[c]) - mean) ** 2)))


def test_prompted_corrections_ask_for_missed_objects_in_words_from_the_truth(pool_sources, tiny_stage2, tmp_path,
                                                                             fo_dataset_name):
    """Mode `prompted` (arm F): per missed object an instruction made from the truth, asked through the App's
    in-memory call; a matching answer lands as an accepted prompted label and is pulled with provenance
    "prompted", a wrong one is left untagged and the object drawn; every prompt and draw counted and timed."""
    import fiftyone as fo

    from bench.simulated_labeler import PoolExpressions, Prompting
    from lumen_model.ask import load_asker
    from pipelines.layout import pool_file
    from pipelines.sample_data import COLORS, ORACLE_FILE

    truth = pool_sources / ORACLE_FILE
    gt = json.loads(truth.read_text())
    results, missed = _pool_predictions(gt)
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(results))
    images = pool_sources / "coco" / "images"
    push_predictions(fo_dataset_name, images, pred, "start", categories_file=pool_file(pool_sources), progress=False)
    build_review_queue(fo_dataset_name)
    ds = fo.load_dataset(fo_dataset_name)
    order = queue_order(ds)
    image_of = dict(zip(*ds.values(["id", "image_id"])))
    asker = load_asker(tiny_stage2[0])
    expressions = PoolExpressions(truth, seed=POOL_SEED)
    # the first half: any answer of the object's class is taken as right (IoU >= 0); the second half:
    # none is (IoU >= 1.01): the object is drawn after its prompt. The same code path decides both.
    half = len(order) // 2
    right = label(fo_dataset_name, truth, order[:half], budget=None, mode="prompted",
                  prompting=Prompting(asker, "start", expressions, iou=0.0))
    wrong = label(fo_dataset_name, truth, order[half:], budget=None, mode="prompted",
                  prompting=Prompting(asker, "start", expressions, iou=1.01))

    def split(ids):
        anns = [a for i in ids for a in missed[image_of[i]]]
        said = [a for a in anns if expressions.for_object(a["image_id"], a) is not None]
        return anns, said

    anns_r, said_r = split(order[:half])
    anns_w, said_w = split(order[half:])
    assert said_r and said_w, "the toy pool must have missed objects that words single out"

    def n_found(ids):  # true objects 0, 2, 4 of each image: found by a prediction, accepted
        return sum((len([a for a in gt["annotations"] if a["image_id"] == image_of[i] and not a["iscrowd"]]) + 1) // 2
                   for i in ids)

    assert (right.prompts, right.prompts_accepted, right.boxes_drawn) == (len(said_r), len(said_r),
                                                                          len(anns_r) - len(said_r))
    assert (wrong.prompts, wrong.prompts_accepted, wrong.boxes_drawn) == (len(said_w), 0, len(anns_w))
    # the wrong-class predictions on the missed objects are rejected
    assert (right.accepts, right.rejects) == (n_found(order[:half]), len(anns_r))
    assert wrong.actions == wrong.accepts + wrong.rejects + len(said_w) + len(anns_w)
    # the instruction comes from the truth: the true class (not the prediction's), the object's own colour
    ds.reload()
    prompted = [d for s in ds.select(order) if s["prompted"] is not None for d in s["prompted"].detections]
    by_text = {d["instruction"]: d for d in prompted}
    assert len(prompted) == len(said_r) + len(said_w)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    files = {im["id"]: images / im["file_name"] for im in gt["images"]}
    for a in said_r + said_w:
        text = expressions.for_object(a["image_id"], a)
        words = text.split()
        assert text.startswith("the ") and names[a["category_id"]] in words and text in by_text
        colours = [w for w in words if w in COLORS]
        if colours:
            assert colours == [_colour_under(files[a["image_id"]], a)]
    accepted = [d for d in prompted if "accept" in d.tags]
    ids = {d.id for d in accepted}
    assert len(accepted) == len(said_r) and all(not d.tags for d in prompted if d.id not in ids)
    assert all(d["model_version"] == "start" and d.mask is not None for d in accepted)

    pulled = pull_corrections(fo_dataset_name, tmp_path / "corrections", progress=False)
    assert (pulled["prompted"], pulled["corrections"]) == (len(said_r), right.boxes_drawn + wrong.boxes_drawn)
    version = tmp_path / "corrections" / pulled["version"]
    prov = json.loads((version / "provenance.json").read_text())
    from_asks = [p for p in prov if p["source"] == "prompted"]
    assert sorted(p["instruction"] for p in from_asks) == sorted(expressions.for_object(a["image_id"], a)
                                                                 for a in said_r)
    assert all(p["action"] == "accept" and p["field"] == "prompted" for p in from_asks)
    coco = json.loads((version / "instances_train.json").read_text())
    assert all(a.get("segmentation") for a in coco["annotations"] if a.get("instruction"))

    # seconds: a prompt each, then a draw for every object not taken from an answer
    both = right.add(wrong)
    assert both.by_kind()["prompt"] == len(said_r) + len(said_w)
    s = ActionCosts(prompt_s=5.0).seconds(both.by_kind())
    assert s["prompt"] == 5.0 * both.prompts
    assert s["total"] == pytest.approx(2.0 * (both.accepts + both.rejects) + 5.0 * both.prompts
                                       + 79.2 * both.masks_drawn + 7.0 * (both.boxes_drawn - both.masks_drawn))
    with pytest.raises(InputError, match="prompt_s"):  # no study gives the seconds of a prompt: say them
        ActionCosts().seconds(both.by_kind())


def test_box_masks_draw_boxes_the_model_masks_and_a_strict_labeler_redraws_loose_labels(pool_sources, tiny_stage2,
                                                                                      tmp_path, fo_dataset_name):
    """Arms H and I: an object to draw is drawn as its true box, the model masks it (the App's "Mask drawn boxes");
    a box it leaves empty gets the true mask by hand. Counted as boxes (7 s), the hand-drawn masks as masks. A
    stricter labeler (IoU 1.01: nothing is close enough) rejects every prediction and draws every object."""
    import fiftyone as fo

    from bench.simulated_labeler import BoxMasking
    from lumen_model.ask import load_asker
    from pipelines.layout import pool_file
    from pipelines.review.box_masks import MASK_MODEL_VERSION
    from pipelines.sample_data import ORACLE_FILE

    truth = pool_sources / ORACLE_FILE
    gt = json.loads(truth.read_text())
    results, missed = _pool_predictions(gt)
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(results))
    push_predictions(fo_dataset_name, pool_sources / "coco" / "images", pred, "start",
                     categories_file=pool_file(pool_sources), progress=False)
    build_review_queue(fo_dataset_name)
    ds = fo.load_dataset(fo_dataset_name)
    order = queue_order(ds)
    image_of = dict(zip(*ds.values(["id", "image_id"])))
    masking = BoxMasking(load_asker(tiny_stage2[0]).masks_in_boxes, "start")
    half = len(order) // 2
    usual = label(fo_dataset_name, truth, order[:half], budget=None, box_masks=masking)
    strict = label(fo_dataset_name, truth, order[half:], budget=None, iou=1.01, box_masks=masking)

    def objects(ids):
        return [a for i in ids for a in gt["annotations"] if a["image_id"] == image_of[i] and not a["iscrowd"]]

    n_missed = sum(len(missed[image_of[i]]) for i in order[:half])
    assert (usual.accepts, usual.rejects, usual.boxes_drawn) == (len(objects(order[:half])) - n_missed, n_missed,
                                                                 n_missed)
    assert (strict.accepts, strict.rejects, strict.boxes_drawn) == (0, len(objects(order[half:])),
                                                                    len(objects(order[half:])))
    ds.reload()
    drawn = [d for s in ds.select(order) if s[F.CORRECTIONS] is not None for d in s[F.CORRECTIONS].detections]
    by_model = [d for d in drawn if d.has_field(MASK_MODEL_VERSION)]
    assert len(drawn) == usual.boxes_drawn + strict.boxes_drawn and by_model
    assert all(d[MASK_MODEL_VERSION] == "start" and d.mask.any() for d in by_model)
    # every drawn object has a mask: the model's, else the person's (counted as a drawn mask)
    assert all(d.mask is not None and d.mask.any() for d in drawn)
    assert usual.masks_drawn + strict.masks_drawn == len(drawn) - len(by_model)
    kinds = usual.add(strict).by_kind()
    assert kinds["draw_box"] == len(by_model) and kinds["draw_mask"] == len(drawn) - len(by_model)


def test_prompted_mode_refuses_without_a_model_and_a_foreign_scene_in_one_line(pool_sources, fo_dataset_name):
    from bench.simulated_labeler import PoolExpressions
    from pipelines.sample_data import ORACLE_FILE

    truth = pool_sources / ORACLE_FILE
    gt = json.loads(truth.read_text())
    with pytest.raises(InputError, match="needs the model"):
        label(fo_dataset_name, truth, [], budget=None, mode="prompted")
    a = next(a for a in gt["annotations"] if not a["iscrowd"])
    with pytest.raises(InputError, match="seed"):  # not the scenes this truth was written from
        PoolExpressions(truth, seed=POOL_SEED + 1).for_object(a["image_id"], a)


def _half_mask(ann: dict, h: int, w: int, keep_all: bool) -> dict:
    """The object's true mask (`keep_all`) or its left half only (mask IoU about 0.5): an RLE result field."""
    import numpy as np
    from pycocotools import mask as mask_utils

    m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w))).astype(np.uint8)
    if not keep_all:
        x, _, bw, _ = ann["bbox"]
        m[:, int(x + bw / 2):] = 0
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def test_a_labeler_strict_about_masks_rejects_a_close_box_with_a_loose_mask_and_redraws_the_model_s(
        pool_sources, tiny_stage2, tmp_path, fo_dataset_name):
    """Arm K: every prediction's box is the object's, half of them with the true mask and half with half of it.
    At mask IoU 0.8 the true-masked ones are accepted, the half-masked ones rejected and their objects drawn;
    a mask the model draws in a drawn box is kept only at mask IoU >= 0.8 with the object's, else drawn by hand."""
    import fiftyone as fo

    from bench.simulated_labeler import BoxMasking, mask_iou
    from lumen_model.ask import load_asker
    from pipelines.layout import pool_file
    from pipelines.review.box_masks import MASK_MODEL_VERSION
    from pipelines.sample_data import ORACLE_FILE

    truth = pool_sources / ORACLE_FILE
    gt = json.loads(truth.read_text())
    size = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    results, exact, halved = [], 0, 0
    for im in gt["images"][:6]:
        for k, a in enumerate(x for x in gt["annotations"] if x["image_id"] == im["id"] and not x["iscrowd"]):
            results.append({"image_id": im["id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9,
                            "segmentation": _half_mask(a, *size[im["id"]], keep_all=k % 2 == 0)})
            exact, halved = exact + (k % 2 == 0), halved + (k % 2 == 1)
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(results))
    push_predictions(fo_dataset_name, pool_sources / "coco" / "images", pred, "start",
                     categories_file=pool_file(pool_sources), progress=False)
    ds = fo.load_dataset(fo_dataset_name)
    order = ds.values("id")
    masking = BoxMasking(load_asker(tiny_stage2[0]).masks_in_boxes, "start")
    counts = label(fo_dataset_name, truth, order, budget=None, box_masks=masking, mask_iou_min=0.8)
    assert (counts.accepts, counts.rejects, counts.boxes_drawn) == (exact, halved, halved)

    ds.reload()
    true_of = {}
    for a in gt["annotations"]:
        true_of.setdefault(a["image_id"], []).append(a)
    kept_by_model = by_hand = 0
    for s in ds.select(order):
        h, w = s.metadata.height, s.metadata.width
        for d in s[F.CORRECTIONS].detections if s[F.CORRECTIONS] is not None else []:
            best = max(mask_iou(d, t, w, h) for t in true_of[s["image_id"]])
            if d.has_field(MASK_MODEL_VERSION):
                kept_by_model += 1
                assert best >= 0.8  # the model's mask was close enough to keep
            else:
                by_hand += 1
                assert best == pytest.approx(1.0)  # drawn again: the object's own mask
    assert kept_by_model + by_hand == halved and counts.masks_drawn == by_hand
