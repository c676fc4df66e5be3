"""Heatmap targets of the spec: CenterNet Gaussians at instance centers, and peak extraction.

Rendering touches only a (2r+1)^2 window per instance with numpy array ops (no per-pixel Python),
so a COCO-sized file renders in seconds.
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache

import cv2
import numpy as np


def gaussian_radius(height, width, min_overlap: float = 0.7) -> np.ndarray:
    """CenterNet's radius rule (the min of its three cases), vectorized; sizes in heatmap pixels."""
    h = np.asarray(height, dtype=np.float64)
    w = np.asarray(width, dtype=np.float64)
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + np.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + np.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + np.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return np.maximum(0, np.floor(np.minimum(np.minimum(r1, r2), r3))).astype(np.int64)


@lru_cache(maxsize=512)
def gaussian_kernel(radius: int) -> np.ndarray:
    """The (2r+1)^2 Gaussian of one instance, sigma = (2r+1)/6, exactly 1.0 in the middle."""
    sigma = (2 * radius + 1) / 6.0
    d = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma * sigma)).astype(np.float32)
    g.flags.writeable = False  # shared by every instance of this radius
    return g


@lru_cache(maxsize=512)
def _kernel_u8(radius: int) -> np.ndarray:
    k = to_uint8(gaussian_kernel(radius))
    k.flags.writeable = False
    return k


def _max_in(heat: np.ndarray, centers, radii, kernel, x_off: int = 0) -> None:
    """Max-combine each instance's windowed kernel into `heat` (columns shifted by `x_off`)."""
    size = heat.shape[0]
    centers = np.asarray(centers, dtype=np.int64).reshape(-1, 2)
    radii = np.asarray(radii, dtype=np.int64).reshape(-1)
    if len(centers) != len(radii):
        raise ValueError(f"{len(centers)} centers but {len(radii)} radii")
    for (cx, cy), r in zip(centers.tolist(), radii.tolist()):
        if not (0 <= cx < size and 0 <= cy < size):
            continue  # a center off the map has no pixel to peak at
        g = kernel(r)
        x0, x1 = max(0, cx - r), min(size, cx + r + 1)
        y0, y1 = max(0, cy - r), min(size, cy + r + 1)
        window = heat[y0:y1, x_off + x0:x_off + x1]
        np.maximum(window, g[y0 - cy + r:y1 - cy + r, x0 - cx + r:x1 - cx + r], out=window)


def heatmap_png(centers: np.ndarray, radii: np.ndarray, size: int) -> bytes:
    """`encode_png(render_heatmap(centers, radii, size))`, byte for byte, at a fraction of the cost:
    rendered straight in uint8 (rounding is monotonic, so the max of rounded kernels is the rounded
    max) into the PNG's row layout, then deflated once."""
    rows = np.zeros((size, size + 1), np.uint8)  # column 0: each row's PNG filter byte (0: none)
    _max_in(rows, centers, radii, _kernel_u8, x_off=1)
    return _png_gray8(rows, size, size)


def render_heatmap(centers: np.ndarray, radii: np.ndarray, size: int) -> np.ndarray:
    """Max-combined Gaussians (sigma = (2r+1)/6), exactly 1.0 at each center pixel.

    Each instance touches only its (2r+1)^2 window, with a cached kernel per radius: the
    per-instance cost is one numpy `maximum` over the window, never a per-pixel Python loop.
    """
    heat = np.zeros((size, size), dtype=np.float32)
    _max_in(heat, centers, radii, gaussian_kernel)
    return heat


def to_uint8(heat: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, rounding half up (1.0 -> 255 exactly)."""
    out = np.multiply(heat, 255.0, dtype=np.float32)
    np.clip(out, 0.0, 255.0, out=out)
    out += 0.5
    return out.astype(np.uint8)


def encode_png(heat: np.ndarray) -> bytes:
    """uint8 grayscale PNG; 1.0 -> 255 so the center pixels read back as exactly 255."""
    img = to_uint8(heat) if heat.dtype != np.uint8 else heat
    if img.ndim != 2:
        raise ValueError(f"a heatmap is 2-D, got shape {img.shape}")
    h, w = img.shape
    rows = np.zeros((h, w + 1), np.uint8)
    rows[:, 1:] = img
    return _png_gray8(rows, w, h)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png_gray8(rows: np.ndarray, width: int, height: int) -> bytes:
    """A PNG of 8-bit grey from rows that already start with their filter byte. Heatmaps are
    mostly zeros: unfiltered rows at deflate level 1 are smaller than OpenCV's adaptive filters
    and take a third of the time."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    return (_PNG_SIGNATURE + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows, 1))
            + _PNG_END)


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> float32 map in [0, 1]."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if arr is None:
        raise ValueError("not a PNG heatmap")
    return arr.astype(np.float32) / 255.0


def find_peaks(heat: np.ndarray, k: int = 100, threshold: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Top-k local maxima after 3x3 max-pool suppression: (xy int [n, 2], scores [n])."""
    heat = np.asarray(heat, dtype=np.float32)
    pooled = cv2.dilate(heat, np.ones((3, 3), np.uint8))
    keep = (heat == pooled) & (heat >= threshold)
    ys, xs = np.nonzero(keep)
    scores = heat[ys, xs]
    order = np.argsort(-scores, kind="stable")[:k]
    return np.stack([xs[order], ys[order]], 1), scores[order]
