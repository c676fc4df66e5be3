"""VQAv2: questions json + annotations json. Records are questions (`q:<question_id>`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from PIL import Image

from pipelines.errors import InputError
from pipelines.sources.common import Draft, ReadResult, load_json, require_keys


def find_image(images_dir: Path | None, image_id: int, cache: dict) -> tuple[str, int, int] | None:
    """Path and size of a COCO image by id: `<id:012d>.jpg` or `COCO_<subtype>_<id:012d>.jpg`."""
    if image_id in cache:
        return cache[image_id]
    found = None
    if images_dir is not None:
        name = f"{image_id:012d}.jpg"
        candidates = [images_dir / name] + sorted(images_dir.glob(f"COCO_*_{name}"))
        for c in candidates:
            if c.is_file():
                with Image.open(c) as im:
                    found = (str(c.resolve()), im.width, im.height)
                break
    cache[image_id] = found
    return found


def vqa_answer(answers) -> str | None:
    """The most common human answer (ties: alphabetical, so the choice is stable)."""
    texts = [a.get("answer", "").strip().lower() for a in answers or [] if isinstance(a, dict)]
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
    adata = load_json(annotations, dict, "vqav2 annotations")
    require_keys(adata, ("annotations",), annotations, "vqav2 annotations")
    by_qid = {}
    for a in adata["annotations"]:
        if isinstance(a, dict) and "question_id" in a:
            by_qid[a["question_id"]] = a
    images_dir = Path(images_dir) if images_dir else None
    src = str(questions_path)
    drafts, quarantine, cache = [], [], {}
    qid_counts = Counter(q.get("question_id") for q in qdata["questions"] if isinstance(q, dict))
    for pos, q in enumerate(qdata["questions"]):
        rid = f"q:{q.get('question_id')}" if isinstance(q, dict) else f"q:#{pos}"
        if not isinstance(q, dict) or not isinstance(q.get("question"), str) or not q["question"].strip():
            quarantine.append((src, rid, "question has no text"))
            continue
        if qid_counts[q["question_id"]] > 1:
            quarantine.append((src, rid, f"duplicate question id {q['question_id']}"))
            continue
        ann = by_qid.get(q["question_id"])
        if ann is None:
            quarantine.append((src, rid, "question without annotations"))
            continue
        answer = vqa_answer(ann.get("answers")) or (ann.get("multiple_choice_answer") or "").strip() or None
        if answer is None:
            quarantine.append((src, rid, "annotation has no answers"))
            continue
        image = find_image(images_dir, q.get("image_id"), cache) if isinstance(q.get("image_id"), int) else None
        if images_dir is not None and image is None:
            quarantine.append((src, rid, f"image {q.get('image_id')} not found in {images_dir}"))
            continue
        path, w, h = image or (f"{q.get('image_id', 0):012d}.jpg", 0, 0)
        drafts.append(Draft(task="vqa", image_id=q.get("image_id"), image_path=path, width=w, height=h,
                            instruction=q["question"].strip(), answer=answer, source_ids=[rid]))
    return ReadResult(drafts, quarantine, len(qdata["questions"]))
