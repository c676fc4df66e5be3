"""Instruction heatmaps for labelers: one map per image, the part of it no shown box explains, and
the peaks no predicted box explains.

`lumen predict` writes one M x M heatmap per (image, instruction) over the square-padded model
input. Labelers get, per image, the maximum over its instructions mapped back onto the image
(`fo.Heatmap`), so they see where the model looked; and every heatmap peak of a category that no
predicted box of that category contains, as a point: a likely missed object.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipelines.geometry import SquarePad
from pipelines.heatmaps import decode_png, find_peaks

STORED_MAX_SIDE = 128  # the map is a low-resolution signal; the App stretches it over the image
# The App paints every non-zero heatmap pixel and leaves only exact zeros transparent. A model's map
# never reaches zero (a trained model's background sits at 1-2 % of the peak, a barely trained one's at
# a quarter), so without a cut the whole image is tinted. A pixel less than this share of the way from
# the map's median (its background) to its peak is set to zero: the image shows through everywhere
# but where the model looked. (A fixed value would hide a weak map completely.)
VISIBLE_SHARE = 0.2


@dataclass
class ImageHeat:
    heat: np.ndarray | None  # uint8, image aspect, long side <= STORED_MAX_SIDE
    peaks: list[tuple[int | None, float, float, float]]  # (category_id, x px, y px, value), not covered
    problems: Counter
    unexplained: np.ndarray | None = None  # `heat` without the blobs whose peak a shown box holds


def image_heat(entries, width: int, height: int, boxes_by_cat: dict, peak_threshold: float) -> ImageHeat:
    problems: Counter = Counter()
    maps: list[np.ndarray] = []
    peaks = []
    f = min(1.0, STORED_MAX_SIDE / max(width, height))
    small_w, small_h = max(1, round(width * f)), max(1, round(height * f))
    for e in entries:
        try:
            heat = decode_png(e.file.read_bytes())
        except (OSError, ValueError):
            problems["heatmap file missing or not a PNG"] += 1
            continue
        if heat.ndim != 2 or heat.shape[0] != heat.shape[1]:
            problems["heatmap is not a square grayscale map"] += 1
            continue
        m = e.heatmap_size or heat.shape[0]
        s = e.input_size or 4 * m  # the spec's M = S / 4 when the index does not say
        if m != heat.shape[0]:
            problems["heatmap size differs from its index entry"] += 1
            continue
        # proportional sizes share the transform's scale and offset, so this lands on the image
        maps.append(SquarePad(small_w, small_h, s, m).heatmap_to_image(heat))
        geo = SquarePad(width, height, s, m)
        xy, values = find_peaks(heat, threshold=peak_threshold)
        if len(values):
            centers = geo.from_heatmap(xy.astype(np.float64) + 0.5)
            boxes = np.asarray(boxes_by_cat.get(e.category_id, []), dtype=np.float64).reshape(-1, 4)
            for (x, y), v in zip(centers, values):
                if not (0 <= x < width and 0 <= y < height):
                    continue  # a peak on the padding is no object in the image
                if boxes.size and np.any((boxes[:, 0] <= x) & (x <= boxes[:, 0] + boxes[:, 2])
                                         & (boxes[:, 1] <= y) & (y <= boxes[:, 1] + boxes[:, 3])):
                    continue
                peaks.append((e.category_id, float(x), float(y), float(v)))
    if not maps:
        return ImageHeat(None, peaks, problems)
    heat = visible_heat(np.max(np.stack(maps), axis=0))
    all_boxes = [b for bs in boxes_by_cat.values() for b in bs]
    return ImageHeat(heat, peaks, problems, unexplained_heat(heat, all_boxes, width / small_w, height / small_h))


def unexplained_heat(heat: np.ndarray, boxes, sx: float, sy: float) -> np.ndarray:
    """The visible heat without each blob whose hottest pixel lies in a shown box (`boxes` in image
    pixels, [x, y, w, h]; `sx`, `sy` image pixels per map pixel).

    Why: the App gives a click to a non-zero heatmap pixel before any box under it (FiftyOne 1.22
    ranks a heatmap pixel at mouse distance 0, a box by the distance to its edge), so a blob over a
    box makes the box unclickable. A blob inside a box says what the box already says; the blobs
    left are where the model looked and drew nothing: likely misses.
    """
    import cv2

    out = heat.copy()
    if not len(boxes) or not out.any():
        return out
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n, comp = cv2.connectedComponents((out > 0).astype(np.uint8), connectivity=8)
    for k in range(1, n):
        ys, xs = np.nonzero(comp == k)
        i = int(np.argmax(out[ys, xs]))
        x, y = (xs[i] + 0.5) * sx, (ys[i] + 0.5) * sy
        if np.any((b[:, 0] <= x) & (x <= b[:, 0] + b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 1] + b[:, 3])):
            out[ys, xs] = 0
    return out


def visible_heat(top: np.ndarray) -> np.ndarray:
    """[0, 1] map -> uint8 for the App, zero (transparent) below `VISIBLE_SHARE` of the way from its
    median to its peak."""
    out = np.clip(np.round(top * 255), 0, 255).astype(np.uint8)
    floor = float(np.median(top))
    out[top < floor + VISIBLE_SHARE * (float(top.max()) - floor)] = 0
    return out
