"""Masks for the boxes a labeler drew: the model draws the mask inside a person's box.

Drawing an instance mask as a polygon takes over a minute (pipelines/review/effort.py: 79 s), a box a few
seconds (7 s by extreme clicking). A labeler who draws only the box of a missed object (or of one whose
prediction was too loose to accept) asks the App's "Mask drawn boxes" (fiftyone_plugins/lumen) for the
rest: the model's mask decoder, prompted with the person's box instead of its own, fills in each mask.

This module knows nothing of the model: `segment(image_path, boxes_xywh, class_name) -> [COCO RLE]` does
the drawing (`lumen_model.ask.Asker.masks_in_boxes`). A filled label keeps the person's box and class and
records which model drew its mask (`mask_model_version`); the pull carries that into provenance.json. A
label that already has a mask (drawn by the person) is never touched, nor is one a labeler tagged.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from pipelines.errors import InputError
from pipelines.review import fields as F
from pipelines.review.labels import absolute_box, bad_label_box, mask_crop

MASK_MODEL_VERSION = "mask_model_version"  # on a label whose mask the model drew into the person's box


def needs_mask(det) -> bool:
    """A drawn box without a mask (or with an empty one) that nobody has tagged."""
    has_mask = det.mask is not None and bool(det.mask.any())
    return not has_mask and not det.tags and bad_label_box(det.bounding_box) is None


def _image_size(sample) -> tuple[int, int]:
    """The sample's width and height in pixels: its metadata (a review push computes it), else read from the
    image now (a dataset made by hand); one line when the image cannot be read."""
    def size():
        m = sample.metadata
        return (int(m.width), int(m.height)) if m is not None and m.width and m.height else None

    if size() is None:
        sample.compute_metadata(overwrite=True, skip_failures=True)
    if size() is None:
        raise InputError(f"mask drawn boxes: cannot read the size of {sample.filepath} (missing or not an image)")
    return size()


def mask_drawn_boxes(sample, segment: Callable, model_version: str, field: str = F.CORRECTIONS) -> dict:
    """Fill the mask of each maskless box in `sample[field]` with the model's; returns {"filled": n, "empty": m}
    (empty: the model found no object pixels in that box; its label stays a box without a mask, to draw by
    hand). One call of `segment` per class on the image (the model looks for that kind of object once). The
    sample is saved when something was filled."""
    counts = {"filled": 0, "empty": 0}
    container = sample[field] if sample.has_field(field) else None
    if container is None:
        return counts
    todo = [d for d in container.detections if needs_mask(d)]
    if not todo:
        return counts
    w, h = _image_size(sample)
    by_class = defaultdict(list)
    for d in todo:
        if not d.label:
            raise InputError(f"mask drawn boxes: a box on {sample.filepath} has no class; name its class first "
                             "(the model looks for that kind of object)")
        by_class[d.label].append(d)
    for name, dets in by_class.items():
        boxes = [absolute_box(d.bounding_box, w, h) for d in dets]
        rles = segment(sample.filepath, boxes, name)
        if len(rles) != len(dets):
            raise InputError(f"mask drawn boxes: the model returned {len(rles)} masks for {len(dets)} boxes")
        for d, box, rle in zip(dets, boxes, rles):
            crop = mask_crop(rle, box, w, h)
            if not crop.any():
                counts["empty"] += 1
                continue
            d.mask = crop
            d[MASK_MODEL_VERSION] = model_version
            counts["filled"] += 1
    if counts["filled"]:
        sample.save()
    return counts
