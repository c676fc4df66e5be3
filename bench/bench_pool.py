"""The unlabeled pool at COCO size (issue 33): planning it into partitions, and pseudo-labels per worker.

    .venv/bin/python bench/bench_pool.py [--plan-images 123403] [--images 32] [--checkpoint DIR]
                                         [--threads 2] [--partition-size 1000] [--skip-throughput] [--pair]
                                         [--stack [--per-phase 4] [--stack-partition-size 200]]

1. Planning: a synthetic pool file of `--plan-images` COCO image_info records (COCO's unlabeled set is
   123,403 images; the records carry the same keys as COCO's), planned into partitions by
   `pipelines.pool_partitions.plan_pool` in a child process: wall seconds and that process's peak RSS
   (goals: <= 10 s, <= 1 GB). A second plan of the same file (nothing new) is timed too.
2. Throughput of one worker: `lumen_model.predict.predict` (instance segmentation, what `pool_pseudo_labels`
   runs) on `--images` demo pool images with `--threads` torch threads, one view (flip_tta off) and two
   (flip_tta on, the default). The fixed cost (model load, files) is measured with a one-image run and
   taken off: images/s = (N - 1) / (t(N) - t(1)). Without --checkpoint a tiny model is made first
   (bench_ask's recipe, about a minute): speed depends on the preset, not the training.
3. `--pair`: what one host's cores allow two workers, without any stack: the same labelling (one view, one torch
   thread, `--images` images) in one process alone, then in two processes at once; the ratio of images/s is the
   ceiling of the Celery drill's two-worker speed-up on this host (cores that share caches or memory bandwidth
   give less than x2 to two busy processes).
4. `--stack`: the real local stack (deploy/local_stack.py: PostgreSQL, Redis, Celery, two gpu workers with one
   torch thread each, dagster-daemon, the webserver, mongod). `--per-phase` partitions (default 4) of
   `--stack-partition-size` images (default 200) labelled by one gpu worker (the `gpu` pool at one slot), then
   as many others by two; one label_pool run per partition, all launched at once, as the sensor asks them.
   Printed: images/s of each phase end to end (first launch to last run's success: launches, labelling,
   pushes), the labelling steps' span, each partition's labelling seconds alone and beside the other worker
   (what the host's two cores give two busy processes), and a gpu slot's idle seconds between two partitions
   (a step's end to the next waiting step's start). The pool drill in tests/test_pool_partitions.py checks the same flow with two partitions a
   phase; this is its measurement, long enough that a phase's first launch and last push weigh less.
5. The projection for 123,403 images on 1, 8 and 64 workers: each worker labels whole partitions, so
   hours = (images / images_per_s + partitions * fixed_s) / workers, assuming workers do not slow each
   other (one GPU each, or their own cores) and the review push keeps up; the real stack's two-worker
   speed-up is what `--stack` measures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COCO_UNLABELED = 123_403
PLAN_CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from pipelines.pool_partitions import plan_pool
t1 = time.perf_counter()
plan = plan_pool([sys.argv[1]], sys.argv[2], max_size=int(sys.argv[3]))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "plan_s": t2 - t1, "partitions": len(plan.partitions),
                  "new_partitions": len(plan.new_partitions), "images_new": plan.images_new,
                  "quarantined": plan.quarantined,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_synthetic_pool(path: Path, n: int) -> None:
    """n image records shaped like COCO's image_info_unlabeled2017.json (plus its 80 categories' shape)."""
    with open(path, "w") as f:
        f.write('{"info": {"description": "synthetic pool"}, "licenses": [], "images": [')
        for i in range(n):
            im = {"license": 1 + i % 8, "file_name": f"{i + 1:012d}.jpg", "coco_url": f"http://x/{i + 1:012d}.jpg",
                  "height": 480, "width": 640, "date_captured": "2013-11-14 11:18:45", "id": i + 1}
            f.write(("," if i else "") + json.dumps(im))
        cats = [{"supercategory": "shape", "id": k + 1, "name": f"class{k + 1}"} for k in range(80)]
        f.write('], "categories": ' + json.dumps(cats) + "}")


def bench_planning(n: int, partition_size: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    pool = work / "image_info_unlabeled.json"
    t0 = time.perf_counter()
    write_synthetic_pool(pool, n)
    written_s = time.perf_counter() - t0
    out = {"images": n, "pool_file_mb": round(pool.stat().st_size / 2**20, 1),
           "write_file_s": round(written_s, 1)}
    for name in ("first", "again"):
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", PLAN_CHILD, str(pool), str(work / "plan"), str(partition_size)],
                             capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[1]))
        wall = time.perf_counter() - t0
        if res.returncode:
            raise SystemExit(f"planning failed: {res.stderr.strip().splitlines()[-1:]}")
        child = json.loads(res.stdout.strip().splitlines()[-1])
        out[name] = {"process_wall_s": round(wall, 2), "plan_s": round(child["plan_s"], 2),
                     "peak_rss_mb": round(child["peak_rss_mb"]), "partitions": child["partitions"],
                     "new_partitions": child["new_partitions"], "quarantined": child["quarantined"]}
    return out


def bench_throughput(checkpoint: Path, n: int, threads: int, work: Path) -> dict:
    import torch

    from lumen_model.predict import predict
    from pipelines.layout import IMAGES_DIR, pool_file
    from pipelines.sample_data import write_sample_data

    torch.set_num_threads(threads)
    sources = work / "sources"
    write_sample_data(sources, n_images=20, seed=0, pool=max(n, 2))
    info = json.loads(pool_file(sources).read_text())
    one = work / "one.json"
    one.write_text(json.dumps({**info, "images": info["images"][:1]}))
    out = {}
    for views, tta in ((1, False), (2, True)):
        times = {}
        for name, ann in (("one", one), ("all", pool_file(sources))):
            t0 = time.perf_counter()
            predict(checkpoint, "instance_segmentation", sources / IMAGES_DIR, work / f"p{views}_{name}" / "segm.json",
                    annotations=ann, progress=False, flip_tta=tta)
            times[name] = time.perf_counter() - t0
        per_image = max(times["all"] - times["one"], 1e-9) / max(n - 1, 1)
        out[f"{views}_view{'s' if views > 1 else ''}"] = {
            "images": n, "images_per_s": round(1 / per_image, 2), "fixed_s": round(max(times["one"] - per_image, 0), 2),
            "wall_s": round(times["all"], 2)}
    return out


PAIR_CHILD = """
import json, sys, time
import torch
torch.set_num_threads(1)
from lumen_model.predict import predict
t = time.perf_counter()
predict(sys.argv[1], "instance_segmentation", sys.argv[2], sys.argv[3], annotations=sys.argv[4], progress=False,
        flip_tta=False)
print(json.dumps({"s": time.perf_counter() - t}))
"""


def bench_pair(checkpoint: Path, n: int, work: Path) -> dict:
    """One 1-thread labelling process alone, then two at once on the same images: images/s of each."""
    from pipelines.layout import IMAGES_DIR, pool_file
    from pipelines.sample_data import write_sample_data

    sources = work / "sources"
    write_sample_data(sources, n_images=20, seed=0, pool=max(n, 2))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))

    def start(tag: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", PAIR_CHILD, str(checkpoint), str(sources / IMAGES_DIR),
                                 str(work / f"{tag}.json"), str(pool_file(sources))], env=env, stdout=subprocess.PIPE,
                                text=True)

    def seconds(proc: subprocess.Popen) -> float:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"bench_pool --pair: a labelling process failed (exit {proc.returncode})")
        return json.loads(out.strip().splitlines()[-1])["s"]

    start("warm").communicate()  # the first run reads the files and fills the caches; not timed
    alone = seconds(start("alone"))
    pair = [start("a"), start("b")]
    both = [seconds(p) for p in pair]
    one_rate, two_rate = n / alone, 2 * n / max(both)
    return {"images": n, "alone_s": round(alone, 2), "pair_s": [round(x, 2) for x in both],
            "one_images_per_s": round(one_rate, 2), "two_images_per_s": round(two_rate, 2),
            "ceiling": round(two_rate / one_rate, 2)}


def bench_stack(checkpoint: Path, per_phase: int, partition_size: int, work: Path) -> dict:
    """One gpu worker, then two, on the local stack: see the module's docstring (4.)."""
    from deploy.local_stack import LocalStack
    from deploy.stack_runs import add_dynamic_partition, launch, step_error, step_events, step_span, timeline, wait_run
    from pipelines.model_registry import ModelRegistry
    from pipelines.pool_partitions import plan_pool, pool_files
    from pipelines.sample_data import write_sample_data

    step = "pool_pseudo_labels"
    stack = LocalStack(work / "stack", images=20, gpu_workers=2)
    stack.data_root.mkdir(parents=True)
    write_sample_data(stack.data_root / "sources", n_images=20, seed=7, pool=2 * per_phase * partition_size)
    plan = plan_pool(pool_files(stack.data_root / "sources"), stack.data_root / "pool_plan", max_size=partition_size)
    keys = sorted(plan.partitions)
    ModelRegistry(stack.data_root / "models" / "registry.json").decide(
        {"version": "v0001", "checkpoint_dir": str(checkpoint), "metrics": {}}, passed=True, reason="pool bench")
    print(f"[stack] starting PostgreSQL, Redis, mongod, 3 Celery workers, the daemon and the webserver in {work}")
    stack.start()
    try:
        from assets_defs.partitions import pool_partitions

        for k in keys:
            add_dynamic_partition(stack, pool_partitions.name, k)
        promote = launch(stack, "promote_model", {})
        if wait_run(stack, promote) != "SUCCESS":
            raise SystemExit(f"bench_pool --stack: promote_model failed: {step_error(stack, promote)[-2000:]}")

        def phase(slots: int, part_keys: list[str]) -> dict:
            stack.set_gpu_slots(slots)
            ops = {step: {"config": {"flip_tta": False, "batch_size": 16}}}
            t0, epoch = time.monotonic(), time.time()
            runs = [launch(stack, "label_pool", ops, {"dagster/partition": k}) for k in part_keys]
            for r in runs:
                if wait_run(stack, r, timeout=3600) != "SUCCESS":
                    raise SystemExit(f"bench_pool --stack: run {r} failed: {step_error(stack, r)[-2000:]}")
            wall = time.monotonic() - t0
            for r in runs:
                print(f"[stack]   {timeline(stack, r, epoch)}")
            images = len(part_keys) * partition_size
            # a gpu slot's idle seconds while a partition waited: a step's success to the start of the step that
            # took its slot next (the first `slots` starts took free slots)
            events = sorted((e["ts"], e["type"]) for r in runs for e in step_events(stack, r)
                            if e["step"] == step and e["type"] in ("STEP_START", "STEP_SUCCESS"))
            freed, starts, idle = [], 0, []
            for ts, kind in events:
                if kind == "STEP_SUCCESS":
                    freed.append(ts)
                else:
                    starts += 1
                    if starts > slots:
                        idle.append(ts - freed.pop(0))
            labelling = step_span(stack, runs, step)
            return {"workers": slots, "partitions": len(part_keys), "images": images, "wall_s": round(wall, 1),
                    "images_per_s": round(images / wall, 3), "labelling_span_s": round(labelling, 1),
                    "labelling_images_per_s": round(images / labelling, 3),
                    "partition_labelling_s": [round(step_span(stack, [r], step), 1) for r in runs],
                    "idle_between_partitions_s": [round(x, 1) for x in idle]}

        one = phase(1, keys[:per_phase])
        two = phase(2, keys[per_phase:2 * per_phase])
    finally:
        stack.stop()
    return {"partition_size": partition_size, "one_worker": one, "two_workers": two,
            "speedup": round(two["images_per_s"] / one["images_per_s"], 2),
            "labelling_speedup": round(two["labelling_images_per_s"] / one["labelling_images_per_s"], 2),
            "load_average_at_end": os.getloadavg(), "cpu_cores": os.cpu_count()}


def projection(rate: dict, partition_size: int, images: int = COCO_UNLABELED) -> list[dict]:
    partitions = -(-images // partition_size)
    rows = []
    for workers in (1, 8, 64):
        busy = min(workers, partitions)
        hours = (images / rate["images_per_s"] + partitions * rate["fixed_s"]) / busy / 3600
        rows.append({"workers": workers, "hours": round(hours, 2)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan-images", type=int, default=COCO_UNLABELED)
    ap.add_argument("--partition-size", type=int, default=1000)
    ap.add_argument("--images", type=int, default=32, help="pool images per throughput run (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", default=None, help="a stage-2 checkpoint (default: a tiny one made first)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--pair", action="store_true", help="also: one 1-thread labelling process alone, then two at "
                                                        "once: the host's ceiling for two workers")
    ap.add_argument("--stack", action="store_true", help="also: one gpu worker, then two, on the real local stack "
                                                         "(PostgreSQL + Celery): the end-to-end speed-up")
    ap.add_argument("--per-phase", type=int, default=4, help="partitions per --stack phase (default %(default)s)")
    ap.add_argument("--stack-partition-size", type=int, default=200)
    ap.add_argument("--out", default=None, help="work folder (default: a temp folder, removed)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with tempfile.TemporaryDirectory(prefix="bench_pool_") as tmp:
        work = Path(args.out or tmp)
        work.mkdir(parents=True, exist_ok=True)
        plan = bench_planning(args.plan_images, args.partition_size, work / "planning")
        first = plan["first"]
        print(f"[plan] {plan['images']} images ({plan['pool_file_mb']} MB json) -> {first['partitions']} partitions "
              f"of <= {args.partition_size}: {first['plan_s']} s planning ({first['process_wall_s']} s with the "
              f"process start), peak RSS {first['peak_rss_mb']} MB (goals <= 10 s, <= 1024 MB); "
              f"again (nothing new): {plan['again']['plan_s']} s, {plan['again']['new_partitions']} new partitions")
        result = {"planning": plan}
        if not args.skip_throughput or args.pair or args.stack:
            from bench.bench_ask import make_tiny_model

            ckpt = Path(args.checkpoint) if args.checkpoint else make_tiny_model(work / "model")
        if args.pair:
            pair = bench_pair(ckpt, args.images, work / "pair")
            result["pair"] = pair
            print(f"[pair] {pair['images']} images, 1 thread, one view: one process alone {pair['alone_s']} s "
                  f"({pair['one_images_per_s']} images/s); two at once {pair['pair_s']} s ({pair['two_images_per_s']} "
                  f"images/s together): this host gives two workers x{pair['ceiling']} of one")
        if args.stack:
            st = bench_stack(ckpt, args.per_phase, args.stack_partition_size, work / "stack")
            result["stack"] = st
            for name in ("one_worker", "two_workers"):
                ph = st[name]
                print(f"[stack] {ph['workers']} gpu worker(s), {ph['partitions']} x {st['partition_size']} images: "
                      f"{ph['wall_s']} s end to end ({ph['images_per_s']} images/s), labelling steps "
                      f"{ph['labelling_span_s']} s ({ph['labelling_images_per_s']} images/s); a partition's "
                      f"labelling {ph['partition_labelling_s']} s; a slot idle between partitions {ph['idle_between_partitions_s']} s")
            print(f"[stack] two workers / one: x{st['speedup']} end to end, x{st['labelling_speedup']} the labelling "
                  f"steps (goal 1.7)")
        if not args.skip_throughput:
            rates = bench_throughput(ckpt, args.images, args.threads, work / "throughput")
            result["throughput"] = rates
            result["projection"] = {}
            for name, r in rates.items():
                rows = projection(r, args.partition_size)
                result["projection"][name] = rows
                print(f"[worker] {name.replace('_', ' ')}: {r['images_per_s']} images/s ({args.threads} threads, "
                      f"{r['images']} images, fixed {r['fixed_s']} s a partition); 123,403 images: "
                      + ", ".join(f"{row['hours']} h on {row['workers']} worker(s)" for row in rows))
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
