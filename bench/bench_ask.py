"""Ask latency and identity: one instruction about one image, as the App's "Ask Lumen" runs it.

    .venv/bin/python bench/bench_ask.py [--checkpoint DIR] [--instructions 60] [--threads 2] [--out DIR]

Without --checkpoint it makes a tiny model first (demo data, 24 stage-1 + 4 stage-2 steps, about a
minute on 2 cores; the same recipe as tests/fixtures_model.py): latency depends on the preset, not on
how well the model is trained. Then, on the val images:
- latency: `load_asker(checkpoint).ask(image, instruction)` for a mix of instructions (every object of a
  kind, one object, one object's mask, a question), the model loaded once; the first call (warm-up:
  lazy allocations, caches) is reported apart. Wall p50 / p95 per instruction, heatmap at image size
  included, and the CPU seconds per call (this process's; on a shared machine the fair figure);
- identity: `lumen predict` (batches of 16) on the same images and instructions, detection and
  grounding; every answer's boxes and scores must equal predict's results, as written (rounded).
Goal (issue 30): p95 <= 0.5 s per instruction on the tiny preset, 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_tiny_model(root: Path) -> Path:
    """Demo data -> shards -> a briefly trained tiny stage-1 + stage-2 checkpoint (tests/fixtures_model.py)."""
    from lumen_model.train import TrainConfig, train
    from pipelines.layout import SOURCES, convert_partition
    from pipelines.sample_data import write_sample_data

    write_sample_data(root / "sources", n_images=60, seed=0)
    for s in SOURCES:
        convert_partition(s, root / "sources", root / "shards", input_size=128)
    shards = sorted(str(p.parent) for p in (root / "shards").glob("*/*/manifest.json"))
    train(TrainConfig(stage=1, preset="tiny", shards=shards, out=str(root / "stage1"), max_steps=24, batch_size=8,
                      lr=2e-3, warmup_steps=4, progress=False))
    train(TrainConfig(stage=2, preset="tiny", shards=shards, out=str(root / "stage2"), init=str(root / "stage1"),
                      max_steps=4, batch_size=4, progress=False))
    return root / "stage2"


def instruction_mix(sources: Path, n: int) -> list[tuple[str, str, str, dict]]:
    """n (image path, typed instruction, task, what predict calls it) over the val images, round robin."""
    from pipelines.evaluation import refcoco_expressions

    coco = json.loads((sources / "coco/annotations/instances_val.json").read_text())
    images = {im["id"]: str(sources / "coco/images" / im["file_name"]) for im in coco["images"]}
    cats = coco["categories"]
    expressions = refcoco_expressions(sources / "refcoco", "val")
    questions = json.loads((sources / "vqa/v2_OpenEnded_mscoco_val_questions.json").read_text())["questions"]
    ids = sorted(images)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            c = cats[i // 4 % len(cats)]
            out.append((images[ids[i % len(ids)]], f"every {c['name']}", "detection",
                        {"image_id": ids[i % len(ids)], "category_id": c["id"]}))
        elif kind in (1, 2):
            e = expressions[i // 4 % len(expressions)]
            out.append((str(sources / "coco/images" / e["file_name"]), e["expression"],
                        "grounding" if kind == 1 else "referring_segmentation", {"sent_id": e["sent_id"]}))
        else:
            q = questions[i // 4 % len(questions)]
            out.append((str(sources / "coco/images" / f"{q['image_id']:012d}.jpg"), q["question"], "vqa", {}))
    return out


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def measure(checkpoint: Path, mix: list) -> tuple[dict, list]:
    """Latency of each ask, the model loaded once (the first call apart)."""
    from lumen_model.ask import load_asker

    t = time.perf_counter()
    asker = load_asker(checkpoint)
    load_s = time.perf_counter() - t
    rows = []
    for image, text, task, _ in mix:
        c, t = time.process_time(), time.perf_counter()
        a = asker.ask(image, text, task)
        rows.append({"task": task, "wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c,
                     "answer": a})
    return {"load_s": load_s, "first": rows[0], "rest": rows[1:]}, rows


def identity(checkpoint: Path, sources: Path, mix: list, rows: list, out: Path, batch_size: int) -> dict:
    """`lumen predict` (batches of `batch_size`) on the same images and instructions (detection, grounding): are
    the answers' boxes and scores the ones it writes? Also the largest difference where they are not."""
    from lumen_model.predict import predict
    from pipelines.evaluation import refcoco_expressions

    det = [(m, r) for m, r in zip(mix, rows) if m[2] == "detection"]
    grd = [(m, r) for m, r in zip(mix, rows) if m[2] == "grounding"]
    coco = json.loads((sources / "coco/annotations/instances_val.json").read_text())
    wanted = {m[3]["image_id"] for m, _ in det}
    coco["images"] = [im for im in coco["images"] if im["id"] in wanted]
    coco["annotations"] = []
    (out / "images.json").write_text(json.dumps(coco))
    predict(checkpoint, "detection", sources / "coco/images", out / f"det_b{batch_size}.json",
            annotations=out / "images.json", progress=False, batch_size=batch_size)
    by = defaultdict(list)
    for r in json.loads((out / f"det_b{batch_size}.json").read_text()):
        by[(r["image_id"], r["category_id"])].append((r["bbox"], r["score"]))
    sents = {m[3]["sent_id"] for m, _ in grd}
    (out / "expr.json").write_text(json.dumps([e for e in refcoco_expressions(sources / "refcoco", "val")
                                               if e["sent_id"] in sents]))
    predict(checkpoint, "grounding", sources / "coco/images", out / f"grd_b{batch_size}.json",
            expressions=out / "expr.json", progress=False, batch_size=batch_size)
    grd_rows = json.loads((out / f"grd_b{batch_size}.json").read_text())
    grd_by = {r["sent_id"]: [(r["bbox"], r["score"])] for r in grd_rows}
    same, worst = 0, 0.0
    for (_, _, task, meta), row in det + grd:
        j = row["answer"].to_json(masks=False)
        got = list(zip(j["boxes"], j["scores"]))
        want = by.get((meta["image_id"], meta["category_id"]), []) if task == "detection" else grd_by[meta["sent_id"]]
        same += got == want
        if got != want and len(got) == len(want):
            worst = max(worst, *(abs(a - b) for (gb, gs), (wb, ws) in zip(got, want)
                                 for a, b in zip(gb + [gs], wb + [ws])))
        elif got != want:
            worst = float("inf")
    return {"batch_size": batch_size, "compared": len(det) + len(grd), "identical": same, "max_abs_difference": worst}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="checkpoint folder (default: train a tiny one first)")
    ap.add_argument("--sources", help="demo sources folder with coco/, refcoco/, vqa/ (default: made with the model)")
    ap.add_argument("--instructions", type=int, default=60, help="instructions asked (default: 60)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2, the goal's cores)")
    ap.add_argument("--out", help="keep the model and predictions here (default: a temp folder)")
    args = ap.parse_args()
    if args.checkpoint and not args.sources:
        ap.error("--checkpoint needs --sources (the demo sources folder its val images come from)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # the goal is on CPU cores
    root = Path(args.out or tempfile.mkdtemp(prefix="lumen-ask-"))
    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    checkpoint = Path(args.checkpoint) if args.checkpoint else make_tiny_model(root)
    sources = Path(args.sources) if args.sources else root / "sources"
    if not args.checkpoint:
        print(f"tiny model made in {time.perf_counter() - t:.0f} s: {checkpoint}")
    mix = instruction_mix(sources, args.instructions)
    lat, rows = measure(checkpoint, mix)
    # one instruction per batch: the same arithmetic as ask, so the same bits; predict's usual batches of 16 compute
    # the same sums in another order (BLAS blocking), so a value may move in its last float bits
    same = [identity(checkpoint, sources, mix, rows, root, b) for b in (1, 16)]
    rest = lat["rest"]
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch threads {args.threads}")
    print(f"model load {lat['load_s']:.2f} s; first call {lat['first']['wall_s']:.3f} s ({lat['first']['task']})")
    print(f"{'task':24}{'n':>4}{'p50 s':>8}{'p95 s':>8}{'cpu p50':>9}{'cpu p95':>9}")
    for task in ("all", "detection", "grounding", "referring_segmentation", "vqa"):
        r = rest if task == "all" else [x for x in rest if x["task"] == task]
        w, c = [x["wall_s"] for x in r], [x["cpu_s"] for x in r]
        print(f"{task:24}{len(r):>4}{percentile(w, 50):>8.3f}{percentile(w, 95):>8.3f}"
              f"{percentile(c, 50):>9.3f}{percentile(c, 95):>9.3f}")
    p95 = percentile([x["wall_s"] for x in rest], 95)
    print(f"goal p95 <= 0.5 s: {'met' if p95 <= 0.5 else 'NOT met'} (p95 {p95:.3f} s wall)")
    for x in same:
        print(f"identical to lumen predict --batch-size {x['batch_size']} (boxes and scores as written): "
              f"{x['identical']} of {x['compared']} answers; largest difference {x['max_abs_difference']:g}")
    summary = {"load_s": lat["load_s"], "first_s": lat["first"]["wall_s"],
               "p50_s": percentile([x["wall_s"] for x in rest], 50), "p95_s": p95,
               "cpu_p50_s": percentile([x["cpu_s"] for x in rest], 50),
               "cpu_p95_s": percentile([x["cpu_s"] for x in rest], 95), "identity": same,
               "load_average": os.getloadavg()[0], "instructions": len(mix), "threads": args.threads}
    (root / "bench_ask.json").write_text(json.dumps(summary, indent=2))
    return 0 if same[0]["identical"] == same[0]["compared"] else 1


if __name__ == "__main__":
    sys.exit(main())
