"""Push: images + ground truth + a model version's predictions + heatmaps -> a FiftyOne dataset.

One sample per image, keyed by its absolute file path. Writes are batched, never a save per
sample: new images go in with one `insert_many` per batch of documents in FiftyOne's own storage
format (fields declared first through the public API; labels built as plain dicts, skipping the
per-object ORM layer that dominates `add_samples`: see bench/bench_push.py). Existing samples are
planned field by field from their stored label keys (no masks read): a field that holds exactly the
new keys is left alone (re-push of the same file), an empty one (a new field, or one a version move
emptied) gets the new labels in one bulk write, and only a field whose labels differ is merged
label by label. FiftyOne internals are used only through `fo_adapter`. A new model version moves
the old one's field with a field rename (database side), tags and all.
Re-pushing is idempotent: every label carries a stable `label_key`, an existing label with the
same key is kept as it is (its id, tags and attributes survive), and a label that a labeler has
touched (tagged, or already pulled) is never dropped even when a newer file lacks it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bson import ObjectId

import numpy as np
from pycocotools import mask as mask_utils

from pipelines.errors import InputError
from pipelines.progress import progress as progress_bar
from pipelines.review import fields as F
from pipelines.review import fo_adapter as fa
from pipelines.review.app_config import apply_app_config
from pipelines.review.fo_env import describe_database, fiftyone
from pipelines.review.heat import image_heat
from pipelines.review.inputs import (list_folder_images, prediction_problem, read_ground_truth, read_heatmap_index,
                                     read_json, read_predictions)
from pipelines.review.labels import keypoints_to_points, relative_box, stable_key
from pipelines.review.thresholds import load_thresholds, threshold_for
from pipelines.review.thresholds import summary as threshold_summary

log = logging.getLogger(__name__)

PULLED_ATTR = "lumen_pulled"  # set by pull: the label's review state when it was last pulled


def push_predictions(dataset_name, images_dir, pred_file, model_version, *, gt_file=None, heatmaps_dir=None,
                     field="predictions", batch_size=500, categories_file=None, peak_threshold=0.5,
                     thresholds=None, progress=True) -> dict:
    """Create or update the review dataset; returns counts of everything read, written and skipped.

    `thresholds` (a dict from `pipelines.review.thresholds.compute_thresholds`, or the path of its
    json): only detections at or above their class's threshold go to `field`; the others go to
    `<field>_below_threshold`, which the App does not show by default and the queue reads as
    "possible misses". Keypoint predictions are not thresholded. The thresholds are recorded in
    the dataset's info under the model version.
    """
    fo = fiftyone()
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"images folder not found: {images_dir}")
    if not isinstance(model_version, str) or not model_version.strip():
        raise InputError("a model version is required (e.g. the checkpoint's version folder name)")
    F.version_slug(model_version)
    det_field, kp_field = F.check_field_name(field), F.keypoints_field(field)

    th = load_thresholds(thresholds) if thresholds is not None else None
    below_field = F.below_threshold_field(det_field)
    gt = read_ground_truth(gt_file, images_dir) if gt_file else None
    results = read_predictions(pred_file)
    heat_index = read_heatmap_index(heatmaps_dir) if heatmaps_dir else None
    # The images this push speaks for: the GT's, and those the model ran on (a result or a
    # heatmap). Other images in the folder are left alone, so a partial file wipes nothing.
    images = dict(gt.images) if gt else {}
    ran_on = {r.get("image_id") for r in results if isinstance(r, dict)} | set(heat_index or ())
    if ran_on - set(images):
        known = {}  # sizes of images already in the dataset: no need to open their files again
        if fo.dataset_exists(dataset_name):
            paths, ws, hs = fo.load_dataset(dataset_name).values(["filepath", "metadata.width", "metadata.height"])
            known = {p: (w, h) for p, w, h in zip(paths, ws, hs)}
        # ids as `lumen predict` gives them without annotations
        folder = list_folder_images(images_dir, wanted=ran_on - set(images), known_sizes=known)
        images.update({i: folder[i] for i in ran_on - set(images) if i in folder})

    dataset = fo.load_dataset(dataset_name) if fo.dataset_exists(dataset_name) else fo.Dataset(dataset_name,
                                                                                                persistent=True)
    info = F.review_info(dataset)
    categories = _merge_categories(info.get("categories", []), gt.categories if gt else [],
                                   _categories_from(categories_file))
    cat_by_id = {c["id"]: c for c in categories}

    skipped: Counter = Counter()
    dets, kps = defaultdict(list), defaultdict(list)
    for r in results:
        problem = prediction_problem(r, images, cat_by_id or None)
        if problem:
            skipped[problem] += 1
        else:
            (kps if r.get("keypoints") is not None else dets)[r["image_id"]].append(r)
    if not cat_by_id:
        log.warning("no categories known (give --gt or --categories): labels are named by category id")
        for cid in sorted({r["category_id"] for rs in (*dets.values(), *kps.values()) for r in rs}):
            cat_by_id[cid] = {"id": cid, "name": f"category_{cid}"}
        categories = list(cat_by_id.values())
    write_det = bool(dets) or not kps  # an empty results file still says "nothing found" per image
    write_kp = bool(kps)
    below = _split_below_threshold(dets, th) if th is not None and write_det else None

    archived = []
    if write_det:
        archived += _take_over_field(dataset, det_field, "detections", model_version)
        if below is not None or below_field in dataset.get_field_schema():
            archived += _take_over_field(dataset, below_field, "detections", model_version)
    if write_kp:
        archived += _take_over_field(dataset, kp_field, "keypoints", model_version)

    info["categories"] = categories
    info["images_dir"] = str(images_dir.resolve())
    info["latest_version"] = model_version
    info["field"] = det_field
    info["current_fields"] = sorted(set(info.get("current_fields", [])) | {f for f, on in ((det_field, write_det),
                                                                                            (kp_field, write_kp)) if on})
    info["versions"] = sorted(set(info.get("versions", [])) | {model_version})
    if th is not None:
        info.setdefault("thresholds", {})[model_version] = threshold_summary(th)
        info["below_threshold_field"] = below_field
    F.save_review_info(dataset, info)

    builder = _LabelBuilder(model_version, cat_by_id, peak_threshold)
    existing = dict(zip(*dataset.values(["filepath", "id"]))) if len(dataset) else {}
    counts = Counter()
    ids = sorted(images)
    bar = progress_bar(total=len(ids), desc=f"push {dataset_name}", unit="img", enabled=progress)
    for start in range(0, len(ids), batch_size):
        updates = defaultdict(dict)
        chunk = [images[i] for i in ids[start:start + batch_size]]
        content = {}
        for im in chunk:
            c = {}
            if gt:
                gt_field = F.keypoints_field(F.GROUND_TRUTH) if gt.keypoints else F.GROUND_TRUTH
                c[gt_field] = builder.ground_truth(im, gt.annotations.get(im.image_id, []), gt.keypoints)
            if write_det:
                c[det_field] = builder.detections(im, dets.get(im.image_id, []))
            if below is not None:
                c[below_field] = builder.detections(im, below.get(im.image_id, []))
            if write_kp:
                c[kp_field] = builder.keypoints(im, kps.get(im.image_id, []))
            if heat_index is not None:
                boxes = defaultdict(list)
                for r in dets.get(im.image_id, []) + kps.get(im.image_id, []):
                    boxes[r["category_id"]].append(r["bbox"])
                h = image_heat(heat_index.get(im.image_id, []), im.width, im.height, boxes, peak_threshold)
                skipped.update(h.problems)
                c[F.HEATMAP] = builder.heatmap(h.heat)
                c[F.PEAKS] = builder.peaks(im, h.peaks)
                counts["heatmaps"] += h.heat is not None
                counts["uncovered_peaks"] += len(h.peaks)
            content[im.path] = c
        old = {im.path: existing[im.path] for im in chunk if im.path in existing}
        _declare_fields(dataset, content)
        new_samples = [_sample_doc(dataset, im, content[im.path]) for im in chunk if im.path not in old]
        writes, to_merge = _plan_updates(dataset, old, content, counts)
        if new_samples:
            fa.insert_sample_docs(dataset, new_samples)
        fa.set_sample_fields(dataset, writes)
        if to_merge:  # labels a labeler may have touched: merged label by label (the slow, rare path)
            current = _current_labels(dataset, sorted(to_merge), {k for fields in to_merge.values() for k in fields})
            for sid, fields in to_merge.items():
                for k, v in fields.items():
                    merged, kept = _merge(current.get((sid, k)), _to_label(v))
                    counts["reviewed_labels_kept"] += kept
                    updates[k][sid] = merged
            for k, values in updates.items():
                dataset.set_values(k, values, key_field="id", progress=False)
        counts["samples_added"] += len(new_samples)
        counts["samples_updated"] += len(old)
        bar.update(len(chunk))
    bar.close()
    dataset.add_dynamic_sample_fields()  # label attributes (model_version, ...) become filterable in the App
    apply_app_config(dataset)  # predictions shown, GT hidden, heatmap visible, one colour per class

    n_det = sum(len(v) for v in dets.values()) if write_det else 0
    n_below = sum(len(v) for v in below.values()) if below is not None else 0
    n_kp = sum(len(v) for v in kps.values())
    out = {
        "dataset": dataset_name,
        "database": describe_database(),
        "model_version": model_version,
        "images": len(images),
        "samples_added": counts["samples_added"],
        "samples_updated": counts["samples_updated"],
        "samples_total": len(dataset),
        "results_read": len(results),
        "predictions_pushed": n_det,
        "predictions_below_threshold": n_below,
        "thresholds": {k: v["threshold"] for k, v in th["classes"].items()} if th is not None else None,
        "keypoint_predictions_pushed": n_kp,
        "results_skipped": sum(v for k, v in skipped.items() if not k.startswith("heatmap")),
        "skip_reasons": dict(skipped.most_common()),
        "ground_truth_labels": sum(len(v) for v in gt.annotations.values()) if gt else 0,
        "ground_truth_skipped": dict(gt.skipped) if gt else {},
        "heatmaps": counts["heatmaps"],
        "uncovered_peaks": counts["uncovered_peaks"],
        "reviewed_labels_kept": counts["reviewed_labels_kept"],
        "fields": [f for f, on in ((det_field, write_det), (below_field, below is not None), (kp_field, write_kp)) if on],
        "archived_fields": archived,
    }
    assert n_det + n_below + n_kp + out["results_skipped"] == len(results)
    log.info("pushed %s to %s (%s): %d samples added, %d updated, %d predictions, %d skipped %s",
             model_version, dataset_name, describe_database(), out["samples_added"], out["samples_updated"],
             n_det + n_kp, out["results_skipped"], out["skip_reasons"] or "")
    return out


_LABEL_TYPES = {"Detections", "Keypoints", "Heatmap"}


def _split_below_threshold(dets: dict, th: dict) -> dict:
    """Move each image's detections under their class threshold out of `dets`; returns them."""
    below = {}
    for image_id, records in dets.items():
        keep = [r for r in records if r["score"] >= threshold_for(th, r["category_id"])]
        if len(keep) < len(records):
            below[image_id] = [r for r in records if r["score"] < threshold_for(th, r["category_id"])]
            dets[image_id] = keep
    return below


def _to_label(raw):
    """A label document as built below -> the FiftyOne label object (for set_values / merging)."""
    if raw is None:
        return None
    return fa.label_from_doc(raw)


def _declare_fields(dataset, content: dict) -> None:
    """Declare the sample fields the raw documents use (what add_samples would infer)."""
    fo = fiftyone()
    if dataset.media_type is None:
        dataset.media_type = "image"
    schema = dataset.get_field_schema()
    if "image_id" not in schema:
        dataset.add_sample_field("image_id", fo.IntField)
    if "file_name" not in schema:
        dataset.add_sample_field("file_name", fo.StringField)
    wanted = {}
    for c in content.values():
        for name, raw in c.items():
            if raw is not None:
                wanted.setdefault(name, _cls_of(raw))
    for name, cls in wanted.items():
        if name not in schema:
            dataset.add_sample_field(name, fo.EmbeddedDocumentField, embedded_doc_type=getattr(fo, cls))


def _sample_doc(dataset, im, content: dict) -> dict:
    fields = {"filepath": im.path, "metadata": {"_cls": "ImageMetadata", "width": int(im.width), "height": int(im.height)},
              "image_id": int(im.image_id), "file_name": im.file_name}
    fields.update({k: _doc(v) for k, v in content.items() if v is not None})
    return fa.new_sample_doc(dataset, fields)


def _categories_from(path) -> list[dict]:
    if not path:
        return []
    data = read_json(path, "categories file")
    cats = data.get("categories") if isinstance(data, dict) else data
    if not isinstance(cats, list):
        raise InputError(f"{path}: expected a COCO json with 'categories' or a list of categories")
    return [c for c in cats if isinstance(c, dict) and "id" in c and "name" in c]


def _merge_categories(*lists) -> list[dict]:
    by_id = {}
    for cats in lists:
        for c in cats:
            by_id[c["id"]] = {**by_id.get(c["id"], {}), **c}
    return [by_id[k] for k in sorted(by_id)]


def _field_versions(dataset, field: str, kind: str) -> list[str]:
    if field not in dataset.get_field_schema():
        return []
    return [v for v in dataset.distinct(f"{field}.{kind}.model_version") if v]


def _take_over_field(dataset, field: str, kind: str, version: str) -> list[str]:
    """Make `field` the home of `version`: the version it holds moves to its archive field, and
    an archived copy of `version` (pushed before, then superseded) comes back. Renames keep
    label ids and tags; a re-run after a crash between the steps finds a consistent state."""
    moved = []
    schema = dataset.get_field_schema()
    held = _field_versions(dataset, field, kind)
    if held and held != [version]:
        old = [v for v in held if v != version]
        target = F.archive_field(field, old[0])
        if target in schema:
            raise InputError(f"cannot archive {field} ({old[0]}): field {target} already exists")
        dataset.rename_sample_field(field, target)
        moved.append(target)
        log.info("kept %s's labels for comparison in field %s", old[0], target)
        schema = dataset.get_field_schema()
    archive = F.archive_field(field, version)
    if archive in schema:  # this version was pushed before, then superseded: it is the latest again
        if field in schema:  # holds no labels of any version (else it was archived just above)
            dataset.delete_sample_field(field)
        dataset.rename_sample_field(archive, field)
    return moved


@dataclass(frozen=True)
class _Lazy:
    """A label document known by its keys; built (masks decoded, arrays serialized) only if written."""
    cls: str
    keys: tuple
    build: Callable[[], dict]


def _cls_of(v) -> str:
    return v.cls if isinstance(v, _Lazy) else v["_cls"]


def _doc(v):
    return v.build() if isinstance(v, _Lazy) else v


def _content_keys(raw) -> tuple | None:
    """The label keys of a label document as built here (None: no label)."""
    if raw is None:
        return None
    if isinstance(raw, _Lazy):
        return raw.keys
    name = fa.LIST_FIELDS.get(raw["_cls"])
    if name is None:
        return (raw.get("label_key"),)
    return tuple(lab.get("label_key") for lab in raw[name])


def _stored_keys(dataset, sample_ids: list[str], content: dict) -> dict:
    """(sample id, field) -> the label keys stored there (None: no label), read without masks or maps."""
    kinds = {}
    for c in content.values():
        for k, raw in c.items():
            if raw is not None:
                kinds.setdefault(k, fa.LIST_FIELDS.get(_cls_of(raw)))
    schema = dataset.get_field_schema()
    names = sorted(k for k in kinds if k in schema)
    if not sample_ids or not names:
        return {}
    paths = ["id"]
    for k in names:
        paths += [f"{k}.{kinds[k]}.label_key"] if kinds[k] else [f"{k}.id", f"{k}.label_key"]
    # label_key may not be declared yet (a push that died before declaring it): values() reads it anyway
    cols = dict(zip(paths, dataset.select(sample_ids, ordered=True).values(paths)))
    out = {}
    for i, sid in enumerate(cols["id"]):
        for k in names:
            if kinds[k]:
                keys = cols.get(f"{k}.{kinds[k]}.label_key", [None] * len(cols["id"]))[i]
                out[(sid, k)] = tuple(keys) if keys is not None else None
            else:
                present = cols[f"{k}.id"][i] is not None
                out[(sid, k)] = (cols.get(f"{k}.label_key", [None] * len(cols["id"]))[i],) if present else None
    return out


def _plan_updates(dataset, old: dict, content: dict, counts: Counter) -> tuple[dict, dict]:
    """Split the existing samples' new labels into raw writes and label-by-label merges.

    A field holding nothing (a new field, one a version move just emptied, an empty list) takes the
    new labels as built; a field holding exactly the new label keys is left alone (a re-push of the
    same file); anything else is merged so that labels a labeler touched survive."""
    stored = _stored_keys(dataset, list(old.values()), {p: content[p] for p in old})
    writes, to_merge = defaultdict(dict), defaultdict(dict)
    for path, sid in old.items():
        for k, raw in content[path].items():
            have, new = stored.get((sid, k)), _content_keys(raw)
            if have == new:
                counts["fields_unchanged"] += 1
            elif not have:
                writes[sid][k] = _doc(raw)
            else:
                to_merge[sid][k] = _doc(raw)
    return dict(writes), dict(to_merge)


def _current_labels(dataset, sample_ids: list[str], names: set[str]) -> dict:
    if not sample_ids:
        return {}
    schema = dataset.get_field_schema()
    names = [n for n in sorted(names) if n in schema]
    view = dataset.select(sample_ids, ordered=True)
    values = view.values(["id", *names])
    out = {}
    for i, sid in enumerate(values[0]):
        for name, col in zip(names, values[1:]):
            out[(sid, name)] = col[i]
    return out


def _touched(label) -> bool:
    """Tagged by a labeler, or already part of a pull: such a label is never dropped."""
    return bool(label.tags) or (label.has_field(PULLED_ATTR) and label.get_field(PULLED_ATTR) is not None)


def _merge(old, new):
    """New labels, but an existing label with the same key stays as it is, and labels a labeler
    touched stay even when the new file lacks them. Returns (value, number of touched kept)."""
    if new is None or old is None or fa.label_list_name(new) is None or fa.label_list_name(old) is None:
        if old is not None and hasattr(old, "tags") and old.tags and new is not None:
            return old, 1  # e.g. a tagged heatmap stays
        return new, 0
    name = fa.label_list_name(new)
    have = {lab.get_field("label_key"): lab for lab in getattr(old, name) if lab.has_field("label_key")}
    out, used = [], set()
    for lab in getattr(new, name):
        key = lab.get_field("label_key")
        if key in have and key not in used:
            out.append(have[key])
            used.add(key)
        else:
            out.append(lab)
    kept = 0
    for lab in getattr(old, name):
        key = lab.get_field("label_key") if lab.has_field("label_key") else None
        if key not in used and _touched(lab):
            out.append(lab)
            kept += 1
    setattr(new, name, out)
    return new, kept


class _LabelBuilder:
    """COCO records of one image -> label documents in FiftyOne's storage format (plain dicts,
    masks as FiftyOne serializes numpy arrays), each with a stable `label_key`."""

    def __init__(self, version: str, cats: dict, peak_threshold: float):
        self.serialize = fa.serialize_array
        self.version, self.cats, self.peak_threshold = version, cats, peak_threshold

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

    def _masks(self, im, records) -> list[np.ndarray | None]:
        from pipelines.review.labels import crop_window
        from pipelines.sources.coco import to_rles

        rles = to_rles([r.get("segmentation") for r in records], im.height, im.width)
        have = [i for i, rle in enumerate(rles) if rle is not None]
        out: list[np.ndarray | None] = [None] * len(records)
        if have:
            full = mask_utils.decode([{"size": rles[i]["size"], "counts": rles[i]["counts"].encode("ascii")}
                                      for i in have])  # H x W x n, one call per image
            for j, i in enumerate(have):
                x0, y0, x1, y1 = crop_window(records[i]["bbox"], im.width, im.height)
                out[i] = np.ascontiguousarray(full[y0:y1, x0:x1, j].astype(bool))
        return out

    def _box(self, im, bbox) -> list[float]:
        return [float(v) for v in relative_box(bbox, im.width, im.height)]

    def detections(self, im, records) -> _Lazy:
        keys = self._keys([(self.version, im.image_id, "det", r["category_id"], *(round(v, 2) for v in r["bbox"]),
                            round(r["score"], 5)) for r in records])

        def build():
            masks = self._masks(im, records)
            return {"_cls": "Detections", "detections": [
                self._label("Detection", label=self._name(r["category_id"]), bounding_box=self._box(im, r["bbox"]),
                            mask=self.serialize(mask) if mask is not None else None, confidence=float(r["score"]),
                            model_version=self.version, label_key=key, category_id=int(r["category_id"]))
                for r, key, mask in zip(records, keys, masks)]}
        return _Lazy("Detections", tuple(keys), build)

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

    def ground_truth(self, im, anns, keypoints: bool) -> dict | _Lazy:
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
        def build():
            masks = self._masks(im, anns)
            return {"_cls": "Detections", "detections": [
                self._label("Detection", label=self._name(a["category_id"]), bounding_box=self._box(im, a["bbox"]),
                            mask=self.serialize(mask) if mask is not None else None,
                            iscrowd=int(bool(a.get("iscrowd"))), label_key=f"gt:{a.get('id')}",
                            category_id=int(a["category_id"]))
                for a, mask in zip(anns, masks)]}
        return _Lazy("Detections", tuple(f"gt:{a.get('id')}" for a in anns), build)

    def heatmap(self, heat) -> dict | None:
        if heat is None:
            return None
        # scaled to its own range: a weak map still spans the whole colour scale
        top = float(max(int(heat.max()), 1))
        data = self.serialize(heat)
        return self._label("Heatmap", map=data, range=[0.0, top], model_version=self.version,
                           label_key=stable_key(self.version, "heat", hashlib.sha1(data).hexdigest()))

    def peaks(self, im, peaks) -> dict:
        keys = self._keys([(self.version, im.image_id, "peak", cid, round(x, 1), round(y, 1)) for cid, x, y, _ in peaks])
        return {"_cls": "Keypoints", "keypoints": [
            self._label("Keypoint", label=self._name(cid), points=[[x / im.width, y / im.height]],
                        confidence=[round(v, 4)], heat=round(v, 4), model_version=self.version, label_key=key,
                        category_id=int(cid) if cid is not None else None)
            for (cid, x, y, v), key in zip(peaks, keys)]}
