"""The files a push reads: ground truth (COCO), predictions (COCO results), heatmap index.

Nothing here touches FiftyOne. Every prediction record either resolves to an image and category
or is skipped with a reason that the push reports (never dropped silently).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import struct
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import InputError
from pipelines.review.labels import bad_result_box

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class ImageRow:
    image_id: int
    file_name: str  # relative to the images folder: what the pulled COCO json names
    path: str  # absolute: FiftyOne's sample key
    width: int
    height: int


@dataclass
class GroundTruth:
    images: dict[int, ImageRow] = field(default_factory=dict)
    annotations: dict[int, list[dict]] = field(default_factory=lambda: defaultdict(list))
    categories: list[dict] = field(default_factory=list)
    keypoints: bool = False  # a person_keypoints file: its labels go to the keypoints field
    skipped: Counter = field(default_factory=Counter)


def read_json(path, what: str):
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} not found: {p}")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {p} is not valid JSON: {exc}") from None


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def read_ground_truth(gt_file, images_dir: Path) -> GroundTruth:
    data = read_json(gt_file, "ground-truth COCO json")
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise InputError(f"{gt_file}: a COCO json needs 'images', 'annotations' and 'categories'")
    gt = GroundTruth(categories=[c for c in data["categories"] if isinstance(c, dict) and "id" in c and "name" in c])
    gt.keypoints = any(isinstance(c.get("keypoints"), list) for c in gt.categories) and any(
        isinstance(a, dict) and a.get("keypoints") for a in data["annotations"])
    for im in data["images"]:
        if not (isinstance(im, dict) and isinstance(im.get("id"), int) and isinstance(im.get("file_name"), str)
                and _positive_int(im.get("width")) and _positive_int(im.get("height"))):
            gt.skipped["ground-truth image without a valid id/file_name/width/height"] += 1
            continue
        path = images_dir / im["file_name"]
        if not path.is_file():
            gt.skipped["image file not found"] += 1
            continue
        gt.images[im["id"]] = ImageRow(im["id"], im["file_name"], str(path.resolve()), im["width"], im["height"])
    cats = {c["id"] for c in gt.categories}
    for a in data["annotations"]:
        if not isinstance(a, dict) or a.get("image_id") not in gt.images:
            gt.skipped["ground-truth annotation on an unknown or skipped image"] += 1
        elif a.get("category_id") not in cats:
            gt.skipped["ground-truth annotation with an unknown category"] += 1
        elif _bad_box(a.get("bbox")):
            gt.skipped[f"ground-truth annotation: {_bad_box(a.get('bbox'))}"] += 1
        else:
            gt.annotations[a["image_id"]].append(a)
    return gt


def image_id_from_name(name: str, fallback: int) -> int:
    """The id `lumen predict` gives an image when it has no annotations file: the name's last number."""
    digits = re.findall(r"\d+", Path(name).stem)
    return int(digits[-1]) if digits else fallback


def list_folder_images(images_dir: Path, wanted: set | None = None, known_sizes: dict | None = None
                       ) -> dict[int, ImageRow]:
    """Every image in the folder (or those of the `wanted` ids), by the id `lumen predict` gives it;
    sizes read from the headers unless `known_sizes` (absolute path -> (width, height)) has them."""
    names = sorted(e.name for e in os.scandir(images_dir) if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
    folder = str(images_dir.resolve())
    rows: dict[int, ImageRow] = {}
    for i, name in enumerate(names):
        image_id = image_id_from_name(name, i + 1)
        if image_id in rows:
            log.warning("image id %d of %s is already used by %s: skipped", image_id, name, rows[image_id].file_name)
            continue
        if wanted is not None and image_id not in wanted:
            continue
        p = images_dir / name
        # the resolved folder + the name is the file's resolved path unless the file is a link
        path = str(p.resolve()) if p.is_symlink() else os.path.join(folder, name)
        size = (known_sizes or {}).get(path)
        if size is None or None in size:
            size = image_size(p)
        rows[image_id] = ImageRow(image_id, name, path, int(size[0]), int(size[1]))
    return rows


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header or a PNG's IHDR, reading a few bytes (opening
    each file with PIL was a third of a fresh push); anything else, or anything unusual, via PIL."""
    with open(path, "rb") as f:
        head = f.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:2] == b"\xff\xd8":
            size = _jpeg_frame_size(f)
            if size:
                return size
    from PIL import Image

    with Image.open(path) as img:  # reads the header only
        return img.size


_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # SOFn


def _jpeg_frame_size(f) -> tuple[int, int] | None:
    """Walk a JPEG's marker segments to its frame header; None when the layout is not the plain one."""
    f.seek(2)
    for _ in range(1000):
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        while marker[1] == 0xFF:  # fill bytes
            marker = marker[1:] + f.read(1)
            if len(marker) < 2:
                return None
        length = f.read(2)
        if len(length) < 2:
            return None
        (n,) = struct.unpack(">H", length)
        if marker[1] in _JPEG_FRAMES:
            frame = f.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            return (width, height) if width and height else None
        if n < 2 or not (0xC0 <= marker[1] <= 0xFE) or marker[1] == 0xD9 or marker[1] == 0xDA:
            return None  # no frame before the image data, or a marker without a length
        f.seek(n - 2, 1)
    return None


def _bad_box(bbox) -> str | None:
    return bad_result_box(bbox)


def read_predictions(pred_file) -> list:
    data = read_json(pred_file, "predictions file")
    if not isinstance(data, list):
        raise InputError(f"{pred_file}: a COCO results file is a JSON list of predictions")
    return data


def prediction_problem(r, images: dict, categories: dict | None) -> str | None:
    """Why a prediction record cannot be pushed, or None."""
    if not isinstance(r, dict):
        return "prediction is not an object"
    if "sent_id" in r or "question_id" in r:
        return "grounding / VQA results are not reviewed here (detection, segmentation, pose only)"
    if r.get("image_id") not in images:
        return "image_id not among the images"
    if categories is not None and r.get("category_id") not in categories:
        return "unknown category_id"
    problem = _bad_box(r.get("bbox"))
    if problem:
        return problem
    score = r.get("score")
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
        return "score missing or not a finite number"
    kps = r.get("keypoints")
    if kps is not None and (not isinstance(kps, list) or len(kps) != 51
                            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in kps)):
        return "keypoints must be 51 finite numbers"
    seg = r.get("segmentation")
    if seg is not None:
        from pipelines.sources.common import bad_segmentation

        im = images[r["image_id"]]
        problem = bad_segmentation(seg, im.height, im.width)
        if problem:
            return f"segmentation: {problem}"
    return None


@dataclass
class HeatmapEntry:
    category_id: int | None
    file: Path
    input_size: int | None
    heatmap_size: int | None


def read_heatmap_index(heatmaps_dir) -> dict[int, list[HeatmapEntry]]:
    folder = Path(heatmaps_dir)
    index = read_json(folder / "index.json", "heatmap index")
    if not isinstance(index, list):
        raise InputError(f"{folder / 'index.json'}: expected a list of heatmap entries")
    by_image: dict[int, list[HeatmapEntry]] = defaultdict(list)
    for e in index:
        if isinstance(e, dict) and isinstance(e.get("image_id"), int) and isinstance(e.get("file"), str):
            by_image[e["image_id"]].append(HeatmapEntry(e.get("category_id"), folder / e["file"],
                                                        e.get("input_size"), e.get("heatmap_size")))
    return by_image
