"""COCO instances (detection, instance segmentation) and person keypoints (pose).

Records are annotations (`ann:<id>`). Crowd regions (iscrowd=1) are not instances: they travel as
ignore regions on every sample of their image, and are accounted on the first sample of that image.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from pipelines.instructions import answer_for, instruction_for
from pipelines.sources.common import (Draft, ReadResult, bad_box, bad_segmentation, load_json,
                                      require_keys, split_from_name)

NUM_KEYPOINTS = 17


def index_coco(path: str | Path, what: str):
    """Load a COCO json: (data, images by id, categories by id)."""
    data = load_json(path, dict, what)
    require_keys(data, ("images", "annotations", "categories"), path, what)
    images = {}
    for im in data["images"]:
        if isinstance(im, dict) and isinstance(im.get("id"), int):
            images[im["id"]] = im
    cats = {c["id"]: c for c in data["categories"] if isinstance(c, dict) and "id" in c and "name" in c}
    return data, images, cats


def to_rle(seg, height: int, width: int) -> dict:
    """Polygons or (un)compressed RLE -> one compressed RLE with a str `counts`."""
    if isinstance(seg, dict) and isinstance(seg.get("counts"), str):
        rle = dict(seg)
    else:
        rles = mask_utils.frPyObjects(seg, height, width)
        rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def image_path(images_dir: Path | None, file_name: str) -> str:
    return str((images_dir / file_name).resolve()) if images_dir is not None else file_name


def valid_annotations(data, images, cats, source_file: str, images_dir: Path | None, *, need_keypoints=False):
    """Split annotations into usable ones (grouped by image) and quarantine rows with reasons."""
    quarantine: list[tuple[str, str, str]] = []
    anns = [a for a in data["annotations"]]
    id_counts = Counter(a.get("id") for a in anns if isinstance(a, dict))
    by_image: dict[int, list[dict]] = defaultdict(list)
    missing_files: dict[int, bool] = {}
    for pos, a in enumerate(anns):
        rid = f"ann:{a.get('id')}" if isinstance(a, dict) and a.get("id") is not None else f"ann:#{pos}"
        reason = _annotation_problem(a, images, cats, id_counts, need_keypoints)
        if reason is None and images_dir is not None:
            im_id = a["image_id"]
            if im_id not in missing_files:
                missing_files[im_id] = not (images_dir / images[im_id]["file_name"]).is_file()
            if missing_files[im_id]:
                reason = f"image file not found: {images[im_id]['file_name']}"
        if reason is not None:
            quarantine.append((source_file, rid, reason))
        else:
            by_image[a["image_id"]].append(a)
    return by_image, quarantine


def _annotation_problem(a, images, cats, id_counts, need_keypoints) -> str | None:
    if not isinstance(a, dict):
        return "annotation is not an object"
    if a.get("id") is None:
        return "annotation has no id"
    if id_counts[a["id"]] > 1:
        return f"duplicate annotation id {a['id']} ({id_counts[a['id']]} copies)"
    if a.get("image_id") not in images:
        return f"unknown image id {a.get('image_id')}"
    im = images[a["image_id"]]
    if not (isinstance(im.get("width"), int) and isinstance(im.get("height"), int) and im["width"] > 0 and im["height"] > 0):
        return f"image {im['id']} has no valid width/height"
    if a.get("category_id") not in cats:
        return f"unknown category id {a.get('category_id')}"
    problem = bad_box(a.get("bbox"))
    if problem:
        return problem
    if "segmentation" in a and a["segmentation"] not in (None, []):
        problem = bad_segmentation(a["segmentation"])
        if problem:
            return problem
    if need_keypoints and not a.get("iscrowd"):
        kps = a.get("keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * NUM_KEYPOINTS:
            n = len(kps) if isinstance(kps, list) else 0
            return f"keypoints must have {3 * NUM_KEYPOINTS} numbers, found {n}"
    return None


def read_coco_instances(path, *, images_dir=None, split=None, negative_ratio=0.5, seed=0,
                        paraphrase=False) -> ReadResult:
    """Detection + instance segmentation drafts: one per (image, category present), plus negatives."""
    src = str(path)
    data, images, cats = index_coco(path, "coco")
    images_dir = Path(images_dir) if images_dir else None
    split = split or split_from_name(path)
    by_image, quarantine = valid_annotations(data, images, cats, src, images_dir)
    drafts: list[Draft] = []
    cat_ids = sorted(cats)
    for im_id in sorted(by_image):
        im = images[im_id]
        w, h = im["width"], im["height"]
        anns = sorted(by_image[im_id], key=lambda a: a["id"])
        crowd = [a for a in anns if a.get("iscrowd")]
        ignore_boxes = [[float(v) for v in a["bbox"]] for a in crowd]
        ignore_masks = [to_rle(a["segmentation"], h, w) for a in crowd if a.get("segmentation")]
        per_cat: dict[int, list[dict]] = defaultdict(list)
        for a in anns:
            if not a.get("iscrowd"):
                per_cat[a["category_id"]].append(a)
        path_str = image_path(images_dir, im["file_name"])
        rng = np.random.default_rng([seed, im_id])
        absent = [c for c in cat_ids if c not in per_cat]
        n_neg = min(len(absent), int(round(negative_ratio * max(1, len(per_cat)))))
        negatives = sorted(rng.choice(absent, size=n_neg, replace=False).tolist()) if n_neg else []
        first = len(drafts)
        for task in ("detection", "instance_segmentation"):
            for c in sorted(per_cat):
                group = per_cat[c]
                name = cats[c]["name"]
                masks = [to_rle(a["segmentation"], h, w) if a.get("segmentation") else None for a in group]
                drafts.append(Draft(
                    task=task, image_id=im_id, image_path=path_str, width=w, height=h,
                    instruction=instruction_for(task, category=name, paraphrase=paraphrase, key=f"{im_id}/{c}", seed=seed),
                    answer=answer_for(task, True), source_ids=[f"ann:{a['id']}" for a in group],
                    category=name, category_id=c, boxes=[[float(v) for v in a["bbox"]] for a in group],
                    masks=masks if all(m is not None for m in masks) else None,
                    ignore_boxes=ignore_boxes, ignore_masks=ignore_masks))
            for c in negatives:
                name = cats[c]["name"]
                drafts.append(Draft(
                    task=task, image_id=im_id, image_path=path_str, width=w, height=h,
                    instruction=instruction_for(task, category=name, paraphrase=paraphrase, key=f"{im_id}/{c}", seed=seed),
                    answer=answer_for(task, False), source_ids=[], category=name, category_id=c,
                    masks=[] , ignore_boxes=ignore_boxes, ignore_masks=ignore_masks))
        crowd_ids = [f"ann:{a['id']}" for a in crowd]
        if crowd_ids:
            if len(drafts) > first:
                drafts[first].source_ids = drafts[first].source_ids + crowd_ids
            else:
                quarantine += [(src, rid, "crowd region in an image with no instances or negatives to attach it to")
                               for rid in crowd_ids]
    return ReadResult(drafts, quarantine, len(data["annotations"]))


def read_coco_keypoints(path, *, images_dir=None, split=None, paraphrase=False, seed=0) -> ReadResult:
    """Pose drafts: one per image with people; boxes and 17 keypoints per person."""
    src = str(path)
    data, images, cats = index_coco(path, "coco-keypoints")
    images_dir = Path(images_dir) if images_dir else None
    by_image, quarantine = valid_annotations(data, images, cats, src, images_dir, need_keypoints=True)
    drafts: list[Draft] = []
    for im_id in sorted(by_image):
        im = images[im_id]
        w, h = im["width"], im["height"]
        anns = sorted(by_image[im_id], key=lambda a: a["id"])
        people = [a for a in anns if not a.get("iscrowd")]
        crowd = [a for a in anns if a.get("iscrowd")]
        if not people:
            quarantine += [(src, f"ann:{a['id']}", "crowd region in an image without people") for a in crowd]
            continue
        drafts.append(Draft(
            task="pose", image_id=im_id, image_path=image_path(images_dir, im["file_name"]), width=w, height=h,
            instruction=instruction_for("pose", paraphrase=paraphrase, key=str(im_id), seed=seed),
            answer=answer_for("pose", True), source_ids=[f"ann:{a['id']}" for a in people + crowd],
            category="person", category_id=people[0]["category_id"],
            boxes=[[float(v) for v in a["bbox"]] for a in people],
            masks=[to_rle(a["segmentation"], h, w) for a in people] if all(a.get("segmentation") for a in people) else None,
            keypoints=[[float(v) for v in a["keypoints"]] for a in people],
            ignore_boxes=[[float(v) for v in a["bbox"]] for a in crowd],
            ignore_masks=[to_rle(a["segmentation"], h, w) for a in crowd if a.get("segmentation")]))
    return ReadResult(drafts, quarantine, len(data["annotations"]))
