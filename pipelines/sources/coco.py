"""COCO instances (detection, instance segmentation) and person keypoints (pose).

Records (what `records_read` counts and the accounting proves):
- instances file: every entry of `annotations` (`ann:<id>`, `ann:#<position>` when it has no id),
  plus every entry of `images` that no annotation refers to (`img:<id>`): such an image yields
  negative samples only.
- keypoints file: every entry of `annotations`. Images without people are no pose input (the
  keypoints file lists every image), so they are not records there.

Crowd regions (iscrowd=1) are not instances: they travel as ignore regions (`ignore_boxes`,
`ignore_masks`) on every sample of their image, and are accounted on its first sample.
Negatives never name a category that any annotation of the image has (crowd or quarantined
ones included), so "there is none" is never said of something that is there.
"""

from __future__ import annotations

import itertools
import math
import random
import stat
import multiprocessing as mp
import os
from collections import Counter, defaultdict, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from pycocotools import mask as mask_utils

from pipelines.gc_pause import gc_paused
from pipelines.images import size_problem
from pipelines.instructions import answer_for, instruction_for
from pipelines.progress import progress as progress_bar
from pipelines.sources.common import (Draft, LazyUnits, RealPaths, ReadResult, SourcePlan, bad_box,
                                      box_image_problem, image_outside, load_json, polygon_area_problems, polygon_structure_problem, require_keys,
                                      rle_problem, unsafe_image_name)
from pipelines.sources.json_stream import Chunks, stream_object_array
from pipelines.worker_tuning import tune_worker

NUM_KEYPOINTS = 17
IMAGES_PER_UNIT = 1000  # a unit of work for a conversion worker: ~7k annotations of train2017
AREA_CHUNK = 50_000  # annotations per vectorized polygon-area pass


@dataclass
class CocoIndex:
    """A loaded COCO json with its images and categories by id, and the ids that are unusable."""

    data: dict
    images: dict[int, dict]
    cats: dict[int, dict]
    bad_images: dict[int, str] = field(default_factory=dict)  # id -> why no annotation on it can be used
    bad_cats: dict[int, str] = field(default_factory=dict)


def index_coco(path: str | Path, what: str) -> CocoIndex:
    """The whole file parsed (small files: RefCOCO's instances)."""
    data = load_json(path, dict, what)
    require_keys(data, ("images", "annotations", "categories"), path, what)
    return _index(data)


def stream_coco(path: str | Path, what: str) -> tuple[CocoIndex, Iterator[list]]:
    """Images and categories indexed, the annotations still to come: (index with
    `data["annotations"] == []`, chunks of annotations in file order)."""
    data, chunks = stream_object_array(path, "annotations", what)
    require_keys(data, ("images", "annotations", "categories"), path, what)
    return _index(data), chunks


def _index(data: dict) -> CocoIndex:
    image_ids = Counter(im["id"] for im in data["images"] if isinstance(im, dict) and isinstance(im.get("id"), int))
    cat_ids = Counter(c["id"] for c in data["categories"] if isinstance(c, dict) and _usable_id(c.get("id")))
    index = CocoIndex(data, {}, {})
    for im in data["images"]:
        if not isinstance(im, dict) or not isinstance(im.get("id"), int):
            continue
        index.images[im["id"]] = im
        if image_ids[im["id"]] > 1:  # a dict would silently keep one of them
            index.bad_images[im["id"]] = f"image id {im['id']} appears {image_ids[im['id']]} times in 'images'"
        elif not (_positive_int(im.get("width")) and _positive_int(im.get("height"))):
            index.bad_images[im["id"]] = f"image {im['id']} has no valid width/height"
        elif not isinstance(im.get("file_name"), str) or not im["file_name"]:
            index.bad_images[im["id"]] = f"image {im['id']} has no file_name"
        elif unsafe_image_name(im["file_name"]):
            index.bad_images[im["id"]] = unsafe_image_name(im["file_name"])
    for c in data["categories"]:
        if isinstance(c, dict) and _usable_id(c.get("id")) and isinstance(c.get("name"), str):
            index.cats[c["id"]] = c
            if not _int_id(c["id"]):  # the schema's category_id is an integer (a '1' would fail writing it)
                index.bad_cats[c["id"]] = f"category id {c['id']!r} is a {type(c['id']).__name__}, not an integer"
            elif cat_ids[c["id"]] > 1:
                index.bad_cats[c["id"]] = f"category id {c['id']} appears {cat_ids[c['id']]} times in 'categories'"
    return index


def _int_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _rle_dict(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def to_rle(seg, height: int, width: int) -> dict:
    """Polygons or (un)compressed RLE -> one compressed RLE with a str `counts`."""
    return to_rles([seg], height, width)[0]


def to_rles(segs: list, height: int, width: int) -> list[dict | None]:
    """Segmentations of one image -> compressed RLEs (None where there is none).

    All polygons of the image go through pycocotools in one call, then merge per annotation.
    """
    out: list[dict | None] = [None] * len(segs)
    polys, owner = [], []
    for i, seg in enumerate(segs):
        if not seg:
            continue
        if isinstance(seg, list):
            polys += seg
            owner += [i] * len(seg)
        elif isinstance(seg.get("counts"), str):
            out[i] = _rle_dict(seg)
        else:  # uncompressed RLE (counts as a list of run lengths)
            out[i] = _rle_dict(mask_utils.frPyObjects(seg, height, width))
    if polys:
        rles = mask_utils.frPyObjects(polys, height, width)
        parts: dict[int, list] = defaultdict(list)
        for i, rle in zip(owner, rles):
            parts[i].append(rle)
        for i, group in parts.items():
            out[i] = _rle_dict(group[0] if len(group) == 1 else mask_utils.merge(group))
    return out


def image_path(images_dir: Path | None, file_name: str, real_path: RealPaths | None = None) -> str:
    if images_dir is None:
        return file_name
    if real_path:  # it resolves the folder part, so the joined string need not be normalized first
        return real_path(os.path.join(images_dir, file_name))
    return str((images_dir / file_name).resolve())


class _ImageFiles:
    """Whether each image's file exists (checked once per image; always true without images_dir)."""

    def __init__(self, images_dir: Path | None):
        self.images_dir = images_dir
        self._seen: dict[str, bool] = {}
        self._real = RealPaths()

    def problem(self, file_name: str) -> str | None:
        """Why the image cannot be used (outside the images folder, symlinks resolved; not there), or None."""
        if self.images_dir is None:
            return None
        if file_name not in self._seen:
            self._seen[file_name] = None if self._plain_file(file_name) else self._check(file_name)
        return self._seen[file_name]

    def _plain_file(self, file_name: str) -> bool:
        """Whether a name without folders is a regular file (not a link) right in the images folder:
        inside by construction, so one lstat says all (COCO's case). False: `_check` decides."""
        if "/" in file_name or "\\" in file_name or unsafe_image_name(file_name):
            return False
        try:
            st = os.lstat(os.path.join(self._real.folder(self.images_dir), file_name))
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode)

    def _check(self, file_name: str) -> str | None:
        return image_outside(self.images_dir, file_name, self._real) or (
            None if os.path.isfile(self.images_dir / file_name) else f"image file not found: {file_name}")


@gc_paused  # parsing and checking allocate millions of objects that die young
def valid_annotations(index: CocoIndex, chunks: Iterator[list], source_file: str, files: _ImageFiles, *,
                      need_keypoints=False, workers: int = 1, progress: bool = False
                      ) -> tuple[AnnotationStore, list, dict, int]:
    """Usable annotations (compact, by image), quarantine rows (in file order), every category
    seen per image, and the number of annotations read. Each chunk of parsed annotations is
    checked and made compact before the next is parsed: the file's dicts never exist all at once.
    With `workers` > 1 the chunks are parsed and checked in that many processes (results in order)."""
    store = AnnotationStore(need_keypoints)
    ids: list = []  # every annotation's id, in file order (_NO_ID: not an object or no id)
    reasons: list[str | None] = []  # why each one is unusable (the duplicate-id check comes last)
    seen_cats: dict[int, set] = defaultdict(set)  # categories an image has, even in rejected annotations
    checked = _checked_chunks(index, chunks, files, need_keypoints, workers)
    total = len(chunks) if isinstance(chunks, Chunks) else None
    for chunk_ids, chunk_reasons, seen, compact in progress_bar(checked, total=total, desc="check annotations",
                                                                unit="chunk", enabled=progress):
        if compact is not None:
            compact["pos"] += len(ids)
            store.append(compact)
        ids += chunk_ids
        reasons += chunk_reasons
        for image_id, cat in seen:
            seen_cats[image_id].add(cat)
    id_counts = Counter(ids)
    id_counts.pop(_NO_ID, None)
    dup = {i for i, n in id_counts.items() if n > 1}  # every copy is rejected: which one is right is unknowable
    quarantine: list[tuple[str, str, str]] = []
    # without duplicates only the rejected ones need a look (a few, of 860k in train2017)
    positions = range(len(ids)) if dup else [pos for pos, reason in enumerate(reasons) if reason is not None]
    for pos in positions:
        aid, reason = ids[pos], reasons[pos]
        if aid is not _NO_ID and aid in dup:
            reason = f"duplicate annotation id {aid} ({id_counts[aid]} copies)"
        if reason is not None:
            quarantine.append((source_file, f"ann:{aid}" if aid is not _NO_ID else f"ann:#{pos}", reason))
    store.finish((lambda pos: ids[pos] in dup) if dup else None)
    return store, quarantine, seen_cats, len(ids)


_NO_ID = object()


def _usable_id(v) -> bool:
    """An annotation id that can name its record (`ann:<id>`) and be counted for duplicates."""
    return v is not None and not isinstance(v, (list, dict))


def _check_chunk(index: CocoIndex, anns: list, files: _ImageFiles, need_keypoints: bool):
    """One chunk: (ids, reasons, (image, category) pairs seen, the usable ones as compact columns)."""
    reasons = [_annotation_problem(a, index, need_keypoints) for a in anns]
    poly = [i for i, (a, r) in enumerate(zip(anns, reasons)) if r is None
            and isinstance(a.get("segmentation"), list) and a["segmentation"]]
    for lo in range(0, len(poly), AREA_CHUNK):
        part = poly[lo:lo + AREA_CHUNK]
        for i, problem in zip(part, polygon_area_problems([anns[i]["segmentation"] for i in part])):
            reasons[i] = problem
    ids, seen, usable = [], set(), []  # seen: (image, category) pairs, once each (fewer to send back)
    for k, (a, reason) in enumerate(zip(anns, reasons)):
        is_dict = isinstance(a, dict)
        ids.append(a["id"] if is_dict and _usable_id(a.get("id")) else _NO_ID)
        if reason is None:
            reason = reasons[k] = files.problem(index.images[a["image_id"]]["file_name"])
        if is_dict and isinstance(a.get("image_id"), int) and not isinstance(a.get("category_id"), (list, dict)):
            seen.add((a["image_id"], a.get("category_id")))
        if reason is None:
            usable.append((k, a))
    return ids, reasons, seen, _compact(usable, need_keypoints)


_FORKED: tuple | None = None  # what forked chunk checkers read (set by the parent just before the fork)


@gc_paused  # the chunk's parse too
def _check_forked_chunk(k: int):
    index, chunks, files, need_keypoints = _FORKED
    result = _check_chunk(index, chunks.parse(k), files, need_keypoints)
    ids = [None if i is _NO_ID else i for i in result[0]]  # the marker is one object per process
    return (ids, [i is _NO_ID for i in result[0]]) + result[1:]


def _checked_chunks(index, chunks, files, need_keypoints: bool, workers: int):
    """`_check_chunk` of every chunk, in order; in `workers` forked processes when the chunks are
    byte ranges of the file (each process reads and parses its own), else here."""
    parallel = (workers > 1 and isinstance(chunks, Chunks) and len(chunks) > 1 and not mp.current_process().daemon
                and "fork" in mp.get_all_start_methods())
    if not parallel:
        for anns in chunks:
            yield _check_chunk(index, anns, files, need_keypoints)
        return
    global _FORKED
    _FORKED = (index, chunks, files, need_keypoints)  # forked processes see it; nothing is pickled
    try:
        # forked now, after only images and categories were parsed: they share little with the parent
        with ProcessPoolExecutor(min(workers, len(chunks)), mp_context=mp.get_context("fork"),
                                 initializer=tune_worker) as pool:
            todo = iter(range(len(chunks)))
            pending = deque(pool.submit(_check_forked_chunk, k) for _, k in zip(range(2 * workers), todo))
            while pending:
                ids, no_id, *rest = pending.popleft().result()
                k = next(todo, None)
                if k is not None:
                    pending.append(pool.submit(_check_forked_chunk, k))
                yield ([_NO_ID if n else i for i, n in zip(ids, no_id)], *rest)
    finally:
        _FORKED = None


def _compact(usable: list[tuple[int, dict]], keypoints: bool) -> dict | None:
    """Usable annotations (position in the chunk, dict) as the columns `AnnotationStore` keeps."""
    if not usable:
        return None
    rings, polys, other = [], [], {}
    for j, (_, a) in enumerate(usable):
        seg = a.get("segmentation")
        if isinstance(seg, list) and seg:
            rings.append(len(seg))
            polys += seg
        else:
            rings.append(0)
            if isinstance(seg, dict):
                other[j] = seg
    ring_len = np.fromiter((len(p) for p in polys), np.int64, len(polys))
    kps = None
    if keypoints:
        kps = np.asarray([[float(v) for v in a["keypoints"]] if not a.get("iscrowd") else [math.nan] * (3 * NUM_KEYPOINTS)
                          for _, a in usable], np.float64).reshape(-1, 3 * NUM_KEYPOINTS)
    return {"pos": np.fromiter((k for k, _ in usable), np.int64, len(usable)),
            "id": [a["id"] for _, a in usable],
            "image": np.fromiter((a["image_id"] for _, a in usable), np.int64, len(usable)),
            "cat": [a["category_id"] for _, a in usable],
            "crowd": np.fromiter((bool(a.get("iscrowd")) for _, a in usable), bool, len(usable)),
            "bbox": np.asarray([[float(v) for v in a["bbox"]] for _, a in usable], np.float64).reshape(-1, 4),
            "ring_lo": np.concatenate([[0], np.cumsum(rings)]).astype(np.int64),
            "coord_lo": np.concatenate([[0], np.cumsum(ring_len)]).astype(np.int64),
            "coords": np.fromiter(itertools.chain.from_iterable(polys), np.float64, int(ring_len.sum())),
            "other": other, "kps": kps}


class AnnotationStore:
    """The usable annotations of a COCO file as columns: polygons as float64 arrays (exactly the
    values pycocotools converts them to), boxes as floats, rare RLE segmentations as they are.
    `for_images(ids)` gives images' annotations back as the small dicts the draft builders read."""

    def __init__(self, keypoints: bool):
        self.keypoints = keypoints
        self._chunks: list[dict] = []

    def append(self, compact: dict) -> None:
        """A chunk's usable annotations (`_compact`), its "pos" already counted from the file's start."""
        self._chunks.append(compact)

    def finish(self, rejected) -> None:
        """Index by image, leaving out the annotations `rejected(file position)` names (None: none)."""
        sizes = [len(ch["pos"]) for ch in self._chunks]
        chunk_of = np.repeat(np.arange(len(sizes)), sizes)
        local = np.concatenate([np.arange(n) for n in sizes]) if sizes else np.zeros(0, np.int64)
        image = np.concatenate([ch["image"] for ch in self._chunks]) if sizes else np.zeros(0, np.int64)
        pos = np.concatenate([ch["pos"] for ch in self._chunks]) if sizes else np.zeros(0, np.int64)
        keep = (np.fromiter((not rejected(int(p)) for p in pos), bool, len(pos)) if rejected is not None
                else np.ones(len(pos), bool))
        order = np.flatnonzero(keep)[np.argsort(image[keep], kind="stable")]  # by image, file order within
        self._where = np.stack([chunk_of[order], local[order]], axis=1)
        self._image_ids, starts = np.unique(image[order], return_index=True)
        self._bounds = np.append(starts, len(order))

    def image_ids(self) -> list[int]:
        return self._image_ids.tolist()

    def for_images(self, image_ids: list[int]) -> list[list[dict]]:
        """The annotations of each image, as dicts, gathered per column for all the images at once
        (one numpy gather per column and chunk instead of scalar reads per annotation)."""
        if not len(self._image_ids):
            return [[] for _ in image_ids]
        ids = np.asarray(image_ids, np.int64)
        k = np.minimum(np.searchsorted(self._image_ids, ids), len(self._image_ids) - 1)
        found = self._image_ids[k] == ids
        lo = np.where(found, self._bounds[k], 0)
        hi = np.where(found, self._bounds[k + 1], 0)
        rows = np.concatenate([np.arange(a, b) for a, b in zip(lo.tolist(), hi.tolist())] + [np.zeros(0, np.int64)])
        where = self._where[rows]
        anns: list = [None] * len(where)
        for c in np.unique(where[:, 0]).tolist():
            sel = np.flatnonzero(where[:, 0] == c)
            for j, a in zip(sel.tolist(), self._chunk_annotations(self._chunks[c], where[sel, 1])):
                anns[j] = a
        ends = np.cumsum(hi - lo).tolist()
        return [anns[e - n:e] for e, n in zip(ends, (hi - lo).tolist())]

    def _chunk_annotations(self, ch: dict, local: np.ndarray) -> list[dict]:
        ring_lo, coord_lo, coords, other = ch["ring_lo"], ch["coord_lo"], ch["coords"], ch["other"]
        r0s, r1s = ring_lo[local].tolist(), ring_lo[local + 1].tolist()
        ids, cats = ch["id"], ch["cat"]
        kps = ch["kps"][local].tolist() if self.keypoints else None
        out = []
        for n, (i, image, crowd, bbox, r0, r1) in enumerate(zip(local.tolist(), ch["image"][local].tolist(),
                                                                 ch["crowd"][local].tolist(), ch["bbox"][local].tolist(),
                                                                 r0s, r1s)):
            if r1 > r0:
                bounds = coord_lo[r0:r1 + 1].tolist()
                seg = [coords[a:b] for a, b in zip(bounds, bounds[1:])]
            else:
                seg = other.get(i)
            a = {"id": ids[i], "image_id": image, "category_id": cats[i], "iscrowd": crowd, "bbox": bbox,
                 "segmentation": seg}
            if kps is not None and not crowd:
                a["keypoints"] = kps[n]
            out.append(a)
        return out


def _annotation_problem(a, index: CocoIndex, need_keypoints: bool) -> str | None:
    """Why one annotation is unusable (a duplicate id, known only at the end, is checked after)."""
    if not isinstance(a, dict):
        return "annotation is not an object"
    if a.get("id") is None:
        return "annotation has no id"
    for key in ("id", "image_id", "category_id"):
        if isinstance(a.get(key), (list, dict)):  # not an id, and no dict lookup may see it
            return f"annotation {key} is a {type(a[key]).__name__}, not a number"
    if a.get("image_id") not in index.images:
        return f"unknown image id {a.get('image_id')!r}"
    if a["image_id"] in index.bad_images:
        return index.bad_images[a["image_id"]]
    if a.get("category_id") not in index.cats:
        return f"unknown category id {a.get('category_id')!r}"
    if a["category_id"] in index.bad_cats:
        return index.bad_cats[a["category_id"]]
    problem = bad_box(a.get("bbox"))
    if problem:
        return problem
    im = index.images[a["image_id"]]
    problem = box_image_problem(a["bbox"], im["width"], im["height"])
    if problem:
        return problem
    seg = a.get("segmentation")
    if seg not in (None, []):
        problem = rle_problem(seg, im["height"], im["width"]) if isinstance(seg, dict) else polygon_structure_problem(seg)
        if problem:
            return problem
    elif a.get("iscrowd"):
        return "crowd region without a segmentation"
    if need_keypoints and not a.get("iscrowd"):
        kps = a.get("keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * NUM_KEYPOINTS:
            n = len(kps) if isinstance(kps, list) else 0
            return f"keypoints must have {3 * NUM_KEYPOINTS} numbers, found {n}"
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in kps):
            return "keypoints hold non-numeric or non-finite values"
    return None


def _box(a: dict) -> list[float]:
    return [float(v) for v in a["bbox"]]


def negatives_for(n_positive: int, ratio: float, *, image_only: bool) -> int:
    """How many absent categories to ask about (half-up rounding; at least one on an empty image)."""
    if ratio <= 0:
        return 0
    n = int(math.floor(ratio * max(1, n_positive) + 0.5))
    return max(1, n) if image_only else n


def read_coco_instances(path, *, images_dir=None, negative_ratio=0.5, seed=0, paraphrase=False) -> ReadResult:
    """Detection + instance segmentation drafts: one per (image, category present), plus negatives."""
    return plan_coco_instances(path, images_dir=images_dir, negative_ratio=negative_ratio, seed=seed,
                               paraphrase=paraphrase).run()


def plan_coco_instances(path, *, images_dir=None, negative_ratio=0.5, seed=0, paraphrase=False,
                        images_per_unit=None, workers=1, progress=False) -> SourcePlan:
    """Parse and validate the file here; the per-image drafts (RLEs, negatives) are built per unit of
    images, in image-id order, by `instance_drafts` (which can run in a worker process)."""
    src = str(path)
    index, chunks = stream_coco(path, "coco")
    files = _ImageFiles(Path(images_dir) if images_dir else None)
    store, quarantine, seen_cats, n_annotations = valid_annotations(index, chunks, src, files, workers=workers,
                                                                    progress=progress)
    image_only = _image_only_records(index, seen_cats, files, negative_ratio, src, quarantine)
    n_records = n_annotations + sum(
        1 for im in index.data["images"] if not (isinstance(im, dict) and im.get("id") in seen_cats))
    cat_ids = sorted(c for c in index.cats if c not in index.bad_cats)
    ctx = {"src": src, "images_dir": files.images_dir, "cats": {c: index.cats[c] for c in cat_ids}, "cat_ids": cat_ids,
           "negative_ratio": negative_ratio, "seed": seed, "paraphrase": paraphrase}

    def unit(ids):
        return ctx, [(index.images[i], anns, seen_cats.get(i, set()), i in image_only)
                     for i, anns in zip(ids, store.for_images(ids))]

    ids = sorted(set(store.image_ids()) | set(image_only))
    return SourcePlan(quarantine, n_records, _units(ids, images_per_unit, unit), instance_drafts, images=len(ids))


def _units(ids: list, size: int | None, make):
    """Units of `size` ids, made only when asked for (each unit takes its annotations out of the plan)."""
    size = size or IMAGES_PER_UNIT
    chunks = [ids[k:k + size] for k in range(0, len(ids), size)]
    return LazyUnits(len(chunks), lambda k: make(chunks[k]))


def instance_drafts(unit) -> tuple[list[Draft], list]:
    """The drafts of a unit of images (see `plan_coco_instances`), and quarantine rows for records
    no sample can carry."""
    ctx, images = unit
    drafts: list[Draft] = []
    quarantine: list[tuple[str, str, str]] = []
    src, cat_ids, paraphrase, seed = ctx["src"], ctx["cat_ids"], ctx["paraphrase"], ctx["seed"]
    real_path = RealPaths()
    for im, anns, seen, only in images:
        im_id = im["id"]
        w, h = im["width"], im["height"]
        path_str = image_path(ctx["images_dir"], im["file_name"], real_path)
        problem = _file_size_problem(ctx, path_str, w, h)
        if problem:
            quarantine += [(src, f"ann:{a['id']}", problem) for a in anns] + ([(src, f"img:{im_id}", problem)] if only else [])
            continue
        anns = sorted(anns, key=lambda a: a["id"])
        rles = to_rles([a.get("segmentation") for a in anns], h, w)
        crowd = [(a, m) for a, m in zip(anns, rles) if a.get("iscrowd")]
        ignore_boxes = [_box(a) for a, _ in crowd]
        ignore_masks = [m for _, m in crowd if m is not None]
        per_cat: dict[int, list] = defaultdict(list)
        for a, m in zip(anns, rles):
            if not a.get("iscrowd"):
                per_cat[a["category_id"]].append((a, m))
        absent = [c for c in cat_ids if c not in seen]
        n_neg = min(len(absent), negatives_for(len(per_cat), ctx["negative_ratio"], image_only=only))
        # a seeded draw per image, so an image's negatives depend on nothing else (random.Random:
        # a tenth of what numpy's Generator costs to seed, and seeding is most of the work here)
        negatives = sorted(random.Random(f"{seed}:{im_id}").sample(absent, n_neg)) if n_neg else []
        # one boxes/masks object per (image, category), shared by the detection and the segmentation
        # draft, so rendering can reuse the heatmap
        groups = {c: ([_box(a) for a, _ in g], [m for _, m in g], [f"ann:{a['id']}" for a, _ in g])
                  for c, g in sorted(per_cat.items())}
        no_boxes: list = []
        first = len(drafts)
        for task in ("detection", "instance_segmentation"):
            for c, (boxes, masks, ids) in groups.items():
                drafts.append(_category_draft(task, im, path_str, ctx["cats"][c], True, boxes,
                                              masks if all(m is not None for m in masks) else None, list(ids),
                                              ignore_boxes, ignore_masks, paraphrase, seed))
            for c in negatives:
                drafts.append(_category_draft(task, im, path_str, ctx["cats"][c], False, no_boxes, [], [],
                                              ignore_boxes, ignore_masks, paraphrase, seed))
        extra = [f"ann:{a['id']}" for a, _ in crowd] + ([f"img:{im_id}"] if only else [])
        if extra:
            if len(drafts) > first:
                drafts[first].source_ids = drafts[first].source_ids + extra
            else:
                quarantine += [(src, rid, "no sample to carry it: the image has no instance and no absent category to ask about")
                               for rid in extra]
    return drafts, quarantine


def _file_size_problem(ctx: dict, path: str, width: int, height: int) -> str | None:
    """Why the image file cannot serve its records: its header (read, not decoded) gives another size
    than the json declares, or too many pixels. Once per image, in the unit that builds it (about
    35 us a JPEG). Without an images folder there is no file to look at."""
    return None if ctx["images_dir"] is None else size_problem(path, width, height)


def _image_only_records(index: CocoIndex, seen_cats, files: _ImageFiles, negative_ratio: float, src: str,
                        quarantine: list) -> set[int]:
    """Images no annotation refers to: usable ones (returned) yield negatives, the rest are quarantined."""
    usable = set()
    for pos, im in enumerate(index.data["images"]):
        if isinstance(im, dict) and im.get("id") in seen_cats:
            continue
        if not isinstance(im, dict) or not isinstance(im.get("id"), int):
            quarantine.append((src, f"img:#{pos}", "image entry without an integer id"))
        elif im["id"] in index.bad_images:
            quarantine.append((src, f"img:{im['id']}", index.bad_images[im["id"]]))
        elif files.problem(im["file_name"]):
            quarantine.append((src, f"img:{im['id']}", files.problem(im["file_name"])))
        elif negatives_for(0, negative_ratio, image_only=True) == 0:
            quarantine.append((src, f"img:{im['id']}", "image without annotations, and negatives are off (negative_ratio=0)"))
        else:
            usable.add(im["id"])
    return usable


def _category_draft(task, im, path_str, cat, found, boxes, masks, ids, ignore_boxes, ignore_masks, paraphrase, seed):
    return Draft(task=task, image_id=im["id"], image_path=path_str, width=im["width"], height=im["height"],
                 instruction=instruction_for(task, category=cat["name"], paraphrase=paraphrase,
                                             key=f"{im['id']}/{cat['id']}", seed=seed),
                 answer=answer_for(task, found), source_ids=ids, category=cat["name"], category_id=cat["id"],
                 boxes=boxes, masks=masks, ignore_boxes=ignore_boxes, ignore_masks=ignore_masks)


def read_coco_keypoints(path, *, images_dir=None, paraphrase=False, seed=0) -> ReadResult:
    """Pose drafts: one per image with people; boxes and 17 keypoints per person."""
    return plan_coco_keypoints(path, images_dir=images_dir, paraphrase=paraphrase, seed=seed).run()


def plan_coco_keypoints(path, *, images_dir=None, paraphrase=False, seed=0, images_per_unit=None,
                        workers=1, progress=False) -> SourcePlan:
    """Parse and validate here; `pose_drafts` builds the drafts of each unit of images."""
    src = str(path)
    index, chunks = stream_coco(path, "coco-keypoints")
    files = _ImageFiles(Path(images_dir) if images_dir else None)
    store, quarantine, _, n_records = valid_annotations(index, chunks, src, files, need_keypoints=True,
                                                        workers=workers, progress=progress)
    ctx = {"src": src, "images_dir": files.images_dir, "seed": seed, "paraphrase": paraphrase}

    def unit(ids):
        return ctx, list(zip((index.images[i] for i in ids), store.for_images(ids)))

    ids = store.image_ids()
    return SourcePlan(quarantine, n_records, _units(ids, images_per_unit, unit), pose_drafts, images=len(ids))


def pose_drafts(unit) -> tuple[list[Draft], list]:
    ctx, images = unit
    src, paraphrase, seed = ctx["src"], ctx["paraphrase"], ctx["seed"]
    real_path = RealPaths()
    drafts: list[Draft] = []
    quarantine: list[tuple[str, str, str]] = []
    for im, anns in images:
        im_id = im["id"]
        w, h = im["width"], im["height"]
        path_str = image_path(ctx["images_dir"], im["file_name"], real_path)
        problem = _file_size_problem(ctx, path_str, w, h)
        if problem:
            quarantine += [(src, f"ann:{a['id']}", problem) for a in anns]
            continue
        anns = sorted(anns, key=lambda a: a["id"])
        rles = to_rles([a.get("segmentation") for a in anns], h, w)
        people = [(a, m) for a, m in zip(anns, rles) if not a.get("iscrowd")]
        crowd = [(a, m) for a, m in zip(anns, rles) if a.get("iscrowd")]
        if not people:
            quarantine += [(src, f"ann:{a['id']}", "crowd region in an image without people") for a, _ in crowd]
            continue
        masks = [m for _, m in people]
        drafts.append(Draft(
            task="pose", image_id=im_id, image_path=path_str, width=w, height=h,
            instruction=instruction_for("pose", paraphrase=paraphrase, key=str(im_id), seed=seed),
            answer=answer_for("pose", True), source_ids=[f"ann:{a['id']}" for a, _ in people + crowd],
            category="person", category_id=people[0][0]["category_id"],
            boxes=[_box(a) for a, _ in people],
            masks=masks if all(m is not None for m in masks) else None,
            keypoints=[[float(v) for v in a["keypoints"]] for a, _ in people],
            ignore_boxes=[_box(a) for a, _ in crowd], ignore_masks=[m for _, m in crowd if m is not None]))
    return drafts, quarantine
