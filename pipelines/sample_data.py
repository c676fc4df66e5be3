"""The bundled demo sources: small, deterministic scenes written in the real on-disk layouts.

Scenes of simple coloured shapes (circle, square, triangle, star) and stick-figure people with the
17 COCO keypoints. Everything a reader needs is in the real formats: COCO instances and keypoints
json, RefCOCO `refs(unc).p` + `instances.json`, VQAv2 questions/annotations, LLaVA instruction json.
Same seed -> byte-identical files.

    DIR/coco/images/000000000001.jpg ...
    DIR/coco/annotations/instances_{train,val}.json, person_keypoints_{train,val}.json
    DIR/refcoco/refs(unc).p, DIR/refcoco/instances.json
    DIR/vqa/v2_OpenEnded_mscoco_{train,val}_questions.json, v2_mscoco_{train,val}_annotations.json
    DIR/llava/llava_instruct.json
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

COLORS = {  # name -> RGB
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle", "star")
CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"}] + [
    {"id": i + 2, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)
]
CAT_ID = {c["name"]: c["id"] for c in CATEGORIES}
KEYPOINT_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]
SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]
# Half-extent ranges in pixels; areas land in COCO's small (<32^2) / medium / large (>96^2) bins.
SIZE_RANGES = {"small": (5, 8), "medium": (10, 17), "large": (20, 30)}
JPEG_QUALITY = 92


@dataclass
class Obj:
    category: str
    color: str | None
    size: str
    polygon: np.ndarray  # (K, 2) float, original pixels
    keypoints: list[float] | None = None
    mask: np.ndarray | None = None  # for people: the rendered pixels
    bbox: list[float] = field(default_factory=list)

    @property
    def center_x(self) -> float:
        return self.bbox[0] + self.bbox[2] / 2


def _shape_polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> np.ndarray:
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    if shape == "square":
        return np.array([[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r]])
    if shape == "triangle":
        t = rot + np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    t = -np.pi / 2 + np.arange(10) * np.pi / 5  # star: 5 outer, 5 inner points
    rr = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    return np.stack([cx + rr * np.cos(t), cy + rr * np.sin(t)], 1)


def _person(rng: np.random.Generator, cx: float, top: float, height: float, w: int, h: int):
    """A stick figure: keypoints (17 x 3) and the pixels it covers."""
    u = height / 8.0
    pts = {
        "nose": (0, 0.6), "left_eye": (0.25, 0.4), "right_eye": (-0.25, 0.4),
        "left_ear": (0.5, 0.55), "right_ear": (-0.5, 0.55),
        "left_shoulder": (1.0, 1.7), "right_shoulder": (-1.0, 1.7),
        "left_elbow": (1.5, 2.9), "right_elbow": (-1.5, 2.9),
        "left_wrist": (1.8, 4.0), "right_wrist": (-1.8, 4.0),
        "left_hip": (0.6, 4.3), "right_hip": (-0.6, 4.3),
        "left_knee": (0.8, 6.0), "right_knee": (-0.8, 6.0),
        "left_ankle": (0.9, 7.7), "right_ankle": (-0.9, 7.7),
    }
    jitter = rng.normal(0, 0.12, size=(17, 2))
    xy = np.array([pts[n] for n in KEYPOINT_NAMES]) + jitter
    # COCO convention: "left" is the person's left, seen on the image's right for a person facing us.
    xy = np.stack([cx + xy[:, 0] * u, top + xy[:, 1] * u], 1)
    canvas = np.zeros((h, w), np.uint8)
    thick = max(2, int(round(u * 0.45)))
    head_c = (int(round(cx)), int(round(top + 0.5 * u)))
    cv2.circle(canvas, head_c, max(2, int(round(u * 0.75))), 255, -1, cv2.LINE_8)
    neck = (xy[5] + xy[6]) / 2
    pelvis = (xy[11] + xy[12]) / 2
    limbs = [(neck, pelvis), (xy[5], xy[6]), (xy[11], xy[12])] + [
        (xy[a - 1], xy[b - 1]) for a, b in SKELETON if a > 5 and b > 5
    ]
    for p, q in limbs:
        cv2.line(canvas, tuple(int(round(v)) for v in p), tuple(int(round(v)) for v in q), 255, thick, cv2.LINE_8)
    vis = np.full(17, 2)
    vis[rng.random(17) < 0.08] = 1  # labelled but occluded
    kps = []
    for (x, y), v in zip(xy, vis):
        inside = 0 <= x < w and 0 <= y < h
        kps += [round(float(x), 2), round(float(y), 2), int(v)] if inside else [0, 0, 0]
    return kps, canvas > 0


def _boxes_overlap(a: list[float], b: list[float], margin: float = 3) -> bool:
    return not (a[0] + a[2] + margin <= b[0] or b[0] + b[2] + margin <= a[0]
                or a[1] + a[3] + margin <= b[1] or b[1] + b[3] + margin <= a[1])


def _make_scene(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, list[Obj], np.ndarray | None]:
    base = rng.integers(200, 245)
    img = np.full((h, w, 3), base, np.float32) + rng.normal(0, 6, (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    objs: list[Obj] = []
    if rng.random() < 0.45:  # one or two people
        for _ in range(1 + int(rng.random() < 0.3)):
            height = float(rng.uniform(0.45, 0.8) * h)
            for _try in range(20):
                cx = float(rng.uniform(0.15 * w, 0.85 * w))
                top = float(rng.uniform(2, max(3, h - height - 2)))
                kps, pix = _person(rng, cx, top, height, w, h)
                ys, xs = np.nonzero(pix)
                bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
                if all(not _boxes_overlap(bbox, o.bbox) for o in objs):
                    img[pix] = (60, 60, 60)
                    contours, _ = cv2.findContours(pix.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                    poly = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
                    objs.append(Obj("person", None, "large", poly, kps, pix, bbox))
                    break
    n_shapes = int(rng.integers(1, 6))
    for _ in range(n_shapes):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        size = ("small", "medium", "medium", "large")[int(rng.integers(4))]
        lo, hi = SIZE_RANGES[size]
        for _try in range(30):
            r = float(rng.uniform(lo, hi))
            cx, cy = float(rng.uniform(r + 1, w - r - 1)), float(rng.uniform(r + 1, h - r - 1))
            poly = _shape_polygon(shape, cx, cy, r, float(rng.uniform(-0.3, 0.3)))
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            bbox = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
            if x0 >= 0 and y0 >= 0 and x1 < w and y1 < h and all(not _boxes_overlap(bbox, o.bbox) for o in objs):
                cv2.fillPoly(img, [np.round(poly * 16).astype(np.int32)], COLORS[color], cv2.LINE_AA, shift=4)
                objs.append(Obj(shape, color, size, poly, bbox=bbox))
                break
    crowd = None
    if rng.random() < 0.12:  # a cluster of tiny dots: one crowd region, not instances
        cw, ch = int(rng.integers(18, 30)), int(rng.integers(14, 24))
        for _try in range(20):
            x0, y0 = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
            box = [float(x0), float(y0), float(cw), float(ch)]
            if all(not _boxes_overlap(box, o.bbox) for o in objs):
                crowd = np.zeros((h, w), np.uint8)
                color = COLORS[list(COLORS)[int(rng.integers(len(COLORS)))]]
                for _dot in range(int(rng.integers(6, 12))):
                    px, py = x0 + int(rng.integers(2, cw - 2)), y0 + int(rng.integers(2, ch - 2))
                    cv2.circle(img, (px, py), 2, color, -1)
                    cv2.circle(crowd, (px, py), 2, 1, -1)
                break
    return img, objs, crowd


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: column-major run lengths starting with a zero run."""
    flat = np.asfortranarray(mask).reshape(-1, order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def _describe(objs: list[Obj], i: int) -> list[str]:
    """Referring expressions that single out objs[i] in its image (empty if none is unambiguous)."""
    o = objs[i]
    same_cat = [p for p in objs if p.category == o.category]
    out = []
    if o.category != "person":
        same_color_cat = [p for p in same_cat if p.color == o.color]
        if len(same_color_cat) == 1:
            out.append(f"the {o.color} {o.category}")
            sizes = [p.size for p in same_cat if p is not o]
            if o.size == "large" and "large" not in sizes:
                out.append(f"the big {o.color} {o.category}")
    if len(same_cat) == 1:
        out.append(f"the {o.category}")
    elif len(same_cat) >= 2:
        xs = sorted(same_cat, key=lambda p: p.center_x)
        gap = xs[1].center_x - xs[0].center_x, xs[-1].center_x - xs[-2].center_x
        if o is xs[0] and gap[0] > 8:
            out.append(f"the {o.category} on the left")
        elif o is xs[-1] and gap[1] > 8:
            out.append(f"the {o.category} on the right")
    return out[:2]


def _answers(rng: np.random.Generator, truth: str, alternatives: list[str]) -> list[dict]:
    answers = []
    for k in range(10):
        a = truth if rng.random() > 0.1 else alternatives[int(rng.integers(len(alternatives)))]
        answers.append({"answer": a, "answer_confidence": "yes" if a == truth else "maybe", "answer_id": k + 1})
    return answers


def _dump(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")))


def write_sample_data(out_dir: str | Path, n_images: int = 400, seed: int = 0, val_fraction: float = 0.2) -> dict:
    """Write the demo sources under out_dir; returns counts per file."""
    out = Path(out_dir)
    img_dir = out / "coco" / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(n_images * val_fraction))) if n_images > 1 else 0
    splits = {"train": [], "val": []}
    ann_id = 0
    scenes = []
    for idx in range(n_images):
        image_id = idx + 1
        split = "val" if idx >= n_images - n_val else "train"
        w, h = int(rng.integers(128, 193)), int(rng.integers(128, 193))
        img, objs, crowd = _make_scene(rng, w, h)
        file_name = f"{image_id:012d}.jpg"
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        (img_dir / file_name).write_bytes(buf.tobytes())
        image = {"id": image_id, "file_name": file_name, "width": w, "height": h, "license": 1,
                 "date_captured": "2026-01-01 00:00:00"}
        anns = []
        for o in objs:
            ann_id += 1
            poly = np.round(o.polygon, 2)
            a = {"id": ann_id, "image_id": image_id, "category_id": CAT_ID[o.category], "iscrowd": 0,
                 "bbox": [round(v, 2) for v in o.bbox], "area": round(_polygon_area(poly), 2),
                 "segmentation": [[float(v) for v in poly.reshape(-1)]]}
            if o.keypoints is not None:
                a["keypoints"] = o.keypoints
                a["num_keypoints"] = int(sum(1 for v in o.keypoints[2::3] if v > 0))
            anns.append(a)
        if crowd is not None:
            ann_id += 1
            ys, xs = np.nonzero(crowd)
            anns.append({"id": ann_id, "image_id": image_id, "category_id": CAT_ID["circle"], "iscrowd": 1,
                         "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
                         "area": float(crowd.sum()), "segmentation": _uncompressed_rle(crowd)})
        splits[split].append((image, anns, objs))
        scenes.append((image, anns, objs, split))

    info = {"description": "Lumen demo scenes", "version": "1.0", "year": 2026, "contributor": "lumen-pipeline",
            "date_created": "2026-01-01"}
    licenses = [{"id": 1, "name": "CC0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]
    kp_cat = dict(CATEGORIES[0], keypoints=KEYPOINT_NAMES, skeleton=SKELETON)
    counts = {}
    for split, items in splits.items():
        images = [im for im, _, _ in items]
        anns = [a for _, aa, _ in items for a in aa]
        _dump({"info": info, "licenses": licenses, "images": images, "annotations": anns, "categories": CATEGORIES},
              out / "coco" / "annotations" / f"instances_{split}.json")
        person_anns = [a for a in anns if a["category_id"] == CAT_ID["person"] and a["iscrowd"] == 0]
        _dump({"info": info, "licenses": licenses, "images": images, "annotations": person_anns, "categories": [kp_cat]},
              out / "coco" / "annotations" / f"person_keypoints_{split}.json")
        counts[f"images_{split}"] = len(images)
        counts[f"annotations_{split}"] = len(anns)
        counts[f"people_{split}"] = len(person_anns)

    # RefCOCO: refs over non-crowd objects with an unambiguous expression.
    refs, ref_id, sent_id = [], 0, 0
    for image, anns, objs, split in scenes:
        inst = [a for a in anns if a["iscrowd"] == 0]
        for i, o in enumerate(objs):
            sents = _describe(objs, i)
            if not sents:
                continue
            ref_id += 1
            sentences = []
            for s in sents:
                sent_id += 1
                sentences.append({"sent_id": sent_id, "sent": s, "raw": s.capitalize(), "tokens": s.split()})
            refs.append({"ref_id": ref_id, "ann_id": inst[i]["id"], "image_id": image["id"], "split": split,
                         "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences],
                         "category_id": inst[i]["category_id"], "file_name": f"COCO_train2014_{image['id']:012d}_{inst[i]['id']}.jpg"})
    (out / "refcoco").mkdir(parents=True, exist_ok=True)
    (out / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    all_images = [s[0] for s in scenes]
    all_anns = [a for s in scenes for a in s[1]]
    _dump({"info": info, "licenses": licenses, "images": all_images, "annotations": all_anns, "categories": CATEGORIES},
          out / "refcoco" / "instances.json")
    counts["refs"], counts["ref_sentences"] = len(refs), sent_id

    # VQAv2: counting, colour and yes/no questions whose answers follow from the scene.
    qid = 0
    vqa = {s: ([], []) for s in splits}
    llava = []
    for image, anns, objs, split in scenes:
        shapes = [o for o in objs if o.category != "person"]
        qs = []
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        n = sum(o.category == shape for o in objs)
        qs.append((f"How many {shape}s are there?", str(n), "how many", "number", [str(max(0, n - 1)), str(n + 1)]))
        singles = [o for o in shapes if sum(p.category == o.category for p in shapes) == 1]
        if singles:
            o = singles[int(rng.integers(len(singles)))]
            qs.append((f"What color is the {o.category}?", o.color, "what color is the", "other",
                       [c for c in COLORS if c != o.color]))
        probe = SHAPES[int(rng.integers(len(SHAPES)))] if rng.random() < 0.8 else "person"
        present = any(o.category == probe for o in objs)
        qs.append((f"Is there a {probe} in the image?", "yes" if present else "no", "is there a", "yes/no",
                   ["no" if present else "yes"]))
        for q, a, qtype, atype, alts in qs:
            qid += 1
            vqa[split][0].append({"image_id": image["id"], "question": q, "question_id": qid})
            vqa[split][1].append({"question_id": qid, "image_id": image["id"], "question_type": qtype,
                                  "answer_type": atype, "multiple_choice_answer": a, "answers": _answers(rng, a, alts)})
        # LLaVA: a short multi-turn conversation about the same scene.
        names = sorted({o.category for o in objs})
        desc = ", ".join(f"{sum(o.category == c for o in objs)} {c}{'s' if sum(o.category == c for o in objs) > 1 else ''}" for c in names)
        conv = [{"from": "human", "value": "<image>\nWhat objects are in this image?"},
                {"from": "gpt", "value": f"The image shows {desc}." if desc else "The image is empty."},
                {"from": "human", "value": qs[0][0]}, {"from": "gpt", "value": qs[0][1]}]
        if len(qs) > 2:
            conv += [{"from": "human", "value": qs[1][0]}, {"from": "gpt", "value": qs[1][1]}]
        llava.append({"id": f"{image['id']:012d}", "image": image["file_name"], "conversations": conv})
    for split, (questions, annotations) in vqa.items():
        _dump({"info": info, "license": licenses[0], "data_subtype": f"{split}2014", "task_type": "Open-Ended",
               "data_type": "mscoco", "questions": questions}, out / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json")
        _dump({"info": info, "license": licenses[0], "data_subtype": f"{split}2014", "data_type": "mscoco",
               "annotations": annotations}, out / "vqa" / f"v2_mscoco_{split}_annotations.json")
        counts[f"questions_{split}"] = len(questions)
    _dump(llava, out / "llava" / "llava_instruct.json")
    counts["llava_conversations"] = len(llava)
    return counts
