"""Does a review round pay off? pool -> pseudo-labels -> simulated review -> pull -> convert -> retrain.

    .venv/bin/python bench/bench_loop.py [--images 320] [--val-fraction 0.625] [--pool 240] [--budget 60] [--seeds 2] \
        [--start-steps 1000] [--stage1-steps 300] [--stage2-steps 150] [--out DIR]

One starting model (stage 1 `--start-steps` + stage 2 `--stage2-steps` on the demo's labeled COCO
train split) pseudo-labels the unlabeled pool (`lumen sample-data`'s image_info_unlabeled.json; each
image and its mirror image fused, as the pseudo_labels asset does; `--no-flip-tta`: one view);
they are pushed with that model's review thresholds (per class, F1 on val, as the pipeline records
them for every model version), so predictions under them are hidden as in the App. A simulated labeler (pipelines/simulated_labeler.py, FiftyOne's public API, truth from `oracle/`)
works in a fresh FiftyOne review dataset per arm; its work is pulled (`pull_corrections`, what
`lumen review pull` runs), converted (`convert_source`, what `lumen convert coco` runs) and every
arm retrains from the same starting checkpoint with the same steps (stage 1 `--stage1-steps`,
then stage 2 `--stage2-steps`), once per seed:

    A  no new data (the starting model trained on, on the labeled train split only)
    B  + K pool images reviewed in the review queue's order (K = --budget)
    C  + K pool images reviewed in random order (a new order per seed)
    D  + B's K images labeled from scratch (every true object drawn)
    E  + every pool image's shown pseudo-labels (at or above the thresholds), unreviewed (self-training)

Per arm: val detection AP / AP50 and instance-segmentation AP (mean and range over the seeds),
labeler actions (accepts + rejects + boxes drawn), boxes drawn, wall time. Writes loop.json and
loop.png (val AP against boxes drawn) into --out. The seeds vary the retraining (data order,
flips) and C's order; the starting model and the pool's pseudo-labels are shared. Training runs in
`--procs` DDP processes of 1 thread each, as bench_quality.py trains. The default run is sized for
40 minutes on 2 idle cores; wall times on a shared machine are longer (the CPU
seconds and load average are printed). Every review round runs before the retraining, so FiftyOne's
database is needed for minutes, not the hour. A run that is killed keeps what it finished in
`<out>/loop_state.json`: the same command with the same --out goes on from there.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARMS = {
    "A": "no new data",
    "B": "K reviewed, queue order",
    "C": "K reviewed, random order",
    "D": "K labeled from scratch",
    "E": "all pseudo-labels, unreviewed",
}
INPUT_SIZE = 128  # the tiny preset's S


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _use_own_fiftyone_db(root: Path) -> None:
    """A database of the bench's own (unless one is given), chosen before fiftyone is imported."""
    if not os.environ.get("FIFTYONE_DATABASE_URI"):
        os.environ["FIFTYONE_DATABASE_DIR"] = str(root / "fiftyone-db")
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")


class Loop:
    def __init__(self, args, root: Path):
        self.args, self.root = args, root
        self.sources, self.shards = root / "sources", root / "shards"
        self.images = self.sources / "coco" / "images"
        self.base_dirs = [str(self.shards / "coco" / "train"), str(self.shards / "coco" / "val")]
        self.val_json = self.sources / "coco" / "annotations" / "instances_val.json"

    def data(self) -> dict:
        from pipelines.layout import convert_partition
        from pipelines.sample_data import write_sample_data

        counts = write_sample_data(self.sources, n_images=self.args.images, val_fraction=self.args.val_fraction,
                                   pool=self.args.pool)
        convert_partition("coco", self.sources, self.shards, input_size=INPUT_SIZE)
        return counts

    def _train(self, stage: int, shards: list[str], out: Path, init, steps: int, seed: int) -> dict:
        from lumen_model.train import TrainConfig, loader_workers, train_processes

        procs = self.args.procs
        cfg = TrainConfig(stage=stage, preset="tiny", shards=shards, out=str(out),
                          init=None if init is None else str(init), max_steps=steps, lr=self.args.lr,
                          batch_size=self.args.batch_size, seed=seed, progress=False, num_workers=loader_workers(procs))
        return train_processes(cfg, procs, on_line=lambda line: None)  # the ranks' progress lines: quiet

    def start_model(self) -> Path:
        s1, s2 = self.root / "start" / "stage1", self.root / "start" / "stage2"
        self._train(1, self.base_dirs, s1, None, self.args.start_steps, 0)
        self._train(2, self.base_dirs, s2, s1, self.args.stage2_steps, 0)
        return s2

    def pseudo_labels(self, checkpoint: Path) -> Path:
        from lumen_model.predict import predict
        from pipelines.layout import pool_file

        out = self.root / "pool" / "segm.json"
        predict(checkpoint, "instance_segmentation", self.images, out, annotations=pool_file(self.sources),
                progress=False, flip_tta=self.args.flip_tta)
        return out

    def review_thresholds(self, checkpoint: Path) -> Path:
        """The starting model's per-class review thresholds (F1 on val), as the pipeline records them
        for every model version: pool predictions under them are hidden from the labeler, and arm E
        self-trains on the shown ones only."""
        from lumen_model.predict import predict
        from pipelines.review.thresholds import compute_thresholds, save_thresholds

        pred = self.root / "start" / "val_segm.json"
        predict(checkpoint, "instance_segmentation", self.images, pred, annotations=self.val_json, progress=False,
                flip_tta=self.args.flip_tta)  # the same kind of predictions as the pool's
        return save_thresholds(compute_thresholds(self.val_json, pred, model_version="start"),
                               self.root / "start" / "review_thresholds.json")

    def labeled_partition(self, arm: str, pred: Path, thresholds: Path, seed: int,
                          queue_ids: list | None) -> tuple[str, dict, list]:
        """One arm's review round in its own FiftyOne dataset -> pull -> convert; returns the shard
        folder, the labeler's counts and the reviewed images (in the order worked)."""
        import fiftyone as fo

        from pipelines.convert import convert_source
        from pipelines.layout import pool_file
        from pipelines.review.pull import pull_corrections
        from pipelines.review.push import push_predictions
        from pipelines.review.queue import build_review_queue
        from pipelines.sample_data import ORACLE_FILE
        from pipelines.simulated_labeler import label, queue_order, random_order

        name = f"lumen-bench-loop-{arm}-s{seed}"
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
        push_predictions(name, self.images, pred, "start", heatmaps_dir=pred.with_name(pred.stem + "_heatmaps"),
                         categories_file=pool_file(self.sources), thresholds=thresholds, progress=False)
        build_review_queue(name)
        ds = fo.load_dataset(name)
        by_image = dict(zip(*ds.values(["image_id", "id"])))
        if arm == "B":
            order, budget, mode = queue_order(ds), self.args.budget, "review"
        elif arm == "C":
            order, budget, mode = random_order(ds, seed), self.args.budget, "review"
        elif arm == "D":  # the same images as B
            order, budget, mode = [by_image[i] for i in queue_ids], None, "scratch"
        else:
            order, budget, mode = ds.values("id"), None, "accept_all"
        counts = label(name, self.sources / ORACLE_FILE, order, budget=budget, mode=mode)
        image_of = {v: k for k, v in by_image.items()}
        reviewed = [image_of[i] for i in (order if budget is None else order[:budget])]
        pulled = pull_corrections(name, self.root / "corrections" / f"{arm}-s{seed}", progress=False)
        shard_dir = self.shards / f"corrections-{arm}-s{seed}" / "train"
        convert_source("coco", Path(pulled["version_dir"]) / "instances_train.json", shard_dir, images_dir=self.images,
                       split="train", source_name=f"corrections-{arm}", input_size=INPUT_SIZE, progress=False)
        fo.delete_dataset(name)
        pull_counts = {k: pulled.get(k) for k in ("images", "annotations", "accepted", "corrections", "rejections")}
        return str(shard_dir), {**counts.as_dict(), "pull": pull_counts}, reviewed

    def retrain_and_evaluate(self, arm: str, extra: list[str], start: Path, seed: int) -> dict:
        from lumen_model.predict import predict
        from pipelines.evaluation import evaluate

        out = self.root / "arms" / f"{arm}-s{seed}"
        shards = self.base_dirs + extra
        t = time.perf_counter()
        self._train(1, shards, out / "stage1", start, self.args.stage1_steps, seed)
        self._train(2, shards, out / "stage2", out / "stage1", self.args.stage2_steps, seed)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        pred = out / "val_segm.json"
        predict(out / "stage2", "instance_segmentation", self.images, pred, annotations=self.val_json, progress=False)
        bbox, segm = evaluate("bbox", self.val_json, pred), evaluate("segm", self.val_json, pred)
        shutil.rmtree(out / "stage1", ignore_errors=True)  # keep the disk small: the arms' stage 2 stays
        return {"det_AP": bbox["AP"], "det_AP50": bbox["AP50"], "segm_AP": segm["AP"],
                "train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - t, 1)}


class LoopState:
    """What a run has finished, in `<out>/loop_state.json` (written atomically after every phase,
    review round and retraining): the same command with the same --out goes on from there after a
    kill, and refuses in one line when the settings that decide the results differ."""

    KEYS = ("images", "val_fraction", "pool", "budget", "start_steps", "stage1_steps", "stage2_steps",
            "batch_size", "lr", "flip_tta")

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data
        self.started = time.perf_counter()
        self.earlier_s = data.get("elapsed_s", 0.0)  # wall time of the sittings before this one
        self.earlier_cpu_s = data.get("cpu_s", 0.0)  # and their CPU time

    @classmethod
    def open(cls, root: Path, args) -> "LoopState":
        path = root / "loop_state.json"
        settings = {k: getattr(args, k) for k in cls.KEYS}
        if path.is_file():
            data = json.loads(path.read_text())
            if data["settings"] != settings:
                changed = {k: (data["settings"].get(k), v) for k, v in settings.items() if data["settings"].get(k) != v}
                raise SystemExit(f"bench_loop: {root} holds a run with other settings {changed} (old, new): "
                                 "use another --out or the same flags")
            data["resumed"] += 1
            return cls(path, data)
        return cls(path, {"settings": settings, "done": {}, "phases_s": {}, "labels": {}, "label_s": {}, "runs": {},
                          "resumed": 0})

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.earlier_s + time.perf_counter() - self.started, 1)
        self.data["cpu_s"] = round(self.earlier_cpu_s + _cpu_seconds(), 1)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def _stats(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "spread": round(max(values) - min(values), 4), "per_seed": [round(v, 4) for v in values]}


def _goals(arms: dict) -> dict:
    a, b, c, d = (arms[k]["det_AP"] for k in "ABCD")
    spread = max(a["spread"], b["spread"])
    gain_b, gain_d = b["mean"] - a["mean"], d["mean"] - a["mean"]
    share = gain_b / gain_d if gain_d > 0 else None
    boxes_b, boxes_d = arms["B"]["boxes_drawn"], arms["D"]["boxes_drawn"]
    return {
        # per seed too: A and B retrain with the same seed, so the paired differences show how often B wins
        "B beats A by more than the seed spread": {"B-A": round(gain_b, 4), "spread": round(spread, 4),
                                                   "B-A per seed": [round(y - x, 4) for x, y in
                                                                    zip(a["per_seed"], b["per_seed"])],
                                                   "met": gain_b > spread},
        "B >= C": {"B": b["mean"], "C": c["mean"], "met": b["mean"] >= c["mean"]},
        "B reaches >= 90% of D's gain with <= half of D's boxes": {
            "share_of_D_gain": None if share is None else round(share, 3), "boxes_B": boxes_b, "boxes_D": boxes_d,
            "met": share is not None and share >= 0.9 and boxes_b <= 0.5 * boxes_d},
    }


def _plot(arms: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, r in arms.items():
        ap = r["det_AP"]
        ax.errorbar([r["boxes_drawn"]], [ap["mean"]], yerr=[[ap["mean"] - ap["min"]], [ap["max"] - ap["mean"]]],
                    fmt="o", capsize=4, label=f"{arm}: {ARMS[arm]}")
        ax.annotate(arm, (r["boxes_drawn"], ap["mean"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("boxes drawn by the labeler")
    ax.set_ylabel("val detection AP (mean; bars: range over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 120 train + 200 val: the arms differ by a few AP points, and on 80 val images (the earlier default) the
    # retraining seeds alone moved an arm's AP by up to 0.058; the val images cost prediction time only
    ap.add_argument("--images", type=int, default=320, help="labeled demo images, train + val (default: 320)")
    ap.add_argument("--val-fraction", type=float, default=0.625,
                    help="share of --images in val (default: 0.625: 120 train, 200 val)")
    ap.add_argument("--pool", type=int, default=240, help="unlabeled pool images (default: 240)")
    ap.add_argument("--budget", type=int, default=60, help="K: pool images a labeler reviews in B, C, D (default: 60)")
    ap.add_argument("--seeds", type=int, default=2, help="retraining seeds per arm (default: 2)")
    ap.add_argument("--start-steps", type=int, default=1000, help="stage-1 steps of the starting model (default: 1000)")
    ap.add_argument("--stage1-steps", type=int, default=300, help="stage-1 steps of every arm's retraining (default: 300)")
    ap.add_argument("--stage2-steps", type=int, default=150,
                    help="stage-2 steps of the starting model and of every arm (default: 150)")
    ap.add_argument("--no-flip-tta", dest="flip_tta", action="store_false",
                    help="pseudo-label the pool with one view per image (default: image + mirror image fused, as the "
                         "pseudo_labels asset does)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1),
                    help="training processes (DDP, 1 thread each, as bench_quality.py trains; the same updates as 1 "
                         "process up to float rounding); 1: in this process with --threads threads (default: one per "
                         "core, up to 2)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of this process (prediction; training "
                                                           "with --procs 1) (default: 2)")
    ap.add_argument("--out", default=None, help="keep everything here (default: a temp folder)")
    args = ap.parse_args()
    if args.seeds < 1 or args.budget < 1 or args.pool < args.budget:
        ap.error("need --seeds >= 1 and 1 <= --budget <= --pool")

    root = Path(args.out or tempfile.mkdtemp(prefix="lumen-loop-"))
    root.mkdir(parents=True, exist_ok=True)
    _use_own_fiftyone_db(root)
    import torch

    torch.set_num_threads(args.threads)
    loop = Loop(args, root)
    state = LoopState.open(root, args)
    t_all, times = time.perf_counter(), state.data["phases_s"]

    def phase(name, fn, *a):
        if name in state.data["done"]:  # a re-run with the same --out goes on where the last one stopped
            print(f"[{time.strftime('%H:%M:%S')}] {name}: done before ({times.get(name)} s)", flush=True)
            return state.data["done"][name]
        t = time.perf_counter()
        out = fn(*a)
        times[name] = round(time.perf_counter() - t, 1)
        state.data["done"][name] = str(out) if isinstance(out, Path) else out
        state.save()
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {times[name]} s", flush=True)
        return out

    counts = phase("data", loop.data)
    start = Path(phase("starting model", loop.start_model))
    pred = Path(phase("pool pseudo-labels", loop.pseudo_labels, start))
    thresholds = Path(phase("review thresholds", loop.review_thresholds, start))

    # every review round first: FiftyOne's database is needed only here, not during the hour of retraining
    labels, label_s = state.data["labels"], state.data["label_s"]
    rounds = [("B", "B", 0), ("D", "D", 0), ("E", "E", 0)] + [(f"C-s{seed}", "C", seed) for seed in range(args.seeds)]
    for key, arm, seed in rounds:
        if key in labels:
            continue
        t = time.perf_counter()
        queue_ids = labels["B"][2] if arm == "D" else None
        labels[key] = list(loop.labeled_partition(arm, pred, thresholds, seed, queue_ids))
        label_s[key] = round(time.perf_counter() - t, 1)
        state.save()
        print(f"[{time.strftime('%H:%M:%S')}] labeled {key}: {labels[key][1]} ({label_s[key]} s)", flush=True)
    runs = state.data["runs"]
    for seed in range(args.seeds):
        for arm in ARMS:
            key = f"C-s{seed}" if arm == "C" else arm
            done = runs.setdefault(arm, {})
            if str(seed) in done:
                continue
            extra = [labels[key][0]] if key in labels else []
            r = loop.retrain_and_evaluate(arm, extra, start, seed)
            r["label_s"] = label_s.get(key, 0.0)
            done[str(seed)] = r
            state.save()  # a cut-short run keeps what it has; the same command finishes it
            print(f"[{time.strftime('%H:%M:%S')}] arm {arm} seed {seed}: det AP {r['det_AP']:.3f} AP50 "
                  f"{r['det_AP50']:.3f} segm AP {r['segm_AP']:.3f} ({r['train_s']} s train, {r['eval_s']} s eval)",
                  flush=True)
    runs = {arm: [runs[arm][str(seed)] for seed in range(args.seeds)] for arm in ARMS}

    arms = {}
    for arm, rs in runs.items():
        key_counts = [labels[k][1] for k in labels if k == arm or k.startswith(f"{arm}-s")]
        mean = lambda k: round(statistics.fmean(c[k] for c in key_counts), 1) if key_counts else 0  # noqa: E731
        arms[arm] = {"what": ARMS[arm], "det_AP": _stats([r["det_AP"] for r in rs]),
                     "det_AP50": _stats([r["det_AP50"] for r in rs]), "segm_AP": _stats([r["segm_AP"] for r in rs]),
                     "images_reviewed": mean("images"), "accepts": mean("accepts"), "rejects": mean("rejects"),
                     "boxes_drawn": mean("boxes_drawn"), "actions": mean("actions"),
                     "pulled": [c["pull"] for c in key_counts],
                     "wall_s": round(statistics.fmean(r["label_s"] + r["train_s"] + r["eval_s"] for r in rs), 1)}
    total = time.perf_counter() - t_all + state.earlier_s
    summary = {
        "arms": arms, "goals": _goals(arms), "runs": runs, "phases_s": times, "total_s": round(total, 1),
        "resumed": state.data["resumed"],
        "total_cpu_s": round(state.earlier_cpu_s + _cpu_seconds(), 1), "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "sample_data": counts, "config": vars(args),
    }
    (root / "loop.json").write_text(json.dumps(summary, indent=2))
    title = (f"{args.images} labeled images ({counts['images_train']} train), pool {args.pool}, K={args.budget}, "
             f"{args.seeds} seeds, {args.stage1_steps}+{args.stage2_steps} retrain steps")
    _plot(arms, root / "loop.png", title)

    print(f"\n{title}")
    print(f"{'arm':4}{'what':32}{'det AP':>16}{'AP50':>8}{'segm AP':>9}{'actions':>9}{'boxes':>7}{'wall s':>8}")
    for arm, r in arms.items():
        d = r["det_AP"]
        print(f"{arm:4}{r['what']:32}{d['mean']:>7.3f} [{d['min']:.3f}-{d['max']:.3f}]"
              f"{r['det_AP50']['mean']:>8.3f}{r['segm_AP']['mean']:>9.3f}{r['actions']:>9}{r['boxes_drawn']:>7}"
              f"{r['wall_s']:>8}")
    print("\ngoals:")
    for goal, v in summary["goals"].items():
        print(f"  {'MET    ' if v['met'] else 'NOT MET'} {goal}: {({k: x for k, x in v.items() if k != 'met'})}")
    print(f"\nphases (s): {times}; total {summary['total_s']} s wall, {summary['total_cpu_s']} s CPU, "
          f"load average at the end {summary['load_average_1min_at_end']}; everything in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
