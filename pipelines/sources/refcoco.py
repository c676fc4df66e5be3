"""RefCOCO / RefCOCO+ / RefCOCOg: `refs(<split_by>).p` + `instances.json` in one folder.

Records are sentences (`ref:<ref_id>/sent:<sent_id>`) of the refs in the selected split; each gives
one grounding and one referring-segmentation sample.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.errors import InputError
from pipelines.instructions import answer_for, instruction_for
from pipelines.sources.coco import image_path, index_coco, to_rle
from pipelines.sources.common import Draft, ReadResult, bad_box, bad_segmentation
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
    data, images, cats = index_coco(folder / "instances.json", "refcoco")
    anns, dup = {}, set()
    for a in data["annotations"]:
        if isinstance(a, dict) and "id" in a:
            (dup.add(a["id"]) if a["id"] in anns else None)
            anns[a["id"]] = a
    if images_dir is None and (folder.parent / "coco" / "images").is_dir():
        images_dir = folder.parent / "coco" / "images"
    images_dir = Path(images_dir) if images_dir else None
    src = str(refs_path)
    drafts: list[Draft] = []
    quarantine: list[tuple[str, str, str]] = []
    read = 0
    for pos, ref in enumerate(refs):
        if not isinstance(ref, dict):
            read += 1
            quarantine.append((src, f"ref:#{pos}", "ref is not a dict"))
            continue
        if split is not None and ref.get("split") != split:
            continue
        sentences = ref.get("sentences") if isinstance(ref.get("sentences"), list) else []
        rid = ref.get("ref_id")
        if not sentences:
            read += 1
            quarantine.append((src, f"ref:{rid}", "ref has no sentences"))
            continue
        reason = _ref_problem(ref, anns, dup, images, cats)
        for s in sentences:
            read += 1
            sid = s.get("sent_id") if isinstance(s, dict) else None
            record = f"ref:{rid}/sent:{sid}"
            text = (s.get("sent") or s.get("raw") or "").strip() if isinstance(s, dict) else ""
            why = reason or (None if text else "sentence is empty")
            if why is None and images_dir is not None and not (images_dir / images[ref["image_id"]]["file_name"]).is_file():
                why = f"image file not found: {images[ref['image_id']]['file_name']}"
            if why:
                quarantine.append((src, record, why))
                continue
            ann = anns[ref["ann_id"]]
            im = images[ref["image_id"]]
            mask = to_rle(ann["segmentation"], im["height"], im["width"]) if ann.get("segmentation") else None
            for task in ("grounding", "referring_segmentation"):
                drafts.append(Draft(
                    task=task, image_id=im["id"], image_path=image_path(images_dir, im["file_name"]),
                    width=im["width"], height=im["height"],
                    instruction=instruction_for(task, expression=text, paraphrase=paraphrase, key=record, seed=seed),
                    answer=answer_for(task, True), source_ids=[record], category=cats[ann["category_id"]]["name"],
                    category_id=ann["category_id"], expression=text, boxes=[[float(v) for v in ann["bbox"]]],
                    masks=[mask] if mask is not None else None))
    return ReadResult(drafts, quarantine, read)


def _ref_problem(ref, anns, dup, images, cats) -> str | None:
    if ref.get("ann_id") not in anns:
        return f"unknown annotation id {ref.get('ann_id')}"
    if ref["ann_id"] in dup:
        return f"duplicate annotation id {ref['ann_id']} in instances.json"
    ann = anns[ref["ann_id"]]
    if ref.get("image_id") not in images or ann.get("image_id") != ref.get("image_id"):
        return f"unknown image id {ref.get('image_id')} (or not the annotation's image)"
    if ann.get("category_id") not in cats:
        return f"unknown category id {ann.get('category_id')}"
    problem = bad_box(ann.get("bbox"))
    if problem:
        return problem
    if ann.get("segmentation"):
        return bad_segmentation(ann["segmentation"])
    return None
