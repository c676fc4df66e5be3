"""Pull: labelers' review -> a new numbered corrections version (COCO json), never overwriting.

`out_dir/vNNNN/` holds
- `instances_train.json`: per reviewed image, the accepted predictions and the corrections (boxes,
  masks as RLE), never the rejected or unreviewed ones; an image whose predictions were all
  rejected stays in with no annotation (a true negative);
- `person_keypoints_train.json` where accepted or corrected labels carry keypoints;
- `rejections.json`: rejected predictions, for hard-negative mining;
- `provenance.json`: per annotation its origin (model version or correction) and the labeler's
  action; the same two facts also sit on each annotation (`model_version`, `review_action`); a label
  the labeler asked for in the App and accepted (`prompted*` fields, see prompted.py) has source
  "prompted" and carries the typed `instruction` too; a drawn box whose mask the model filled in
  ("Mask drawn boxes", box_masks.py) carries `mask_model_version`;
- `skipped.json`: reviewed labels that could not become COCO (e.g. an unknown class), with why;
- `manifest.json`: counts and a hash of the content.
Both json files are valid inputs of `lumen convert coco` / `coco-keypoints` (split `train`).

Pulling again without new review work writes no new version: it returns the latest one, whose
content is identical. The version is written to a hidden temp folder and renamed into place, so a
pull that dies part way leaves nothing half-written; a re-run simply pulls again. A pull never
modifies a label except for the `lumen_pulled` mark that counts review work (queue.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from pipelines.review import fields as F
from pipelines.review.box_masks import MASK_MODEL_VERSION
from pipelines.review.fo_adapter import label_list_name
from pipelines.review.fo_env import database_errors, fiftyone, load_dataset
from pipelines.review.labels import absolute_box, bad_label_box, box_of_points, crop_to_rle, points_to_keypoints
from pipelines.review.prompted import PROMPTED_SOURCE, is_prompted_field
from pipelines.review.reviewed import CONFLICT, CORRECT, PULLED_ATTR, action_of, scan
from pipelines.tempdirs import pid_alive, writing

log = logging.getLogger(__name__)

INSTANCES_FILE = "instances_train.json"
LOCK_FILE = ".pull.lock"
LOCK_WAIT_S = 600.0
KEYPOINTS_FILE = "person_keypoints_train.json"
COCO_KEYPOINT_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                       "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                       "right_knee", "left_ankle", "right_ankle"]


@database_errors("pull")  # mongod gone mid-way: one line; the version is written whole or not at all
def pull_corrections(dataset_name, out_dir, *, progress=True) -> dict:
    """Write the review state as a new version under out_dir (or return the latest, if unchanged)."""
    fiftyone()
    dataset = load_dataset(dataset_name)  # as it is now, not as this process loaded it earlier
    out_dir = Path(out_dir)
    with writing(out_dir):  # a full or read-only disk: one line naming the folder
        out_dir.mkdir(parents=True, exist_ok=True)
    with pull_lock(out_dir):  # two pulls at once: one writes the version, the other finds no new work
        _remove_partial(out_dir)
        return _pull_locked(dataset, dataset_name, out_dir)


@contextmanager
def pull_lock(out_dir: Path, wait_s: float = LOCK_WAIT_S):
    """An exclusive lock on the corrections folder (flock: the kernel frees it when its process dies,
    kill -9 included). Waits for a running pull, up to `wait_s`, then fails in one line."""
    import fcntl

    path = out_dir / LOCK_FILE
    with writing(path):
        f = open(path, "a+")
    with f:
        deadline = time.monotonic() + wait_s
        waited = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    f.seek(0)
                    log.info("waiting for the pull running in %s (%s)", out_dir, f.read().strip() or "pid unknown")
                    waited = True
                if time.monotonic() > deadline:
                    from pipelines.errors import InputError

                    raise InputError(f"another pull holds {path} for more than {wait_s:.0f} s; try again later") from None
                time.sleep(0.2)
        try:
            try:  # who holds it, for a waiting pull's log line; a full disk only loses the note
                f.seek(0)
                f.truncate()
                f.write(f"pid {os.getpid()}\n")
                f.flush()
            except OSError:
                pass
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pull_locked(dataset, dataset_name, out_dir: Path) -> dict:
    states = scan(dataset)
    content, counts = _collect(dataset, {s.sample_id for s in states if s.action})
    digest = _content_hash(content)
    latest = _latest_version(out_dir)
    if latest and read_manifest(latest).get("content_hash") == digest:
        version_dir, new = latest, False
        log.info("no new review work in %s since %s: no new version", dataset_name, latest.name)
    else:
        version_dir, new = _write_version(out_dir, content, digest, dataset_name, counts), True
        log.info("pulled %s -> %s: %s", dataset_name, version_dir, counts)
    _mark_pulled(dataset, states)
    info = F.review_info(dataset)
    info["last_pull"] = {"version_dir": str(version_dir), "content_hash": digest,
                         "pulled_at": datetime.now(timezone.utc).isoformat(),
                         "marked": sum(1 for s in states if s.action)}
    F.save_review_info(dataset, info)
    return {"dataset": dataset_name, "version": version_dir.name, "version_dir": str(version_dir),
            "new_version": new, "content_hash": digest, **counts}


def _remove_partial(out_dir: Path) -> None:
    """Temp folders of pulls that died part way: this process's own, or any whose process is gone."""
    for d in out_dir.glob(".partial-*"):
        pid = d.name.split("-")[1] if d.name.count("-") >= 2 else ""
        if not pid.isdigit() or int(pid) == os.getpid() or not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _latest_version(out_dir: Path) -> Path | None:
    versions = sorted((d for d in out_dir.iterdir() if d.is_dir() and d.name[:1] == "v" and d.name[1:].isdigit()),
                      key=lambda d: int(d.name[1:]))
    return versions[-1] if versions else None


def read_manifest(version_dir: Path) -> dict:
    """A pulled version's manifest.json ({} when it is missing or unreadable)."""
    try:
        return json.loads((version_dir / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _content_hash(content: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(content):
        h.update(name.encode())
        h.update(json.dumps(content[name], sort_keys=True).encode())
    return h.hexdigest()[:20]


def _write_version(out_dir: Path, content: dict, digest: str, dataset_name: str, counts: dict) -> Path:
    tmp = out_dir / f".partial-{os.getpid()}-{digest[:8]}"
    try:
        with writing(tmp):  # a full disk: one line naming the folder, and the temp folder goes
            tmp.mkdir()
            for name, data in content.items():
                (tmp / name).write_text(json.dumps(data, indent=None if name.endswith("train.json") else 1))
            manifest = {"dataset": dataset_name, "content_hash": digest,
                        "pulled_at": datetime.now(timezone.utc).isoformat(), "files": sorted(content), "counts": counts}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    while True:  # the next free number; a concurrent pull that took it makes the rename fail
        latest = _latest_version(out_dir)
        target = out_dir / f"v{(int(latest.name[1:]) + 1) if latest else 1:04d}"
        try:
            os.rename(tmp, target)
            return target
        except OSError:
            if not target.exists():
                raise


def _mark_pulled(dataset, states) -> None:
    """Store each reviewed label's state as pulled; clear the mark of labels no longer reviewed."""
    by_path = defaultdict(list)
    for s in states:
        if s.signature != s.pulled:
            by_path[s.list_path].append({"sample_id": s.sample_id, "label_id": s.label_id, "value": s.signature})
    for path, values in by_path.items():
        dataset.set_label_values(f"{path}.{PULLED_ATTR}", values, dynamic=True)


@dataclass
class _PullPlan:
    """What a pull reads: the categories, the reviewed label fields and the reviewed images."""

    categories: list[dict]
    cat_ids: set
    cat_by_name: dict
    kp_cats: list[dict]
    pred_fields: dict
    corr_fields: dict
    current: set
    tagged: set
    view: object


@dataclass
class _Pulled:
    """The pulled files' lists as they fill, image by image, and the counts."""

    images: list = field(default_factory=list)
    kp_images: list = field(default_factory=list)
    anns: list = field(default_factory=list)
    kp_anns: list = field(default_factory=list)
    prov: list = field(default_factory=list)
    rejections: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


def _collect(dataset, reviewed_ids: set[str]) -> tuple[dict, dict]:
    """Build the files' content from every reviewed image, in a deterministic order."""
    plan = _plan_pull(dataset, reviewed_ids)
    pulled = _Pulled()
    for sample in sorted(plan.view, key=lambda s: (s.image_id, s.id)):
        _pull_sample(sample, plan, pulled)
    return _pulled_content(dataset.name, plan, pulled)


def _plan_pull(dataset, reviewed_ids: set[str]) -> _PullPlan:
    """Read the review's categories and fields, and select the reviewed or tagged images."""
    info = F.review_info(dataset)
    categories = info.get("categories", [])
    cat_by_name = {c["name"]: c["id"] for c in categories}
    kp_cats = [c for c in categories if isinstance(c.get("keypoints"), list)] or \
        [{"id": cat_by_name.get("person", 1), "name": "person", "supercategory": "person",
          "keypoints": COCO_KEYPOINT_NAMES, "skeleton": []}]
    pred_fields = F.prediction_fields(dataset)
    current = set(info.get("current_fields", []))
    corr_fields = F.correction_fields(dataset)
    tagged = set(dataset.match_tags(F.REVIEWED_SAMPLE_TAG).values("id"))
    ids = sorted(reviewed_ids | tagged)
    view = dataset.select(ids).select_fields([*pred_fields, *corr_fields, "image_id", "file_name"])
    return _PullPlan(categories, {c["id"] for c in categories}, cat_by_name, kp_cats, pred_fields, corr_fields,
                     current, tagged, view)


def _pull_sample(sample, plan: _PullPlan, pulled: _Pulled) -> None:
    """One image: sort its reviewed labels into annotations, rejections and skips; keep the image if reviewed."""
    w, h = sample.metadata.width, sample.metadata.height
    det_out, kp_out = [], []
    touched = {"det": False, "kp": False}
    for name in sorted(plan.pred_fields) + sorted(plan.corr_fields):
        container = sample[name]
        if container is None:
            continue
        is_corr = name in plan.corr_fields
        for lab in getattr(container, label_list_name(container)):
            action = action_of(lab.tags, is_corr)
            if action is None:
                pulled.counts["unreviewed_predictions"] += name in plan.current  # older versions are not nagged about
                continue
            touched["kp" if hasattr(lab, "points") else "det"] = True
            entry = _reviewed_label(sample, name, lab, action, plan, pulled, w, h)
            if entry is not None:
                (kp_out if hasattr(lab, "points") else det_out).append(entry)
    image = {"id": sample.image_id, "file_name": sample.file_name, "width": w, "height": h}
    if touched["det"] or sample.id in plan.tagged:  # all rejected: still an image, with no objects
        pulled.images.append(image)
    if touched["kp"]:
        pulled.kp_images.append(image)
    _number_annotations(pulled, det_out, kp_out)


def _reviewed_label(sample, name: str, lab, action: str, plan: _PullPlan, pulled: _Pulled, w: int, h: int):
    """(annotation, origin, action) of an accepted or corrected label; a rejected or unusable one is recorded why."""
    where = {"image_id": sample.image_id, "file_name": sample.file_name, "field": name,
             "label_id": lab.id, "label": lab.label,
             "model_version": lab.get_field("model_version") if lab.has_field("model_version") else None}
    if lab.has_field(MASK_MODEL_VERSION):  # a person's box whose mask the model drew (box_masks.py)
        where[MASK_MODEL_VERSION] = lab.get_field(MASK_MODEL_VERSION)
    if is_prompted_field(name):  # asked for in the App ("Ask Lumen"): what the labeler typed travels with it
        where["instruction"] = lab.get_field("instruction") if lab.has_field("instruction") else None
    if action == CONFLICT:
        pulled.skipped.append({**where, "reason": "tagged both accept and reject"})
        return None
    problem = _box_problem(lab)
    if problem:  # NaN, infinite, no area, outside the image: not COCO; the rest of the pull goes on
        pulled.skipped.append({**where, "reason": problem})
        return None
    cid = _category_id(lab, plan.cat_ids, plan.cat_by_name)
    if cid is None:
        pulled.skipped.append({**where, "reason": f"unknown class {lab.label!r}"})
        return None
    ann = _keypoint_annotation(lab, w, h) if hasattr(lab, "points") else _box_annotation(lab, w, h)
    if ann is None:
        pulled.skipped.append({**where, "reason": "keypoints without any labeled point"})
        return None
    ann.update(image_id=sample.image_id, category_id=cid)
    if action == F.REJECT:
        pulled.rejections.append({**where, "category_id": cid, "bbox": ann["bbox"],
                                  "score": lab.get_field("confidence") if lab.has_field("confidence") else None,
                                  "keypoints": ann.get("keypoints")})
        return None
    ann.update(model_version=where["model_version"], review_action=action)
    if "instruction" in where:
        ann["instruction"] = where["instruction"]
    return ann, where, action


def _box_problem(lab) -> str | None:
    """Why a label's stored box cannot be a COCO box (a keypoint label's box is optional)."""
    if hasattr(lab, "points"):
        box = lab.get_field("box") if lab.has_field("box") else None
        return bad_label_box(box) if box is not None else None
    return bad_label_box(lab.bounding_box)


def _number_annotations(pulled: _Pulled, det_out: list, kp_out: list) -> None:
    """Give one image's kept annotations their ids (unique over both files) and their provenance rows."""
    for out_list, entries in ((pulled.anns, det_out), (pulled.kp_anns, kp_out)):
        for ann, where, action in entries:
            ann["id"] = len(pulled.anns) + len(pulled.kp_anns) + 1
            out_list.append(ann)
            pulled.prov.append({"annotation_id": ann["id"],
                                "file": KEYPOINTS_FILE if out_list is pulled.kp_anns else INSTANCES_FILE,
                                "action": action, "source": _source(where["field"], action), **where})


def _source(field: str, action: str) -> str:
    """Where a pulled label came from: drawn by the labeler, asked for in the App, or a pushed prediction."""
    if action == CORRECT:
        return "correction"
    return PROMPTED_SOURCE if is_prompted_field(field) else "prediction"


def _pulled_content(dataset_name: str, plan: _PullPlan, pulled: _Pulled) -> tuple[dict, dict]:
    """The files' content (the keypoints file only when there are keypoints) and the counts."""
    info = {"description": f"corrections pulled from FiftyOne dataset {dataset_name}"}
    content = {
        INSTANCES_FILE: {"info": info, "images": pulled.images, "annotations": pulled.anns,
                         "categories": plan.categories},
        "rejections.json": pulled.rejections,
        "provenance.json": pulled.prov,
        "skipped.json": pulled.skipped,
    }
    if pulled.kp_anns:
        content[KEYPOINTS_FILE] = {"info": info, "images": pulled.kp_images, "annotations": pulled.kp_anns,
                                   "categories": plan.kp_cats}
    counts = pulled.counts
    counts.update(images=len(pulled.images), annotations=len(pulled.anns), keypoint_annotations=len(pulled.kp_anns),
                  accepted=sum(p["action"] == F.ACCEPT for p in pulled.prov),
                  corrections=sum(p["action"] == CORRECT for p in pulled.prov),
                  prompted=sum(p["source"] == PROMPTED_SOURCE for p in pulled.prov),
                  rejections=len(pulled.rejections), skipped=len(pulled.skipped))
    if counts["unreviewed_predictions"]:
        log.warning("%d predictions on reviewed images are neither accepted nor rejected: left out of training "
                    "data; settle them (or tag the image only when done)", counts["unreviewed_predictions"])
    return content, dict(counts)


def _category_id(lab, cat_ids: set, cat_by_name: dict):
    cid = lab.get_field("category_id") if lab.has_field("category_id") else None
    if cid in cat_ids and (lab.label is None or cat_by_name.get(lab.label, cid) == cid):
        return cid
    return cat_by_name.get(lab.label)  # a correction names its class; a relabeled prediction too


def _box_annotation(lab, w: int, h: int) -> dict:
    bbox = absolute_box(lab.bounding_box, w, h)
    ann = {"bbox": bbox, "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0}
    if lab.mask is not None:
        rle = crop_to_rle(np.asarray(lab.mask), bbox, w, h)
        ann["segmentation"] = rle
        ann["area"] = float(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))
    return ann


def _keypoint_annotation(lab, w: int, h: int) -> dict | None:
    vis = lab.get_field("visibility") if lab.has_field("visibility") else None
    kps, n = points_to_keypoints(lab.points, w, h, vis)
    if n == 0:
        return None
    box = lab.get_field("box") if lab.has_field("box") else None
    bbox = absolute_box(box, w, h) if box else box_of_points(lab.points, w, h)
    return {"bbox": bbox, "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0, "keypoints": kps, "num_keypoints": n}
