"""COCO records of one image -> label documents in FiftyOne's storage format, for the push.

Labels are plain dicts (`_cls`, `_id`, masks serialized as FiftyOne stores numpy arrays), each with
a stable `label_key`, so the push can write them in bulk without FiftyOne's per-object layer.
Labels with masks are built lazily: a `LazyLabels` is known by its keys (enough to see that a
field already holds exactly these labels) and `LabelBuilder.build_all` builds a whole batch's at
once, every mask of the batch decoded in one vectorized pass (`labels.mask_crops`): decoding each
mask over the full image and serializing it through `np.save` was most of a push's time.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
from bson import ObjectId

from pipelines.review import fo_adapter as fa
from pipelines.review.labels import crop_windows, keypoints_to_points, mask_crops, relative_box, stable_key
from pipelines.sources.coco import to_rles


@dataclass(frozen=True)
class LazyLabels:
    """A label document known by its keys; built (masks decoded, serialized) only if written."""
    cls: str
    keys: tuple
    mask_inputs: Callable[[], list]  # per label: (rle, bbox, width, height), or None without a mask
    build: Callable[[list], dict]  # the labels' serialized masks (None where none) -> the document


def cls_of(v) -> str:
    return v.cls if isinstance(v, LazyLabels) else v["_cls"]


def content_keys(raw) -> tuple | None:
    """The label keys of a label document as built here (None: no label)."""
    if raw is None:
        return None
    if isinstance(raw, LazyLabels):
        return raw.keys
    name = fa.LIST_FIELDS.get(raw["_cls"])
    if name is None:
        return (raw.get("label_key"),)
    return tuple(lab.get("label_key") for lab in raw[name])


MAX_CROP_PIXELS = 1 << 24  # decoded in one pass at the most: ~3 bytes a pixel while it runs


def _parts_by_area(masks: list) -> list[list]:
    """The (rle, bbox, width, height) list cut so that each part's crops hold at most about
    MAX_CROP_PIXELS pixels: a batch of large masks does not decode all at once."""
    if not masks:
        return []
    windows = crop_windows([b for _, b, _, _ in masks], [w for _, _, w, _ in masks], [h for _, _, _, h in masks])
    part = np.cumsum((windows[:, 2] - windows[:, 0]) * (windows[:, 3] - windows[:, 1])) // MAX_CROP_PIXELS
    cuts = (np.flatnonzero(np.diff(part)) + 1).tolist()
    return [masks[a:b] for a, b in zip([0] + cuts, cuts + [len(masks)])]


class LabelBuilder:
    """Builds the label documents of one model version's push."""

    def __init__(self, version: str, cats: dict, peak_threshold: float):
        self.version, self.cats, self.peak_threshold = version, cats, peak_threshold

    @staticmethod
    def build_all(field_values: list[dict]) -> None:
        """Replace every `LazyLabels` in these {field: value} dicts by its document, all masks
        decoded and serialized together."""
        lazy = [(d, k, v) for d in field_values for k, v in d.items() if isinstance(v, LazyLabels)]
        inputs = [v.mask_inputs() for _, _, v in lazy]
        masks = [m for ms in inputs for m in ms if m is not None]
        serialized = iter([fa.serialize_mask(crop) for part in _parts_by_area(masks) for crop in mask_crops(part)])
        for (d, k, v), ms in zip(lazy, inputs):
            d[k] = v.build([next(serialized) if m is not None else None for m in ms])

    def _name(self, cid) -> str:
        return self.cats[cid]["name"] if cid in self.cats else f"category_{cid}"

    @staticmethod
    def _label(cls: str, **fields) -> dict:
        d = {"_id": ObjectId(), "_cls": cls, "tags": []}
        if cls != "Heatmap":
            d["attributes"] = {}
        d.update({k: v for k, v in fields.items() if v is not None})
        return d

    @staticmethod
    def _keys(parts: list[tuple]) -> list[str]:
        seen: Counter = Counter()
        keys = []
        for p in parts:
            seen[p] += 1
            keys.append(stable_key(*p, seen[p]))  # identical duplicates in a file stay distinct
        return keys

    @staticmethod
    def _mask_inputs(im, records) -> Callable[[], list]:
        def inputs():
            rles = to_rles([r.get("segmentation") for r in records], im.height, im.width)
            return [(rle, r["bbox"], im.width, im.height) if rle is not None else None
                    for r, rle in zip(records, rles)]
        return inputs

    def _box(self, im, bbox) -> list[float]:
        return relative_box(bbox, im.width, im.height)

    def detections(self, im, records) -> LazyLabels:
        keys = self._keys([(self.version, im.image_id, "det", r["category_id"], *(round(v, 2) for v in r["bbox"]),
                            round(r["score"], 5)) for r in records])

        def build(masks):
            return {"_cls": "Detections", "detections": [
                self._detection(r, im, mask, confidence=float(r["score"]), model_version=self.version, label_key=key,
                                category_id=int(r["category_id"]))
                for r, key, mask in zip(records, keys, masks)]}
        return LazyLabels("Detections", tuple(keys), self._mask_inputs(im, records), build)

    def _detection(self, r, im, mask, **attributes) -> dict:
        """`_label("Detection", ...)` for the push's most numerous label, without its generic filtering."""
        d = {"_id": ObjectId(), "_cls": "Detection", "tags": [], "attributes": {}, "label": self._name(r["category_id"]),
             "bounding_box": relative_box(r["bbox"], im.width, im.height)}
        if mask is not None:
            d["mask"] = mask
        d.update(attributes)
        return d

    def keypoints(self, im, records) -> dict:
        keys = self._keys([(self.version, im.image_id, "kp", r["category_id"], *(round(v, 2) for v in r["bbox"]),
                            round(r["score"], 5)) for r in records])
        labels = []
        for r, key in zip(records, keys):
            points, vis = keypoints_to_points(r["keypoints"], im.width, im.height)
            labels.append(self._label("Keypoint", label=self._name(r["category_id"]), points=points,
                                      score=float(r["score"]), visibility=vis, box=self._box(im, r["bbox"]),
                                      model_version=self.version, label_key=key, category_id=int(r["category_id"])))
        return {"_cls": "Keypoints", "keypoints": labels}

    def ground_truth(self, im, anns, keypoints: bool) -> dict | LazyLabels:
        if keypoints:
            labels = []
            for a in anns:
                if not a.get("keypoints"):
                    continue
                points, vis = keypoints_to_points(a["keypoints"], im.width, im.height)
                labels.append(self._label("Keypoint", label=self._name(a["category_id"]), points=points,
                                          visibility=vis, box=self._box(im, a["bbox"]), label_key=f"gt:{a.get('id')}",
                                          category_id=int(a["category_id"])))
            return {"_cls": "Keypoints", "keypoints": labels}

        def build(masks):
            return {"_cls": "Detections", "detections": [
                self._detection(a, im, mask, iscrowd=int(bool(a.get("iscrowd"))), label_key=f"gt:{a.get('id')}",
                                category_id=int(a["category_id"]))
                for a, mask in zip(anns, masks)]}
        return LazyLabels("Detections", tuple(f"gt:{a.get('id')}" for a in anns), self._mask_inputs(im, anns), build)

    def heatmap(self, heat) -> dict | None:
        if heat is None:
            return None
        # scaled to its own range: a weak map still spans the whole colour scale
        top = float(max(int(heat.max()), 1))
        data = fa.serialize_array(heat)
        return self._label("Heatmap", map=data, range=[0.0, top], model_version=self.version,
                           label_key=stable_key(self.version, "heat", hashlib.sha1(data).hexdigest()))

    def peaks(self, im, peaks) -> dict:
        keys = self._keys([(self.version, im.image_id, "peak", cid, round(x, 1), round(y, 1)) for cid, x, y, _ in peaks])
        return {"_cls": "Keypoints", "keypoints": [
            self._label("Keypoint", label=self._name(cid), points=[[x / im.width, y / im.height]],
                        confidence=[round(v, 4)], heat=round(v, 4), model_version=self.version, label_key=key,
                        category_id=int(cid) if cid is not None else None)
            for (cid, x, y, v), key in zip(peaks, keys)]}
