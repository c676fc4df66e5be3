import json
import pickle

import numpy as np
import pytest
from pycocotools.coco import COCO

from pipelines.cli import main
from pipelines.sample_data import write_sample_data


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path):
    write_sample_data(tmp_path / "a", n_images=12, seed=3)
    write_sample_data(tmp_path / "b", n_images=12, seed=3)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys() and a == b
    write_sample_data(tmp_path / "c", n_images=12, seed=4)
    assert _files(tmp_path / "c") != a


def test_layout_and_formats_load(sample_data_dir):
    ann = sample_data_dir / "coco" / "annotations"
    for split in ("train", "val"):
        coco = COCO(str(ann / f"instances_{split}.json"))
        assert coco.getImgIds() and coco.getAnnIds()
        crowd = [a for a in coco.anns.values() if a["iscrowd"]]
        for a in list(coco.anns.values()):
            assert coco.annToMask(a).sum() > 0, a["id"]
        kp = COCO(str(ann / f"person_keypoints_{split}.json"))
        for a in kp.anns.values():
            assert len(a["keypoints"]) == 51 and a["num_keypoints"] == sum(v > 0 for v in a["keypoints"][2::3])
        assert (sample_data_dir / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json").is_file()
    assert any(True for _ in (sample_data_dir / "coco" / "images").glob("*.jpg"))
    assert isinstance(crowd, list)


def test_refs_point_at_real_annotations_and_are_unambiguous(sample_data_dir):
    refs = pickle.loads((sample_data_dir / "refcoco" / "refs(unc).p").read_bytes())
    inst = json.loads((sample_data_dir / "refcoco" / "instances.json").read_text())
    anns = {a["id"]: a for a in inst["annotations"]}
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    assert refs
    for ref in refs:
        a = anns[ref["ann_id"]]
        assert a["image_id"] == ref["image_id"] and a["iscrowd"] == 0
        same_image = [b for b in anns.values() if b["image_id"] == a["image_id"] and not b["iscrowd"]]
        for s in ref["sentences"]:
            assert cats[a["category_id"]] in s["sent"]
            if s["sent"] == f"the {cats[a['category_id']]}":  # category alone must be unique in the image
                assert sum(b["category_id"] == a["category_id"] for b in same_image) == 1


def test_vqa_counts_match_annotations(sample_data_dir):
    for split in ("train", "val"):
        qs = json.loads((sample_data_dir / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())["questions"]
        ans = {a["question_id"]: a for a in json.loads((sample_data_dir / "vqa" / f"v2_mscoco_{split}_annotations.json").read_text())["annotations"]}
        inst = COCO(str(sample_data_dir / "coco" / "annotations" / f"instances_{split}.json"))
        names = {c["name"]: c["id"] for c in inst.dataset["categories"]}
        checked = 0
        for q in qs:
            a = ans[q["question_id"]]
            assert len(a["answers"]) == 10
            if q["question"].startswith("How many "):
                shape = q["question"][len("How many "):].split("s are")[0]
                n = len(inst.getAnnIds(imgIds=[q["image_id"]], catIds=[names[shape]], iscrowd=False))
                assert a["multiple_choice_answer"] == str(n)
                checked += 1
        assert checked > 0


def test_cli_writes_layout(tmp_path, capsys):
    assert main(["sample-data", "--out", str(tmp_path / "d"), "--images", "5", "--seed", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["images_train"] == 4
    assert (tmp_path / "d" / "refcoco" / "refs(unc).p").is_file()
    assert (tmp_path / "d" / "llava" / "llava_instruct.json").is_file()
    with pytest.raises(SystemExit) as exc:
        main(["sample-data", "--help"])
    assert exc.value.code == 0


def test_contact_sheet(sample_data_dir, artifacts_dir):
    """Draw boxes and keypoints on a few images: a picture people can check at a glance."""
    import cv2

    d = json.loads((sample_data_dir / "coco" / "annotations" / "instances_train.json").read_text())
    tiles = []
    for im in d["images"][:12]:
        x = cv2.imread(str(sample_data_dir / "coco" / "images" / im["file_name"]))
        for a in d["annotations"]:
            if a["image_id"] == im["id"]:
                bx, by, bw, bh = (int(v) for v in a["bbox"])
                cv2.rectangle(x, (bx, by), (bx + bw, by + bh), (0, 0, 255) if a["iscrowd"] else (0, 0, 0), 1)
                for px, py, v in np.array(a.get("keypoints", [])).reshape(-1, 3):
                    if v > 0:
                        cv2.circle(x, (int(px), int(py)), 2, (0, 200, 0), -1)
        tiles.append(np.pad(x, ((0, 192 - x.shape[0]), (0, 192 - x.shape[1]), (0, 0)), constant_values=255))
    sheet = np.vstack([np.hstack(tiles[i:i + 4]) for i in range(0, 12, 4)])
    assert cv2.imwrite(str(artifacts_dir / "sample_data_contact_sheet.png"), sheet)
