"""Conversion benchmark: a COCO val2017-scale instances file -> detection + instance-seg shards.

    .venv/bin/python bench/bench_convert.py [--images 5000] [--baseline-images 150]

Generates (without images) 5,000 images with ~36,800 instances over 80 categories, COCO-like
counts per image and box sizes (many small), with polygons; converts them with
`pipelines.convert.convert_source` and with a plain per-annotation Python implementation written
only for this comparison (run on a subset and extrapolated, since it is slow). Prints samples/s,
wall time, peak memory and shard bytes per sample.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_coco(n_images: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    cats = [{"id": i + 1, "name": f"category_{i + 1:02d}", "supercategory": "thing"} for i in range(80)]
    cat_p = rng.dirichlet(np.full(80, 0.3))  # a few frequent categories, a long tail (like COCO)
    images, anns, ann_id = [], [], 0
    for i in range(n_images):
        w, h = (640, int(rng.integers(360, 640))) if rng.random() < 0.7 else (int(rng.integers(360, 640)), 640)
        images.append({"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": w, "height": h})
        n = min(60, int(rng.geometric(1 / 7.36)))  # mean ~7.36 instances per image (36.8k / 5k)
        img_cats = rng.choice(80, size=max(1, min(n, int(rng.integers(1, 6)))), p=cat_p, replace=False)
        for _ in range(n):
            ann_id += 1
            area = float(np.exp(rng.normal(7.0, 1.9)))  # log-normal: ~41% small, ~34% medium, ~25% large
            area = min(max(area, 12.0), w * h * 0.8)
            ar = float(np.exp(rng.normal(0, 0.6)))
            bw, bh = min(w - 1, math.sqrt(area * ar)), min(h - 1, math.sqrt(area / ar))
            x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
            k = int(rng.integers(8, 24))
            t = np.sort(rng.uniform(0, 2 * np.pi, k))
            poly = np.stack([x + bw / 2 * (1 + np.cos(t)), y + bh / 2 * (1 + np.sin(t))], 1).round(2).reshape(-1)
            anns.append({"id": ann_id, "image_id": i + 1, "category_id": int(img_cats[int(rng.integers(len(img_cats)))]) + 1,
                         "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)], "area": round(bw * bh * 0.78, 2),
                         "iscrowd": 0, "segmentation": [poly.tolist()]})
    return {"images": images, "annotations": anns, "categories": cats}


def baseline_convert(coco: dict, out: Path, input_size: int = 448, n_images: int | None = None) -> int:
    """The plain way: one annotation at a time, per-pixel Python Gaussians, row dicts."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from pycocotools import mask as mask_utils

    m = input_size // 4
    images = {im["id"]: im for im in coco["images"][:n_images]}
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    groups: dict = {}
    for a in coco["annotations"]:
        if a["image_id"] in images:
            groups.setdefault((a["image_id"], a["category_id"]), []).append(a)
    rows = []
    for (im_id, cat), anns in sorted(groups.items()):
        im = images[im_id]
        scale = input_size / max(im["width"], im["height"])
        ox, oy = (input_size - im["width"] * scale) / 2, (input_size - im["height"] * scale) / 2
        for task in ("detection", "instance_segmentation"):
            heat = [[0.0] * m for _ in range(m)]
            masks = []
            for a in anns:
                x, y, w, h = a["bbox"]
                cx = int(((x + w / 2) * scale + ox) * m / input_size)
                cy = int(((y + h / 2) * scale + oy) * m / input_size)
                hw, hh = math.ceil(w * scale * m / input_size), math.ceil(h * scale * m / input_size)
                r = max(0, int(_radius(hh, hw)))
                sigma = (2 * r + 1) / 6
                for py in range(m):
                    for px in range(m):
                        g = math.exp(-((px - cx) ** 2 + (py - cy) ** 2) / (2 * sigma * sigma))
                        if abs(px - cx) <= r and abs(py - cy) <= r and g > heat[py][px]:
                            heat[py][px] = g
                rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], im["height"], im["width"]))
                masks.append({"size": rle["size"], "counts": rle["counts"].decode()})
            buf = io.BytesIO()
            Image.fromarray(np.array([[round(v * 255) for v in row] for row in heat], dtype=np.uint8)).save(buf, "PNG")
            rows.append({"task": task, "image_id": im_id, "category": cats[cat], "boxes": [a["bbox"] for a in anns],
                         "masks": masks, "heatmap": buf.getvalue(), "source_ids": [f"ann:{a['id']}" for a in anns]})
    pq.write_table(pa.Table.from_pylist(rows), out, compression="zstd")
    return len(rows)


def _radius(h, w, o=0.7):
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2, c2 = 2 * (h + w), (1 - o) * w * h
    r2 = (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--baseline-images", type=int, default=150, help="baseline subset (extrapolated)")
    ap.add_argument("--input-size", type=int, default=448)
    args = ap.parse_args()
    from pipelines.convert import convert_source

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        coco = make_coco(args.images)
        src = tmp / "instances_val2017.json"
        src.write_text(json.dumps(coco))
        n_ann = len(coco["annotations"])
        print(f"input: {len(coco['images'])} images, {n_ann} instances, 80 categories, {src.stat().st_size / 1e6:.1f} MB")

        t0 = time.perf_counter()
        m = convert_source("coco", src, tmp / "shards", input_size=args.input_size, negative_ratio=0.0, progress=False)
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        n = m["counts"]["samples_written"]
        shard_bytes = sum((tmp / "shards" / s["file"]).stat().st_size for s in m["shards"])

        t0 = time.perf_counter()
        nb = baseline_convert(coco, tmp / "baseline.parquet", args.input_size, args.baseline_images)
        base_wall = time.perf_counter() - t0
        base_rate = nb / base_wall

    rate = n / wall
    print(f"{'':24}{'lumen convert':>16}{'baseline':>16}")
    print(f"{'samples':24}{n:>16}{nb:>16}   (baseline on {args.baseline_images} images)")
    print(f"{'wall time (s)':24}{wall:>16.2f}{base_wall:>16.2f}")
    print(f"{'samples/s':24}{rate:>16.0f}{base_rate:>16.1f}")
    print(f"{'instances/s':24}{n_ann / wall:>16.0f}")
    print(f"{'whole file (s)':24}{wall:>16.2f}{n / base_rate:>16.1f}   (baseline extrapolated)")
    print(f"{'peak RSS (MB)':24}{peak_mb:>16.0f}")
    print(f"{'shard bytes/sample':24}{shard_bytes / n:>16.0f}")
    print(f"speed-up: {rate / base_rate:.1f}x   goal: >= 10x and whole file < 30 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
