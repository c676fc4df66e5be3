"""VQAv2 (questions are records) and LLaVA (human->gpt turns are records) readers."""

import json

import cv2
import numpy as np
import pytest

from pipelines.checks import check_accounting
from pipelines.convert import convert_source
from pipelines.errors import InputError
from pipelines.shards import read_quarantine, read_table


def _vqa(tmp_path, questions, annotations, **kw):
    (tmp_path / "q.json").write_text(json.dumps({"questions": questions}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": annotations}))
    m = convert_source("vqav2", tmp_path / "q.json", tmp_path / "vqa", annotations=tmp_path / "a.json",
                       progress=False, **kw)
    q = [(r["record_id"], r["reason"]) for r in read_quarantine(tmp_path / "vqa").to_pylist()]
    return m, read_table(tmp_path / "vqa").to_pylist(), q


def _answers(*texts):
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]


def test_vqa_takes_the_most_common_answer(tmp_path):
    qs = [{"image_id": 1, "question": "How many circles? ", "question_id": 10},
          {"image_id": 1, "question": "What color?", "question_id": 11}]
    anns = [{"question_id": 10, "image_id": 1, "answers": _answers("2", "two", "2", "3")},
            {"question_id": 11, "image_id": 1, "answers": _answers("Red", "blue", "red ", "blue")}]
    m, rows, q = _vqa(tmp_path, qs, anns)
    assert not q and [r["answer"] for r in rows] == ["2", "blue"]  # a tie goes to the alphabetically first
    r = rows[0]
    assert r["task"] == "vqa" and r["instruction"] == "How many circles?" and r["source_ids"] == ["q:10"]
    assert r["heatmap"] is None and r["boxes"] == [] and r["centers"] == []


def test_vqa_bad_questions_are_quarantined(tmp_path):
    qs = [{"image_id": 1, "question": "ok?", "question_id": 1}, {"image_id": 1, "question": "lonely?", "question_id": 2},
          {"image_id": 1, "question": "dup?", "question_id": 3}, {"image_id": 1, "question": "dup?", "question_id": 3},
          {"image_id": 1, "question": "", "question_id": 4}, {"image_id": "x", "question": "id?", "question_id": 5},
          {"image_id": 1, "question": "two annotations?", "question_id": 6}, {"question": "no id"},
          {"image_id": 1, "question": "no answers?", "question_id": 7}]
    anns = [{"question_id": i, "image_id": 1, "answers": _answers("yes")} for i in (1, 3, 4, 5, 6, 6)]
    anns.append({"question_id": 7, "image_id": 1, "answers": []})
    m, rows, q = _vqa(tmp_path, qs, anns)
    reasons = dict(q)
    assert reasons["q:2"] == "question without annotations"
    assert [rid for rid, _ in q].count("q:3") == 2 and reasons["q:3"].startswith("duplicate question id 3")
    assert reasons["q:4"] == "question has no text" and reasons["q:5"] == "question has no integer image_id"
    assert reasons["q:6"].startswith("question has 2 annotation entries")
    assert reasons["q:#7"] == "question has no question_id" and reasons["q:7"] == "annotation has no answers"
    assert [r["source_ids"] for r in rows] == [["q:1"]]
    assert m["counts"]["records_read"] == 9 and check_accounting(tmp_path / "vqa")[0]


def test_vqa_annotations_read_in_chunks_give_the_same_shards(tmp_path, monkeypatch):
    """The annotations file is parsed a few elements at a time (VQAv2 train: 4.4M answers); cut into
    many chunks, the samples and quarantine are those of one chunk."""
    from pipelines.sources import json_stream

    qs = [{"image_id": 1, "question": f"q{i}?", "question_id": i} for i in range(40)]
    anns = [{"question_id": i, "image_id": 1, "answers": _answers(*(["yes", "no", "no"] if i % 3 else ["two"]))}
            for i in range(40) if i != 7] + [{"question_id": 9, "image_id": 1, "answers": _answers("x")}]
    (tmp_path / "one").mkdir(), (tmp_path / "many").mkdir()
    m1, rows1, q1 = _vqa(tmp_path / "one", qs, anns)
    monkeypatch.setattr(json_stream, "CHUNK_BYTES", 300)
    m2, rows2, q2 = _vqa(tmp_path / "many", qs, anns)
    assert rows1 == rows2 and q1 == q2 and m1["counts"] == m2["counts"]
    assert dict(q1) == {"q:7": "question without annotations", "q:9": "question has 2 annotation entries "
                        "(which one is right is unknowable)"}


def test_vqa_needs_its_annotations_file(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps({"questions": []}))
    with pytest.raises(InputError, match="--annotations"):
        convert_source("vqav2", tmp_path / "q.json", tmp_path / "out", progress=False)
    (tmp_path / "a.json").write_text(json.dumps({"nothing": []}))
    with pytest.raises(InputError, match="no list 'annotations'"):
        convert_source("vqav2", tmp_path / "q.json", tmp_path / "out", annotations=tmp_path / "a.json", progress=False)


def test_llava_keeps_turns_and_strips_the_image_marker(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.zeros((30, 40, 3), np.uint8))
    data = [
        {"id": "a", "image": "a.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is here?"}, {"from": "gpt", "value": "Two circles."},
            {"from": "human", "value": "Which color?"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Unanswered?"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "No image?"}, {"from": "gpt", "value": "Right."}]},
        {"id": "c", "image": "missing.jpg", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
        {"id": "d", "image": "a.jpg", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]},
        {"id": "d", "image": "a.jpg", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "z"}]},
        {"id": "e", "image": "a.jpg", "conversations": []},
    ]
    (tmp_path / "llava.json").write_text(json.dumps(data))
    m = convert_source("llava", tmp_path / "llava.json", tmp_path / "out", images_dir=images, progress=False)
    rows = read_table(tmp_path / "out").to_pylist()
    assert [(r["instruction"], r["answer"]) for r in rows] == [("What is here?", "Two circles."), ("Which color?", "Red.")]
    assert [r["source_ids"] for r in rows] == [["llava:a/turn:0"], ["llava:a/turn:1"]]
    assert rows[0]["image_width"] == 40 and rows[0]["image_height"] == 30 and rows[0]["task"] == "vqa"
    q = [(r["record_id"], r["reason"]) for r in read_quarantine(tmp_path / "out").to_pylist()]
    reasons = dict(q)
    assert reasons["llava:a/turn:2"] == "turn without a gpt answer"
    assert reasons["llava:b/turn:0"] == "conversation without an image"
    assert reasons["llava:c/turn:0"].startswith("image file not found")
    assert [rid for rid, _ in q].count("llava:d/turn:0") == 2 and "duplicate conversation id d" in reasons["llava:d/turn:0"]
    assert reasons["llava:e"] == "record has no conversation"
    assert m["counts"]["records_read"] == 8 and check_accounting(tmp_path / "out")[0]


def test_llava_file_must_be_a_list(tmp_path):
    (tmp_path / "llava.json").write_text(json.dumps({"conversations": []}))
    with pytest.raises(InputError, match="must hold a JSON list at the top level, found dict"):
        convert_source("llava", tmp_path / "llava.json", tmp_path / "out", progress=False)
