"""Full-size sources on one machine: conversion, catalog, training Dataset, batch loading, review.

    .venv/bin/python bench/bench_scale.py [--scale 1.0] [--workdir DIR] [--workers N] [--skip-review]

Writes synthetic sources in the real formats at full size (COCO train2017-scale instances and
person keypoints, RefCOCO unc-scale refs, VQAv2-train-scale questions + answers,
LLaVA-Instruct-158k-scale conversations; images are hard links to one real JPEG), then runs each
step in a FRESH process and prints its wall time, CPU time (the process and its workers) and peak
memory: the proportional set size (PSS) summed over the step's process tree, sampled every second
(pages that forked workers share with their parent count once in all), and the largest RSS of
any one process of the step. `--scale 0.05` gives a quick run; the sizes also have flags
of their own. With `--workdir` the generated sources (and shards) are kept and reused.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

FULL = {"coco_images": 118_287, "refcoco_images": 19_994, "refcoco_refs": 50_000, "vqa_questions": 443_757,
        "llava_entries": 157_712, "review_images": 20_000}
SOURCES = ("coco", "coco-keypoints", "refcoco", "vqav2", "llava")
INPUT_SIZE = 448  # `lumen convert`'s default S
TRAIN_PRESET = "tiny"


# ---------------------------------------------------------------------------------------------
# steps (each runs in its own process: `bench_scale.py --child NAME JSON`)

def step_generate(root: str, sizes: dict) -> dict:
    import numpy as np

    from synth_sources import (dump_json, make_coco, make_keypoints, make_llava, make_refcoco, make_vqa,
                               write_images, write_refcoco)

    root = Path(root)
    done = root / "sources.json"
    if done.is_file() and json.loads(done.read_text()) == sizes:
        return {"reused": True}
    out = {}
    coco = make_coco(sizes["coco_images"], seed=0)
    out["coco_instances"] = len(coco["annotations"])
    out["coco_mb"] = dump_json(coco, root / "coco/annotations/instances_train.json") / 1e6
    names = [im["file_name"] for im in coco["images"]]
    image_ids = np.array([im["id"] for im in coco["images"]])
    del coco
    kp = make_keypoints(sizes["coco_images"], seed=0)
    out["people"] = len(kp["annotations"])
    out["keypoints_mb"] = dump_json(kp, root / "coco/annotations/person_keypoints_train.json") / 1e6
    del kp
    refs, inst = make_refcoco(sizes["refcoco_images"], sizes["refcoco_refs"], seed=0)
    out["refcoco_refs"], out["refcoco_sentences"] = len(refs), sum(len(r["sentences"]) for r in refs)
    out["refcoco_mb"] = write_refcoco(root / "refcoco", refs, inst) / 1e6
    del refs, inst
    qs, anns = make_vqa(image_ids[: max(1, int(len(image_ids) * 0.7))], sizes["vqa_questions"], seed=0)
    out["vqa_mb"] = (dump_json(qs, root / "vqa/v2_OpenEnded_mscoco_train_questions.json")
                     + dump_json(anns, root / "vqa/v2_mscoco_train_annotations.json")) / 1e6
    del qs, anns
    llava = make_llava(image_ids, sizes["llava_entries"], seed=0)
    out["llava_turns"] = sum(len(e["conversations"]) // 2 for e in llava)
    out["llava_mb"] = dump_json(llava, root / "llava/llava_instruct.json") / 1e6
    del llava
    write_images(root / "coco/images", names)
    done.write_text(json.dumps(sizes))
    return out


def _convert_kwargs() -> dict:
    """Options this checkout's convert_source has: image decoding off (only existence is benchmarked)."""
    from pipelines.convert import convert_source

    params = inspect.signature(convert_source).parameters
    return {"verify_images": False} if "verify_images" in params else {}


def step_convert(fmt: str, root: str, out: str, workers: int | None) -> dict:
    from pipelines.convert import convert_source

    root = Path(root)
    inputs = {"coco": (root / "coco/annotations/instances_train.json", {}),
              "coco-keypoints": (root / "coco/annotations/person_keypoints_train.json", {}),
              "refcoco": (root / "refcoco", {"split": "train"}),
              "vqav2": (root / "vqa/v2_OpenEnded_mscoco_train_questions.json",
                        {"annotations": root / "vqa/v2_mscoco_train_annotations.json"}),
              "llava": (root / "llava/llava_instruct.json", {})}
    path, extra = inputs[fmt]
    kwargs = dict(extra, **_convert_kwargs())
    if "workers" in inspect.signature(convert_source).parameters:
        kwargs["workers"] = workers
    m = convert_source(fmt, path, out, images_dir=root / "coco/images", input_size=INPUT_SIZE, progress=False, **kwargs)
    return {"samples": m["counts"]["samples_written"], "records": m["counts"]["records_read"],
            "quarantined": m["counts"]["records_quarantined"],
            "shard_mb": round(sum((Path(out) / s["file"]).stat().st_size for s in m["shards"]) / 1e6, 1)}


def step_catalog(db: str, dirs: list[str]) -> dict:
    from pipelines.catalog import build_catalog

    rows = build_catalog(db, dirs)
    return {"partitions": len(rows)}


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 1e6


def step_dataset(dirs: list[str]) -> dict:
    from lumen_model.config import get_preset
    from pipelines.dataset import ShardDataset

    t0 = time.perf_counter()
    ds = ShardDataset(dirs, input_size=get_preset(TRAIN_PRESET).input_size)
    return {"samples": len(ds), "init_s": round(time.perf_counter() - t0, 2), "rss_after_mb": round(_rss_mb())}


def step_batches(dirs: list[str], n_batches: int, batch_size: int, num_workers: int) -> dict:
    """What `lumen train` does before each step: the step's batch of positions, items, collation."""
    import torch

    torch.set_num_threads(1)
    from lumen_model import train as T
    from lumen_model.config import get_preset
    from lumen_model.data import Collator
    from lumen_model.tokenizer import train_tokenizer
    from pipelines.dataset import ShardDataset

    preset = get_preset(TRAIN_PRESET)
    ds = ShardDataset(dirs, input_size=preset.input_size, tasks=T.STAGE_TASKS[1])
    n_texts = min(len(ds), 20_000)  # the tokenizer is the model's business, not loading's: a sample
    texts = [t for i in range(n_texts) for t in (ds.row(i)["instruction"], ds.row(i)["answer"])]
    tok = train_tokenizer(texts + ["user : assistant :"], vocab_size=preset.text.vocab_size)
    collate = Collator(tok, preset.num_image_tokens, preset.max_text_tokens, preset.heatmap_size, preset.input_size)
    t0 = time.perf_counter()
    keep, groups = T.train_rows(ds)
    t_rows = time.perf_counter() - t0
    t0 = time.perf_counter()
    loader = T.training_batches(ds, keep, groups, collate, seed=0, batch_size=batch_size, start=0, stop=n_batches,
                                group_size=4, hflip_p=0.5, num_workers=num_workers)
    t_first, n = None, 0
    for _, batch in loader:
        n += len(batch["instruction"])
        if t_first is None:
            t_first = time.perf_counter() - t0
    wall = time.perf_counter() - t0
    return {"samples": n, "samples_per_s": round(n / wall, 1), "first_batch_s": round(t_first, 2),
            "train_rows_s": round(t_rows, 2), "loop_s": round(wall, 1)}


def step_review(root: str, n_images: int, per_image: int) -> dict:
    os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(Path(root) / "fo-db"))
    from bench_push import make_inputs

    from pipelines.review.fo_env import fiftyone

    fo = fiftyone()
    data = Path(root) / "review-inputs"
    shutil.rmtree(data, ignore_errors=True)
    images, pred, cats, n_labels = make_inputs(data, n_images, per_image)
    fo.list_datasets()  # the database is up before anything is timed
    from pipelines.review.pull import pull_corrections
    from pipelines.review.push import push_predictions
    from pipelines.review.queue import build_review_queue

    name = f"bench-scale-{os.getpid()}"
    out = {"images": n_images, "labels": n_labels}
    t = time.perf_counter()
    push_predictions(name, images, pred, "v1", categories_file=cats, progress=False)
    out["push_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    build_review_queue(name)
    out["queue_s"] = round(time.perf_counter() - t, 1)
    ds = fo.load_dataset(name)
    ds.take(max(1, n_images // 10), seed=0).tag_labels("accept", label_fields="predictions")  # 10% reviewed
    t = time.perf_counter()
    pulled = pull_corrections(name, Path(root) / "corrections", progress=False)
    out["pull_s"] = round(time.perf_counter() - t, 1)
    out["pulled_version"] = pulled["version"]
    ds.delete()
    shutil.rmtree(data, ignore_errors=True)
    return out


STEPS = {f.__name__[5:]: f for f in (step_generate, step_convert, step_catalog, step_dataset, step_batches, step_review)}


# ---------------------------------------------------------------------------------------------
# the parent: one fresh process per step, wall / cpu / peak memory of its process tree

def run_step(label: str, name: str, **kwargs) -> dict:
    import psutil

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, __file__, "--child", name, json.dumps(kwargs)]
    out_file = tempfile.NamedTemporaryFile("w+", suffix=".json", delete=False)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=out_file, stderr=subprocess.PIPE, text=True)
    peak = [0.0]
    stop = threading.Event()

    def sample():
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            total = 0
            try:
                for p in [root] + root.children(recursive=True):
                    try:  # PSS: pages shared with forked workers count once in all, not once per process
                        total += p.memory_full_info().pss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            peak[0] = max(peak[0], total)
            stop.wait(1.0)  # reading smaps of a multi-GB process is not free: sample once a second

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err_lines = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    reader.join(timeout=5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out_file.seek(0)
    lines = out_file.read().strip().splitlines()
    os.unlink(out_file.name)
    row = {"step": label, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": peak[0] / 1e6,
           "max_proc_mb": usage.ru_maxrss / 1024}
    if proc.returncode != 0 or not lines:
        row["error"] = (err_lines[-1].strip() if err_lines else f"exit {proc.returncode}")
        print(f"  {label}: FAILED: {row['error']}", flush=True)
        return row
    row["info"] = json.loads(lines[-1])
    print(f"  {label}: {wall:.1f} s wall, {row['cpu_s']:.1f} s cpu, peak {row['peak_mb']:.0f} MB  {row['info']}",
          flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every size (default 1: full size)")
    for k, v in FULL.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, help=f"default {v} x scale")
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES,
                    help="the sources to convert and to load (default: all five)")
    ap.add_argument("--workers", type=int, default=None, help="conversion processes (default: every core)")
    ap.add_argument("--batches", type=int, default=1000, help="training batches to load (default 1000)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--num-workers", type=int, nargs="+", default=[0, 2],
                    help="DataLoader workers to measure batch loading with (default: 0 2)")
    ap.add_argument("--skip-review", action="store_true", help="no FiftyOne push / queue / pull")
    ap.add_argument("--review-per-image", type=int, default=7)
    ap.add_argument("--workdir", help="keep sources and shards here and reuse them (default: a temp folder)")
    ap.add_argument("--only", nargs="+", choices=("generate", "convert", "catalog", "dataset", "batches", "review"),
                    help="run only these sections (with --workdir: reuse what earlier runs wrote)")
    args = ap.parse_args()
    if args.child:
        result = STEPS[args.child[0]](**json.loads(args.child[1]))
        print(json.dumps(result))
        return 0

    sizes = {k: getattr(args, k) or max(1, int(round(v * args.scale))) for k, v in FULL.items()}
    review_images = sizes.pop("review_images")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    want = set(args.only or ("generate", "convert", "catalog", "dataset", "batches", "review"))
    print(f"sizes: {sizes}; workdir {work}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    src, shards = work / "sources", work / "shards"
    if "generate" in want:
        rows.append(run_step("generate sources", "generate", root=str(src), sizes=sizes))
    dirs = []
    for fmt in args.sources:
        out = shards / fmt
        dirs.append(str(out))
        if "convert" in want:
            rows.append(run_step(f"convert {fmt}", "convert", fmt=fmt, root=str(src), out=str(out), workers=args.workers))
    if "catalog" in want:
        rows.append(run_step("catalog (DuckDB, all)", "catalog", db=str(work / "catalog.duckdb"), dirs=dirs))
    cache = os.environ.setdefault("LUMEN_ARROW_CACHE", str(work / "arrow-cache"))  # the children's decoded shards
    if "dataset" in want:
        shutil.rmtree(cache, ignore_errors=True)
        rows.append(run_step("Dataset first start, all (decodes the cache)", "dataset", dirs=dirs))
        rows.append(run_step("Dataset start-up, all", "dataset", dirs=dirs))
    if "batches" in want:
        for nw in args.num_workers:
            rows.append(run_step(f"{args.batches} batches x {args.batch_size}, {nw} workers", "batches", dirs=dirs,
                                 n_batches=args.batches, batch_size=args.batch_size, num_workers=nw))
    if "review" in want and not args.skip_review:
        rows.append(run_step(f"review push/queue/pull {review_images}", "review", root=str(work),
                             n_images=review_images, per_image=args.review_per_image))
    print(f"\n| step | wall s | CPU s | peak MB (PSS, process tree) | max RSS one process MB | details |\n|---|---|---|---|---|---|")
    for r in rows:
        info = r.get("error") or ", ".join(f"{k} {v}" for k, v in r.get("info", {}).items())
        print(f"| {r['step']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_mb']:.0f} | {r['max_proc_mb']:.0f} | {info} |")
    print(f"\nmachine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
