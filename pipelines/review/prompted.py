"""Labels a labeler asked the model for in the App ("Ask Lumen"): stored, shown, accepted, pulled.

The App's plugin (fiftyone_plugins/lumen) runs the model and hands its answers here; this module
knows nothing of the model (an answer is any object with the attributes of
`lumen_model.answers.Answer`). Fields of a sample:
- `prompted` (Detections): the boxes asked for, with masks where a mask was asked for; each label
  carries `instruction` (what the labeler typed), `task`, `model_version`, `confidence`,
  `category_id` (when its class is a known category) and `label_key`;
- `prompted_keypoints` (Keypoints): people's keypoints asked for;
- `prompted_heatmap` (Heatmap): where the model looked for the last instruction;
- `prompted_answer` (Classification): the answer to the last question, with its question.

A new ask replaces the untouched labels of the same instruction and task (asking again refines);
every other prompted label stays, and a label the labeler tagged is never replaced. Accepting a
label tags it `accept`: the pull (pull.py) takes accepted prompted labels into the training data
with provenance "prompted" (instruction, model version); untagged prompted labels are never pulled.
"""

from __future__ import annotations

import numpy as np

from pipelines.errors import InputError
from pipelines.geometry import SquarePad
from pipelines.review import fields as F
from pipelines.review.fo_env import fiftyone
from pipelines.review.heat import STORED_MAX_SIDE, visible_heat
from pipelines.review.labels import absolute_box, keypoints_to_points, mask_crops, relative_box, stable_key

PROMPTED = "prompted"
PROMPTED_KEYPOINTS = "prompted_keypoints"
PROMPTED_HEATMAP = "prompted_heatmap"
PROMPTED_ANSWER = "prompted_answer"
PROMPTED_LABEL_FIELDS = (PROMPTED, PROMPTED_KEYPOINTS)  # the ones a labeler accepts (the pull reads them)
PROMPTED_SOURCE = "prompted"  # provenance `source` of a pulled prompted label


def is_prompted_field(name: str) -> bool:
    return name in PROMPTED_LABEL_FIELDS


def _touched(label) -> bool:
    return bool(label.tags)


def _label_name(answer, label: str | None) -> str | None:
    """The class the labels get: the labeler's choice, else the category the instruction names."""
    if label:
        return label
    if answer.task == "pose":
        return "person"
    return answer.meta.get("category")


def answer_labels(answer, model_version: str, label: str | None = None) -> dict:
    """{field: FiftyOne label} for one answer (None where the answer has nothing for that field)."""
    fo = fiftyone()
    w, h = answer.width, answer.height
    name = _label_name(answer, label)
    typed = answer.meta.get("typed") or answer.instruction
    common = {"instruction": typed, "task": answer.task, "model_version": model_version}
    cid = answer.meta.get("category_id") if not label or label == answer.meta.get("category") else None
    out = {}
    if answer.task == "vqa":
        out[PROMPTED_ANSWER] = fo.Classification(label=answer.text, **common)
        return out
    boxes = np.asarray(answer.boxes, dtype=np.float64).reshape(-1, 4)
    keys = [stable_key(model_version, answer.image, answer.task, typed, *(round(float(v), 2) for v in b))
            for b in boxes]
    extra = {"category_id": int(cid)} if cid is not None else {}
    if answer.keypoints is not None:
        kps = []
        for b, k, s, key in zip(boxes, answer.keypoints, answer.scores, keys):
            points, vis = keypoints_to_points(np.asarray(k).reshape(-1), w, h)
            kps.append(fo.Keypoint(label=name, points=points, confidence=[float(s)] * len(points), visibility=vis,
                                   box=relative_box(b, w, h), score=float(s), label_key=key, **common, **extra))
        out[PROMPTED_KEYPOINTS] = kps
    else:
        crops = mask_crops([(m, list(b), w, h) for m, b in zip(answer.masks, boxes)]) if answer.masks else None
        dets = []
        for j, (b, s, key) in enumerate(zip(boxes, answer.scores, keys)):
            d = fo.Detection(label=name, bounding_box=relative_box(b, w, h), confidence=float(s), label_key=key,
                             **common, **extra)
            if crops is not None:
                d.mask = crops[j]
            dets.append(d)
        out[PROMPTED] = dets
    if answer.grid is not None:
        heat = _stored_heat(answer)  # scaled to its own range, as pushed heatmaps are: a weak map still shows
        out[PROMPTED_HEATMAP] = fo.Heatmap(map=heat, range=[0.0, float(max(int(heat.max()), 1))], **common)
    return out


def _stored_heat(answer) -> np.ndarray:
    """The heatmap as the review push stores one: uint8, the image's aspect, long side <= 128."""
    f = min(1.0, STORED_MAX_SIDE / max(answer.width, answer.height))
    small_w, small_h = max(1, round(answer.width * f)), max(1, round(answer.height * f))
    small = SquarePad(small_w, small_h, answer.input_size, answer.heatmap_size).heatmap_to_image(
        np.asarray(answer.grid, dtype=np.float32))
    return visible_heat(small)  # transparent below a share of its own peak, as the pushed heatmaps


def write_answer(sample, answer, model_version: str, label: str | None = None) -> dict:
    """Store one answer on `sample` (one save: a sample is never half-written). Returns counts."""
    fo = fiftyone()
    labels = answer_labels(answer, model_version, label)
    typed = answer.meta.get("typed") or answer.instruction
    counts = {"labels": 0, "replaced": 0}
    for field, cls, list_name in ((PROMPTED, fo.Detections, "detections"),
                                  (PROMPTED_KEYPOINTS, fo.Keypoints, "keypoints")):
        if field not in labels:
            continue
        old = sample[field] if sample.has_field(field) and sample[field] is not None else cls()
        kept = [x for x in getattr(old, list_name)
                if _touched(x) or (x.get_field("instruction") if x.has_field("instruction") else None,
                                   x.get_field("task") if x.has_field("task") else None) != (typed, answer.task)]
        counts["replaced"] += len(getattr(old, list_name)) - len(kept)
        counts["labels"] += len(labels[field])
        sample[field] = cls(**{list_name: kept + labels[field]})
    for field in (PROMPTED_HEATMAP, PROMPTED_ANSWER):
        if field in labels:
            sample[field] = labels[field]
    sample.save()
    return counts


def declare_prompted_fields(dataset) -> list[str]:
    """Make the prompted labels' attributes filterable in the App and switch the prompted fields on
    in the dataset's App config (the labeler sees what they asked for); returns the fields shown."""
    schema = dataset.get_field_schema()
    present = [f for f in (PROMPTED, PROMPTED_KEYPOINTS, PROMPTED_HEATMAP, PROMPTED_ANSWER) if f in schema]
    label_fields = [f for f in present if f in PROMPTED_LABEL_FIELDS or f == PROMPTED_ANSWER]
    if label_fields:
        dataset.add_dynamic_sample_fields(fields=label_fields)
    active = dataset.app_config.active_fields
    if active is not None and active.paths is not None and not active.exclude:
        missing = [f for f in present if f not in active.paths]
        if missing:
            active.paths = [*active.paths, *missing]
            dataset.save()
    return present


def accept_prompted(dataset, label_ids: list[str], known_classes: set[str] | None = None) -> dict:
    """Tag these prompted labels `accept` (removing a `reject`): the next pull takes them. A label whose
    class is not one of `known_classes` cannot become training data: refused, in one line, before any
    label is tagged."""
    fields = [f for f in PROMPTED_LABEL_FIELDS if f in dataset.get_field_schema()]
    view = dataset.select_labels(ids=list(label_ids), fields=fields) if fields and label_ids else None
    found = []
    for field in fields if view is not None else []:
        list_path = f"{field}.{'detections' if field == PROMPTED else 'keypoints'}"
        ids, names = view.values([f"{list_path}.id", f"{list_path}.label"], unwind=True)
        found += list(zip(ids, names))
    if not found:
        raise InputError("no prompted label selected: click a box of the `prompted` field (or open a sample "
                         "that has prompted labels) and accept again")
    if known_classes is not None:
        unknown = sorted({str(n) for _, n in found if n not in known_classes})
        if unknown:
            raise InputError(f"class {unknown[0]!r} is not one of the dataset's classes "
                             f"({', '.join(sorted(known_classes)) or 'none'}): ask again with the class set, "
                             "or draw the box as a correction")
    view.untag_labels(F.REJECT, label_fields=fields)
    view.tag_labels(F.ACCEPT, label_fields=fields)
    return {"accepted": len(found)}


def labeled_boxes(sample, field: str = "predictions") -> list[list[float]]:
    """Pixel boxes [x, y, w, h] of the objects a sample already has a label for, as the labeler sees it:
    the shown predictions of `field` not tagged `reject`, every drawn correction, and the accepted
    prompted labels. Ask Lumen steps over them when asked for one object (`lumen_model.ask`'s
    `skip_boxes`): a labeler asks for a missed object, and the model's favourite is often one already
    there. Reads the sample as it is in memory (tags set but not saved yet count)."""
    if sample.metadata is None or not sample.metadata.width or not sample.metadata.height:
        return []  # a sample without its size (not pushed by Lumen): nothing to place the boxes in
    w, h = sample.metadata.width, sample.metadata.height
    out = []
    for name, keep in ((field, lambda d: F.REJECT not in d.tags),
                       *((c, lambda d: True) for c in sample.field_names if c.startswith(F.CORRECTIONS)),
                       (PROMPTED, lambda d: F.ACCEPT in d.tags)):
        container = sample[name] if sample.has_field(name) else None
        for d in getattr(container, "detections", None) or []:
            if keep(d) and d.bounding_box is not None:
                out.append(absolute_box(d.bounding_box, w, h))
    return out


def prompted_label_ids(sample, untagged_only: bool = True) -> list[str]:
    """The ids of a sample's prompted labels (by default those the labeler has not tagged yet)."""
    ids = []
    for field, list_name in ((PROMPTED, "detections"), (PROMPTED_KEYPOINTS, "keypoints")):
        container = sample[field] if sample.has_field(field) else None
        for lab in getattr(container, list_name, None) or []:
            if not (untagged_only and lab.tags):
                ids.append(lab.id)
    return ids


def declare_prompted_schema(dataset) -> list[str]:
    """Declare the (empty) prompted fields of a Lumen review dataset, switched on in its App config: the App
    learns a dataset's fields when it opens it, so fields that appear later would not show in an opened
    sample until it is opened again. Returns the fields added (none when they exist, or for a dataset that
    `lumen review push` did not make)."""
    fo = fiftyone()
    if F.INFO_KEY not in dataset.info:
        return []
    schema = dataset.get_field_schema()
    added = []
    for field, cls in ((PROMPTED, fo.Detections), (PROMPTED_KEYPOINTS, fo.Keypoints),
                       (PROMPTED_HEATMAP, fo.Heatmap), (PROMPTED_ANSWER, fo.Classification)):
        if field not in schema:
            dataset.add_sample_field(field, fo.EmbeddedDocumentField, embedded_doc_type=cls)
            added.append(field)
    if added:
        declare_prompted_fields(dataset)
    return added
