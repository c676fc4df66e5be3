"""Box decoder: heatmap peaks + the H/W maps (+ sub-pixel offsets) -> boxes in original pixels."""

from __future__ import annotations

import numpy as np

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
