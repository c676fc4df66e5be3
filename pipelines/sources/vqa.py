"""VQAv2: questions json + annotations json. Records are questions (`q:<question_id>`)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from pipelines.errors import InputError
from pipelines.gc_pause import gc_paused
from pipelines.images import ImageProblem, ImageTooLarge, image_size
from pipelines.sources.common import Draft, ReadResult, load_json, require_keys
from pipelines.sources.json_stream import stream_object_array


def find_image(images_dir: Path | None, image_id: int, cache: dict) -> tuple[str, int, int] | str | None:
    """Path and size of a COCO image by id: `<id:012d>.jpg` or `COCO_<subtype>_<id:012d>.jpg`
    (None: not there or no image; a string: why it cannot be used, e.g. too many pixels)."""
    if image_id in cache:
        return cache[image_id]
    found = None
    if images_dir is not None:
        name = f"{image_id:012d}.jpg"
        plain = images_dir / name
        candidates = [plain] if plain.is_file() else [images_dir / n for n in _prefixed_names(images_dir, cache).get(name, [])]
        for c in candidates:
            if c.is_file():
                try:  # the header only
                    found = (str(c.resolve()), *image_size(c))
                except ImageTooLarge as exc:
                    found = str(exc)
                except ImageProblem:  # unreadable: treated as missing, the question is quarantined
                    pass
                break
    cache[image_id] = found
    return found


def _prefixed_names(images_dir: Path, cache: dict) -> dict[str, list[str]]:
    """`<id:012d>.jpg` -> the sorted `COCO_*_<id:012d>.jpg` names in the folder, listed once (a glob
    per image over a train2014-sized folder would make the read quadratic)."""
    key = ("prefixed", images_dir)
    if key not in cache:
        names: dict[str, list[str]] = {}
        with os.scandir(images_dir) as it:
            for e in it:
                if e.name.startswith("COCO_") and e.name.count("_") >= 2:
                    names.setdefault(e.name.rsplit("_", 1)[1], []).append(e.name)
        cache[key] = {k: sorted(v) for k, v in names.items()}
    return cache[key]


def vqa_answer(answers) -> str | None:
    """The most common human answer (ties: alphabetical, so the choice is stable)."""
    texts = [_text(a.get("answer")) for a in (answers if isinstance(answers, list) else []) if isinstance(a, dict)]
    texts = [t for t in texts if t]
    if not texts:
        return None
    counts = Counter(texts)
    best = max(counts.values())
    return sorted(t for t, n in counts.items() if n == best)[0]


def read_vqav2(questions_path, *, annotations=None, images_dir=None) -> ReadResult:
    if annotations is None:
        raise InputError("vqav2: --annotations (the v2_mscoco_*_annotations.json file) is required")
    qdata = load_json(questions_path, dict, "vqav2 questions")
    require_keys(qdata, ("questions",), questions_path, "vqav2 questions")
    ann_counts, answer_of = _answers_by_question(annotations)
    images_dir = Path(images_dir) if images_dir else None
    src = str(questions_path)
    drafts, quarantine, cache = [], [], {}
    qid_counts = Counter(_key(q.get("question_id")) for q in qdata["questions"] if isinstance(q, dict))
    for pos, q in enumerate(qdata["questions"]):
        qid = _key(q.get("question_id")) if isinstance(q, dict) else None
        rid = f"q:{qid}" if qid is not None else f"q:#{pos}"
        reason = _question_problem(q, qid, qid_counts, ann_counts)
        if reason:
            quarantine.append((src, rid, reason))
            continue
        answer = answer_of[qid]
        if answer is None:
            quarantine.append((src, rid, "annotation has no answers"))
            continue
        image = find_image(images_dir, q["image_id"], cache)
        if images_dir is not None and image is None:
            quarantine.append((src, rid, f"image {q['image_id']} not found in {images_dir}"))
            continue
        if isinstance(image, str):
            quarantine.append((src, rid, image))
            continue
        path, w, h = image or (f"{q['image_id']:012d}.jpg", 0, 0)
        drafts.append(Draft(task="vqa", image_id=q["image_id"], image_path=path, width=w, height=h,
                            instruction=q["question"].strip(), answer=answer, source_ids=[rid]))
    return ReadResult(drafts, quarantine, len(qdata["questions"]))


@gc_paused  # millions of small answer dicts, each dropped as soon as its chunk is reduced
def _answers_by_question(path) -> tuple[Counter, dict]:
    """Per question id: how many annotation entries name it, and the answer of the entry (the last
    one; a question with several is quarantined anyway). VQAv2 train's 4.4M human answers are
    parsed a chunk of annotations at a time and reduced at once, never held all together."""
    data, chunks = stream_object_array(path, "annotations", "vqav2 annotations")
    require_keys(data, ("annotations",), path, "vqav2 annotations")
    counts: Counter = Counter()
    answer_of: dict = {}
    for chunk in chunks:
        for a in chunk:
            if isinstance(a, dict):
                qid = _key(a.get("question_id"))
                counts[qid] += 1
                answer_of[qid] = vqa_answer(a.get("answers")) or _text(a.get("multiple_choice_answer")) or None
    return counts, answer_of


def _key(qid):
    """Question ids as hashable keys (None for missing or unusable ones)."""
    return qid if isinstance(qid, (int, str)) and not isinstance(qid, bool) else None


def _text(v) -> str:
    return v.strip().lower() if isinstance(v, str) else ""


def _question_problem(q, qid, qid_counts, ann_counts) -> str | None:
    if not isinstance(q, dict):
        return "question is not an object"
    if qid is None:
        return "question has no question_id"
    if not isinstance(q.get("question"), str) or not q["question"].strip():
        return "question has no text"
    if qid_counts[qid] > 1:
        return f"duplicate question id {qid} ({qid_counts[qid]} copies)"
    if not isinstance(q.get("image_id"), int) or isinstance(q.get("image_id"), bool):
        return "question has no integer image_id"
    if ann_counts[qid] == 0:
        return "question without annotations"
    if ann_counts[qid] > 1:
        return f"question has {ann_counts[qid]} annotation entries (which one is right is unknowable)"
    return None
