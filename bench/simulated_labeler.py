"""A simulated labeler for measuring the review loop (bench/bench_loop.py; bench only, so it lives
here and not in the library): it reviews a FiftyOne
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
Counts: images, accepts, rejects, boxes drawn (every object drawn) and, of those, masks drawn;
actions = accepts + rejects + boxes drawn. `by_kind()` gives the counts per action kind of
pipelines/review/effort.py (accept, reject, draw_box: an object drawn without a mask, draw_mask: one
drawn with its mask, image: an image a person opened, prompt: an instruction typed and its answer
accepted), which `ActionCosts.seconds` turns into a person's seconds.

TODO(arm F, prompted corrections): a `prompted` mode that types an instruction per image (the App's
ask feature) and accepts the answer where it matches the truth counts `prompts` (and draws what the
answer missed); its seconds need `ActionCosts.prompt_s`, which no study gives yet.
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
from pipelines.review.queue import order_field
from pipelines.sources.coco import to_rles
from pipelines.sources.common import load_json

MODES = ("review", "scratch", "accept_all")


@dataclass
class LabelerCounts:
    images: int = 0  # images worked through (tagged `reviewed`)
    images_opened: int = 0  # of those, images a person looked at (not accept_all's)
    accepts: int = 0
    rejects: int = 0
    boxes_drawn: int = 0  # objects drawn, with or without a mask
    masks_drawn: int = 0  # of those, drawn with their mask
    prompts: int = 0  # instructions typed and answers accepted (arm F, not built yet)

    @property
    def actions(self) -> int:
        return self.accepts + self.rejects + self.boxes_drawn + self.prompts

    def by_kind(self) -> dict[str, int]:
        """Counts per action kind of pipelines/review/effort.py (`ActionCosts.seconds` takes them)."""
        return {"accept": self.accepts, "reject": self.rejects, "draw_box": self.boxes_drawn - self.masks_drawn,
                "draw_mask": self.masks_drawn, "image": self.images_opened, "prompt": self.prompts}

    def add(self, other: "LabelerCounts") -> "LabelerCounts":
        return LabelerCounts(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    def as_dict(self) -> dict:
        return {**asdict(self), "actions": self.actions, "by_kind": self.by_kind()}


def queue_order(dataset, order: str = "errors") -> list[str]:
    """The review queue's order (`order`: one of pipelines.review.queue.ORDERS, the same field the
    likely-wrong view sorts on): open images (not tagged `reviewed`), highest first."""
    field = order_field(order)
    if field not in dataset.get_field_schema():
        raise InputError(f"dataset {dataset.name!r} has no review queue yet: run `lumen review queue` first")
    return dataset.match_tags(F.REVIEWED_SAMPLE_TAG, bool=False).sort_by(field, reverse=True).values("id")


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


def _has_mask(det) -> bool:
    return det.mask is not None and bool(det.mask.any())


def label(dataset_name, truth_file, order: list[str], *, budget: int | None, mode: str = "review",
          iou: float = 0.5) -> LabelerCounts:
    """Work through `order` (sample ids) until `budget` images are done; returns what was done."""
    from pipelines.review.fo_env import fiftyone

    fo = fiftyone()  # the configured database, never whichever embedded one happens to run

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
            objects = [_drawn(fo, t, names.get(t["category_id"], str(t["category_id"])), w, h) for t in drawn]
            sample[F.CORRECTIONS] = fo.Detections(detections=objects)
            counts.boxes_drawn += len(objects)
            counts.masks_drawn += sum(_has_mask(d) for d in objects)
        sample.tags.append(F.REVIEWED_SAMPLE_TAG)
        sample.save()
        counts.images += 1
        counts.images_opened += mode != "accept_all"  # self-training: no person looks
    return counts
