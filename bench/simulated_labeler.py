"""A simulated labeler for measuring the review loop (bench/bench_loop.py; bench only, so it lives
here and not in the library): it reviews a FiftyOne
review dataset the way the README tells a person to, through FiftyOne's public API only, and
knows the truth from a COCO json kept apart from the pipeline (the demo's `oracle/`).

Per image, in the order it is given and within a budget of images:
- `review`: a prediction that matches a true object (same class, IoU >= 0.5; predictions by
  confidence, each true object matched once) is tagged `accept`, every other prediction `reject`,
  and each true object no prediction matched is drawn into `corrections` (box + mask);
- `prompted`: as `review`, but a missed object is first asked for, as a person does in the App's
  "Ask Lumen": the labeler types a referring expression for it, built from the truth the way the
  demo builds RefCOCO's (`PoolExpressions`, never from a prediction), asks the model through the
  App's in-memory call (`lumen_model.ask.load_asker(...).ask`, one object with its mask, stepping
  over the objects already labeled: the accepted predictions and answers, as the App does by
  default, `labeled_boxes`), writes the answer as the App does (`prompted` field, pipelines/review/prompted.py's `write_answer`) and
  accepts it as the App's Accept does (`accept_prompted`: the pull takes it with provenance
  "prompted") when it matches the object (same class, IoU >= 0.5); else it draws the object. An
  object that no expression singles out (two alike red squares in the middle) is drawn at once;
- `scratch`: every true object is drawn into `corrections`, the predictions are left alone
  (labeling from scratch);
- `accept_all`: every prediction is tagged `accept` (self-training: no person involved, so no
  action is counted).
The image is then tagged `reviewed`. Crowd regions are not objects to draw or match.
Counts: images, accepts, rejects, boxes drawn (every object drawn) and, of those, masks drawn,
prompts (instructions typed and answers checked) and, of those, the accepted ones;
actions = accepts + rejects + boxes drawn + prompts. `by_kind()` gives the counts per action kind
of pipelines/review/effort.py (accept, reject, draw_box: an object drawn without a mask, draw_mask:
one drawn with its mask, image: an image a person opened, prompt: an instruction typed and its
answer checked), which `ActionCosts.seconds` turns into a person's seconds: a wrong answer costs
its prompt and then the drawing.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from pycocotools import mask as mask_utils

from pipelines.errors import InputError
from pipelines.evaluation import box_iou
from pipelines.review import fields as F
from pipelines.review.labels import absolute_box, crop_to_rle, mask_crop, relative_box, rle_for_pycocotools
from pipelines.review.queue import order_field
from pipelines.sources.coco import to_rles
from pipelines.sources.common import load_json

MODES = ("review", "scratch", "accept_all", "prompted")
ASK_TASK = "referring_segmentation"  # the App's "One object (a mask)": a drawn object has its mask too


@dataclass
class LabelerCounts:
    images: int = 0  # images worked through (tagged `reviewed`)
    images_opened: int = 0  # of those, images a person looked at (not accept_all's)
    accepts: int = 0
    rejects: int = 0
    boxes_drawn: int = 0  # objects drawn, with or without a mask
    masks_drawn: int = 0  # of those, drawn with their mask
    prompts: int = 0  # instructions typed in Ask Lumen and answers checked (mode `prompted`)
    prompts_accepted: int = 0  # of those, answers that matched the object and were accepted

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


class PoolExpressions:
    """What a person would type for a true object of the demo's unlabeled pool: the demo's own referring
    expressions (pipelines.sample_data.language, "the [big|small] [colour] category [on the left|right]"),
    built from the object's scene as `lumen sample-data` builds RefCOCO's (same generator, same random
    stream per image, the first expression of the object). The pool's scenes are made again from the
    demo's seed (pool image k depends only on (seed, k)): the colours and sizes the expressions use are
    not in COCO's json. A scene that does not give the oracle's boxes is refused in one line."""

    def __init__(self, truth_file, seed: int = 0):
        data = load_json(Path(truth_file), dict, "simulated labeler")
        self.seed = seed
        self.index = {im["id"]: (k, im) for k, im in enumerate(data.get("images", []))}  # pool order: k
        self._by_image: dict[int, dict] = {}

    def _scene(self, image_id: int):
        import numpy as np

        from pipelines.sample_data import MAX_SIDE, MIN_SIDE, POOL_STREAM
        from pipelines.sample_data.scene import make_scene

        if image_id not in self.index:
            raise InputError(f"simulated labeler: image {image_id} is not in the pool's truth file")
        k, im = self.index[image_id]
        rng = np.random.default_rng([self.seed, POOL_STREAM, k])  # as write_sample_data draws pool image k
        w, h = int(rng.integers(MIN_SIDE, MAX_SIDE + 1)), int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        scene = make_scene(rng, w, h)
        if (w, h) != (im["width"], im["height"]):
            raise InputError(f"simulated labeler: pool image {image_id} is not the demo's scene {k} of seed "
                             f"{self.seed} (its size differs): pass the seed `lumen sample-data` used")
        return scene

    def _image(self, image_id: int) -> tuple[dict, set]:
        """({rounded true box: the first expression that singles its object out}, every rounded box)."""
        if image_id not in self._by_image:
            import numpy as np

            from pipelines.sample_data.language import referring_expressions

            scene = self._scene(image_id)
            rng = np.random.default_rng([self.seed, image_id, 1])  # _write_refcoco's stream for an image
            said = {}
            for i, obj in enumerate(scene.objects):  # every object in turn: the stream advances as there
                sents = referring_expressions(scene, i, rng)
                if sents:
                    said[_box_key(obj.bbox)] = sents[0]
            self._by_image[image_id] = (said, {_box_key(o.bbox) for o in scene.objects})
        return self._by_image[image_id]

    def for_object(self, image_id: int, truth: dict) -> str | None:
        """The expression for one true object (a COCO annotation of the oracle), None when none singles
        it out; an object the scene does not have is refused in one line."""
        said, boxes = self._image(image_id)
        key = _box_key(truth["bbox"])
        if key not in boxes:
            raise InputError(f"simulated labeler: object {truth.get('id')} of pool image {image_id} is not in the "
                             f"demo's scene of seed {self.seed}: pass the seed `lumen sample-data` used")
        return said.get(key)


def _box_key(bbox) -> tuple:
    return tuple(round(float(v), 2) for v in bbox)


def _match(preds, truths, iou: float) -> dict[int, int]:
    """Greedy by confidence: {index of a matched prediction: index of its true object}."""
    order = sorted(range(len(preds)), key=lambda i: -(preds[i][2] or 0.0))
    pairs, hit_t = {}, set()
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
            pairs[i] = best
            hit_t.add(best)
    return pairs


def mask_iou(det, truth: dict, w: int, h: int) -> float:
    """IoU of a label's mask (a crop in its box, as FiftyOne keeps it) with the true object's mask, in the
    image's pixels; 0 for a label without a mask or an object without one."""
    rle = to_rles([truth.get("segmentation")], h, w)[0]
    if det.mask is None or rle is None:
        return 0.0
    mine = crop_to_rle(det.mask, absolute_box(det.bounding_box, w, h), w, h)
    return float(mask_utils.iou([rle_for_pycocotools(mine)], [rle_for_pycocotools(rle)], [0])[0][0])


def _drawn(fo, truth: dict, name: str, w: int, h: int):
    """What a labeler draws for a true object: its box and, where it has one, its mask."""
    rle = to_rles([truth.get("segmentation")], h, w)[0]
    mask = mask_crop(rle, truth["bbox"], w, h) if rle is not None else None
    return fo.Detection(label=name, bounding_box=relative_box(truth["bbox"], w, h), mask=mask)


def _has_mask(det) -> bool:
    return det.mask is not None and bool(det.mask.any())


def answer_matches(answer, truth: dict, iou: float = 0.5) -> bool:
    """Is the model's answer the object? Its box (the one a grounding answer has) of the object's class,
    at IoU >= `iou` with the true box."""
    if len(answer.boxes) == 0 or answer.meta.get("category_id") != truth["category_id"]:
        return False
    return box_iou([float(v) for v in answer.boxes[0]], truth["bbox"]) >= iou


@dataclass
class Prompting:
    """What mode `prompted` needs: the App's model (`lumen_model.ask.load_asker(checkpoint)`), its version
    (the prompted labels' `model_version`), the expressions of the pool's objects, and the IoU at which
    an answer is the object."""

    asker: object
    model_version: str
    expressions: PoolExpressions
    iou: float = 0.5
    skip_labeled: bool = True  # the App's default: step over the objects already labeled


def _ask_for_missed(sample, field: str, missed: list[dict], prompting: Prompting, categories,
                    counts: LabelerCounts):
    """Ask for each missed object; returns (objects still to draw, ids of the prompted labels to accept)."""
    from pipelines.review.prompted import PROMPTED, labeled_boxes, write_answer

    to_draw, accept = [], []
    taken = labeled_boxes(sample, field)  # as the App's Ask Lumen steps over them: the accepted predictions
    for t in missed:
        text = prompting.expressions.for_object(sample["image_id"], t)
        if text is None:  # nothing singles it out in words: a person draws it
            to_draw.append(t)
            continue
        answer = prompting.asker.ask(sample.filepath, text, ASK_TASK, categories=categories,
                                     skip_boxes=taken if prompting.skip_labeled else None)
        write_answer(sample, answer, prompting.model_version)  # the App writes every answer, right or not
        counts.prompts += 1
        if answer_matches(answer, t, prompting.iou):
            counts.prompts_accepted += 1
            accept += [d.id for d in sample[PROMPTED].detections
                       if not d.tags and d.get_field("instruction") == text]
            taken = taken + [[float(v) for v in answer.boxes[0]]]  # accepted (tagged after the save): labeled now
        else:  # a wrong answer stays untagged (never pulled); the object is drawn
            to_draw.append(t)
    return to_draw, accept


@dataclass
class BoxMasking:
    """The App's "Mask drawn boxes" (pipelines/review/box_masks.py): a person draws a missed object's box
    only, the model (`segment`, `lumen_model.ask.Asker.masks_in_boxes`) draws its mask inside it."""

    segment: object
    model_version: str


def _draw_boxes_then_masks(fo, sample, objects: list, truths: list[dict], masking: BoxMasking, counts: LabelerCounts,
                           mask_iou_min: float | None = None) -> None:
    """Draw `objects` (those of `truths`) as boxes, let the model mask them (the App's "Mask drawn boxes"), and
    draw by hand the mask of any box the model left empty, and with `mask_iou_min` of any mask the model drew
    further than that from the object's (mask IoU). Counted: every object a box drawn; the hand-drawn masks as
    masks."""
    from pipelines.review.box_masks import mask_drawn_boxes

    masks = [d.mask for d in objects]
    for d in objects:
        d.mask = None
    sample[F.CORRECTIONS] = fo.Detections(detections=objects)  # saved with the rest of the image's review
    mask_drawn_boxes(sample, masking.segment, masking.model_version)
    by_hand = 0
    w, h = sample.metadata.width, sample.metadata.height
    kept = []
    for d, truth_mask, t in zip(sample[F.CORRECTIONS].detections, masks, truths):
        if truth_mask is not None and d.mask is None:  # the model found nothing in the box: drawn by hand
            d.mask = truth_mask
            by_hand += 1
        elif truth_mask is not None and mask_iou_min is not None and mask_iou(d, t, w, h) < mask_iou_min:
            # a strict labeler draws the model's loose mask again: a person's label, no model's mask on it
            d = fo.Detection(label=d.label, bounding_box=d.bounding_box, mask=truth_mask)
            by_hand += 1
        kept.append(d)
    sample[F.CORRECTIONS] = fo.Detections(detections=kept)
    counts.boxes_drawn += len(objects)
    counts.masks_drawn += by_hand


def label(dataset_name, truth_file, order: list[str], *, budget: int | None, mode: str = "review",
          iou: float = 0.5, prompting: Prompting | None = None, box_masks: BoxMasking | None = None,
          mask_iou_min: float | None = None) -> LabelerCounts:
    """Work through `order` (sample ids) until `budget` images are done; returns what was done. Mode
    `prompted` needs `prompting`. `iou`: how close a prediction must be to a true object to be accepted
    (0.5: the usual match; higher: a stricter labeler, who rejects loose labels and draws them again).
    `box_masks`: every object the labeler draws is drawn as a box, and the model draws its mask
    (`BoxMasking`); without it, an object is drawn with its mask by hand. `mask_iou_min`: a labeler strict
    about masks too: a prediction whose mask is further than that from the object's (mask IoU) is rejected and
    the object drawn, and a mask the model draws in a drawn box that far off is drawn again by hand."""
    from pipelines.review.fo_env import fiftyone

    fo = fiftyone()  # the configured database, never whichever embedded one happens to run

    if mode not in MODES:
        raise InputError(f"simulated labeler: unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if mode == "prompted" and prompting is None:
        raise InputError("simulated labeler: mode 'prompted' needs the model to ask (Prompting)")
    dataset = fo.load_dataset(dataset_name)
    info = F.review_info(dataset)
    field = info.get("field", "predictions")
    categories = info.get("categories") or None  # the classes the App names answers from
    known = {c["name"] for c in categories or []} or None
    truth, names = _truth_by_image(truth_file)
    counts = LabelerCounts()
    todo = order if budget is None else order[:budget]
    for sample in dataset.select(todo, ordered=True):
        w, h = sample.metadata.width, sample.metadata.height
        dets = sample[field].detections if sample[field] is not None else []
        true = truth.get(sample["image_id"], [])
        drawn, accept = [], []
        if mode == "accept_all":
            for d in dets:
                d.tags.append(F.ACCEPT)
        elif mode == "scratch":
            drawn = true
        else:
            preds = [(d.get_field("category_id"), absolute_box(d.bounding_box, w, h), d.confidence) for d in dets]
            pairs = _match(preds, true, iou)
            if mask_iou_min is not None:  # a close box with a loose mask: rejected, the object drawn
                pairs = {i: j for i, j in pairs.items() if mask_iou(dets[i], true[j], w, h) >= mask_iou_min}
            hit_p, hit_t = set(pairs), set(pairs.values())
            for i, d in enumerate(dets):
                d.tags.append(F.ACCEPT if i in hit_p else F.REJECT)
            counts.accepts += len(hit_p)
            counts.rejects += len(dets) - len(hit_p)
            drawn = [t for j, t in enumerate(true) if j not in hit_t]
            if mode == "prompted" and drawn:
                drawn, accept = _ask_for_missed(sample, field, drawn, prompting, categories, counts)
        if drawn:
            objects = [_drawn(fo, t, names.get(t["category_id"], str(t["category_id"])), w, h) for t in drawn]
            if box_masks is not None and mode != "accept_all":
                _draw_boxes_then_masks(fo, sample, objects, drawn, box_masks, counts, mask_iou_min)
            else:
                sample[F.CORRECTIONS] = fo.Detections(detections=objects)
                counts.boxes_drawn += len(objects)
                counts.masks_drawn += sum(_has_mask(d) for d in objects)
        sample.tags.append(F.REVIEWED_SAMPLE_TAG)
        sample.save()
        if accept:  # the App's Accept, after the sample's own save (it tags the stored labels)
            from pipelines.review.prompted import accept_prompted

            accept_prompted(dataset, accept, known_classes=known)
        counts.images += 1
        counts.images_opened += mode != "accept_all"  # self-training: no person looks
    return counts
