"""Sources -> instruction + heatmap shards (`lumen convert`, the shards assets).

read (pipelines.sources) -> render targets (pipelines.geometry + pipelines.heatmaps) -> write
(pipelines.shards). Same input and options give byte-identical shards.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from pipelines.errors import InputError
from pipelines.geometry import SquarePad
from pipelines.heatmaps import encode_png, gaussian_radius, render_heatmap
from pipelines.schema import HEATMAP_TASKS, SAMPLE_SCHEMA, SCHEMA_VERSION
from pipelines.shards import write_partition
from pipelines.sources.coco import read_coco_instances, read_coco_keypoints
from pipelines.sources.common import Draft, ReadResult, split_from_name
from pipelines.sources.llava import read_llava
from pipelines.sources.refcoco import read_refcoco
from pipelines.sources.vqa import read_vqav2

log = logging.getLogger(__name__)
FORMATS = ("coco", "coco-keypoints", "refcoco", "vqav2", "llava")


def read_source(fmt: str, input_path, *, images_dir=None, annotations=None, split=None, split_by="unc",
                negative_ratio=0.5, seed=0, paraphrase=False) -> ReadResult:
    if fmt == "coco":
        return read_coco_instances(input_path, images_dir=images_dir, negative_ratio=negative_ratio, seed=seed,
                                   paraphrase=paraphrase)
    if fmt == "coco-keypoints":
        return read_coco_keypoints(input_path, images_dir=images_dir, paraphrase=paraphrase, seed=seed)
    if fmt == "refcoco":
        return read_refcoco(input_path, split_by=split_by, split=split, images_dir=images_dir,
                            paraphrase=paraphrase, seed=seed)
    if fmt == "vqav2":
        return read_vqav2(input_path, annotations=annotations, images_dir=images_dir)
    if fmt == "llava":
        return read_llava(input_path, images_dir=images_dir)
    raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _default_images_dir(fmt: str, input_path: Path) -> Path | None:
    """The bundled layout keeps images in <root>/coco/images beside every source folder."""
    for base in (input_path.parent, input_path.parent.parent, input_path.parent.parent.parent):
        for cand in (base / "images", base / "coco" / "images"):
            if cand.is_dir():
                return cand
    return None


def sample_id(source: str, split: str, d: Draft) -> str:
    key = "|".join([source, split, d.task, str(d.image_id), str(d.category_id), ",".join(sorted(d.source_ids)), d.instruction])
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def render_targets(d: Draft, input_size: int, heatmap_size: int):
    """(heatmap PNG, centers, sizes) of a draft; (None, [], []) for tasks without a heatmap."""
    if d.task not in HEATMAP_TASKS:
        return None, [], []
    geo = SquarePad(d.width, d.height, input_size, heatmap_size)
    boxes = np.asarray(d.boxes, dtype=np.float64).reshape(-1, 4)
    centers = geo.center_pixels(boxes)
    sizes = geo.sizes_normalized(boxes)
    wh_hm = boxes[:, 2:] * geo.scale / geo.heatmap_stride
    radii = gaussian_radius(np.ceil(wh_hm[:, 1]), np.ceil(wh_hm[:, 0]))
    heat = render_heatmap(centers, radii, heatmap_size)
    return encode_png(heat), centers.tolist(), sizes.astype(np.float32).tolist()


def drafts_to_table(drafts: list[Draft], source: str, split: str, input_size: int, heatmap_size: int,
                    progress: bool = True) -> pa.Table:
    cols: dict[str, list] = {name: [] for name in SAMPLE_SCHEMA.names}
    for d in tqdm(drafts, desc=f"render {source}/{split}", unit="sample", disable=not progress, mininterval=1.0):
        png, centers, sizes = render_targets(d, input_size, heatmap_size)
        cols["sample_id"].append(sample_id(source, split, d))
        cols["source"].append(source)
        cols["split"].append(split)
        cols["task"].append(d.task)
        cols["image_id"].append(d.image_id)
        cols["image_path"].append(d.image_path)
        cols["image_width"].append(d.width)
        cols["image_height"].append(d.height)
        cols["input_size"].append(input_size)
        cols["heatmap_size"].append(heatmap_size)
        cols["instruction"].append(d.instruction)
        cols["answer"].append(d.answer)
        cols["category"].append(d.category)
        cols["category_id"].append(d.category_id)
        cols["expression"].append(d.expression)
        cols["boxes"].append(d.boxes)
        cols["masks"].append(d.masks)
        cols["keypoints"].append(d.keypoints)
        cols["ignore_boxes"].append(d.ignore_boxes)
        cols["ignore_masks"].append(d.ignore_masks)
        cols["source_ids"].append(d.source_ids)
        cols["heatmap"].append(png)
        cols["centers"].append(centers)
        cols["sizes"].append(sizes)
    return pa.table({name: pa.array(cols[name], type=SAMPLE_SCHEMA.field(name).type) for name in SAMPLE_SCHEMA.names},
                    schema=SAMPLE_SCHEMA)


def account(result: ReadResult) -> dict:
    """Prove every record read is in a sample's source_ids or in the quarantine (never both)."""
    in_samples = {rid for d in result.drafts for rid in d.source_ids}
    quarantined = [rid for _, rid, _ in result.quarantine]
    overlap = in_samples & set(quarantined)
    accounted = len(in_samples) + len(quarantined)
    if overlap or accounted != result.records_read:
        raise RuntimeError(f"accounting bug: read {result.records_read}, in samples {len(in_samples)}, "
                           f"quarantined {len(quarantined)}, in both {sorted(overlap)[:5]}")
    return {"records_read": result.records_read, "records_in_samples": len(in_samples),
            "records_quarantined": len(quarantined)}


def convert_source(fmt, input_path, out_dir, *, images_dir=None, annotations=None, split=None, split_by="unc",
                   source_name=None, input_size=448, heatmap_size=None, negative_ratio=0.5, seed=0,
                   rows_per_shard=2048, paraphrase=False, progress=True) -> dict:
    """Convert one source into a shard partition folder; returns its manifest."""
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    input_path = Path(input_path)
    if not input_path.exists():
        raise InputError(f"{fmt}: input not found: {input_path}")
    heatmap_size = heatmap_size or input_size // 4
    if images_dir is None:
        images_dir = _default_images_dir(fmt, input_path)
    split = split or ("all" if fmt == "llava" else split_from_name(input_path if fmt != "vqav2" else input_path))
    source = source_name or fmt
    result = read_source(fmt, input_path, images_dir=images_dir, annotations=annotations,
                         split=split if fmt == "refcoco" else None, split_by=split_by,
                         negative_ratio=negative_ratio, seed=seed, paraphrase=paraphrase)
    counts = account(result)
    table = drafts_to_table(result.drafts, source, split, input_size, heatmap_size, progress)
    quarantine = pa.table({"source_file": [q[0] for q in result.quarantine],
                           "record_id": [q[1] for q in result.quarantine],
                           "reason": [q[2] for q in result.quarantine]})
    counts["samples_written"] = table.num_rows
    counts["per_task"] = dict(sorted(Counter(d.task for d in result.drafts).items()))
    reasons = Counter(_reason_kind(q[2]) for q in result.quarantine)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "format": fmt,
        "split": split,
        "inputs": {"input": str(input_path), "annotations": str(annotations) if annotations else None,
                   "images_dir": str(images_dir) if images_dir else None},
        "options": {"input_size": input_size, "heatmap_size": heatmap_size, "negative_ratio": negative_ratio,
                    "seed": seed, "split_by": split_by if fmt == "refcoco" else None, "paraphrase": paraphrase,
                    "rows_per_shard": rows_per_shard},
        "counts": counts,
        "quarantine_reasons": dict(reasons.most_common()),
    }
    manifest = write_partition(table, quarantine, manifest, out_dir, rows_per_shard)
    log.info("%s -> %s: %d records read, %d samples, %d quarantined", input_path, out_dir,
             counts["records_read"], counts["samples_written"], counts["records_quarantined"])
    return manifest


def _reason_kind(reason: str) -> str:
    """Group quarantine reasons without their ids/numbers, for summaries."""
    return "".join(ch for ch in reason.split(":")[0].split("(")[0] if not ch.isdigit()).strip()
