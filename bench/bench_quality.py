"""Quality benchmark: sample data -> shards -> stage 1 + stage 2 (tiny, CPU) -> every val metric.

    .venv/bin/python bench/bench_quality.py [--images 400] [--stage1-steps 2000] [--stage2-steps 500] [--out DIR]

Prints a table and writes metrics.json into --out. The whole run is meant to fit 15 minutes on
2 cores (stage 1 runs ~0.34 s per step of 16 on 2 idle cores, ~11.5 min for 2000 steps; about 14 min in all); the wall
and CPU time of each phase and the load average are printed, since a shared machine inflates the wall time.
Grounding accuracy is also given apart for spatial expressions ("the circle on the left") and the others.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its children: on a machine shared with other work
    the wall time is pessimistic; CPU seconds / 2 is what 2 dedicated cores would need at best."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--stage1-steps", type=int, default=2000)
    ap.add_argument("--stage2-steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default=None, help="keep everything here (default: a temp folder)")
    args = ap.parse_args()

    from lumen_model.predict import predict
    from lumen_model.train import TrainConfig, train
    from pipelines.evaluation import evaluate, refcoco_expressions
    from pipelines.layout import SOURCES, convert_partition
    from pipelines.sample_data import write_sample_data

    root = Path(args.out or tempfile.mkdtemp(prefix="lumen-quality-"))
    cpu = {}
    times, t = {}, time.perf_counter()
    write_sample_data(root / "sources", n_images=args.images)
    for s in SOURCES:
        convert_partition(s, root / "sources", root / "shards", input_size=128)
    times["data"] = time.perf_counter() - t
    cpu["data"] = _cpu_seconds() - sum(cpu.values())
    shard_dirs = sorted(str(p.parent) for p in (root / "shards").glob("*/*/manifest.json"))

    t = time.perf_counter()
    s1 = train(TrainConfig(stage=1, preset="tiny", shards=shard_dirs, out=str(root / "stage1"),
                           max_steps=args.stage1_steps, lr=args.lr, batch_size=args.batch_size))
    times["stage1"] = time.perf_counter() - t
    cpu["stage1"] = _cpu_seconds() - sum(cpu.values())
    t = time.perf_counter()
    s2 = train(TrainConfig(stage=2, preset="tiny", shards=shard_dirs, out=str(root / "stage2"), init=str(root / "stage1"),
                           max_steps=args.stage2_steps, lr=args.lr, batch_size=args.batch_size))
    times["stage2"] = time.perf_counter() - t
    cpu["stage2"] = _cpu_seconds() - sum(cpu.values())

    t = time.perf_counter()
    src = root / "sources"
    inst, kp = src / "coco/annotations/instances_val.json", src / "coco/annotations/person_keypoints_val.json"
    expr = root / "expressions_val.json"
    expr.write_text(json.dumps(refcoco_expressions(src / "refcoco", "val")))
    ck, img, pred = root / "stage2", src / "coco/images", root / "pred"
    metrics = {}
    predict(ck, "detection", img, pred / "bbox.json", annotations=inst, progress=False)
    metrics["detection"] = evaluate("bbox", inst, pred / "bbox.json")
    predict(ck, "instance_segmentation", img, pred / "segm.json", annotations=inst, progress=False)
    metrics["instance_segmentation"] = evaluate("segm", inst, pred / "segm.json")
    predict(ck, "pose", img, pred / "pose.json", annotations=kp, progress=False)
    metrics["pose"] = evaluate("keypoints", kp, pred / "pose.json")
    predict(ck, "grounding", img, pred / "grounding.json", expressions=expr, progress=False)
    metrics["grounding"] = evaluate("grounding", expr, pred / "grounding.json")
    predict(ck, "referring_segmentation", img, pred / "refseg.json", expressions=expr, progress=False)
    metrics["referring_segmentation"] = evaluate("refseg", expr, pred / "refseg.json")
    predict(ck, "vqa", img, pred / "vqa.json", questions=src / "vqa/v2_OpenEnded_mscoco_val_questions.json", progress=False)
    metrics["vqa"] = evaluate("vqa", src / "vqa/v2_mscoco_val_annotations.json", pred / "vqa.json")
    times["predict+evaluate"] = time.perf_counter() - t
    cpu["predict+evaluate"] = _cpu_seconds() - sum(cpu.values())

    summary = {
        "metrics": metrics, "seconds": {k: round(v, 1) for k, v in times.items()},
        "total_seconds": round(sum(times.values()), 1),
        "cpu_seconds": {k: round(v, 1) for k, v in cpu.items()}, "total_cpu_seconds": round(sum(cpu.values()), 1),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "train_samples_per_s": {"stage1": round(s1["samples_per_s"], 2), "stage2": round(s2["samples_per_s"], 2)},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "steps": {"stage1": args.stage1_steps, "stage2": args.stage2_steps}, "images": args.images,
    }
    (root / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{'task':26}{'metric':10}{'value':>8}")
    for task, keys in (("detection", ["AP", "AP50", "AP75"]), ("instance_segmentation", ["AP", "AP50"]),
                       ("pose", ["AP", "AP50"]), ("grounding", ["acc@0.5"]),
                       ("referring_segmentation", ["cIoU", "gIoU"]), ("vqa", ["accuracy"])):
        for k in keys:
            print(f"{task:26}{k:10}{metrics[task][k]:>8.3f}")
    kinds = metrics["grounding"]["by_kind"]
    print("grounding by kind: " + ", ".join(f"{k} {v['acc@0.5']:.3f} ({v['sentences']})" for k, v in kinds.items()))
    print(f"\nphases, wall (s): {summary['seconds']}  total {summary['total_seconds']} s")
    print(f"phases, CPU (s): {summary['cpu_seconds']}  total {summary['total_cpu_seconds']} s "
          f"(load average at the end: {summary['load_average_1min_at_end']})")
    print(f"train samples/s: {summary['train_samples_per_s']}  peak RSS {summary['peak_rss_mb']} MB")
    print(f"goals: grounding acc@0.5 >= 0.8, detection AP50 >= 0.6; everything kept in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
