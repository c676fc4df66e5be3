"""What every reader returns, and the checks they share."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import InputError


@dataclass
class Draft:
    """One sample before heatmap rendering; geometry in original pixels."""

    task: str
    image_id: int | None
    image_path: str
    width: int
    height: int
    instruction: str
    answer: str
    source_ids: list[str]
    category: str | None = None
    category_id: int | None = None
    expression: str | None = None
    boxes: list[list[float]] = field(default_factory=list)
    masks: list[dict] | None = None
    keypoints: list[list[float]] | None = None
    ignore_boxes: list[list[float]] = field(default_factory=list)
    ignore_masks: list[dict] = field(default_factory=list)


@dataclass
class ReadResult:
    drafts: list[Draft]
    quarantine: list[tuple[str, str, str]]  # (source_file, record_id, reason)
    records_read: int


def load_json(path: str | Path, expect: type, what: str) -> Any:
    """Load a JSON file or raise one clear InputError line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what}: file not found: {p}")
    try:
        with open(p, "rb") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what}: {p} is not valid JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, expect):
        raise InputError(f"{what}: {p} must hold a JSON {expect.__name__} at the top level, found {type(data).__name__}")
    return data


def require_keys(data: dict, keys: tuple[str, ...], path, what: str) -> None:
    missing = [k for k in keys if not isinstance(data.get(k), list)]
    if missing:
        raise InputError(f"{what}: {path} has no list {', '.join(repr(k) for k in missing)} at the top level")


def bad_box(bbox) -> str | None:
    """Why a COCO xywh box is unusable, or None."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "bbox is not a list of 4 numbers"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return "bbox has non-numeric values"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return f"bbox has a non-finite value {list(bbox)}"
    if w <= 0 or h <= 0:
        return f"bbox has non-positive size (w={w:g}, h={h:g})"
    return None


def polygon_area(flat: list[float]) -> float:
    xs, ys = flat[0::2], flat[1::2]
    n = len(xs)
    return 0.5 * abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n)))


def bad_segmentation(seg) -> str | None:
    """Why a COCO segmentation cannot form an area, or None."""
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            return "RLE segmentation without 'counts' and 'size'"
        return None
    if not isinstance(seg, list) or not seg:
        return "segmentation is empty"
    for poly in seg:
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            return "polygon has fewer than 3 points or an odd number of coordinates"
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in poly):
            return "polygon has non-finite coordinates"
    if max(polygon_area(p) for p in seg) <= 0:
        return "polygons have zero area"
    return None


def split_from_name(path: str | Path) -> str:
    name = Path(path).name.lower()
    for split in ("train", "val", "test"):
        if split in name:
            return split
    return "train"
