"""Box decoder: heatmap peaks + the H/W maps (+ sub-pixel offsets) -> boxes in original pixels."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from pipelines.geometry import SquarePad
from pipelines.heatmaps import find_peaks


def decode_boxes(heat: np.ndarray, sizes: np.ndarray, offsets: np.ndarray, geo: SquarePad, k: int = 100,
                 threshold: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """heat (M, M) probabilities, sizes (2, M, M) as w/S, h/S, offsets (2, M, M) -> (xywh [n, 4], scores)."""
    xy, scores = find_peaks(heat, k=k, threshold=threshold)
    if not len(xy):
        return np.zeros((0, 4)), np.zeros(0)
    x, y = xy[:, 0], xy[:, 1]
    center_hm = np.stack([x + offsets[0, y, x], y + offsets[1, y, x]], 1)
    center = geo.from_heatmap(center_hm)  # original pixels
    wh = np.stack([sizes[0, y, x], sizes[1, y, x]], 1) * geo.size / geo.scale
    boxes = np.concatenate([center - wh / 2, wh], 1)
    # clip to the image
    x0 = np.clip(boxes[:, 0], 0, geo.width)
    y0 = np.clip(boxes[:, 1], 0, geo.height)
    x1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, geo.width)
    y1 = np.clip(boxes[:, 1] + boxes[:, 3], 0, geo.height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], 1), scores


def boxes_toward_masks(boxes_xywh: np.ndarray, masks: list[dict], weight: float) -> np.ndarray:
    """Each box moved `weight` of the way toward its mask's tight box (COCO RLEs, one per box, in the same
    pixels); a box whose mask is empty keeps its place. The two are independent estimates of the object's edges
    (the mask head sees the box's pixels at a finer grid than the box decoder's heatmap), and their mean is
    tighter than either."""
    b = np.array(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    if weight == 0 or not len(b):
        return b
    tight = mask_utils.toBbox(masks).reshape(-1, 4)  # one mask per box
    drawn = (tight[:, 2] > 0) & (tight[:, 3] > 0)
    b[drawn] = (1 - weight) * b[drawn] + weight * tight[drawn]
    return b


def unflip_boxes(boxes_xywh: np.ndarray, width: float) -> np.ndarray:
    """Boxes found on the horizontally flipped image -> the same boxes on the image itself."""
    b = np.array(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    b[:, 0] = width - b[:, 0] - b[:, 2]
    return b


def fuse_views(boxes: np.ndarray, scores: np.ndarray, other_boxes: np.ndarray, other_scores: np.ndarray,
               iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Test-time augmentation: one instruction's boxes from two views of the image (both in the image's own
    pixels) -> one set. Greedily by score, a box and the other view's best unmatched box with IoU >= `iou` become
    their mean box with their mean score; a box only one view found keeps its place with half its score (the
    mean with the 0 of the view that did not see it), which is what sinks most false positives."""
    a, b = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(other_boxes, np.float64).reshape(-1, 4)
    sa, sb = np.asarray(scores, np.float64), np.asarray(other_scores, np.float64)
    overlap = (mask_utils.iou(a, b, np.zeros(len(b), np.uint8)) if len(a) and len(b)  # xywh box IoU, as COCO's
               else np.zeros((len(a), len(b))))
    taken = np.zeros(len(b), dtype=bool)
    out_boxes, out_scores = [], []
    for i in np.argsort(-sa, kind="stable"):
        cand = np.where(~taken & (overlap[i] >= iou))[0]
        if len(cand):
            j = cand[np.argmax(overlap[i, cand])]
            taken[j] = True
            out_boxes.append((a[i] + b[j]) / 2)
            out_scores.append((sa[i] + sb[j]) / 2)
        else:
            out_boxes.append(a[i])
            out_scores.append(sa[i] / 2)
    for j in np.where(~taken)[0]:
        out_boxes.append(b[j])
        out_scores.append(sb[j] / 2)
    if not out_boxes:
        return np.zeros((0, 4)), np.zeros(0)
    order = np.argsort(-np.asarray(out_scores), kind="stable")
    return np.asarray(out_boxes)[order], np.asarray(out_scores)[order]
