"""Conversion benchmark: a COCO val2017-scale instances file -> detection + instance-seg shards.

    .venv/bin/python bench/bench_convert.py [--images 5000] [--baseline-images 250]

Generates (without images) 5,000 images with ~36,800 instances over 80 categories, COCO-like
counts per image and box sizes (many small), with polygons; converts them with
`pipelines.convert.convert_source` and with a plain per-annotation Python implementation written
only for this comparison (run on a subset and extrapolated, since it is slow). Prints samples/s,
wall time, peak memory and shard bytes per sample.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
import io
import math
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from synth_sources import dump_json, make_coco  # noqa: E402  (bench/ is the script folder, on sys.path)


def baseline_convert(coco: dict, out: Path, input_size: int = 448, n_images: int | None = None) -> int:
    """The plain way: one annotation at a time, per-pixel Python Gaussians (inside each
    Gaussian's window only), one row dict per sample, one pyarrow conversion at the end.
    It does less than `convert_source` (no validation, quarantine, negatives or accounting)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from pycocotools import mask as mask_utils

    m = input_size // 4
    images = {im["id"]: im for im in coco["images"][:n_images]}
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    groups: dict = {}
    for a in coco["annotations"]:
        if a["image_id"] in images and not a["iscrowd"]:
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
                for py in range(max(0, cy - r), min(m, cy + r + 1)):
                    for px in range(max(0, cx - r), min(m, cx + r + 1)):
                        g = math.exp(-((px - cx) ** 2 + (py - cy) ** 2) / (2 * sigma * sigma))
                        if g > heat[py][px]:
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


def _convert_in_child(src: str, out: str, input_size: int, negative_ratio: float) -> dict:
    """Runs in a fresh process so its peak RSS is the conversion's own."""
    t0 = time.perf_counter()
    from pipelines.convert import convert_source  # noqa: F401  (import cost reported apart)

    t_import = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    m = convert_source("coco", src, out, input_size=input_size, negative_ratio=negative_ratio, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall": wall, "cpu": cpu, "import": t_import, "samples": m["counts"]["samples_written"],
            "read": m["counts"]["records_read"], "quarantined": m["counts"]["records_quarantined"],
            "bytes": sum((Path(out) / s["file"]).stat().st_size for s in m["shards"]),
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--baseline-images", type=int, default=250, help="baseline subset (extrapolated)")
    ap.add_argument("--input-size", type=int, default=448)
    args = ap.parse_args()
    spawn = mp.get_context("spawn")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        coco = make_coco(args.images)
        src = tmp / "instances_val2017.json"
        dump_json(coco, src)
        n_ann = len(coco["annotations"])
        n_crowd = sum(a["iscrowd"] for a in coco["annotations"])
        print(f"input: {len(coco['images'])} images, {n_ann} instances ({n_crowd} crowd), 80 categories, "
              f"{src.stat().st_size / 1e6:.1f} MB, S={args.input_size}, M={args.input_size // 4}")
        runs = {}
        for name, ratio in (("no negatives", 0.0), ("negatives 0.5", 0.5)):
            with ProcessPoolExecutor(1, mp_context=spawn) as pool:  # one fresh process per run
                runs[name] = pool.submit(_convert_in_child, str(src), str(tmp / f"shards-{ratio}"), args.input_size,
                                         ratio).result()
        t0, c0 = time.perf_counter(), time.process_time()
        nb = baseline_convert(coco, tmp / "baseline.parquet", args.input_size, args.baseline_images)
        base_wall, base_cpu = time.perf_counter() - t0, time.process_time() - c0
        base_bytes = (tmp / "baseline.parquet").stat().st_size

    base_rate = nb / base_wall
    cols = list(runs) + ["baseline"]
    print(f"\n{'':26}" + "".join(f"{c:>18}" for c in cols))

    def line(label, values):
        print(f"{label:26}" + "".join(f"{v:>18}" for v in values))

    line("samples", [r["samples"] for r in runs.values()] + [f"{nb} ({args.baseline_images} img)"])
    line("wall time (s)", [f"{r['wall']:.2f}" for r in runs.values()] + [f"{base_wall:.2f}"])
    line("cpu time (s)", [f"{r['cpu']:.2f}" for r in runs.values()] + [f"{base_cpu:.2f}"])
    line("samples/s", [f"{r['samples'] / r['wall']:.0f}" for r in runs.values()] + [f"{base_rate:.1f}"])
    line("samples/cpu-s", [f"{r['samples'] / r['cpu']:.0f}" for r in runs.values()] + [f"{nb / base_cpu:.1f}"])
    line("annotations/s", [f"{n_ann / r['wall']:.0f}" for r in runs.values()] + ["-"])
    line("whole file (s)", [f"{r['wall']:.2f}" for r in runs.values()] + [f"{runs['no negatives']['samples'] / base_rate:.1f} (extrap.)"])
    line("peak RSS (MB)", [f"{r['maxrss_mb']:.0f}" for r in runs.values()] + ["-"])
    line("shard bytes/sample", [f"{r['bytes'] / r['samples']:.0f}" for r in runs.values()] + [f"{base_bytes / nb:.0f}"])
    line("records read/quarantined", [f"{r['read']}/{r['quarantined']}" for r in runs.values()] + ["-"])
    first = runs["no negatives"]
    print(f"\nimport time of pipelines.convert: {first['import']:.2f} s (not in wall time)")
    print(f"speed-up over the baseline (same samples, no negatives): {first['samples'] / first['wall'] / base_rate:.1f}x wall, "
          f"{first['samples'] / first['cpu'] / (nb / base_cpu):.1f}x cpu   goal: >= 10x and the whole file < 30 s")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end (other work slows wall time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
