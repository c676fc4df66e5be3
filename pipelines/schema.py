"""The one shard schema every part of the project reads and writes.

A shard row is one training sample: one image, one instruction (= one concept), its answer and
the targets behind it. Geometry (boxes, keypoints, masks) is kept in ORIGINAL image pixels;
`centers` and `sizes` are the heatmap-space targets of the spec, derived through
`pipelines.geometry.SquarePad(image_width, image_height, input_size, heatmap_size)`.
"""

from __future__ import annotations

import pyarrow as pa

from pipelines.tasks import NAMES
from pipelines.tasks import TASKS as REGISTRY

SCHEMA_VERSION = 1

TASKS = NAMES  # the task registry's names (pipelines/tasks.py)

# Tasks whose sample carries a heatmap (VQA has none): those answered with a task token.
HEATMAP_TASKS = frozenset(t.name for t in REGISTRY if t.token is not None)

# COCO RLE with a compressed `counts` string, as pycocotools' mask.encode returns it.
RLE = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])

SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),  # stable across runs: hash of source, split, task, source_ids
        ("source", pa.string()),  # partition name: coco, coco-keypoints, refcoco, vqav2, llava, corrections-v0001 ...
        ("split", pa.string()),
        ("task", pa.string()),  # one of TASKS
        ("image_id", pa.int64()),  # the source's image id (COCO id), where there is one
        ("image_path", pa.string()),  # absolute path, or an fsspec URL
        ("image_width", pa.int32()),
        ("image_height", pa.int32()),
        ("input_size", pa.int32()),  # S of the spec
        ("heatmap_size", pa.int32()),  # M of the spec
        ("instruction", pa.string()),
        ("answer", pa.string()),
        ("category", pa.string()),  # category name, where there is one
        ("category_id", pa.int64()),
        ("expression", pa.string()),  # referring expression (grounding / referring seg)
        ("boxes", pa.list_(pa.list_(pa.float32(), 4))),  # COCO xywh, original pixels, one per instance
        ("masks", pa.list_(RLE)),  # one per instance where there are masks
        ("keypoints", pa.list_(pa.list_(pa.float32(), 51))),  # 17 x (x, y, v) per person
        ("ignore_boxes", pa.list_(pa.list_(pa.float32(), 4))),  # crowd regions (iscrowd=1)
        ("ignore_masks", pa.list_(RLE)),
        ("source_ids", pa.list_(pa.string())),  # e.g. "ann:123", "ref:4/sent:9", "q:77", "llava:id/turn:0"
        ("heatmap", pa.binary()),  # PNG, uint8 grayscale M x M, 255 at each center; null for VQA
        ("centers", pa.list_(pa.list_(pa.int32(), 2))),  # heatmap pixel (x, y) per instance
        ("sizes", pa.list_(pa.list_(pa.float32(), 2))),  # (w, h) / S per instance: size targets
    ],
    metadata={"lumen.schema_version": str(SCHEMA_VERSION)},
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("record_id", pa.string()),
        ("reason", pa.string()),
    ]
)

COLUMNS = tuple(SAMPLE_SCHEMA.names)
