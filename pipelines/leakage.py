"""No evaluation image ever trains: training images are compared with evaluation images by content.

A reviewed val image pulled back as `corrections-vNNNN`, or the same picture under another file
name in another source, would let the model be scored on what it trained on. Names and paths do
not tell that; the bytes do. `find_eval_overlap` returns every training image whose file has the
same content (SHA-256) as an evaluation image:

- training side: the rows of shard folders whose split is not an evaluation split (train, all, ...);
- evaluation side: the rows of shard folders in a val/test split (val, test, testA, minival, ...),
  and every image of a COCO json file (e.g. `instances_val.json`, what the evaluation scores on).

Hashing stays cheap: two files can only have the same content when they have the same size, so
only files whose size occurs on both sides are hashed, each distinct file once, and digests are
cached by (path, size, mtime) for the life of the process. The same path on both sides is an
overlap without hashing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import InputError

log = logging.getLogger(__name__)

_EVAL_SPLIT = re.compile(r"^(val|test|minival)", re.IGNORECASE)  # val, val2017, test, testA, testB, minival
_DIGESTS: dict[tuple[str, int, int], str] = {}


def is_eval_split(split) -> bool:
    return bool(split) and bool(_EVAL_SPLIT.match(str(split)))


@dataclass(frozen=True)
class Overlap:
    train_image: str  # a training sample's image file
    eval_image: str  # an evaluation image with the same content
    eval_in: str  # where that evaluation image is: "<shard folder> (split val)" or a COCO json
    sha256: str


def describe_overlap(overlaps: list[Overlap], limit: int = 3) -> str:
    """One line naming the images (the first `limit` of them) and how many there are."""
    pairs = "; ".join(f"{o.train_image} = {o.eval_image} in {o.eval_in}" for o in overlaps[:limit])
    more = f"; and {len(overlaps) - limit} more" if len(overlaps) > limit else ""
    n_train = len({o.train_image for o in overlaps})
    return f"{n_train} training image(s) have the content of an evaluation image: {pairs}{more}"


def _stat(path: str):
    if "://" in path:
        import fsspec

        fs, p = fsspec.core.url_to_fs(path)
        try:
            return int(fs.info(p)["size"]), 0
        except FileNotFoundError:
            return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def file_digest(path: str, size: int, mtime_ns: int) -> str:
    key = (path, size, mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        if "://" in path:
            import fsspec

            with fsspec.open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        else:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def shard_images(shard_dirs, *, eval_side: bool, train_splits=None) -> dict[str, str]:
    """image path -> where it is, for the rows of one side (reads two columns only)."""
    from pipelines.shards import read_table

    out: dict[str, str] = {}
    for d in shard_dirs:
        table = read_table([d], columns=["split", "image_path"])
        for split, path in set(zip(table["split"].to_pylist(), table["image_path"].to_pylist())):
            if not path:
                continue
            on_eval = is_eval_split(split)
            wanted = on_eval if eval_side else (not on_eval if train_splits is None else split in train_splits)
            if wanted:
                out.setdefault(path, f"{d} (split {split})")
    return out


def json_images(coco_json, images_dir=None) -> dict[str, str]:
    """image path -> the json, for every image a COCO json lists (images resolved like `lumen convert`)."""
    from pipelines.convert import _default_images_dir
    from pipelines.sources.common import load_json

    coco_json = Path(coco_json)
    data = load_json(coco_json, dict, "leak check")
    folder = Path(images_dir) if images_dir else _default_images_dir("coco", coco_json)
    if folder is None:
        raise InputError(f"leak check: no images folder found for {coco_json}; give images_dir")
    return {str((folder / im["file_name"]).resolve()): str(coco_json) for im in data.get("images", [])
            if isinstance(im, dict) and isinstance(im.get("file_name"), str)}


def _eval_images(eval_dirs_or_files, images_dir) -> dict[str, str]:
    out: dict[str, str] = {}
    for x in eval_dirs_or_files:
        if str(x).endswith(".json"):
            for path, where in json_images(x, images_dir).items():
                out.setdefault(path, where)
        else:
            for path, where in shard_images([x], eval_side=True).items():
                out.setdefault(path, where)
    return out


def find_eval_overlap(train_dirs, eval_dirs_or_files, *, images_dir=None, train_splits=None) -> list[Overlap]:
    """Every training image of `train_dirs` whose content equals an evaluation image's.

    `eval_dirs_or_files`: shard folders (their val/test-split rows count) and/or COCO json files
    (all their images count; `images_dir` resolves their file names, default as `lumen convert`
    finds it). `train_splits`: which splits train (default: every split that is not val/test).
    Sorted by training image; one entry per (training image, evaluation image) pair.
    """
    train = shard_images(train_dirs, eval_side=False, train_splits=train_splits)
    evals = _eval_images(eval_dirs_or_files, images_dir)
    if not train or not evals:
        return []
    found: list[Overlap] = []
    stats = {}
    missing = 0
    for p in {*train, *evals}:
        st = _stat(p)
        if st is None:
            missing += 1
        else:
            stats[p] = st
    if missing:
        log.warning("leak check: %d image file(s) not found, not compared (training reads them and will say so)", missing)
    eval_by_size: dict[int, list[str]] = defaultdict(list)
    for p in evals:
        if p in stats:
            eval_by_size[stats[p][0]].append(p)
    for tp in sorted(train):
        if tp not in stats:
            continue
        size, mtime = stats[tp]
        candidates = eval_by_size.get(size, [])
        if not candidates:
            continue
        digest = file_digest(tp, size, mtime)
        for ep in candidates:
            if ep == tp or file_digest(ep, *stats[ep]) == digest:
                found.append(Overlap(tp, ep, evals[ep], digest))
    return found
