"""Shards -> model-ready tensors (a torch Dataset), and the same shards through `datasets`."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from pipelines.errors import InputError
from pipelines.geometry import SquarePad, pad_image
from pipelines.heatmaps import decode_png, gaussian_radius, render_heatmap
from pipelines.arrow_cache import arrow_files, open_mapped
from pipelines.schema import HEATMAP_TASKS, SAMPLE_SCHEMA
from pipelines.shards import shard_files, verify_shards

_FIXED = ("pixel_values", "heatmap", "has_heatmap")


def _read_image(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:  # one line naming it; `lumen convert --verify-images` finds these before training
        raise InputError(f"image not readable: {path} (convert with --verify-images to quarantine such images)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@lru_cache(maxsize=256)  # an image serves many samples (one per category and task); bounded memory
def _padded_image(path: str, size: int) -> tuple[np.ndarray, int, int]:
    """(S x S x 3 uint8 padded image, original width, height); read-only, shared by the cache."""
    img = _read_image(path)
    padded = pad_image(img, size)
    padded.flags.writeable = False
    return padded, img.shape[1], img.shape[0]


class ShardDataset(Dataset):
    """Samples of one or more shard folders.

    The columns stay in memory-mapped Arrow files (`pipelines.arrow_cache`): start-up maps them and
    filters on `task` / `split`, and a row becomes Python objects only when it is fetched, so the
    memory of a process does not grow with the data and DataLoader workers share the pages.
    `input_size` (S) defaults to the shards' own; a different S re-renders the heatmap targets
    from the boxes with the same renderer, so one set of shards serves several model sizes.
    """

    def __init__(self, shard_dirs, input_size: int | None = None, tasks=None, split=None, cache_images: bool = True):
        if isinstance(shard_dirs, (str, Path)):
            shard_dirs = [shard_dirs]
        self._files = arrow_files(shard_dirs)
        self._tables = [open_mapped(f) for f in self._files]
        parts, local = [], []
        for p, t in enumerate(self._tables):
            keep = np.ones(t.num_rows, bool)
            if tasks:
                keep &= _mask(pc.is_in(t["task"], value_set=pa.array(list(tasks), pa.string())))
            if split:
                keep &= _mask(pc.equal(t["split"], split))
            rows = np.flatnonzero(keep)
            parts.append(np.full(len(rows), p, np.int32))
            local.append(rows.astype(np.int32))
        self._part = np.concatenate(parts) if parts else np.zeros(0, np.int32)
        self._local = np.concatenate(local) if local else np.zeros(0, np.int32)
        self.rows = _RowView(self)  # rows[i]: the row's columns but the heatmap, as Python objects
        self.input_size = input_size
        self.cache_images = cache_images

    def __len__(self) -> int:
        return len(self._part)

    def row(self, idx: int, heatmap: bool = True) -> dict:
        """Row `idx` as Python objects (only this row is converted)."""
        t = self._tables[self._part[idx]].slice(int(self._local[idx]), 1)
        if not heatmap:
            t = t.drop_columns(["heatmap"])
        return t.to_pylist()[0]

    def column(self, name: str) -> pa.ChunkedArray:
        """One column over the dataset's rows, in order, as Arrow (no Python objects)."""
        chunks, bounds = [], np.flatnonzero(np.diff(self._part, prepend=-1, append=-1))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            chunks.append(self._tables[self._part[lo]][name].take(pa.array(self._local[lo:hi])))
        if not chunks:
            return pa.chunked_array([], type=SAMPLE_SCHEMA.field(name).type)
        return pa.chunked_array([c for ch in chunks for c in ch.chunks], type=chunks[0].type)

    def __getstate__(self):  # DataLoader workers started by spawn map the files themselves
        state = dict(self.__dict__)
        del state["_tables"], state["rows"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._tables = [open_mapped(f) for f in self._files]
        self.rows = _RowView(self)

    def __getitem__(self, idx: int) -> dict:
        row = self.row(idx)
        s = self.input_size or row["input_size"]
        m = s // 4 if self.input_size else row["heatmap_size"]
        w, h = row["image_width"], row["image_height"]
        load = _padded_image if self.cache_images else _padded_image.__wrapped__
        padded, img_w, img_h = load(row["image_path"], s)
        if not w or not h:  # VQA rows converted without an images folder
            w, h = img_w, img_h
        geo = SquarePad(w, h, s, m)
        # astype copies, so the cached uint8 array is never written to
        pixel = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0))
        boxes = np.asarray(row["boxes"] or [], dtype=np.float32).reshape(-1, 4)
        has_heatmap = row["task"] in HEATMAP_TASKS
        if has_heatmap and self.input_size in (None, row["input_size"]):
            heat = decode_png(row["heatmap"])
            centers = np.asarray(row["centers"] or [], dtype=np.int64).reshape(-1, 2)
            sizes = np.asarray(row["sizes"] or [], dtype=np.float32).reshape(-1, 2)
        elif has_heatmap:
            centers = geo.center_pixels(boxes)
            sizes = geo.sizes_normalized(boxes).astype(np.float32)
            wh = boxes[:, 2:] * geo.scale / geo.heatmap_stride
            heat = render_heatmap(centers, gaussian_radius(np.ceil(wh[:, 1]), np.ceil(wh[:, 0])), m)
        else:
            heat = np.zeros((m, m), np.float32)
            centers = np.zeros((0, 2), np.int64)
            sizes = np.zeros((0, 2), np.float32)
        xy0 = geo.to_input(boxes[:, :2]) if len(boxes) else np.zeros((0, 2))
        xy1 = geo.to_input(boxes[:, :2] + boxes[:, 2:]) if len(boxes) else np.zeros((0, 2))
        kps = np.asarray(row["keypoints"] or [], dtype=np.float32).reshape(-1, 17, 3)
        if len(kps):
            kps = kps.copy()
            kps[..., :2] = geo.to_input(kps[..., :2])
        masks = row["masks"] or []
        masks_input = np.zeros((len(masks), s, s), np.uint8)
        if masks:
            decoded = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in masks])
            for i in range(len(masks)):  # same resize + pad as the image, so mask and pixels line up
                masks_input[i] = pad_image(np.repeat(decoded[..., i : i + 1] * 255, 3, axis=2), s)[..., 0] > 127
        return {
            "pixel_values": pixel,
            "heatmap": torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32)),
            "has_heatmap": has_heatmap,
            "centers": torch.from_numpy(centers),
            "sizes": torch.from_numpy(sizes),
            "boxes_input": torch.from_numpy(np.concatenate([xy0, xy1], 1).astype(np.float32)),
            "masks_input": torch.from_numpy(masks_input),
            "keypoints_input": torch.from_numpy(kps),
            "instruction": row["instruction"],
            "answer": row["answer"],
            "task": row["task"],
            "source": row.get("source"),
            "sample_id": row["sample_id"],
            "image_id": row["image_id"],
            "image_path": row["image_path"],
            "category_id": row["category_id"],
            "category": row.get("category"),
            "image_width": w,
            "image_height": h,
        }


class _RowView(Sequence):
    """`dataset.rows[i]` without holding the rows: each access converts one row (heatmap left out)."""

    def __init__(self, dataset: ShardDataset):
        self._ds = dataset

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return [self[i] for i in range(*idx.indices(len(self)))]
        if idx < 0:
            idx += len(self)
        if not 0 <= idx < len(self):
            raise IndexError(idx)
        return self._ds.row(idx, heatmap=False)


def _mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Boolean Arrow values -> numpy, null as False (as `Table.filter` drops nulls)."""
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def collate_samples(items: list[dict]) -> dict:
    """Stack the fixed-size tensors; keep per-instance ones and strings as lists."""
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if key in _FIXED:
            out[key] = torch.stack(vals) if key != "has_heatmap" else torch.tensor(vals)
        else:
            out[key] = vals
    return out


def load_hf_dataset(shard_dirs, split: str = "train"):
    """The shards as a Hugging Face `datasets.Dataset` (parquet loader, local files)."""
    import datasets

    dirs = [shard_dirs] if isinstance(shard_dirs, str) else shard_dirs
    for d in dirs:  # the parquet loader would fail mid-read on a flipped byte, without naming the file
        verify_shards(d)
    files = [f for d in dirs for f in shard_files(d)]
    return datasets.load_dataset("parquet", data_files={split: files}, split=split)
