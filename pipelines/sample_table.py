"""Drafts -> the samples' Arrow table: heatmap targets rendered, columns built without per-row Python lists.

Shared by `pipelines.convert` (one process) and `pipelines.convert_parallel` (each worker builds its
unit's table), so neither imports the other.
"""

from __future__ import annotations

import hashlib
from itertools import chain

import numpy as np
import pyarrow as pa

from pipelines.geometry import box_targets
from pipelines.heatmaps import encode_png, gaussian_radius, heatmap_png
from pipelines.progress import progress as progress_bar
from pipelines.schema import HEATMAP_TASKS, SAMPLE_SCHEMA
from pipelines.sources.common import Draft


def sample_id(source: str, split: str, d: Draft) -> str:
    key = "|".join([source, split, d.task, str(d.image_id), str(d.category_id), ",".join(sorted(d.source_ids)), d.instruction])
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def render_all(drafts: list[Draft], input_size: int, heatmap_size: int, progress: bool = False):
    """Heatmap PNGs, center pixels [n, 2] and size targets [n, 2] of every draft.

    The geometry runs over all boxes at once (`box_targets`, SquarePad's arithmetic), and drafts
    that share a boxes list (a category's detection and segmentation samples) share one rendered
    heatmap.
    """
    empty_c, empty_s = np.zeros((0, 2), np.int32), np.zeros((0, 2), np.float32)
    slot_of: dict[tuple, int] = {}  # (id(boxes list), image size) -> index into `groups`
    groups: list[tuple[int, int, list]] = []
    for d in drafts:
        key = (id(d.boxes), d.width, d.height)
        if d.task in HEATMAP_TASKS and d.boxes and key not in slot_of:
            slot_of[key] = len(groups)
            groups.append((d.width, d.height, d.boxes))
    counts = np.fromiter((len(g[2]) for g in groups), np.int64, len(groups))
    ends = np.cumsum(counts)
    boxes = np.asarray([b for g in groups for b in g[2]], dtype=np.float64).reshape(-1, 4)
    img_wh = np.repeat(np.asarray([g[:2] for g in groups], dtype=np.int64).reshape(-1, 2), counts, axis=0)
    centers, sizes, wh_heat = box_targets(boxes, img_wh, input_size, heatmap_size)
    radii = gaussian_radius(np.ceil(wh_heat[:, 1]), np.ceil(wh_heat[:, 0]))
    zero_png = encode_png(np.zeros((heatmap_size, heatmap_size), np.uint8))
    group_pngs = []
    for g in progress_bar(range(len(groups)), desc="render heatmaps", unit="map", enabled=progress):
        lo, hi = ends[g] - counts[g], ends[g]
        group_pngs.append(heatmap_png(centers[lo:hi], radii[lo:hi], heatmap_size))
    pngs, out_c, out_s = [], [], []
    for d in drafts:
        if d.task not in HEATMAP_TASKS:
            pngs.append(None), out_c.append(empty_c), out_s.append(empty_s)
        elif not d.boxes:  # a negative: nothing there, an all-zero map
            pngs.append(zero_png), out_c.append(empty_c), out_s.append(empty_s)
        else:
            g = slot_of[(id(d.boxes), d.width, d.height)]
            lo, hi = ends[g] - counts[g], ends[g]
            pngs.append(group_pngs[g])
            out_c.append(centers[lo:hi].astype(np.int32))
            out_s.append(sizes[lo:hi].astype(np.float32))
    return pngs, out_c, out_s


def _pairs_column(arrays: list[np.ndarray], value_type) -> pa.Array:
    """A list<fixed_size_list<k>> column built from per-row [n, k] arrays without Python lists."""
    k = value_type.list_size
    lengths = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))
    flat = np.concatenate([a.reshape(-1, k) for a in arrays]) if arrays else np.zeros((0, k))
    return _list_column(lengths, flat.reshape(-1).astype(value_type.value_type.to_pandas_dtype()), k)


def _nested_column(rows: list, value_type) -> pa.Array:
    """The same from per-row lists of k-number lists (boxes), flattened in one pass instead of one
    numpy array per row."""
    k = value_type.list_size
    lengths = np.fromiter(map(len, rows), np.int64, len(rows))
    flat = np.fromiter(chain.from_iterable(chain.from_iterable(rows)), value_type.value_type.to_pandas_dtype())
    if len(flat) != int(lengths.sum()) * k:
        raise ValueError(f"expected {k} numbers per item, got {len(flat)} numbers for {int(lengths.sum())} items")
    return _list_column(lengths, flat, k)


def _list_column(lengths: np.ndarray, flat: np.ndarray, k: int) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.FixedSizeListArray.from_arrays(pa.array(flat), k))


def drafts_to_table(drafts: list[Draft], source: str, split: str, input_size: int, heatmap_size: int,
                    progress: bool = True) -> pa.Table:
    pngs, centers, sizes = render_all(drafts, input_size, heatmap_size, progress)
    n = len(drafts)

    def col(name, values):
        return pa.array(values, type=SAMPLE_SCHEMA.field(name).type)

    def box_column(attr):
        return _nested_column([getattr(d, attr) or () for d in drafts], SAMPLE_SCHEMA.field(attr).type.value_type)

    columns = {
        "sample_id": col("sample_id", [sample_id(source, split, d) for d in drafts]),
        "source": col("source", [source] * n),
        "split": col("split", [split] * n),
        "task": col("task", [d.task for d in drafts]),
        "image_id": col("image_id", [d.image_id for d in drafts]),
        "image_path": col("image_path", [d.image_path for d in drafts]),
        "image_width": col("image_width", [d.width for d in drafts]),
        "image_height": col("image_height", [d.height for d in drafts]),
        "input_size": col("input_size", [input_size] * n),
        "heatmap_size": col("heatmap_size", [heatmap_size] * n),
        "instruction": col("instruction", [d.instruction for d in drafts]),
        "answer": col("answer", [d.answer for d in drafts]),
        "category": col("category", [d.category for d in drafts]),
        "category_id": col("category_id", [d.category_id for d in drafts]),
        "expression": col("expression", [d.expression for d in drafts]),
        "boxes": box_column("boxes"),
        "masks": col("masks", [d.masks for d in drafts]),
        "keypoints": col("keypoints", [d.keypoints for d in drafts]),
        "ignore_boxes": box_column("ignore_boxes"),
        "ignore_masks": col("ignore_masks", [d.ignore_masks for d in drafts]),
        "source_ids": col("source_ids", [d.source_ids for d in drafts]),
        "heatmap": col("heatmap", pngs),
        "centers": _pairs_column(centers, SAMPLE_SCHEMA.field("centers").type.value_type),
        "sizes": _pairs_column(sizes, SAMPLE_SCHEMA.field("sizes").type.value_type),
    }
    return pa.table(columns, schema=SAMPLE_SCHEMA)
