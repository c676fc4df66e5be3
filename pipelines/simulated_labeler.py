"""A simulated labeler for measuring the review loop (bench/bench_loop.py): it reviews a FiftyOne
review dataset the way the README tells a person to, through FiftyOne's public API only, and
knows the truth from a COCO json kept apart from the pipeline (the demo's `oracle/`).

Per image, in the order it is given and within a budget of images:
- `review`: a prediction that matches a true object (same class, IoU >= 0.5; predictions by
  confidence, each true object matched once) is tagged `accept`, every other prediction `reject`,
  and each true object no prediction matched is drawn into `corrections` (box + mask);
- `scratch`: every true object is drawn into `corrections`, the predictions are left alone
  (labeling from scratch);
- `accept_all`: every prediction is tagged `accept` (self-training: no person involved, so no
  action is counted).
The image is then tagged `reviewed`. Crowd regions are not objects to draw or match.
Counts: images, accepts, rejects, boxes drawn; actions = accepts + rejects + boxes drawn.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from pipelines.errors import InputError
from pipelines.evaluation import box_iou
from pipelines.review import fields as F
from pipelines.review.labels import absolute_box, mask_crop, relative_box
from pipelines.sources.coco import to_rles
from pipelines.sources.common import load_json

MODES = ("review", "scratch", "accept_all")


@dataclass
class LabelerCounts:
    images: int = 0
    accepts: int = 0
    rejects: int = 0
    boxes_drawn: int = 0

    @property
    def actions(self) -> int:
        return self.accepts + self.rejects + self.boxes_drawn

    def as_dict(self) -> dict:
        return {**asdict(self), "actions": self.actions}


def queue_order(dataset) -> list[str]:
    """The review queue's order: open images (not tagged `reviewed`), highest `review_priority` first."""
    if "review_priority" not in dataset.get_field_schema():
        raise InputError(f"dataset {dataset.name!r} has no review queue yet: run `lumen review queue` first")
    return dataset.match_tags(F.REVIEWED_SAMPLE_TAG, bool=False).sort_by("review_priority", reverse=True).values("id")


def random_order(dataset, seed: int) -> list[str]:
    ids = sorted(dataset.match_tags(F.REVIEWED_SAMPLE_TAG, bool=False).values("id"))
    random.Random(seed).shuffle(ids)
    return ids


def _truth_by_image(truth_file) -> tuple[dict, dict]:
    data = load_json(Path(truth_file), dict, "simulated labeler")
    by_image = defaultdict(list)
    for a in data.get("annotations", []):
        if not a.get("iscrowd"):
            by_image[a["image_id"]].append(a)
    return by_image, {c["id"]: c["name"] for c in data.get("categories", [])}


def _match(preds, truths, iou: float) -> tuple[set[int], set[int]]:
    """Greedy by confidence: (indices of matched predictions, indices of matched true objects)."""
    order = sorted(range(len(preds)), key=lambda i: -(preds[i][2] or 0.0))
    hit_p, hit_t = set(), set()
    for i in order:
        cid, box, _ = preds[i]
        best, best_iou = None, iou
        for j, t in enumerate(truths):
            if j in hit_t or t["category_id"] != cid:
                continue
            v = box_iou(box, t["bbox"])
            if v >= best_iou:
                best, best_iou = j, v
        if best is not None:
            hit_p.add(i)
            hit_t.add(best)
    return hit_p, hit_t


def _drawn(fo, truth: dict, name: str, w: int, h: int):
    """What a labeler draws for a true object: its box and, where it has one, its mask."""
    rle = to_rles([truth.get("segmentation")], h, w)[0]
    mask = mask_crop(rle, truth["bbox"], w, h) if rle is not None else None
    return fo.Detection(label=name, bounding_box=relative_box(truth["bbox"], w, h), mask=mask)


def label(dataset_name, truth_file, order: list[str], *, budget: int | None, mode: str = "review",
          iou: float = 0.5) -> LabelerCounts:
    """Work through `order` (sample ids) until `budget` images are done; returns what was done."""
    import fiftyone as fo

    if mode not in MODES:
        raise InputError(f"simulated labeler: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    dataset = fo.load_dataset(dataset_name)
    field = F.review_info(dataset).get("field", "predictions")
    truth, names = _truth_by_image(truth_file)
    counts = LabelerCounts()
    todo = order if budget is None else order[:budget]
    for sample in dataset.select(todo, ordered=True):
        w, h = sample.metadata.width, sample.metadata.height
        dets = sample[field].detections if sample[field] is not None else []
        true = truth.get(sample["image_id"], [])
        drawn = []
        if mode == "accept_all":
            for d in dets:
                d.tags.append(F.ACCEPT)
        elif mode == "scratch":
            drawn = true
        else:
            preds = [(d.get_field("category_id"), absolute_box(d.bounding_box, w, h), d.confidence) for d in dets]
            hit_p, hit_t = _match(preds, true, iou)
            for i, d in enumerate(dets):
                d.tags.append(F.ACCEPT if i in hit_p else F.REJECT)
            counts.accepts += len(hit_p)
            counts.rejects += len(dets) - len(hit_p)
            drawn = [t for j, t in enumerate(true) if j not in hit_t]
        if drawn:
            sample[F.CORRECTIONS] = fo.Detections(detections=[
                _drawn(fo, t, names.get(t["category_id"], str(t["category_id"])), w, h) for t in drawn])
            counts.boxes_drawn += len(drawn)
        sample.tags.append(F.REVIEWED_SAMPLE_TAG)
        sample.save()
        counts.images += 1
    return counts
