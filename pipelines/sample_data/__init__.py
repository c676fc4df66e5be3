"""The bundled demo sources: small, deterministic scenes written in the real on-disk layouts.

Scenes of coloured shapes (circle, square, triangle, star) and stick-figure people with the 17
COCO keypoints, written as the real formats so the real readers read them:

    DIR/coco/images/000000000001.jpg ...            (one folder for every source, train and val)
    DIR/coco/annotations/instances_{train,val}.json, person_keypoints_{train,val}.json
    DIR/refcoco/refs(unc).p, DIR/refcoco/instances.json
    DIR/vqa/v2_OpenEnded_mscoco_{train,val}_questions.json, v2_mscoco_{train,val}_annotations.json
    DIR/llava/llava_instruct.json                   (train images only, as LLaVA-Instruct uses COCO train)
    DIR/coco/annotations/image_info_unlabeled.json  (the unlabeled pool: images + categories, no annotations,
                                                     like COCO's image_info_unlabeled2017.json)
    DIR/oracle/instances_unlabeled.json             (the pool's true labels, for simulated labelers only:
                                                     bench/bench_loop.py; no source, asset or default reads it)

Same seed -> byte-identical files. Image i depends only on (seed, i), so a smaller set shows the
same first scenes as a bigger one; pool image k depends only on (seed, k), never on the labeled set.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import cv2
import numpy as np

from pipelines.errors import InputError
from pipelines.layout import POOL_FILE
from pipelines.sample_data.language import conversation, human_answers, questions, referring_expressions
from pipelines.progress import progress as progress_bar
from pipelines.sample_data.scene import (AREA_THRESHOLDS, CAT_ID, CATEGORIES, COLORS, KEYPOINT_NAMES, SHAPES,
                                         SKELETON, Scene, make_scene, size_label)

__all__ = ["write_sample_data", "AREA_THRESHOLDS", "CATEGORIES", "COLORS", "KEYPOINT_NAMES", "SHAPES",
           "SKELETON", "size_label"]

JPEG_QUALITY = 92
PICKLE_PROTOCOL = 2  # what the real refs(unc).p uses
MIN_SIDE, MAX_SIDE = 128, 192
SPLITS = ("train", "val")
INFO = {"description": "Lumen demo scenes", "version": "1.0", "year": 2026, "contributor": "lumen-pipeline",
        "url": "", "date_created": "2026/01/01"}
LICENSES = [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]
_DEMO_IMAGE = re.compile(r"^\d{12}\.jpg$")
POOL_STREAM = 7_000_001  # the pool's scenes draw from their own random stream
ORACLE_DIR = "oracle"
ORACLE_FILE = f"{ORACLE_DIR}/instances_unlabeled.json"  # relative to the sample-data folder
ORACLE_NOTE = ("True labels of the unlabeled pool (coco/annotations/image_info_unlabeled.json), for simulated "
               "labelers only (bench/bench_loop.py). No source, asset, sensor or default path reads this folder.\n")


def _dump(obj, path: Path) -> None:
    """Sorted keys, compact, written atomically: a reader never sees half a file."""
    _write_atomic(path, json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: column-major run lengths, starting with a (possibly empty) run of zeros."""
    flat = mask.reshape(-1, order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def _annotations(scene: Scene, image_id: int, first_ann_id: int) -> list[dict]:
    anns = []
    for k, o in enumerate(scene.objects):
        a = {"id": first_ann_id + k, "image_id": image_id, "category_id": CAT_ID[o.category], "iscrowd": 0,
             "bbox": [round(v, 2) for v in o.bbox], "area": round(o.area, 2),
             "segmentation": [[round(float(v), 2) for v in p.reshape(-1)] for p in o.polygons]}
        if o.keypoints is not None:
            a["keypoints"] = o.keypoints
            a["num_keypoints"] = sum(1 for v in o.keypoints[2::3] if v > 0)
        anns.append(a)
    if scene.crowd is not None:
        ys, xs = np.nonzero(scene.crowd)
        anns.append({"id": first_ann_id + len(anns), "image_id": image_id, "category_id": CAT_ID["circle"],
                     "iscrowd": 1, "area": float(scene.crowd.sum()), "segmentation": _uncompressed_rle(scene.crowd),
                     "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                              float(ys.max() - ys.min() + 1)]})
    return anns


def _remove_stale_images(img_dir: Path, keep: set[str]) -> None:
    """Re-running with fewer images must not leave a previous run's demo images behind."""
    for p in img_dir.iterdir():
        if _DEMO_IMAGE.match(p.name) and p.name not in keep:
            p.unlink()


def _validate(n_images, seed, val_fraction, pool) -> None:
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise InputError(f"the number of images must be a positive integer, got {n_images!r}")
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 0):
        raise InputError(f"the pool size must be a non-negative integer, got {pool!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"the seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise InputError(f"val_fraction must be in [0, 1), got {val_fraction!r}")


def _encode(scene: Scene) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return buf.tobytes()


def _image_record(image_id: int, w: int, h: int) -> dict:
    return {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": w, "height": h, "license": 1,
            "coco_url": "", "flickr_url": "", "date_captured": "2026-01-01 00:00:00"}


def write_sample_data(out_dir: str | Path, n_images: int = 400, seed: int = 0, val_fraction: float = 0.2,
                      progress: bool = False, pool: int | None = None) -> dict:
    """Write the demo sources under out_dir (created; a previous demo set there is replaced).

    `pool`: images in the unlabeled pool (default: as many as the train split; 0: an empty pool).
    Returns counts: images/annotations/people/crowd regions/questions per split, refs and their
    sentences, LLaVA conversations, pool images and their (oracle-only) annotations.
    """
    _validate(n_images, seed, val_fraction, pool)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output path {out} exists and is not a folder")
    img_dir = out / "coco" / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    n_val = min(n_images - 1, max(1, round(n_images * val_fraction))) if val_fraction > 0 else 0
    # (image, annotations, scene, split); the last n_val images are val
    items: list[tuple[dict, list[dict], Scene, str]] = []
    next_ann_id = 1
    for idx in progress_bar(range(n_images), desc="demo scenes", unit="img", enabled=progress):
        rng = np.random.default_rng([seed, idx])  # per image, so image i does not depend on n_images
        w, h = int(rng.integers(MIN_SIDE, MAX_SIDE + 1)), int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        scene = make_scene(rng, w, h)
        image_id = idx + 1
        image = _image_record(image_id, w, h)
        _write_atomic(img_dir / image["file_name"], _encode(scene))
        anns = _annotations(scene, image_id, next_ann_id)
        next_ann_id += len(anns)
        items.append((image, anns, scene, "val" if idx >= n_images - n_val else "train"))
    n_pool = n_images - n_val if pool is None else pool
    pool_items = []
    for k in progress_bar(range(n_pool), desc="pool scenes", unit="img", enabled=progress):
        rng = np.random.default_rng([seed, POOL_STREAM, k])
        w, h = int(rng.integers(MIN_SIDE, MAX_SIDE + 1)), int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        scene = make_scene(rng, w, h)
        image = _image_record(n_images + 1 + k, w, h)  # ids after the labeled ones, like a separate COCO split
        _write_atomic(img_dir / image["file_name"], _encode(scene))
        anns = _annotations(scene, image["id"], next_ann_id)
        next_ann_id += len(anns)
        pool_items.append((image, anns))
    _remove_stale_images(img_dir, {im["file_name"] for im, _, _, _ in items} | {im["file_name"] for im, _ in pool_items})

    counts = _write_coco(out, items)
    counts.update(_write_pool(out, pool_items))
    counts.update(_write_refcoco(out, items, seed))
    counts.update(_write_vqa_and_llava(out, items, seed))
    return counts


def _write_coco(out: Path, items) -> dict:
    ann_dir = out / "coco" / "annotations"
    kp_category = dict(CATEGORIES[0], keypoints=KEYPOINT_NAMES, skeleton=SKELETON)
    counts = {}
    for split in SPLITS:
        images = [im for im, _, _, s in items if s == split]
        anns = [a for _, aa, _, s in items if s == split for a in aa]
        people = [a for a in anns if a["category_id"] == CAT_ID["person"] and a["iscrowd"] == 0]
        _dump({"info": INFO, "licenses": LICENSES, "images": images, "annotations": anns, "categories": CATEGORIES},
              ann_dir / f"instances_{split}.json")
        # like the real file: every image listed, only person annotations, one category with the skeleton
        _dump({"info": INFO, "licenses": LICENSES, "images": images, "annotations": people,
               "categories": [kp_category]}, ann_dir / f"person_keypoints_{split}.json")
        counts[f"images_{split}"] = len(images)
        counts[f"annotations_{split}"] = len(anns)
        counts[f"people_{split}"] = len(people)
        counts[f"crowd_regions_{split}"] = sum(a["iscrowd"] for a in anns)
    return counts


def _write_pool(out: Path, pool_items) -> dict:
    """The unlabeled pool as COCO ships it (no `annotations` key), and its truth apart, in oracle/."""
    images = [im for im, _ in pool_items]
    anns = [a for _, aa in pool_items for a in aa]
    _dump({"info": INFO, "licenses": LICENSES, "images": images, "categories": CATEGORIES}, out / POOL_FILE)
    _dump({"info": dict(INFO, description="Lumen demo scenes: true labels of the unlabeled pool (oracle only)"),
           "licenses": LICENSES, "images": images, "annotations": anns, "categories": CATEGORIES}, out / ORACLE_FILE)
    _write_atomic(out / ORACLE_DIR / "README.txt", ORACLE_NOTE.encode())
    return {"images_unlabeled": len(images), "oracle_annotations_unlabeled": len(anns)}


def _write_refcoco(out: Path, items, seed: int) -> dict:
    """refs(unc).p over non-crowd objects that some expression singles out, + instances.json."""
    refs, sent_id = [], 0
    for image, anns, scene, split in items:
        rng = np.random.default_rng([seed, image["id"], 1])
        for i, a in enumerate(anns[: len(scene.objects)]):  # crowd annotation (if any) comes last
            sents = referring_expressions(scene, i, rng)
            if not sents:
                continue
            sentences = []
            for s in sents:
                sent_id += 1
                sentences.append({"tokens": s.split(), "raw": s[0].upper() + s[1:], "sent_id": sent_id, "sent": s})
            refs.append({"sent_ids": [s["sent_id"] for s in sentences], "file_name":
                         f"COCO_train2014_{image['id']:012d}_{a['id']}.jpg", "ann_id": a["id"], "ref_id": len(refs),
                         "image_id": image["id"], "split": split, "sentences": sentences,
                         "category_id": a["category_id"]})
    _write_atomic(out / "refcoco" / "refs(unc).p", pickle.dumps(refs, protocol=PICKLE_PROTOCOL))
    _dump({"info": INFO, "licenses": LICENSES, "images": [it[0] for it in items],
           "annotations": [a for it in items for a in it[1]], "categories": CATEGORIES}, out / "refcoco" / "instances.json")
    return {"refs": len(refs), "ref_sentences": sent_id}


def _write_vqa_and_llava(out: Path, items, seed: int) -> dict:
    vqa = {s: ([], []) for s in SPLITS}
    llava, qid = [], 0
    for image, _, scene, split in items:
        rng = np.random.default_rng([seed, image["id"], 2])
        qs = questions(scene, rng)
        for q in qs:
            qid += 1
            vqa[split][0].append({"image_id": image["id"], "question": q.text, "question_id": qid})
            vqa[split][1].append({"question_id": qid, "image_id": image["id"], "question_type": q.question_type,
                                  "answer_type": q.answer_type, "multiple_choice_answer": q.answer,
                                  "answers": human_answers(rng, q)})
        if split == "train":  # LLaVA-Instruct is built on COCO train images: no val image may train through it
            llava.append({"id": f"{image['id']:012d}", "image": image["file_name"],
                          "conversations": conversation(scene, qs, rng)})
    counts = {}
    for split, (qs, anns) in vqa.items():
        common = {"info": INFO, "license": {"name": LICENSES[0]["name"], "url": LICENSES[0]["url"]},
                  "data_subtype": f"{split}2014", "data_type": "mscoco"}
        _dump(dict(common, task_type="Open-Ended", questions=qs), out / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json")
        _dump(dict(common, annotations=anns), out / "vqa" / f"v2_mscoco_{split}_annotations.json")
        counts[f"questions_{split}"] = len(qs)
    _dump(llava, out / "llava" / "llava_instruct.json")
    counts["llava_conversations"] = len(llava)
    return counts
