"""The demo sources: real formats, determinism, and texts that agree with the pixels.

Colours are measured from the JPEG pixels under each annotation's mask and sizes from the
annotation areas, so the refs/VQA checks do not just re-read what the generator meant to say.
"""

import json
import pickle
import re
from collections import Counter

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from lumen_cli import main
from pipelines.sample_data import AREA_THRESHOLDS, COLORS, KEYPOINT_NAMES, SHAPES, size_label, write_sample_data
from pipelines.sample_data.language import POSITION_GAP
from pipelines.sample_data.scene import CAT_ID, PERSON_GRAY

PERSON_ID = CAT_ID["person"]

SPLITS = ("train", "val")
PALETTE = np.array(list(COLORS.values()), float)
REF = re.compile(r"^the (?:(big|small) )?(?:(" + "|".join(COLORS) + r") )?(person|" + "|".join(SHAPES) +
                 r")(?: on the (left|right))?$")


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load(root, split):
    coco = COCO(str(root / "coco" / "annotations" / f"instances_{split}.json"))
    return coco, {c["name"]: c["id"] for c in coco.dataset["categories"]}


def _measured_color(coco, root, ann, cache={}):
    """Palette name nearest the median pixel inside the (eroded) mask, and its distance."""
    im = coco.imgs[ann["image_id"]]
    key = (str(root), im["file_name"])
    if key not in cache:
        cache[key] = cv2.cvtColor(cv2.imread(str(root / "coco" / "images" / im["file_name"])), cv2.COLOR_BGR2RGB)
    mask = coco.annToMask(ann)
    inner = cv2.erode(mask, np.ones((3, 3), np.uint8))  # away from anti-aliased / JPEG-blurred edges
    rgb = np.median(cache[key][(inner if inner.any() else mask) > 0], axis=0)
    if ann["category_id"] == PERSON_ID:
        return "person gray", float(np.linalg.norm(rgb - PERSON_GRAY))
    d = np.linalg.norm(PALETTE - rgb, axis=1)
    return list(COLORS)[int(d.argmin())], float(d.min())


def _objects(coco, root, names):
    """Per image: the non-crowd annotations with category name, measured colour and size class."""
    cat_name = {v: k for k, v in names.items()}
    per_image = {}
    for a in coco.anns.values():
        if a["iscrowd"]:
            continue
        o = {"ann": a, "category": cat_name[a["category_id"]], "size": size_label(a["area"]),
             "cx": a["bbox"][0] + a["bbox"][2] / 2, "color": None}
        color, dist = _measured_color(coco, root, a)
        assert dist < 40, f"annotation {a['id']}: pixels under the mask are not its colour"
        if o["category"] != "person":
            o["color"] = color
        per_image.setdefault(a["image_id"], []).append(o)
    return per_image


def test_same_seed_gives_identical_bytes(tmp_path):
    write_sample_data(tmp_path / "a", n_images=12, seed=3)
    write_sample_data(tmp_path / "b", n_images=12, seed=3)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    # 12 labeled + 10 pool images (as many as train), 11 source files, the pool file, oracle json + note
    assert len(a) == 12 + 10 + 11 + 3 and a == b
    write_sample_data(tmp_path / "c", n_images=12, seed=4)
    c = _files(tmp_path / "c")
    assert c.keys() == a.keys() and all(c[k] != a[k] for k in a if k.endswith(".jpg"))


def test_rerun_replaces_previous_set(tmp_path):
    write_sample_data(tmp_path, n_images=12, seed=0)
    counts = write_sample_data(tmp_path, n_images=5, seed=0)  # + a pool of 4 (as many as train): ids 6..9
    assert sorted(p.name for p in (tmp_path / "coco" / "images").iterdir()) == [f"{i:012d}.jpg" for i in range(1, 10)]
    ids = [im["id"] for s in SPLITS
           for im in json.loads((tmp_path / "coco" / "annotations" / f"instances_{s}.json").read_text())["images"]]
    assert sorted(ids) == [1, 2, 3, 4, 5] and counts["images_train"] + counts["images_val"] == 5
    fresh = tmp_path / "fresh"
    write_sample_data(fresh, n_images=5, seed=0)
    assert _files(fresh) == {k: v for k, v in _files(tmp_path).items() if not k.startswith("fresh/")}


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["sample-data", "--out", str(tmp_path / "d"), "--images", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lumen sample-data: error:") and "positive" in err and "\n" not in err
    (tmp_path / "file").write_text("x")
    assert main(["sample-data", "--out", str(tmp_path / "file"), "--images", "3"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_instances_load_and_masks_decode(sample_data_dir):
    crowd_seen = 0
    for split in SPLITS:
        coco, names = _load(sample_data_dir, split)
        assert {c["supercategory"] for c in coco.dataset["categories"]} == {"person", "shape"}
        assert {"info", "licenses", "images", "annotations", "categories"} <= coco.dataset.keys()
        for im in coco.imgs.values():
            h, w = cv2.imread(str(sample_data_dir / "coco" / "images" / im["file_name"])).shape[:2]
            assert (w, h) == (im["width"], im["height"]) and 128 <= min(w, h) and max(w, h) <= 192
            assert 1 <= len(coco.getAnnIds(imgIds=[im["id"]], iscrowd=False)) <= 6
        for a in coco.anns.values():
            m = coco.annToMask(a)
            x, y, bw, bh = a["bbox"]
            ys, xs = np.nonzero(m)
            assert m.sum() > 0 and x - 1 <= xs.min() and xs.max() <= x + bw + 1 and y - 1 <= ys.min() and ys.max() <= y + bh + 1
            if a["iscrowd"]:
                crowd_seen += 1
                seg = a["segmentation"]
                assert isinstance(seg["counts"], list) and seg["size"] == [coco.imgs[a["image_id"]]["height"],
                                                                           coco.imgs[a["image_id"]]["width"]]
                assert sum(seg["counts"]) == seg["size"][0] * seg["size"][1] and m.sum() == a["area"]
            else:
                assert isinstance(a["segmentation"], list) and all(len(p) >= 6 for p in a["segmentation"])
                assert abs(m.sum() - a["area"]) <= 0.25 * a["area"] + 10, a["id"]  # rasterised polygon ~ its area
    assert crowd_seen >= 2


def test_vocabulary_is_rich_and_consistent(sample_data_dir):
    """Every colour, shape and size class occurs, and each shape's pixels are its named palette colour."""
    seen = Counter()
    aspect = set()
    for split in SPLITS:
        coco, names = _load(sample_data_dir, split)
        for objs in _objects(coco, sample_data_dir, names).values():
            for o in objs:
                seen[o["category"]] += 1
                seen[o["size"]] += 1
                seen[o["color"]] += 1
        aspect |= {np.sign(im["width"] - im["height"]) for im in coco.imgs.values()}
    for word in list(COLORS) + list(SHAPES) + ["person", "small", "medium", "large"]:
        assert seen[word] >= 3, (word, seen)
    assert aspect >= {-1, 1}  # both portrait and landscape: the square padding matters
    assert AREA_THRESHOLDS[0] < AREA_THRESHOLDS[1]


def test_keypoints_file(sample_data_dir):
    vis = Counter()
    for split in SPLITS:
        kp = COCO(str(sample_data_dir / "coco" / "annotations" / f"person_keypoints_{split}.json"))
        (cat,) = kp.dataset["categories"]
        assert cat["name"] == "person" and cat["keypoints"] == KEYPOINT_NAMES and len(cat["skeleton"]) == 19
        inst, names = _load(sample_data_dir, split)
        assert sorted(kp.imgs) == sorted(inst.imgs)  # like the real file: every image is listed
        assert sorted(kp.anns) == inst.getAnnIds(catIds=[names["person"]], iscrowd=False)
        for a in kp.anns.values():
            k = np.array(a["keypoints"], float).reshape(17, 3)
            assert len(a["keypoints"]) == 51 and set(k[:, 2]) <= {0, 1, 2}
            assert a["num_keypoints"] == int((k[:, 2] > 0).sum())
            vis.update(k[:, 2].astype(int).tolist())
            body = cv2.dilate(kp.annToMask(a), np.ones((3, 3), np.uint8))
            for x, y, v in k:
                if v == 2:  # a visible keypoint lies on the drawn figure
                    assert body[int(y), int(x)], (a["id"], x, y)
                if v == 0:
                    assert x == 0 and y == 0
            # the person's left is on the image's right (facing the camera)
            assert k[5, 0] > k[6, 0] and k[11, 0] > k[12, 0]
    assert vis[2] > 0 and vis[1] > 0 and vis[0] > 0


def test_refs_are_real_and_unambiguous(sample_data_dir):
    refs = pickle.loads((sample_data_dir / "refcoco" / "refs(unc).p").read_bytes())
    inst = json.loads((sample_data_dir / "refcoco" / "instances.json").read_text())
    assert {r["split"] for r in refs} == set(SPLITS)
    assert len({r["ref_id"] for r in refs}) == len(refs)
    sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
    assert len(set(sent_ids)) == len(sent_ids)
    kinds = Counter()
    for split in SPLITS:
        coco, names = _load(sample_data_dir, split)
        assert all(coco.anns[i] == a for a in inst["annotations"] for i in [a["id"]] if i in coco.anns)
        objects = _objects(coco, sample_data_dir, names)
        for ref in (r for r in refs if r["split"] == split):
            a = coco.anns[ref["ann_id"]]
            assert a["image_id"] == ref["image_id"] and a["iscrowd"] == 0 and a["category_id"] == ref["category_id"]
            assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]] and 1 <= len(ref["sentences"]) <= 3
            target = next(o for o in objects[a["image_id"]] if o["ann"]["id"] == a["id"])
            for s in ref["sentences"]:
                assert s["tokens"] == s["sent"].split()
                m = REF.match(s["sent"])
                assert m, s["sent"]
                size, color, category, side = m.groups()
                kinds.update(k for k, v in zip(("size", "color", "category", "side"), m.groups()) if v)
                group = [o for o in objects[a["image_id"]] if o["category"] == category
                         and (color is None or o["color"] == color)
                         and (size is None or o["size"] == {"big": "large", "small": "small"}[size])]
                assert target in group, (s["sent"], target)
                if side is None:
                    assert group == [target], s["sent"]
                else:  # the clear leftmost / rightmost of those the other words pick
                    xs = sorted(o["cx"] for o in group if o is not target)
                    gap = xs[0] - target["cx"] if side == "left" else target["cx"] - xs[-1]
                    assert xs and gap >= POSITION_GAP, s["sent"]
    assert all(kinds[k] > 0 for k in ("size", "color", "category", "side")), kinds


def test_vqa_answers_match_the_scene(sample_data_dir):
    plural = {"people": "person", **{f"{s}s": s for s in SHAPES}}
    checked = Counter()
    for split in SPLITS:
        qs = json.loads((sample_data_dir / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())
        an = json.loads((sample_data_dir / "vqa" / f"v2_mscoco_{split}_annotations.json").read_text())
        assert qs["task_type"] == "Open-Ended" and qs["data_subtype"] == an["data_subtype"]
        ans = {a["question_id"]: a for a in an["annotations"]}
        assert len(ans) == len(an["annotations"]) == len(qs["questions"])
        coco, names = _load(sample_data_dir, split)
        objects = _objects(coco, sample_data_dir, names)
        for q in qs["questions"]:
            a = ans[q["question_id"]]
            objs = objects[q["image_id"]]
            assert a["image_id"] == q["image_id"] and len(a["answers"]) == 10
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            top, n = Counter(x["answer"] for x in a["answers"]).most_common(1)[0]
            assert top == a["multiple_choice_answer"] and n >= 7
            text, truth = q["question"], a["multiple_choice_answer"]
            if m := re.fullmatch(r"How many (\w+) are there\?", text):
                assert truth == str(sum(o["category"] == plural[m[1]] for o in objs)) and a["answer_type"] == "number"
            elif m := re.fullmatch(r"What color is the (\w+)\?", text):
                (o,) = [o for o in objs if o["category"] == m[1]]
                assert truth == o["color"]
            elif m := re.fullmatch(r"What shape is the (\w+) object\?", text):
                (o,) = [o for o in objs if o["color"] == m[1]]
                assert truth == o["category"]
            elif m := re.fullmatch(r"Is there an? (\w+) in the image\?", text):
                assert truth == ("yes" if any(o["category"] == m[1] for o in objs) else "no")
                assert a["answer_type"] == "yes/no"
            else:
                pytest.fail(f"unexpected question {text!r}")
            checked[text.split()[0] + text.split()[1]] += 1
    assert len(checked) == 4 and min(checked.values()) >= 5, checked
    noisy = [x for s in SPLITS for a in json.loads((sample_data_dir / "vqa" / f"v2_mscoco_{s}_annotations.json")
             .read_text())["annotations"] for x in a["answers"] if x["answer"] != a["multiple_choice_answer"]]
    assert noisy  # some human disagreement, as in the real data


def test_llava_conversations(sample_data_dir):
    convs = json.loads((sample_data_dir / "llava" / "llava_instruct.json").read_text())
    ids = {im["id"]: im["file_name"] for im in _load(sample_data_dir, "train")[0].imgs.values()}
    assert len(convs) == len(ids) and {int(c["id"]) for c in convs} == set(ids)  # train images only, like LLaVA-Instruct
    lengths = Counter()
    for c in convs:
        assert (sample_data_dir / "coco" / "images" / c["image"]).is_file() and ids[int(c["id"])] == c["image"]
        turns = c["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n") and all("<image>" not in t["value"] for t in turns[1:])
        lengths[len(turns) // 2] += 1
    assert set(lengths) == {2, 3}


def test_cli_writes_layout(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["sample-data", "--out", str(out), "--images", "5", "--seed", "1", "--pool", "2"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["images_train"] == 4 and counts["images_val"] == 1 and counts["images_unlabeled"] == 2
    expected = ["coco/annotations/instances_train.json", "coco/annotations/instances_val.json",
                "coco/annotations/person_keypoints_train.json", "coco/annotations/person_keypoints_val.json",
                "llava/llava_instruct.json", "refcoco/instances.json", "refcoco/refs(unc).p",
                "vqa/v2_OpenEnded_mscoco_train_questions.json", "vqa/v2_OpenEnded_mscoco_val_questions.json",
                "vqa/v2_mscoco_train_annotations.json", "vqa/v2_mscoco_val_annotations.json",
                "coco/annotations/image_info_unlabeled.json", "oracle/instances_unlabeled.json", "oracle/README.txt"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted(expected + [f"coco/images/{i:012d}.jpg" for i in range(1, 8)])
    with pytest.raises(SystemExit) as exc:
        main(["sample-data", "--help"])
    assert exc.value.code == 0 and "--images N" in capsys.readouterr().out


def test_contact_sheet(sample_data_dir, artifacts_dir):
    """Masks, boxes and skeletons over 12 images: a picture people can check at a glance."""
    coco, names = _load(sample_data_dir, "train")
    skeleton = COCO(str(sample_data_dir / "coco" / "annotations" / "person_keypoints_train.json")).dataset[
        "categories"][0]["skeleton"]
    tiles = []
    for im in list(coco.imgs.values())[:12]:
        x = cv2.imread(str(sample_data_dir / "coco" / "images" / im["file_name"]))
        x = cv2.resize(x, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]])):
            m = cv2.resize(coco.annToMask(a), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(x, contours, -1, (0, 0, 255) if a["iscrowd"] else (255, 255, 0), 1)
            bx, by, bw, bh = (int(round(2 * v)) for v in a["bbox"])
            cv2.rectangle(x, (bx, by), (bx + bw, by + bh), (0, 0, 255) if a["iscrowd"] else (0, 0, 0), 1)
            k = np.array(a.get("keypoints", []), float).reshape(-1, 3) * [2, 2, 1]
            for i, j in skeleton if len(k) else []:
                if k[i - 1, 2] > 0 and k[j - 1, 2] > 0:
                    cv2.line(x, (int(k[i - 1, 0]), int(k[i - 1, 1])), (int(k[j - 1, 0]), int(k[j - 1, 1])), (0, 160, 0), 1)
            for px, py, v in k:
                if v > 0:
                    cv2.circle(x, (int(px), int(py)), 3, (0, 200, 0) if v == 2 else (0, 140, 255), -1)
        tiles.append(np.pad(x, ((0, 388 - x.shape[0]), (0, 388 - x.shape[1]), (0, 0)), constant_values=255))
    sheet = np.vstack([np.hstack(tiles[i:i + 4]) for i in range(0, 12, 4)])
    path = artifacts_dir / "sample_data_contact_sheet.png"
    assert cv2.imwrite(str(path), sheet) and path.stat().st_size > 10_000


def test_unlabeled_pool_in_cocos_layout_with_truth_apart(tmp_path):
    import hashlib

    from pipelines.layout import pool_file

    counts = write_sample_data(tmp_path / "a", n_images=10, seed=2)
    root = tmp_path / "a"
    info = json.loads(pool_file(root).read_text())
    assert "annotations" not in info and info["categories"] and counts["images_train"] == 8
    assert len(info["images"]) == counts["images_unlabeled"] == 8  # default: as many as train
    labeled = {im["id"] for s in SPLITS for im in _load(root, s)[0].imgs.values()}
    assert not labeled & {im["id"] for im in info["images"]}
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "coco" / "images").iterdir()}
    pool_names = {im["file_name"] for im in info["images"]}
    assert pool_names <= set(digest)  # beside the other images
    assert not {digest[n] for n in pool_names} & {d for n, d in digest.items() if n not in pool_names}
    oracle = COCO(str(root / "oracle" / "instances_unlabeled.json"))
    assert oracle.dataset["images"] == info["images"] and len(oracle.anns) == counts["oracle_annotations_unlabeled"] > 0
    # the pool's scenes do not depend on the labeled set's size, and re-running with a smaller pool leaves no stale image
    write_sample_data(tmp_path / "b", n_images=6, seed=2, pool=3)
    info_b = json.loads(pool_file(tmp_path / "b").read_text())
    assert [im["file_name"] for im in info_b["images"]] == [f"{i:012d}.jpg" for i in (7, 8, 9)]
    assert [(im["width"], im["height"]) for im in info_b["images"]] == [(im["width"], im["height"]) for im in info["images"][:3]]
    write_sample_data(root, n_images=10, seed=2, pool=0)
    assert json.loads(pool_file(root).read_text())["images"] == [] and len(list((root / "coco" / "images").iterdir())) == 10
