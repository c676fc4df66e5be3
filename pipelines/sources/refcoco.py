"""RefCOCO / RefCOCO+ / RefCOCOg: `refs(<split_by>).p` + `instances.json` in one folder.

Records are sentences (`ref:<ref_id>/sent:<sent_id>`) of the refs in the selected split; each gives
one grounding and one referring-segmentation sample.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipelines.errors import InputError
from pipelines.images import size_problem
from pipelines.instructions import answer_for, instruction_for
from pipelines.sources.coco import image_path, index_coco, to_rle
from pipelines.sources.common import Draft, ReadResult, bad_box, bad_segmentation, box_image_problem
from pipelines.sources.safe_pickle import load_plain_pickle

SPLIT_BYS = ("unc", "google", "umd")


def read_refcoco(folder, *, split_by="unc", split=None, images_dir=None, paraphrase=False, seed=0) -> ReadResult:
    folder = Path(folder)
    if split_by not in SPLIT_BYS:
        raise InputError(f"refcoco: --split-by must be one of {', '.join(SPLIT_BYS)}, got {split_by!r}")
    if not folder.is_dir():
        raise InputError(f"refcoco: folder not found: {folder}")
    refs_path = folder / f"refs({split_by}).p"
    refs = load_plain_pickle(refs_path)
    if not isinstance(refs, list):
        raise InputError(f"refcoco: {refs_path.name} must hold a list of refs, found {type(refs).__name__}")
    index = index_coco(folder / "instances.json", "refcoco")
    # ids that are lists or dicts cannot be looked up (nor counted): such records are unusable, not a traceback
    ann_counts = Counter(_key(a.get("id")) for a in index.data["annotations"] if isinstance(a, dict))
    anns = {a["id"]: a for a in index.data["annotations"] if isinstance(a, dict) and _key(a.get("id")) is not None
            and ann_counts[a["id"]] == 1}
    dup_anns = {i for i, n in ann_counts.items() if n > 1 and i is not None}
    ref_counts = Counter(_key(r.get("ref_id")) for r in refs if isinstance(r, dict))
    if images_dir is None and (folder.parent / "coco" / "images").is_dir():
        images_dir = folder.parent / "coco" / "images"
    images_dir = Path(images_dir) if images_dir else None
    src = str(refs_path)
    drafts: list[Draft] = []
    quarantine: list[tuple[str, str, str]] = []
    read = 0
    checked: dict = {}  # image id -> why its file cannot be used (None: it can), each image's header read once
    for pos, ref in enumerate(refs):
        if not isinstance(ref, dict):
            read += 1
            quarantine.append((src, f"ref:#{pos}", "ref is not a dict"))
            continue
        if split is not None and ref.get("split") != split:
            continue
        sentences = ref.get("sentences") if isinstance(ref.get("sentences"), list) else []
        rid = _key(ref.get("ref_id"))
        if not sentences:
            read += 1
            quarantine.append((src, f"ref:{rid}", "ref has no sentences"))
            continue
        reason = _ref_problem(ref, anns, dup_anns, ref_counts, index, images_dir, checked)
        sent_counts = Counter(_key(s.get("sent_id")) if isinstance(s, dict) else None for s in sentences)
        for s in sentences:
            read += 1
            sid = _key(s.get("sent_id")) if isinstance(s, dict) else None
            record = f"ref:{rid}/sent:{sid}"
            text = _sentence_text(s)
            why = reason
            if why is None and sid is None:
                why = "sentence has no sent_id"
            if why is None and sent_counts[sid] > 1:
                why = f"duplicate sent_id {sid} in ref {rid} ({sent_counts[sid]} copies)"
            if why is None and not text:
                why = "sentence is empty"
            if why:
                quarantine.append((src, record, why))
                continue
            ann = anns[ref["ann_id"]]
            im = index.images[ref["image_id"]]
            mask = to_rle(ann["segmentation"], im["height"], im["width"]) if ann.get("segmentation") else None
            box = [[float(v) for v in ann["bbox"]]]  # shared by both drafts: rendered once
            for task in ("grounding", "referring_segmentation"):
                drafts.append(Draft(
                    task=task, image_id=im["id"], image_path=image_path(images_dir, im["file_name"]),
                    width=im["width"], height=im["height"],
                    instruction=instruction_for(task, expression=text, paraphrase=paraphrase, key=record, seed=seed),
                    answer=answer_for(task, True), source_ids=[record], category=index.cats[ann["category_id"]]["name"],
                    category_id=ann["category_id"], expression=text, boxes=box,
                    masks=[mask] if mask is not None else None))
    return ReadResult(drafts, quarantine, read)


def _sentence_text(s) -> str:
    if not isinstance(s, dict):
        return ""
    text = s.get("sent") or s.get("raw") or ""
    return " ".join(text.split()) if isinstance(text, str) else ""


def _key(v):
    """An id usable as a dict key, or None (a list or dict from a hostile file)."""
    try:
        hash(v)
    except TypeError:
        return None
    return v


def _ref_problem(ref, anns, dup_anns, ref_counts, index, images_dir, checked: dict) -> str | None:
    """Why no sentence of this ref can be used, or None."""
    if _key(ref.get("ref_id")) is None:
        return "ref has no ref_id"
    if ref_counts[ref["ref_id"]] > 1:
        return f"duplicate ref id {ref['ref_id']} ({ref_counts[ref['ref_id']]} copies)"
    if _key(ref.get("ann_id")) is None or _key(ref.get("image_id")) is None:
        return "ref ann_id or image_id is not an id"
    if ref.get("ann_id") in dup_anns:
        return f"duplicate annotation id {ref['ann_id']} in instances.json"
    if ref.get("ann_id") not in anns:
        return f"unknown annotation id {ref.get('ann_id')}"
    ann = anns[ref["ann_id"]]
    if ref.get("image_id") not in index.images or ann.get("image_id") != ref.get("image_id"):
        return f"unknown image id {ref.get('image_id')} (or not the annotation's image)"
    if ref["image_id"] in index.bad_images:
        return index.bad_images[ref["image_id"]]
    if _key(ann.get("category_id")) is None or ann["category_id"] not in index.cats \
            or ann["category_id"] in index.bad_cats:
        return f"unknown category id {ann.get('category_id')!r}"
    if ann.get("iscrowd"):
        return f"annotation {ann['id']} is a crowd region, not one object"
    problem = bad_box(ann.get("bbox"))
    if problem:
        return problem
    im = index.images[ref["image_id"]]
    problem = box_image_problem(ann["bbox"], im["width"], im["height"])
    if problem:
        return problem
    if ann.get("segmentation"):
        problem = bad_segmentation(ann["segmentation"], im["height"], im["width"])
        if problem:
            return problem
    if images_dir is not None and not (images_dir / im["file_name"]).is_file():
        return f"image file not found: {im['file_name']}"
    if images_dir is not None:
        if im["id"] not in checked:
            checked[im["id"]] = size_problem(images_dir / im["file_name"], im["width"], im["height"])
        return checked[im["id"]]
    return None
