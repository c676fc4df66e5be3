"""`lumen ask` / lumen_model.ask: one instruction about one image answers exactly what `lumen predict` writes."""

from __future__ import annotations

import json
import os
import subprocess
from collections import defaultdict

import cv2
import numpy as np
import pytest

from lumen_model.ask import category_mentioned, category_named, load_asker, resolve_task
from lumen_model.predict import predict
from pipelines.evaluation import refcoco_expressions

CATS = [{"id": 1, "name": "person"}, {"id": 2, "name": "circle"}, {"id": 3, "name": "square"},
        {"id": 4, "name": "triangle"}, {"id": 5, "name": "star"}]


def test_typed_text_picks_the_task_and_the_category():
    assert resolve_task("what colour is the triangle?") == "vqa"
    assert resolve_task("where is the star?") == "grounding"  # a place is a box, not an answer
    assert resolve_task("every square") == "detection" and resolve_task("All the people") == "detection"
    assert resolve_task("the star left of the person") == "grounding"
    assert resolve_task("the star", "referring_segmentation") == "referring_segmentation"
    assert category_named("every square", CATS)["id"] == 3
    assert category_named("all the people", CATS)["id"] == 1
    assert category_named("squares", CATS)["id"] == 3 and category_named("boats", CATS) is None
    assert category_mentioned("the star left of the person", CATS)["name"] == "star"  # the head noun comes first
    assert category_mentioned("the big red thing", CATS) is None


@pytest.fixture(scope="module")
def val_jobs(sample_data_dir, tmp_path_factory):
    """3 val images (a COCO json naming them), 4 referring expressions and 3 questions."""
    root = tmp_path_factory.mktemp("ask")
    data = json.loads((sample_data_dir / "coco/annotations/instances_val.json").read_text())
    data["images"] = data["images"][:3]
    keep = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    (root / "val3.json").write_text(json.dumps(data))
    (root / "expr.json").write_text(json.dumps(refcoco_expressions(sample_data_dir / "refcoco", "val")[:4]))
    q = json.loads((sample_data_dir / "vqa/v2_OpenEnded_mscoco_val_questions.json").read_text())
    q["questions"] = q["questions"][:3]
    (root / "q.json").write_text(json.dumps(q))
    return root, data


def _by_key(results, key):
    out = defaultdict(list)
    for r in results:
        out[key(r)].append(r)
    return out


def test_ask_answers_exactly_what_predict_writes(tiny_stage2, sample_data_dir, val_jobs, tmp_path):
    """Same image, same instruction: the same boxes, scores, masks, keypoints and answers as `lumen predict`,
    one image at a time on both sides. (Against predict's batches of 16 a box can move by 0.01 px with 2 torch
    threads: a batched matmul sums in another order; bench/bench_ask.py reports that comparison.)"""
    root, data = val_jobs
    images = sample_data_dir / "coco/images"
    asker = load_asker(tiny_stage2[0])
    path_of = {im["id"]: str(images / im["file_name"]) for im in data["images"]}
    for task in ("detection", "instance_segmentation"):
        predict(tiny_stage2[0], task, images, tmp_path / f"{task}.json", annotations=root / "val3.json", batch_size=1,
                progress=False)
        want = _by_key(json.loads((tmp_path / f"{task}.json").read_text()), lambda r: (r["image_id"], r["category_id"]))
        for iid, path in path_of.items():
            for c in data["categories"]:
                a = asker.ask(path, f"every {c['name']}", task)
                rows = want.get((iid, c["id"]), [])
                assert a.to_json()["boxes"] == [r["bbox"] for r in rows], (task, iid, c)
                assert a.to_json()["scores"] == [r["score"] for r in rows]
                if task == "instance_segmentation":
                    assert a.masks == [r["segmentation"] for r in rows]
    kp_file = sample_data_dir / "coco/annotations/person_keypoints_val.json"
    # batch size 1: the pose head's near-flat maps of a briefly trained model let a batch's float rounding move a
    # keypoint's quarter-pixel step (boxes and scores agree at any batch size); one at a time, all of it is equal
    predict(tiny_stage2[0], "pose", images, tmp_path / "pose.json", annotations=kp_file, max_images=2, batch_size=1,
            progress=False)
    kp_images = json.loads(kp_file.read_text())["images"][:2]
    want = _by_key(json.loads((tmp_path / "pose.json").read_text()), lambda r: r["image_id"])
    for im in kp_images:
        j = asker.ask(str(images / im["file_name"]), "people", "pose").to_json()
        assert (j["boxes"], j["scores"], j["keypoints"]) == ([r["bbox"] for r in want.get(im["id"], [])],
                                                             [r["score"] for r in want.get(im["id"], [])],
                                                             [r["keypoints"] for r in want.get(im["id"], [])])
    predict(tiny_stage2[0], "referring_segmentation", images, tmp_path / "rseg.json", expressions=root / "expr.json",
            batch_size=1, progress=False)
    want = {r["sent_id"]: r for r in json.loads((tmp_path / "rseg.json").read_text())}
    for e in json.loads((root / "expr.json").read_text()):
        a = asker.ask(str(images / e["file_name"]), e["expression"], "referring_segmentation")
        r = want[e["sent_id"]]
        j = a.to_json()
        assert (j["boxes"], j["scores"], a.masks) == ([r["bbox"]], [r["score"]], [r["segmentation"]])
    predict(tiny_stage2[0], "vqa", images, tmp_path / "vqa.json", questions=root / "q.json", batch_size=1,
            progress=False)
    answers = {r["question_id"]: r["answer"] for r in json.loads((tmp_path / "vqa.json").read_text())}
    for q in json.loads((root / "q.json").read_text())["questions"]:
        a = asker.ask(str(images / f"{q['image_id']:012d}.jpg"), q["question"], "auto")
        assert a.task == "vqa" and a.text == answers[q["question_id"]]


def test_the_answer_carries_the_heatmap_at_image_size(tiny_stage2, sample_data_dir, val_jobs):
    root, data = val_jobs
    im = data["images"][0]
    a = load_asker(tiny_stage2[0]).ask(str(sample_data_dir / "coco/images" / im["file_name"]), "the circle")
    assert a.task == "grounding" and len(a.boxes) == 1
    heat = a.heatmap()
    assert heat.shape == (im["height"], im["width"]) and heat.dtype == np.float32
    assert 0.0 <= heat.min() <= heat.max() <= 1.0
    assert {"model_ms", "decode_ms", "heatmap_ms", "total_ms"} <= set(a.timings)
    peaks = a.peaks(threshold=0.0)  # every local maximum inside the image
    assert peaks and all(0 <= x < im["width"] and 0 <= y < im["height"] for x, y, _ in peaks)


def test_the_model_is_loaded_once_and_again_when_its_weights_change(tiny_stage2, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_stage2[0], ckpt)
    first = load_asker(ckpt)
    assert load_asker(ckpt) is first and load_asker(str(ckpt) + "/") is first
    st = (ckpt / "model.safetensors").stat()
    os.utime(ckpt / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten in place
    assert load_asker(ckpt) is not first


def _lumen(*args):
    return subprocess.run([".venv/bin/lumen", "ask", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_lumen_ask_prints_json_and_saves_the_heatmap(tiny_stage2, sample_data_dir, val_jobs, tmp_path):
    root, data = val_jobs
    im = data["images"][0]
    proc = _lumen("--checkpoint", tiny_stage2[0], "--image", sample_data_dir / "coco/images" / im["file_name"],
                  "--instruction", "every square", "--task", "instance_segmentation", "--heatmap", tmp_path / "h.png")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["task"] == "instance_segmentation" and out["category"] == "square" and out["typed"] == "every square"
    assert len(out["boxes"]) == len(out["scores"]) == len(out["masks"])
    assert out["heatmap"]["file"] == str(tmp_path / "h.png")
    assert cv2.imread(str(tmp_path / "h.png"), cv2.IMREAD_UNCHANGED).shape == (im["height"], im["width"])
    # --skip-box: an object already labeled; asked for one object, the answer is another one (or none)
    path = sample_data_dir / "coco/images" / im["file_name"]
    first = [float(v) for v in load_asker(tiny_stage2[0]).ask(str(path), "the star", "grounding").boxes[0]]
    proc = _lumen("--checkpoint", tiny_stage2[0], "--image", path, "--instruction", "the star", "--task", "grounding",
                  "--skip-box", ",".join(map(str, first)), "--skip-box", "0,0,1,1")
    assert proc.returncode == 0, proc.stderr
    want = load_asker(tiny_stage2[0]).ask(str(path), "the star", "grounding", skip_boxes=[first, [0, 0, 1, 1]])
    assert json.loads(proc.stdout)["boxes"] == want.to_json()["boxes"]


@pytest.mark.slow  # five CLI processes, each importing torch: ~45 s on the loaded machine
def test_lumen_ask_says_what_is_wrong_in_one_line(tiny_stage2, sample_data_dir, val_jobs, tmp_path):
    root, data = val_jobs
    image = sample_data_dir / "coco/images" / data["images"][0]["file_name"]
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    ck = tiny_stage2[0]
    cases = [((tmp_path / "nope", image, "x"), "checkpoint folder not found"),
             ((ck, tmp_path / "no.jpg", "x"), "image not found"),
             ((ck, tmp_path / "broken.jpg", "x"), "not readable"),
             ((ck, image, "   "), "instruction is empty"),
             ((ck, image, "x" * 400), "characters long")]
    for (checkpoint, img, text), words in cases:
        proc = _lumen("--checkpoint", checkpoint, "--image", img, "--instruction", text)
        errors = [line for line in proc.stderr.splitlines() if "error" in line]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(errors) == 1 and words in errors[0] and errors[0].startswith("lumen ask: error: ask: "), errors
    proc = _lumen("--checkpoint", ck, "--image", image, "--instruction", "the star", "--skip-box", "1,2,3")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument --skip-box: expected X,Y,W,H" in proc.stderr.strip().splitlines()[-1], proc.stderr


def test_off_boxes_keeps_the_candidates_on_no_labeled_object():
    from lumen_model.answers import off_boxes

    boxes = np.array([[0, 0, 10, 10], [100, 100, 10, 10], [2, 0, 10, 10], [0, 0, 10, 30]], dtype=float)
    # IoU with the labeled box [0, 0, 10, 10]: 1.0, 0.0, 80/120 = 0.67, 100/300 = 0.33
    assert off_boxes(boxes, [[0, 0, 10, 10]]).tolist() == [1, 3]
    assert off_boxes(boxes, []).tolist() == [0, 1, 2, 3] and off_boxes(boxes[:0], [[0, 0, 1, 1]]).tolist() == []


def test_asked_for_one_object_it_steps_over_the_objects_already_labeled(tiny_stage2, sample_data_dir, val_jobs):
    """A labeler asks for a missed object: with `skip_boxes` (what the image already has labels for) the answer
    is the best candidate that is none of them; without, or with none, the answer is unchanged; tasks that find
    every object of a kind ignore it."""
    from lumen_model.answers import off_boxes

    def same(x, y):  # everything but the timings
        jx, jy = x.to_json(), y.to_json()
        return {k: v for k, v in jx.items() if k != "timings_ms"} == {k: v for k, v in jy.items() if k != "timings_ms"}

    root, data = val_jobs
    images = sample_data_dir / "coco/images"
    asker = load_asker(tiny_stage2[0])
    for e in json.loads((root / "expr.json").read_text()):
        path = str(images / e["file_name"])
        a = asker.ask(path, e["expression"], "referring_segmentation")
        assert same(asker.ask(path, e["expression"], "referring_segmentation", skip_boxes=[]), a)
        far = [[0.0, 0.0, 1.0, 1.0]]  # a labeled object on no candidate: nothing changes
        assert same(asker.ask(path, e["expression"], "referring_segmentation", skip_boxes=far), a)
        first = [float(v) for v in a.boxes[0]]
        b = asker.ask(path, e["expression"], "referring_segmentation", skip_boxes=[first])
        # the next best candidate off the labeled object, or none when every candidate is on it (this briefly
        # trained model's candidates nearly all cover the whole image; bench/bench_loop.py's arm F measures
        # how often a trained model's next candidate is the missed object)
        assert len(b.boxes) <= 1 and len(b.masks or []) == len(b.boxes)
        assert off_boxes(b.boxes, [first]).tolist() == list(range(len(b.boxes))), (e, first, b.boxes)
    every = asker.ask(path, "every square", "detection")
    assert same(asker.ask(path, "every square", "detection", skip_boxes=[first]), every)
