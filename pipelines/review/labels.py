"""COCO geometry <-> FiftyOne labels, both directions, so push and pull can never drift apart.

FiftyOne keeps boxes relative ([x, y, w, h] in 0..1 of the image) and an instance mask as a
boolean crop covering the box's pixels; COCO keeps absolute pixel boxes and full-image RLEs.
The crop is the integer pixel range `round(x) .. round(x + w)` (clipped to the image), the same
convention FiftyOne's own COCO importer uses, so a mask survives push -> pull unchanged.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from pycocotools import mask as mask_utils

NUM_KEYPOINTS = 17


def relative_box(bbox, width: int, height: int) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x / width, y / height, w / width, h / height]


def absolute_box(rel, width: int, height: int) -> list[float]:
    x, y, w, h = (float(v) for v in rel)
    return [round(x * width, 2), round(y * height, 2), round(w * width, 2), round(h * height, 2)]


def crop_window(bbox, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel window (x0, y0, x1, y1) a box's mask crop covers; at least one pixel."""
    x, y, w, h = (float(v) for v in bbox)
    x0 = min(max(int(round(x)), 0), width - 1)
    y0 = min(max(int(round(y)), 0), height - 1)
    x1 = min(max(int(round(x + w)), x0 + 1), width)
    y1 = min(max(int(round(y + h)), y0 + 1), height)
    return x0, y0, x1, y1


def mask_crop(rle: dict, bbox, width: int, height: int) -> np.ndarray:
    """A compressed RLE (full image) -> the boolean crop under `bbox` FiftyOne stores."""
    full = mask_utils.decode(_rle_for_pycocotools(rle))
    x0, y0, x1, y1 = crop_window(bbox, width, height)
    return full[y0:y1, x0:x1].astype(bool)


def crop_to_rle(crop: np.ndarray, bbox, width: int, height: int) -> dict:
    """A FiftyOne mask crop (any size: an annotation tool may store it at its own resolution)
    -> a full-image compressed RLE with a str `counts`."""
    import cv2

    x0, y0, x1, y1 = crop_window(bbox, width, height)
    crop = np.asarray(crop)
    if crop.shape[:2] != (y1 - y0, x1 - x0):
        crop = cv2.resize(crop.astype(np.uint8), (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    full = np.zeros((height, width), dtype=np.uint8, order="F")
    full[y0:y1, x0:x1] = crop.astype(bool)
    rle = mask_utils.encode(full)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _rle_for_pycocotools(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def keypoints_to_points(kps, width: int, height: int) -> tuple[list[list[float]], list[float]]:
    """COCO [x, y, v] * 17 -> relative points (NaN where v == 0, i.e. not labeled) and the v values."""
    arr = np.asarray(kps, dtype=np.float64).reshape(-1, 3)
    points = [[float("nan"), float("nan")] if v == 0 else [x / width, y / height] for x, y, v in arr]
    return points, [float(v) for v in arr[:, 2]]


def points_to_keypoints(points, width: int, height: int, visibility=None) -> tuple[list[float], int]:
    """Relative points (NaN = absent) -> COCO [x, y, v] * 17 and num_keypoints."""
    out, n = [], 0
    for i, (x, y) in enumerate(points):
        if x is None or y is None or math.isnan(x) or math.isnan(y):
            out += [0.0, 0.0, 0]
            continue
        v = int(visibility[i]) if visibility is not None and i < len(visibility) and visibility[i] in (1, 2) else 2
        out += [round(x * width, 2), round(y * height, 2), v]
        n += 1
    return out, n


def box_of_points(points, width: int, height: int) -> list[float] | None:
    """The tight pixel box of the present points (for a keypoint label that carries no box)."""
    xy = np.array([[x * width, y * height] for x, y in points
                   if x is not None and y is not None and not (math.isnan(x) or math.isnan(y))])
    if len(xy) == 0:
        return None
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    return [round(float(x0), 2), round(float(y0), 2), round(float(max(x1 - x0, 1.0)), 2),
            round(float(max(y1 - y0, 1.0)), 2)]


def stable_key(*parts) -> str:
    """A short key that is the same for the same label on every push (dedupe on re-push)."""
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def bad_result_box(bbox) -> str | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "bbox must be 4 numbers [x, y, w, h]"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        return "bbox holds non-numeric or non-finite values"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return f"bbox {list(bbox)} has no area"
    return None
