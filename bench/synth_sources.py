"""Synthetic sources in the real on-disk formats, at any size, for the benchmarks.

`make_coco` (instances: COCO-like counts per image, long-tailed categories, log-normal box areas,
polygons, ~1% crowd regions as uncompressed RLE) is vectorized with numpy so train2017 scale
(118k images, ~850k instances) takes seconds; polygons stay numpy arrays that orjson writes
directly. The other writers build on it: person keypoints, RefCOCO refs + instances, VQAv2
questions + annotations, LLaVA-Instruct conversations.

Images: `write_images` links every file name to ONE real JPEG (hard links, so a folder of 118k
"images" costs no disk): existence checks, PIL size probes and the training loader's decode all
work, and nothing else is paid for.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is in the project's environment
    orjson = None

N_CATS = 80
WORDS = ("red blue green small large left right wooden metal old young tall short white black dog cat car "
         "person table chair cup bottle tree sky road window door man woman child ball bike bus train").split()


def dump_json(obj, path: Path) -> int:
    """Write json (numpy arrays allowed inside); returns the bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if orjson is not None:
        data = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
    else:  # pragma: no cover
        import json

        data = json.dumps(obj, default=lambda a: a.tolist()).encode()
    path.write_bytes(data)
    return len(data)


def _images(rng, n_images: int, first_id: int = 1) -> list[dict]:
    landscape = rng.random(n_images) < 0.7
    side = rng.integers(360, 640, n_images)
    w = np.where(landscape, 640, side)
    h = np.where(landscape, side, 640)
    return [{"id": first_id + i, "file_name": f"{first_id + i:012d}.jpg", "width": int(w[i]), "height": int(h[i])}
            for i in range(n_images)]


def _crowd_rle(x, y, bw, bh, w, h) -> dict:
    """The uncompressed (column-major) RLE of a box, computed from its runs, as COCO writes crowds."""
    x0, x1 = int(x), min(w - 1, int(x + bw))
    y0, y1 = int(y), min(h - 1, int(y + bh))
    ones = y1 - y0 + 1
    counts = [x0 * h + y0]
    for _ in range(x0, x1):
        counts += [ones, h - ones]
    tail = (w - 1 - x1) * h + (h - 1 - y1)
    counts += [ones, tail] if tail else [ones]
    return {"size": [h, w], "counts": counts}


def _annotations(rng, images: list[dict], per_image: np.ndarray, cat_of_ann: np.ndarray, *, first_id: int = 1,
                 points=(12, 40), crowd_p=0.01, keypoints=False) -> list[dict]:
    """COCO annotations: per_image[i] instances on images[i], categories given per annotation."""
    n = int(per_image.sum())
    owner = np.repeat(np.arange(len(images)), per_image)
    iw = np.array([im["width"] for im in images], np.float64)[owner]
    ih = np.array([im["height"] for im in images], np.float64)[owner]
    area = np.minimum(np.maximum(np.exp(rng.normal(7.0, 1.9, n)), 12.0), iw * ih * 0.8)  # ~41% small
    ar = np.exp(rng.normal(0, 0.6, n))
    bw = np.minimum(iw - 1, np.sqrt(area * ar))
    bh = np.minimum(ih - 1, np.sqrt(area / ar))
    x = rng.uniform(0, 1, n) * (iw - bw)
    y = rng.uniform(0, 1, n) * (ih - bh)
    k = rng.integers(points[0], points[1], n)
    ends = np.cumsum(k)
    seg_of = np.repeat(np.arange(n), k)
    t = np.sort(rng.uniform(0, 2 * np.pi, int(ends[-1])) + seg_of * 10.0) - seg_of * 10.0  # sorted per polygon
    cx, cy = np.repeat(x + bw / 2, k), np.repeat(y + bh / 2, k)
    poly = np.stack([cx + np.repeat(bw / 2, k) * np.cos(t), cy + np.repeat(bh / 2, k) * np.sin(t)], 1).round(2).reshape(-1)
    crowd = rng.random(n) < crowd_p
    if keypoints:
        kx = np.repeat(x, 17)[:, None] + rng.uniform(0, 1, (n * 17, 1)) * np.repeat(bw, 17)[:, None]
        ky = np.repeat(y, 17)[:, None] + rng.uniform(0, 1, (n * 17, 1)) * np.repeat(bh, 17)[:, None]
        vis = rng.choice([0, 1, 2], size=(n * 17, 1), p=[0.35, 0.1, 0.55])
        kps = np.concatenate([np.floor(kx), np.floor(ky), vis], 1) * (vis > 0)
        kps = kps.astype(np.int64).reshape(n, 51)
    xs, ys, bws, bhs = (np.round(v, 2).tolist() for v in (x, y, bw, bh))
    anns, lo = [], 0
    for i in range(n):
        hi = int(ends[i])
        im = images[owner[i]]
        a = {"id": first_id + i, "image_id": im["id"], "category_id": int(cat_of_ann[i]),
             "bbox": [xs[i], ys[i], bws[i], bhs[i]], "area": round(bws[i] * bhs[i] * 0.78, 2),
             "iscrowd": int(crowd[i]),
             "segmentation": (_crowd_rle(xs[i], ys[i], bws[i], bhs[i], im["width"], im["height"]) if crowd[i]
                              else [poly[2 * lo:2 * hi]])}
        if keypoints:
            a["keypoints"] = kps[i] if not crowd[i] else np.zeros(51, np.int64)
            a["num_keypoints"] = int((kps[i, 2::3] > 0).sum()) if not crowd[i] else 0
        anns.append(a)
        lo = hi
    return anns


def make_coco(n_images: int, seed: int = 0, *, first_image_id: int = 1) -> dict:
    """An instances file: ~7.2 instances per image (geometric tail, at most 60), ~1% images empty,
    1-5 categories per image drawn from a long-tailed distribution over 80."""
    rng = np.random.default_rng(seed)
    cats = [{"id": i + 1, "name": f"category_{i + 1:02d}", "supercategory": "thing"} for i in range(N_CATS)]
    cat_p = rng.dirichlet(np.full(N_CATS, 0.3))  # a few frequent categories, a long tail (like COCO)
    images = _images(rng, n_images, first_image_id)
    per_image = np.where(rng.random(n_images) < 0.01, 0, np.minimum(60, rng.geometric(1 / 7.5, n_images)))
    # per image up to 5 categories without replacement (Gumbel top-k), then each annotation picks one of them
    gumbel = np.log(cat_p + 1e-12)[None, :] - np.log(-np.log(rng.uniform(1e-12, 1, (n_images, N_CATS))))
    top = np.argsort(-gumbel, axis=1)[:, :5]
    n_cats = np.minimum(np.maximum(1, np.minimum(per_image, rng.integers(1, 6, n_images))), 5)
    owner = np.repeat(np.arange(n_images), per_image)
    pick = (rng.uniform(0, 1, len(owner)) * n_cats[owner]).astype(np.int64)
    anns = _annotations(rng, images, per_image, top[owner, pick] + 1)
    return {"images": images, "annotations": anns, "categories": cats}


def make_keypoints(n_images: int, seed: int = 0) -> dict:
    """A person_keypoints file: every image listed, ~54% with people (~4 each), 17 keypoints per person."""
    rng = np.random.default_rng([seed, 7])
    images = _images(np.random.default_rng(seed), n_images)  # the same images as make_coco(seed)
    per_image = np.where(rng.random(n_images) < 0.54, np.minimum(20, rng.geometric(1 / 4.1, n_images)), 0)
    anns = _annotations(rng, images, per_image, np.ones(int(per_image.sum()), np.int64), points=(8, 24),
                        keypoints=True)
    cat = {"id": 1, "name": "person", "supercategory": "person",
           "keypoints": [f"kp_{i}" for i in range(17)], "skeleton": [[i, i + 1] for i in range(1, 17)]}
    return {"images": images, "annotations": anns, "categories": [cat]}


def _phrase(rng, n_words: int) -> str:
    return " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), n_words))


def make_refcoco(n_images: int, n_refs: int, seed: int = 0) -> tuple[list[dict], dict]:
    """(refs, instances): RefCOCO unc layout, ~2.8 sentences per ref, splits train/val/testA/testB."""
    coco = make_coco(n_images, seed + 1)
    rng = np.random.default_rng([seed, 3])
    candidates = [a for a in coco["annotations"] if not a["iscrowd"]]
    chosen = rng.choice(len(candidates), size=min(n_refs, len(candidates)), replace=False)
    split = rng.choice(["train", "val", "testA", "testB"], size=len(chosen), p=[0.85, 0.05, 0.05, 0.05])
    n_sent = rng.integers(1, 5, len(chosen))
    refs, sent_id = [], 0
    for r, j in enumerate(sorted(chosen.tolist())):
        a = candidates[j]
        sentences = []
        for _ in range(int(n_sent[r])):
            sent_id += 1
            s = _phrase(rng, int(rng.integers(2, 7)))
            sentences.append({"tokens": s.split(), "raw": s, "sent_id": sent_id, "sent": s})
        refs.append({"sent_ids": [s["sent_id"] for s in sentences], "file_name": f"COCO_train2014_{a['image_id']:012d}_{a['id']}.jpg",
                     "ann_id": a["id"], "ref_id": r, "image_id": a["image_id"], "split": str(split[r]),
                     "sentences": sentences, "category_id": a["category_id"]})
    return refs, coco


def make_vqa(image_ids: np.ndarray, n_questions: int, seed: int = 0) -> tuple[dict, dict]:
    """(questions, annotations) in the VQAv2 layout: 10 human answers per question."""
    rng = np.random.default_rng([seed, 4])
    owner = np.sort(rng.choice(image_ids, size=n_questions))
    answers = ("yes", "no", "2", "1", "3", "white", "red", "blue", "dog", "table", "tennis", "frisbee")
    kinds = rng.integers(0, len(answers), (n_questions, 10))
    common = rng.integers(0, len(answers), n_questions)
    agree = rng.random((n_questions, 10)) < 0.7
    kinds = np.where(agree, common[:, None], kinds)
    qs, anns = [], []
    for i in range(n_questions):
        qid = int(owner[i]) * 1000 + i % 1000
        qs.append({"image_id": int(owner[i]), "question": f"What is the {_phrase(rng, 2)} in the picture?", "question_id": qid})
        ans = [{"answer": answers[k], "answer_confidence": "yes", "answer_id": j + 1} for j, k in enumerate(kinds[i].tolist())]
        anns.append({"question_id": qid, "image_id": int(owner[i]), "question_type": "what is the",
                     "answer_type": "other", "multiple_choice_answer": answers[int(common[i])], "answers": ans})
    info = {"data_subtype": "train2014", "data_type": "mscoco", "license": {"name": "synthetic", "url": ""}}
    return dict(info, task_type="Open-Ended", questions=qs), dict(info, annotations=anns)


def make_llava(image_ids: np.ndarray, n_entries: int, seed: int = 0) -> list[dict]:
    """LLaVA-Instruct: `n_entries` conversations of 1-4 human->gpt turns about one image each."""
    rng = np.random.default_rng([seed, 5])
    owner = rng.choice(image_ids, size=n_entries)
    turns = rng.integers(1, 5, n_entries)
    out = []
    for i in range(n_entries):
        conv = []
        for k in range(int(turns[i])):
            q = f"What can you say about the {_phrase(rng, 2)}?"
            conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q},
                     {"from": "gpt", "value": _phrase(rng, int(rng.integers(20, 80))) + "."}]
        out.append({"id": f"{i:07d}", "image": f"{int(owner[i]):012d}.jpg", "conversations": conv})
    return out


def write_images(images_dir: Path, file_names, width: int = 640, height: int = 480) -> int:
    """Every file name as a hard link to a real JPEG: a new copy of it every `_LINKS_PER_FILE` links,
    as file systems cap the links of one file (65,000 on ext4). No symlinks: one to a file outside
    the images folder is (rightly) quarantined by conversion. A symlink an older run left is replaced."""
    import cv2

    images_dir.mkdir(parents=True, exist_ok=True)
    proto = images_dir.parent / "_placeholder.jpg"
    if not proto.exists():
        rng = np.random.default_rng(0)
        cv2.imwrite(str(proto), (rng.random((height, width, 3)) * 255).astype(np.uint8))
    made = 0
    for name in file_names:
        target = images_dir / name
        if target.is_symlink():
            target.unlink()
        if target.exists():
            continue
        copy = images_dir.parent / f"_placeholder-{made // _LINKS_PER_FILE}.jpg"
        if not copy.exists():
            shutil.copyfile(proto, copy)
        os.link(copy, target)
        made += 1
    return made


_LINKS_PER_FILE = 60_000


def write_refcoco(folder: Path, refs: list[dict], instances: dict) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=4))
    return dump_json(instances, folder / "instances.json")
