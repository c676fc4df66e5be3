"""The typed answer of the model to one instruction about one image, and the one path that decodes it.

`located_answers` turns a batch of (image, instruction, meta) jobs into `Answer`s: boxes in image
pixels, scores, masks (RLE), keypoints, the heatmap. `lumen predict` writes them as COCO results and
PNGs (its writers in predict.py), `lumen ask` and the FiftyOne App's "Ask Lumen" read them directly:
every caller decodes the same way, so they give the same boxes and scores.

Costly image-size products (the heatmap stretched over the image, its peaks) are made on demand:
a batch run over a pool never pays for them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

from lumen_model.decoders import MASK_TASKS, POSE_TASKS
from lumen_model.decoders.boxes import boxes_toward_masks, decode_boxes, fuse_views, unflip_boxes
from pipelines.geometry import SquarePad
from pipelines.heatmaps import find_peaks
from pipelines.instructions import TASK_TOKENS
from pipelines.tasks import EXPRESSION, task_names

# from the task registry (pipelines/tasks.py)
FLIP_TTA_TASKS = task_names(flip_tta=True)  # ("detection", "instance_segmentation")
MASK_TIGHTENED_TASKS = task_names(mask_tightens_boxes=True)  # every task answered with boxes but pose
SINGLE_OBJECT_TASKS = task_names(names=EXPRESSION)  # ("grounding", "referring_segmentation")
SKIP_IOU = 0.5  # a candidate this close to an object already labeled is that object (COCO's match IoU)
PEAK_THRESHOLD = 0.5  # as the review push marks unexplained peaks


@dataclass
class Answer:
    """What the model answered to one instruction about one image (geometry in image pixels)."""

    task: str
    instruction: str
    image: str  # the image file
    width: int
    height: int
    meta: dict = field(default_factory=dict)  # the job's meta: category / category_id, sent_id / expression, ...
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (n, 4) x, y, w, h
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n,) as `lumen predict` writes them
    masks: list | None = None  # per box a COCO RLE {"size": [h, w], "counts": str} (mask tasks)
    keypoints: list | None = None  # per box a (17, 3) array x, y, score (pose)
    grid: np.ndarray | None = None  # the model's M x M heatmap over the square-padded input
    input_size: int = 0
    heatmap_size: int = 0
    p_none: float | None = None  # how sure the model is that nothing the instruction names is there
    task_token: str | None = None  # the task token the model generated (which decoder it would pick)
    text: str | None = None  # the answer of a question (vqa)
    timings: dict = field(default_factory=dict)  # milliseconds per step
    _image_heat: np.ndarray | None = field(default=None, repr=False)

    @property
    def geometry(self) -> SquarePad:
        return SquarePad(self.width, self.height, self.input_size, self.heatmap_size)

    def heatmap(self) -> np.ndarray | None:
        """The heatmap over the image, (height, width) float32 in [0, 1] (made once, on first use)."""
        if self.grid is None:
            return None
        if self._image_heat is None:
            t = time.perf_counter()
            self._image_heat = self.geometry.heatmap_to_image(np.asarray(self.grid, dtype=np.float32))
            self.timings["heatmap_ms"] = round((time.perf_counter() - t) * 1000, 2)
        return self._image_heat

    def peaks(self, threshold: float = PEAK_THRESHOLD) -> list[tuple[float, float, float]]:
        """The heatmap's local maxima at or above `threshold` as (x, y, value) in image pixels, strongest
        first; a peak on the padding around the image is none."""
        if self.grid is None:
            return []
        xy, values = find_peaks(np.asarray(self.grid, dtype=np.float32), threshold=threshold)
        if not len(values):
            return []
        centres = self.geometry.from_heatmap(xy.astype(np.float64) + 0.5)
        return [(float(x), float(y), float(v)) for (x, y), v in zip(centres, values)
                if 0 <= x < self.width and 0 <= y < self.height]

    def to_json(self, masks: bool = True) -> dict:
        """A JSON-ready dict (what `lumen ask` prints): boxes rounded as `lumen predict` writes them."""
        out = {"task": self.task, "instruction": self.instruction, "image": self.image,
               "width": self.width, "height": self.height, **{k: v for k, v in self.meta.items() if v is not None},
               "boxes": [[round(float(v), 2) for v in b] for b in self.boxes],
               "scores": [round(float(s), 5) for s in self.scores]}
        if self.masks is not None and masks:
            out["masks"] = self.masks
        if self.keypoints is not None:
            out["keypoints"] = [[round(float(v), 2) for v in k.reshape(-1)] for k in self.keypoints]
        if self.text is not None:
            out["answer"] = self.text
        if self.grid is not None:
            heat = self.heatmap()
            out["heatmap"] = {"width": self.width, "height": self.height, "max": round(float(heat.max()), 4),
                              "peaks": [[round(x, 1), round(y, 1), round(v, 4)] for x, y, v in self.peaks()]}
        if self.p_none is not None:
            out["p_none"] = round(self.p_none, 4)
        if self.task_token is not None:
            out.update(task_token=self.task_token, expected_task_token=TASK_TOKENS.get(self.task))
        out["timings_ms"] = dict(self.timings)
        return out


def located_answers(p, task: str, chunk: list[tuple], flip_tta: bool = False,
                    skip: list | None = None) -> list[Answer]:
    """Heatmap tasks: locate a batch of (image, instruction, meta) jobs on `p` (a `Predictor`) and decode
    each into an `Answer`. With `flip_tta`, each image's mirror image is looked at too and the views fused.
    `skip` (per job, None or pixel boxes [x, y, w, h]): objects already labeled on the image; a one-object
    answer is the best candidate not on one of them (`off_boxes`), as a labeler asking for a missed object
    wants, and no box when every candidate is."""
    t0 = time.perf_counter()
    paths, instructions = [j[0]["path"] for j in chunk], [j[1] for j in chunk]
    out = p.locate(paths, instructions)
    mirror = p.locate(paths, instructions, flip=True) if flip_tta else None
    heat, sizes, offsets = _box_maps(out)
    m_heat, m_sizes, m_offsets = _box_maps(mirror) if mirror is not None else (None, None, None)
    model_ms = round((time.perf_counter() - t0) * 1000 / max(len(chunk), 1), 2)  # the batch's share
    single = task in SINGLE_OBJECT_TASKS
    # a referring expression's box: the best of the highest peaks by what the glimpse sees there (`pick_named`)
    k = (p.cfg.glimpse_candidates if p.grounds else 1) if single else p.cfg.top_k
    answers = []
    for i, (im, instruction, meta) in enumerate(chunk):
        t1 = time.perf_counter()
        geo = p.geometry(im["path"])
        taken = skip[i] if single and skip is not None else None
        more = len(taken) if taken else 0  # as many more peaks as there are labeled objects to step over
        boxes, scores = decode_boxes(heat[i], sizes[i], offsets[i], geo, k=k + more,
                                     threshold=0.0 if single else p.threshold)
        if taken:
            free = off_boxes(boxes, taken)
            boxes, scores = boxes[free][:k], scores[free][:k]
        if single and len(boxes) > 1:
            best = p.pick_named(out, i, boxes, scores, geo, meta["expression"])
            boxes, scores = boxes[best:best + 1], scores[best:best + 1]
        keep = 1 - float(out["p_none"][i])
        scores = scores * (1.0 if single else keep)
        if task in FLIP_TTA_TASKS:
            scores = scores * p.named_as(out, i, boxes, geo, meta.get("category"))
        if mirror is not None:  # the same instruction on the mirror image; its boxes back in the image's pixels
            m_boxes, m_scores = decode_boxes(m_heat[i], m_sizes[i], m_offsets[i], geo, k=k, threshold=p.threshold)
            m_keep = 1 - float(mirror["p_none"][i])
            m_scores = m_scores * m_keep * p.named_as(mirror, i, m_boxes, geo, meta.get("category"))
            boxes, scores = fuse_views(boxes, scores, unflip_boxes(m_boxes, geo.width), m_scores)
            boxes, scores = boxes[:k], scores[:k]
            keep = (keep + m_keep) / 2
        a = Answer(task, instruction, im["path"], geo.width, geo.height, dict(meta), boxes, scores, grid=heat[i],
                   input_size=p.cfg.input_size, heatmap_size=p.cfg.heatmap_size, p_none=1 - keep,
                   task_token=out["task_token"][i])
        if task in MASK_TASKS:
            a.masks = p.masks_for(out, i, boxes, geo, im["path"], flipped=mirror)
        if task in MASK_TIGHTENED_TASKS and p.cfg.mask_box_weight > 0:
            # a box task's masks are made for this only: the answer stays boxes
            masks = a.masks if a.masks is not None else p.masks_for(out, i, boxes, geo, im["path"], flipped=mirror)
            a.boxes = boxes_toward_masks(boxes, masks, p.cfg.mask_box_weight)
        if task in POSE_TASKS:
            kps = p.keypoints_for(out["dense"][i], boxes, geo)
            a.keypoints = [k_ for k_, _ in kps]
            a.scores = np.asarray([float(s) * ks for s, (_, ks) in zip(scores, kps)], dtype=np.float64)
        a.timings.update(model_ms=model_ms, decode_ms=round((time.perf_counter() - t1) * 1000, 2))
        answers.append(a)
    return answers


def off_boxes(boxes: np.ndarray, taken, iou: float = SKIP_IOU) -> np.ndarray:
    """Indices of `boxes` (xywh) that overlap none of `taken` (xywh) at IoU >= `iou`."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    t = np.asarray(taken, dtype=np.float64).reshape(-1, 4)
    if not len(b) or not len(t):
        return np.arange(len(b))
    overlap = mask_utils.iou(b, t, np.zeros(len(t), np.uint8))  # xywh box IoU, as COCO's (and fuse_views')
    return np.flatnonzero((overlap < iou).all(axis=1))


def text_answers(p, chunk: list[tuple]) -> list[Answer]:
    """VQA: answer a batch of (image, question, meta) jobs (greedy generation)."""
    t0 = time.perf_counter()
    texts = p.answer([j[0]["path"] for j in chunk], [j[1] for j in chunk])
    ms = round((time.perf_counter() - t0) * 1000 / max(len(chunk), 1), 2)
    answers = []
    for (im, question, meta), text in zip(chunk, texts):
        geo = p.geometry(im["path"])
        answers.append(Answer("vqa", question, im["path"], geo.width, geo.height, dict(meta), text=text,
                              timings={"model_ms": ms}))
    return answers


def _box_maps(out: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A located batch's heatmaps, size and offset maps, on the CPU once for the whole batch."""
    return out["heat"].cpu().numpy(), out["sizes"].cpu().numpy(), out["offsets"].cpu().numpy()
