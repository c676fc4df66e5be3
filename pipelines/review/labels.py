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


def crop_windows(boxes, widths, heights) -> np.ndarray:
    """`crop_window` of many boxes at once (an n x 4 int array), the same arithmetic in numpy
    (`rint` rounds half to even like Python's `round`; tests/test_review_masks.py compares them)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w, h = np.asarray(widths, dtype=np.int64), np.asarray(heights, dtype=np.int64)
    x0 = np.clip(np.rint(b[:, 0]).astype(np.int64), 0, w - 1)
    y0 = np.clip(np.rint(b[:, 1]).astype(np.int64), 0, h - 1)
    x1 = np.minimum(np.maximum(np.rint(b[:, 0] + b[:, 2]).astype(np.int64), x0 + 1), w)
    y1 = np.minimum(np.maximum(np.rint(b[:, 1] + b[:, 3]).astype(np.int64), y0 + 1), h)
    return np.stack([x0, y0, x1, y1], axis=1)


def mask_crop(rle: dict, bbox, width: int, height: int) -> np.ndarray:
    """A compressed RLE (full image) -> the boolean crop under `bbox` FiftyOne stores."""
    full = mask_utils.decode(rle_for_pycocotools(rle))
    x0, y0, x1, y1 = crop_window(bbox, width, height)
    return full[y0:y1, x0:x1].astype(bool)


def mask_crops(items: list[tuple[dict, list, int, int]]) -> list[np.ndarray]:
    """Many (compressed RLE with str counts, bbox, width, height) -> their boolean crops, equal to
    what `mask_crop` gives, decoded together in a few numpy passes over the crops' pixels only (a
    full-image decode per mask dominated the push). An RLE that is not well formed (e.g. counts
    not covering the image exactly) goes through `mask_crop`, i.e. pycocotools."""
    out: list[np.ndarray | None] = [None] * len(items)
    runs = _RunLengths([rle["counts"] for rle, _, _, _ in items])
    heights = np.array([h for _, _, _, h in items], dtype=np.int64)
    sizes = np.array([list(rle["size"]) == [h, w] for rle, _, w, h in items], dtype=bool)
    good = np.flatnonzero(runs.ok & sizes & (runs.total == heights * np.array([w for _, _, w, _ in items])))
    if len(good):
        windows = crop_windows([items[i][1] for i in good], [items[i][2] for i in good], heights[good])
        x0, y0, x1, y1 = (np.zeros(len(items), dtype=np.int64) for _ in range(4))
        x0[good], y0[good], x1[good], y1[good] = windows.T
        size = np.where(runs.ok & np.isin(np.arange(len(items)), good), (x1 - x0) * (y1 - y0), 0)
        offset = np.concatenate([[0], np.cumsum(size)])  # every crop side by side, column-major
        first, last = _runs_in_crops(runs, heights, x0, y0, x1, y1, offset, size > 0)
        # pieces of one mask are disjoint, crops too: no index repeats within `first` or `last`
        edges = np.zeros(int(offset[-1]) + 1, dtype=np.int8)
        edges[first] = 1
        edges[last] -= 1
        pixels = np.cumsum(edges[:-1], dtype=np.int8).view(bool)
        starts, widths, crop_heights = offset.tolist(), (x1 - x0).tolist(), (y1 - y0).tolist()
        for i in good.tolist():  # views of one buffer: rows x columns, as FiftyOne keeps a crop
            out[i] = pixels[starts[i]:starts[i + 1]].reshape(widths[i], crop_heights[i]).T
    for i, crop in enumerate(out):
        if crop is None:
            rle, bbox, w, h = items[i]
            out[i] = mask_crop(rle, bbox, w, h)
    return out


def _runs_in_crops(runs, heights, x0, y0, x1, y1, offset, wanted) -> tuple[np.ndarray, np.ndarray]:
    """The mask pixels (odd runs) of the wanted strings, cut at column boundaries and clipped to
    their crop: (first, end) indices into the crops laid side by side, column-major."""
    keep = (runs.index % 2 == 1) & wanted[runs.owner]
    o = runs.owner[keep]
    h = heights[o]
    start = np.clip(runs.ends[keep] - runs.counts[keep], x0[o] * h, x1[o] * h)
    end = np.clip(runs.ends[keep], x0[o] * h, x1[o] * h)
    o, h, start, end = o[start < end], h[start < end], start[start < end], end[start < end]
    pieces = (end - 1) // h - start // h + 1  # a run crosses columns: one piece per column
    run = np.repeat(np.arange(len(o)), pieces)
    col = start[run] // h[run] + np.arange(len(run)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    o, h = o[run], h[run]
    top = np.clip(np.maximum(start[run], col * h) - col * h, y0[o], y1[o])
    bottom = np.clip(np.minimum(end[run], (col + 1) * h) - col * h, y0[o], y1[o])
    base = offset[o] + (col - x0[o]) * (y1[o] - y0[o]) - y0[o]
    nonempty = top < bottom
    return (base + top)[nonempty], (base + bottom)[nonempty]


class _RunLengths:
    """COCO compressed RLE strings decoded into run lengths, all at once (pycocotools'
    `rleFrString`, vectorized): per run its string (`owner`), position (`index`), length
    (`counts`) and cumulative end (`ends`); per string `total` pixels and `ok` (well formed, every
    value at most 6 chars so the arithmetic matches the C code's)."""

    def __init__(self, strings: list):
        raw = [s.encode("ascii", "replace") if isinstance(s, str) else b"" for s in strings]
        n = len(raw)
        lengths = np.array([len(r) for r in raw], dtype=np.int64)
        chars = np.frombuffer(b"".join(raw), dtype=np.uint8).astype(np.int64) - 48
        char_owner = np.repeat(np.arange(n), lengths)
        last = (chars & 0x20) == 0  # a value ends at a char without the continuation bit
        value_start = np.concatenate([[0], np.flatnonzero(last)[:-1] + 1]).astype(np.int64)
        value_of_char = np.cumsum(last) - last
        k = np.arange(len(chars)) - value_start[value_of_char] if len(chars) else chars
        ok = np.array([isinstance(s, str) and s.isascii() for s in strings], dtype=bool)
        ok &= np.bincount(char_owner, weights=(chars < 0) | (chars > 63) | (k > 5), minlength=n) == 0
        has = lengths > 0
        ok[has] &= last[np.cumsum(lengths)[has] - 1]  # the string ends on a value's last char
        k = np.minimum(k, 5)
        values = np.add.reduceat((chars & 0x1F) << (5 * k), value_start) if last.any() else chars[:0]
        negative = (chars[last] & 0x10) != 0
        values = values - np.where(negative, np.left_shift(1, 5 * (k[last] + 1)), 0)
        self.owner = char_owner[last]
        self.index = np.arange(len(values)) - _group_starts(self.owner)
        self.counts = values.copy()
        for parity in (0, 1):  # counts[m] += counts[m - 2] for m > 2: a running sum per string and parity
            sel = np.flatnonzero((self.index % 2 == parity) & (self.index >= 1))
            self.counts[sel] = _running_sum(values[sel], self.owner[sel])
        ok &= np.bincount(self.owner, weights=self.counts < 0, minlength=n) == 0
        self.ends = _running_sum(self.counts, self.owner)
        self.total = np.bincount(self.owner, weights=self.counts, minlength=n).astype(np.int64)
        self.ok = ok


def _running_sum(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting wherever `groups` (sorted) changes."""
    if not len(values):
        return values
    run = np.cumsum(values)
    start = _group_starts(groups)
    return run - run[start] + values[start]


def _group_starts(groups: np.ndarray) -> np.ndarray:
    """For each element of a sorted array, the index where its run of equal values begins."""
    if not len(groups):
        return groups
    first = np.concatenate([[True], groups[1:] != groups[:-1]])
    return np.maximum.accumulate(np.where(first, np.arange(len(groups)), 0))


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


def rle_for_pycocotools(rle: dict) -> dict:
    """An RLE with a str or bytes `counts` in the form pycocotools takes (bytes)."""
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
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):  # NaN: not labeled
            out += [0.0, 0.0, 0]
            continue
        v = int(visibility[i]) if visibility is not None and i < len(visibility) and visibility[i] in (1, 2) else 2
        out += [round(x * width, 2), round(y * height, 2), v]
        n += 1
    return out, n


def box_of_points(points, width: int, height: int) -> list[float] | None:
    """The tight pixel box of the present points (for a keypoint label that carries no box)."""
    xy = np.array([[x * width, y * height] for x, y in points
                   if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)])
    if len(xy) == 0:
        return None
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    return [round(float(x0), 2), round(float(y0), 2), round(float(max(x1 - x0, 1.0)), 2),
            round(float(max(y1 - y0, 1.0)), 2)]


def stable_key(*parts) -> str:
    """A short key that is the same for the same label on every push (dedupe on re-push)."""
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def bad_label_box(rel) -> str | None:
    """Why a stored FiftyOne box (relative [x, y, w, h]) cannot become a COCO box; None when it can.
    An annotation tool or a script can store any numbers: NaN, infinite, negative or zero sizes."""
    if not isinstance(rel, (list, tuple)) or len(rel) != 4:
        return f"box {rel!r} is not 4 numbers [x, y, w, h]"
    try:
        x, y, w, h = (float(v) for v in rel)
    except (TypeError, ValueError):
        return f"box {list(rel)!r} holds non-numbers"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return f"box {[x, y, w, h]} holds NaN or infinite values"
    if w <= 0 or h <= 0:
        return f"box {[x, y, w, h]} has no area (width or height <= 0)"
    if x >= 1 or y >= 1 or x + w <= 0 or y + h <= 0:
        return f"box {[x, y, w, h]} lies outside the image"
    return None


def bad_result_box(bbox) -> str | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "bbox must be 4 numbers [x, y, w, h]"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        return "bbox holds non-numeric or non-finite values"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return f"bbox {list(bbox)} has no area"
    return None
