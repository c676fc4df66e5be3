"""The square-pad input transform of the spec, in both directions.

An image of size (w, h) is resized so its longer side is S and centered on an S x S square
(LLaVA-1.5 `expand2square`). The heatmap (M x M, M = S / 4 by default) covers that square.
Every target is rendered through `to_heatmap`, every prediction maps back through `from_heatmap`
/ `from_input`, so the two directions can never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SquarePad:
    width: int
    height: int
    size: int  # S, the model's input side
    heatmap_size: int  # M, the heatmap side

    @property
    def scale(self) -> float:
        return self.size / max(self.width, self.height)

    @property
    def offset(self) -> tuple[float, float]:
        s = self.scale
        return ((self.size - self.width * s) / 2.0, (self.size - self.height * s) / 2.0)

    @property
    def heatmap_stride(self) -> float:
        """Input pixels per heatmap pixel (S / M)."""
        return self.size / self.heatmap_size

    # --- points, arrays of shape (..., 2) in (x, y) order -------------------------------------
    def to_input(self, xy: np.ndarray) -> np.ndarray:
        ox, oy = self.offset
        xy = np.asarray(xy, dtype=np.float64)
        return xy * self.scale + np.array([ox, oy])

    def from_input(self, xy: np.ndarray) -> np.ndarray:
        ox, oy = self.offset
        xy = np.asarray(xy, dtype=np.float64)
        return (xy - np.array([ox, oy])) / self.scale

    def to_heatmap(self, xy: np.ndarray) -> np.ndarray:
        """Original pixels -> continuous heatmap coordinates (floor gives the pixel)."""
        return self.to_input(xy) / self.heatmap_stride

    def from_heatmap(self, xy: np.ndarray) -> np.ndarray:
        """Continuous heatmap coordinates -> original pixels."""
        return self.from_input(np.asarray(xy, dtype=np.float64) * self.heatmap_stride)

    def center_pixels(self, boxes_xywh: np.ndarray) -> np.ndarray:
        """Heatmap pixel (int x, y) of each box center, clipped to the map."""
        boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
        centers = boxes[:, :2] + boxes[:, 2:] / 2.0
        px = np.floor(self.to_heatmap(centers)).astype(np.int64)
        return np.clip(px, 0, self.heatmap_size - 1)

    def sizes_normalized(self, boxes_xywh: np.ndarray) -> np.ndarray:
        """Box (w, h) in input pixels divided by S: the size targets of the spec."""
        boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
        return boxes[:, 2:] * self.scale / self.size

    # --- images ---------------------------------------------------------------------------------
    def content_box_input(self) -> tuple[int, int, int, int]:
        """The (x0, y0, x1, y1) region of the S x S input the image occupies."""
        ox, oy = self.offset
        s = self.scale
        x0, y0 = int(round(ox)), int(round(oy))
        return x0, y0, x0 + int(round(self.width * s)), y0 + int(round(self.height * s))

    def content_to_image(self, xy: np.ndarray) -> np.ndarray:
        """Input pixels -> original pixels the way `pad_image` placed the image: on its rounded content box. What
        the model drew on the input's pixels (a mask) goes back this way; `from_input` is the exact inverse of
        `to_input`, which the box and point targets use, and differs from this by up to half an input pixel."""
        x0, y0, x1, y1 = self.content_box_input()
        xy = np.asarray(xy, dtype=np.float64)
        return (xy - np.array([x0, y0])) * np.array([self.width / (x1 - x0), self.height / (y1 - y0)])

    def heatmap_to_image(self, heat: np.ndarray) -> np.ndarray:
        """Crop an M x M map to the image's region and resize it to (height, width)."""
        import cv2

        m = self.heatmap_size
        stride = self.heatmap_stride
        x0, y0, x1, y1 = self.content_box_input()
        hx0, hy0 = int(np.floor(x0 / stride)), int(np.floor(y0 / stride))
        hx1, hy1 = max(hx0 + 1, int(np.ceil(x1 / stride))), max(hy0 + 1, int(np.ceil(y1 / stride)))
        crop = heat[max(hy0, 0):min(hy1, m), max(hx0, 0):min(hx1, m)]
        return cv2.resize(crop, (self.width, self.height), interpolation=cv2.INTER_LINEAR)


def box_targets(boxes_xywh: np.ndarray, image_wh: np.ndarray, size: int, heatmap_size: int):
    """`SquarePad(w, h, size, heatmap_size)`'s center pixels, normalized sizes and (w, h) in heatmap
    pixels for boxes of many images at once (`image_wh`: each box's image size), the same floats
    operation for operation (a test holds them equal)."""
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    wh = np.asarray(image_wh, dtype=np.int64).reshape(-1, 2)
    scale = (size / np.maximum(wh[:, 0], wh[:, 1]))[:, None]
    offset = (size - wh * scale) / 2.0
    stride = size / heatmap_size
    centers = boxes[:, :2] + boxes[:, 2:] / 2.0
    px = np.clip(np.floor((centers * scale + offset) / stride).astype(np.int64), 0, heatmap_size - 1)
    return px, boxes[:, 2:] * scale / size, boxes[:, 2:] * scale / stride


def pad_image(image: np.ndarray, size: int, fill: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Resize an HxWx3 uint8 image (longer side -> size) and center it on a size x size square."""
    import cv2

    h, w = image.shape[:2]
    geo = SquarePad(w, h, size, max(1, size // 4))
    x0, y0, x1, y1 = geo.content_box_input()
    resized = cv2.resize(image, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA if geo.scale < 1 else cv2.INTER_LINEAR)
    out = np.empty((size, size, 3), dtype=np.uint8)
    out[:] = fill
    out[y0:y1, x0:x1] = resized
    return out
