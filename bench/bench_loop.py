"""Does a review round pay off, per hour of a person's time? pool -> pseudo-labels -> simulated review
-> pull -> convert -> retrain, at one or several labeling budgets.

    .venv/bin/python bench/bench_loop.py [--images 320] [--val-fraction 0.625] [--pool 240] [--budgets 60]
        [--curve] [--arms ABCDEFG] [--seeds 2] [--start-steps 1000] [--stage1-steps 300] [--stage2-steps 150]
        [--accept-s 2] [--reject-s 2] [--box-s 7] [--mask-s 79.2] [--image-s 0] [--ask-s 5] [--ask-range 3,5,10]
        [--out DIR]
    .venv/bin/python bench/bench_loop.py --report --out DIR   # every finished run of DIR in one table

One starting model (stage 1 `--start-steps` + stage 2 `--stage2-steps` on the demo's labeled COCO
train split) pseudo-labels the unlabeled pool (`lumen sample-data`'s image_info_unlabeled.json; each
image and its mirror image fused, as the pseudo_labels asset does; `--no-flip-tta`: one view);
they are pushed with that model's review thresholds (per class, F1 on val, as the pipeline records
them for every model version), so predictions under them are hidden as in the App. A simulated
labeler (bench/simulated_labeler.py, FiftyOne's public API, truth from `oracle/`) works in a fresh
FiftyOne review dataset per arm (and per seed for C); its work is pulled (`pull_corrections`, what
`lumen review pull` runs) and converted (`convert_source`, what `lumen convert coco` runs) after
each budget K of `--budgets` (the first K images of the arm's order: the budgets nest), and every arm
retrains from the same starting checkpoint with the same steps (stage 1 `--stage1-steps`, then
stage 2 `--stage2-steps`), once per seed:

    A  no new data (the starting model trained on, on the labeled train split only)
    B  + K pool images reviewed in the review queue's errors-first order (`review_priority`)
    C  + K pool images reviewed in random order (a new order per seed)
    D  + B's K images labeled from scratch (every true object drawn)
    E  + every pool image's shown pseudo-labels (at or above the thresholds), unreviewed (self-training)
    F  + B's K images reviewed as in B, but each missed object first asked for in words, as a person
       does in the App's Ask Lumen: the labeler types the demo's referring expression for it (built
       from the truth as `lumen sample-data` builds RefCOCO's, never from a prediction), the starting
       model answers through the App's in-memory call (lumen_model.ask.load_asker; stepping over the
       objects already labeled, the App's default), and the answer is
       accepted as a prompted label (pulled with provenance "prompted") when it is the object (same
       class, IoU >= 0.5), else the object is drawn (simulated_labeler.py, mode `prompted`)
    G  + K pool images reviewed in the queue's gain-per-second order (`review_gain_per_s`: expected
       errors per expected review second, from the cost flags below)
    H  + B's K images reviewed as in B, but each object to draw is drawn as a box only and the starting
       model draws its mask inside it, as the App's "Mask drawn boxes" does (pipelines/review/box_masks.py;
       a box the model leaves empty gets its mask drawn by hand); not in the default arms
    I  as H, with a stricter labeler: a prediction is accepted only when it is close to the object (same
       class, box IoU >= `--strict-iou`, 0.8), a looser one is rejected and the object drawn as in H; not in
       the default arms. No study we cite says how close a box must be for a person to accept it on sight:
       0.8 is an assumption (the usual match is 0.5)
    J  + B's K images labeled from scratch as in D, but every object drawn as a box only and masked by the
       starting model as in H; not in the default arms
    K  as I, strict about masks too: a prediction is accepted only when its mask is also close to the
       object's (mask IoU >= `--strict-mask-iou`, 0.8), and a mask the model draws in a drawn box that far
       off is drawn again by hand (a mask's cost); not in the default arms. Like I's, the threshold is an
       assumption: no study we cite says how close a mask must look to be kept
    L  as K, in random order (a new order per seed, the same images as C's with that seed)
    M  as K, in the queue's gain-per-second order (G's): L and M put the orders side by side for a strict
       reviewer, as C, B and G do for the usual one (`--arms KLM --curve`; not in the default arms)

A person's time: the labeler counts its actions per kind (accept, reject, an object drawn as a box,
one drawn with its mask, an image opened, an instruction typed and its answer checked) and
pipelines/review/effort.py's `ActionCosts` turns them into seconds (`--accept-s`, `--reject-s`,
`--box-s`, `--mask-s`, `--image-s`, `--ask-s`; the defaults and their sources are in effort.py). No
published study gives the seconds of typing an instruction and checking its answer, and it is not
measured here: `--ask-s` (5) is an assumption, and arm F's labeler seconds are also reported for
each cost of `--ask-range` (3, 5 and 10 s by default) from the same run (the AP does not depend on
the cost; the seconds do: the plot draws F's range as a bar). Per arm and budget: val detection AP /
AP50 and instance-segmentation AP (mean and range over the seeds), the labeler's actions, boxes and
masks drawn, instructions asked, labeler seconds (per kind and total) and AP gained over A per
labeler hour, wall time. Writes loop.json and loop.png (val detection and mask AP against labeler
hours, one line per arm through the budgets, bands: the range over seeds) into --out. The seeds vary
the retraining (data order, flips) and C's order; the starting model and the pool's pseudo-labels are
shared by every arm and budget.

`--curve`: budgets 30, 60 and 120 (about 2 h on 2 idle cores before arm F). The default (one budget,
60) was sized for about 45 minutes on 2 idle cores with arms A-E and G (G added two retrainings to the
40 of before; arm F adds two more and its asks, not timed yet; `--arms ABCDE` is the old run); wall
times on a shared machine are longer (the CPU seconds and load average are printed). Training runs in
`--procs` DDP processes of 1 thread each, as bench_quality.py trains. Every review round runs before
the retraining, so FiftyOne's database is needed for minutes, not the hour.
A run that is killed keeps what it finished in `<out>/loop_state.json`: the same command with the same
--out goes on from there; more budgets, seeds or arms on the same --out reuse what is done (F added to
a run without it: `--arms F` labels and retrains F only; the default arms then show every arm, reusing
the rest). The table shows the arms asked for.
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
    "B": "K reviewed, errors-first order",
    "C": "K reviewed, random order",
    "D": "K labeled from scratch",
    "E": "all pseudo-labels, unreviewed",
    "F": "K reviewed, missed ones asked for",
    "G": "K reviewed, gain-per-second order",
    "H": "K reviewed, drawn as boxes, model masks",
    "I": "as H, accepting only close labels",
    "J": "K labeled from scratch, boxes, model masks",
    "K": "as I, keeping only close masks",
    "L": "as K, random order",
    "M": "as K, gain-per-second order",
}
DEFAULT_ARMS = "ABCDEFG"  # H to M on request (`--arms HIJKLM`): one more retraining each per budget and seed
REPORT_ORDER = "ABCDFGHIJKLME"  # the tables' order: self-training (E), the arm without review, last
BUDGET_ARMS = tuple(a for a in REPORT_ORDER if a not in "AE")  # the arms that spend --budgets; A and E have none
ON_B_IMAGES = ("D", "F", "H", "I", "J", "K")  # the arms that work on B's images in B's order (B's round runs first)
BOX_MASK_ARMS = ("H", "I", "J", "K", "L", "M")  # what to draw is drawn as a box, the model masks it (the App's button)
REVIEW_ARMS = ("B", "F", "G", "H", "I", "K", "M")  # the queue's review arms, the goal "review reaches D" asks of
STRICT_ARMS = ("I", "K", "L", "M")  # a prediction is accepted only within --strict-iou of the object (K: its mask too)
MASK_STRICT_ARMS = ("K", "L", "M")  # ... and within --strict-mask-iou of its mask
RANDOM_ARMS = ("C", "L")  # a new random order per seed: one review round per seed
QUEUE_ORDER = {"B": "errors", "G": "gain_per_s", "M": "gain_per_s"}  # pipelines.review.queue.ORDERS
# the goal "the best order beats random at equal labeler time", per way of reviewing: (random arm, ordered arms)
ORDER_FAMILIES = {"": ("C", ("B", "G")), "strict": ("L", ("K", "M"))}
CURVE_BUDGETS = (30, 60, 120)
ASK_RANGE = (3.0, 5.0, 10.0)  # seconds per prompt arm F is reported at: no study gives the number
SAMPLE_SEED = 0  # the demo's seed: arm F's labeler makes the pool's scenes again from it
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
                                   pool=self.args.pool, seed=SAMPLE_SEED)
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

    def prompting(self, start: Path):
        """What arm F's labeler asks with: the starting model (the one whose pseudo-labels are reviewed)
        loaded as the App loads it, and the pool's objects in the demo's words."""
        from bench.simulated_labeler import PoolExpressions, Prompting
        from lumen_model.ask import load_asker
        from pipelines.sample_data import ORACLE_FILE

        return Prompting(load_asker(start), "start", PoolExpressions(self.sources / ORACLE_FILE, seed=SAMPLE_SEED))

    def box_masking(self, start: Path):
        """What arms H and I draw masks with: the starting model loaded as the App loads it."""
        from bench.simulated_labeler import BoxMasking
        from lumen_model.ask import load_asker

        return BoxMasking(load_asker(start).masks_in_boxes, "start")

    def label_group(self, group: str, arm: str, seed: int, pred: Path, thresholds: Path, budgets: list,
                    costs, b_order: list | None, start: Path | None = None) -> dict:
        """One arm's review rounds (per seed for C) in its own FiftyOne dataset: the labeler works
        through the arm's order up to each budget in turn (the budgets nest), and after each one its
        work is pulled and converted. Returns per budget the shard folder, the labeler's counts (so
        far) and the reviewed images in the order worked; and the order's first max(budgets) images."""
        from bench.simulated_labeler import LabelerCounts, label, queue_order, random_order
        from pipelines.convert import convert_source
        from pipelines.layout import pool_file
        from pipelines.review.pull import pull_corrections
        from pipelines.review.push import push_predictions
        from pipelines.review.queue import build_review_queue
        from pipelines.review.fo_env import fiftyone
        from pipelines.sample_data import ORACLE_FILE

        fo = fiftyone()  # connected the pipeline's way: to the bench's own database, not any one running
        name = f"lumen-bench-loop-{group}"
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
        push_predictions(name, self.images, pred, "start", heatmaps_dir=pred.with_name(pred.stem + "_heatmaps"),
                         categories_file=pool_file(self.sources), thresholds=thresholds, progress=False)
        build_review_queue(name, order=QUEUE_ORDER.get(arm, "errors"), costs=costs)
        ds = fo.load_dataset(name)
        by_image = dict(zip(*ds.values(["image_id", "id"])))
        image_of = {v: k for k, v in by_image.items()}
        mode = {"D": "scratch", "E": "accept_all", "F": "prompted", "J": "scratch"}.get(arm, "review")
        prompting = self.prompting(start) if arm == "F" else None
        box_masks = self.box_masking(start) if arm in BOX_MASK_ARMS else None
        iou = self.args.strict_iou if arm in STRICT_ARMS else 0.5
        mask_iou_min = self.args.strict_mask_iou if arm in MASK_STRICT_ARMS else None
        if arm in QUEUE_ORDER:
            order = queue_order(ds, QUEUE_ORDER[arm])
        elif arm in RANDOM_ARMS:  # the same images for C and L with the same seed: only the reviewing differs
            order = random_order(ds, seed)
        elif arm in ON_B_IMAGES:  # the same images as B, in B's order (the queue's errors-first order)
            order = [by_image[i] for i in b_order]
        else:
            order = ds.values("id")
        out, counts, done = {}, LabelerCounts(), 0
        for budget in budgets:
            end = len(order) if budget is None else budget
            counts = counts.add(label(name, self.sources / ORACLE_FILE, order[done:end], budget=None, mode=mode,
                                      iou=iou, prompting=prompting, box_masks=box_masks, mask_iou_min=mask_iou_min))
            done = end
            pulled = pull_corrections(name, self.root / "corrections" / group, progress=False)
            tag = "all" if budget is None else f"k{budget}"
            shard_dir = self.shards / f"corrections-{group}-{tag}" / "train"
            convert_source("coco", Path(pulled["version_dir"]) / "instances_train.json", shard_dir,
                           images_dir=self.images, split="train", source_name=f"corrections-{arm}",
                           input_size=INPUT_SIZE, progress=False)
            pull_counts = {k: pulled.get(k) for k in ("images", "annotations", "accepted", "corrections",
                                                      "prompted", "rejections")}
            out[_budget_key(budget)] = {"shard": str(shard_dir), "counts": {**counts.as_dict(), "pull": pull_counts},
                                        "reviewed": [image_of[i] for i in order[:end]]}
        fo.delete_dataset(name)
        return {"budgets": out, "order": [image_of[i] for i in order[:done]]}

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

    # what decides the results (more budgets, seeds or arms on the same --out reuse what is done; the
    # costs decide arm G's order only, checked per group)
    KEYS = ("images", "val_fraction", "pool", "start_steps", "stage1_steps", "stage2_steps", "batch_size", "lr",
            "flip_tta")

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


def _budget_key(budget) -> str:
    return "all" if budget is None else str(budget)


def run_key(arm: str, budget: int | None) -> str:
    """A retraining's name: the arm, and for the budget arms the budget (`B-k60`)."""
    return arm if budget is None else f"{arm}-k{budget}"


def label_groups(arms: str, seeds: int) -> list[tuple[str, str, int]]:
    """The review rounds the arms need, in the order they run: (group, arm, seed). D and F work on B's
    images, so B's round runs whenever one of them does."""
    order = "BG" + "".join(a for a in REPORT_ORDER if a not in "ABG" + "".join(RANDOM_ARMS))  # the queue's first
    groups = [(a, a, 0) for a in order if a in arms or (a == "B" and any(x in arms for x in ON_B_IMAGES))]
    return groups + [(group_name(a, seed), a, seed) for a in RANDOM_ARMS if a in arms for seed in range(seeds)]


def group_name(arm: str, seed: int) -> str:
    """The review round behind an arm's retraining with `seed`: one per seed for a random order (C-s0), else one."""
    return f"{arm}-s{seed}" if arm in RANDOM_ARMS else arm


def runs_to_do(arms: str, budgets: list[int], seeds: int) -> list[tuple[str, str, int | None, int]]:
    """Every retraining: (run key, arm, budget, seed), seed by seed (a cut-short run has whole seeds)."""
    keys = [(a, None) for a in "A" if a in arms]
    keys += [(a, k) for k in budgets for a in BUDGET_ARMS if a in arms]
    keys += [(a, None) for a in "E" if a in arms]
    return [(run_key(a, k), a, k, seed) for seed in range(seeds) for a, k in keys]


def _label_entry(labels: dict, arm: str, budget: int | None, seed: int) -> dict | None:
    """The review round behind a retraining (None for A)."""
    if arm == "A":
        return None
    return labels[group_name(arm, seed)]["budgets"][_budget_key(budget)]


def _stats(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4), "min": round(min(values), 4), "max": round(max(values), 4),
            "spread": round(max(values) - min(values), 4), "per_seed": [round(v, 4) for v in values]}


COUNT_KEYS = ("images", "images_opened", "accepts", "rejects", "boxes_drawn", "masks_drawn", "prompts",
              "prompts_accepted", "actions")


def at_ask_s(costs, ask_s: float):
    """The same costs with another number of seconds per prompt."""
    from pipelines.review.effort import ActionCosts

    return ActionCosts(**{**costs.as_dict(), "prompt_s": ask_s})


def aggregate(runs: dict, labels: dict, todo: list, costs, ask_range=ASK_RANGE) -> dict:
    """Per retraining key: AP statistics over the seeds, the labeler's counts and seconds (per kind
    and total; C: the mean over its seeds' orders) and the AP gained over A per labeler hour; for an
    arm that typed prompts (F) also its labeler hours at each seconds-per-prompt of `ask_range` (no
    study gives that number: the same counts, other costs)."""
    arms = {}
    for key, arm, budget, _ in todo:
        if key in arms:
            continue
        seeds = sorted(int(s) for s in runs[key])
        rs = [runs[key][str(s)] for s in seeds]
        entries = [_label_entry(labels, arm, budget, s) for s in (seeds if arm in RANDOM_ARMS else [0])]
        counts = [e["counts"] for e in entries if e is not None]
        seconds = [costs.seconds(c["by_kind"]) for c in counts]

        def mean(values):
            return round(statistics.fmean(values), 1) if values else 0

        arms[key] = {"arm": arm, "budget": budget, "what": ARMS[arm],
                     "det_AP": _stats([r["det_AP"] for r in rs]), "det_AP50": _stats([r["det_AP50"] for r in rs]),
                     "segm_AP": _stats([r["segm_AP"] for r in rs]),
                     **{k if k != "images" else "images_reviewed": mean([c.get(k, 0) for c in counts])
                        for k in COUNT_KEYS},
                     "labeler_s": {k: mean([x[k] for x in seconds]) for k in (seconds[0] if seconds else {"total": 0})},
                     "pulled": [c["pull"] for c in counts],
                     "wall_s": round(statistics.fmean(r.get("label_s", 0.0) + r["train_s"] + r["eval_s"] for r in rs),
                                     1)}
        arms[key]["labeler_h"] = round(arms[key]["labeler_s"]["total"] / 3600, 3)
        if arms[key]["prompts"]:
            arms[key]["labeler_h_by_ask_s"] = {
                f"{x:g}": round(mean([at_ask_s(costs, x).seconds(c["by_kind"])["total"] for c in counts]) / 3600, 3)
                for x in ask_range}
    base = arms.get("A")
    for r in arms.values():  # what a labeler hour bought: AP over A per hour (None: no person, or no A)
        h = r["labeler_s"]["total"] / 3600
        for m in ("det_AP", "segm_AP"):
            r[f"{m}_gain_per_h"] = (round((r[m]["mean"] - base[m]["mean"]) / h, 5)
                                    if base is not None and h > 0 else None)
    return arms


def _goals_at(arms: dict, budget: int) -> dict:
    """The loop's goals at one budget, each where its arms ran."""
    get = {a: arms.get(run_key(a, budget)) for a in BUDGET_ARMS}
    a, b, c, d, g = arms.get("A"), get["B"], get["C"], get["D"], get["G"]
    goals = {}
    if a and b:
        ap_a, ap_b = a["det_AP"], b["det_AP"]
        spread = max(ap_a["spread"], ap_b["spread"])
        gain_b = ap_b["mean"] - ap_a["mean"]
        # per seed too: A and B retrain with the same seed, so the paired differences show how often B wins
        goals["B beats A by more than the seed spread"] = {
            "B-A": round(gain_b, 4), "spread": round(spread, 4),
            "B-A per seed": [round(y - x, 4) for x, y in zip(ap_a["per_seed"], ap_b["per_seed"])], "met": gain_b > spread}
    if b and c:
        goals["B >= C"] = {"B": b["det_AP"]["mean"], "C": c["det_AP"]["mean"],
                           "met": b["det_AP"]["mean"] >= c["det_AP"]["mean"]}
    if a and b and d:
        gain_b, gain_d = (x["det_AP"]["mean"] - a["det_AP"]["mean"] for x in (b, d))
        share = gain_b / gain_d if gain_d > 0 else None
        ok = share is not None and share >= 0.9
        goals["B reaches >= 90% of D's gain with <= half of D's boxes"] = {
            "share_of_D_gain": None if share is None else round(share, 3), "boxes_B": b["boxes_drawn"],
            "boxes_D": d["boxes_drawn"], "met": ok and b["boxes_drawn"] <= 0.5 * d["boxes_drawn"]}
        goals["B reaches >= 90% of D's gain with <= half of D's labeler time"] = {
            "share_of_D_gain": None if share is None else round(share, 3), "labeler_h_B": b["labeler_h"],
            "labeler_h_D": d["labeler_h"], "met": ok and b["labeler_h"] <= 0.5 * d["labeler_h"]}
    f = arms.get(run_key("F", budget))
    if b and f:  # arm F: at most 70% of B's labeler time for the same AP (within the seeds' spread)
        spread = max(b["det_AP"]["spread"], f["det_AP"]["spread"])
        same_ap = f["det_AP"]["mean"] >= b["det_AP"]["mean"] - spread
        shares = {s: round(h / b["labeler_h"], 3) if b["labeler_h"] else None
                  for s, h in f.get("labeler_h_by_ask_s", {}).items()}
        share = round(f["labeler_h"] / b["labeler_h"], 3) if b["labeler_h"] else None
        goals["F needs <= 70% of B's labeler time for the same det AP"] = {
            "F": f["det_AP"]["mean"], "B": b["det_AP"]["mean"], "spread": round(spread, 4),
            "time_share_of_B": share, "time_share_of_B_by_ask_s": shares,
            "met": same_ap and share is not None and share <= 0.7}
    per_h = {x: r["det_AP_gain_per_h"] for x, r in (("B", b), ("C", c), ("G", g)) if r}
    for first, second in (("B", "C"), ("G", "B")):  # is the errors-first order worth a labeler's hour? G's?
        if per_h.get(first) is not None and per_h.get(second) is not None:
            goals[f"{first} gains >= {second}'s det AP per labeler hour"] = {
                first: per_h[first], second: per_h[second], "met": per_h[first] >= per_h[second]}
    return goals


def curve_points(arms: dict, arm: str, budgets: list[int], metric: str = "det_AP") -> list[tuple[float, float, float]]:
    """(labeler s, mean AP, seed spread) of one arm through the budgets, starting at A's model: no labeler time
    spent, A's AP (every arm retrains from the same starting model)."""
    points = [(0.0, arms["A"][metric]["mean"], arms["A"][metric]["spread"])] if "A" in arms else []
    for k in budgets:
        r = arms.get(run_key(arm, k))
        if r:
            points.append((r["labeler_s"]["total"], r[metric]["mean"], r[metric]["spread"]))
    return sorted(points)


def ap_at_time(points: list[tuple[float, float, float]], t: float) -> tuple[float, float] | None:
    """The arm's AP at `t` labeler seconds on its curve (linear between measured budgets) and the larger seed spread
    of the two points around it; None past its last point (no extrapolation)."""
    for (t0, ap0, s0), (t1, ap1, s1) in zip(points, points[1:]):
        if t0 <= t <= t1:
            w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            return ap0 + w * (ap1 - ap0), max(s0, s1)
    return None


def time_to_reach(points: list[tuple[float, float, float]], ap: float) -> float | None:
    """The first labeler time at which the arm's curve reaches `ap` (linear between budgets); None: it does not."""
    for (t0, ap0, _), (t1, ap1, _) in zip(points, points[1:]):
        if ap0 >= ap:
            return t0
        if ap1 >= ap:
            return t0 + (ap - ap0) / (ap1 - ap0) * (t1 - t0)
    return points[-1][0] if points and points[-1][1] >= ap else None


ORDER_GOAL = "best order beats random at equal labeler time by more than the seed spread, at 2 of 3 budgets"


def order_goal(arms: dict, budgets: list[int], random_arm: str, ordered: tuple[str, ...]) -> dict | None:
    """Issue 31's first goal for one way of reviewing: at each budget the better of the ordered arms, against the
    random order reviewed the same way (read off its curve at the same labeler seconds), by more than the larger
    seed spread. None: the random arm has no curve here."""
    curve = curve_points(arms, random_arm, budgets, "det_AP")
    if len(curve) < 2:
        return None
    wins, compared = {}, 0
    for k in budgets:
        best = None
        for arm in ordered:
            r = arms.get(run_key(arm, k))
            at = r and ap_at_time(curve, r["labeler_s"]["total"])
            if not at:
                continue
            margin, spread = r["det_AP"]["mean"] - at[0], max(r["det_AP"]["spread"], at[1])
            if best is None or margin > best["margin"]:
                best = {"arm": arm, "labeler_s": r["labeler_s"]["total"], "AP": r["det_AP"]["mean"],
                        f"{random_arm}_at_same_s": round(at[0], 4), "margin": round(margin, 4),
                        "spread": round(spread, 4)}
        if best:
            compared += 1
            best["beats"] = best["margin"] > best["spread"]
        wins[str(k)] = best  # None: no order's labeler time falls inside the random curve at this budget
    need = 2 if len(budgets) >= 3 else len(budgets)
    return {"random": random_arm, "orders": list(ordered), "per_budget": wins, "budgets_compared": compared,
            "met": sum(bool(w and w["beats"]) for w in wins.values()) >= need}


def curve_goals(arms: dict, budgets: list[int]) -> dict:
    """Issue 31's goals over the learning curve. (1) At equal labeler time, the best queue order beats random order
    by more than the seeds' spread, at two of three budgets: per way of reviewing (`ORDER_FAMILIES`: B errors
    first and G gain per second against C; strict review, K and M against L), so that an order is only ever
    compared with random order reviewed the same way. (2) Review (B, F, G, H, I, K or M) reaches D's box AP, and
    D's mask AP, at D's largest budget with at most a third of D's labeler time."""
    out = {}
    if len(budgets) < 2 or "A" not in arms:
        return out
    for family, (random_arm, ordered) in ORDER_FAMILIES.items():
        goal = order_goal(arms, budgets, random_arm, ordered)
        if goal is not None:
            out[f"{family + ': ' if family else ''}{ORDER_GOAL}"] = goal
    d_budgets = [k for k in budgets if run_key("D", k) in arms]  # D's largest budget, not the run's: a run made
    if d_budgets:  # in parts may review the whole pool (F at 240) with D at 120 only
        top = max(d_budgets)
        d = arms[run_key("D", top)]
        for metric, what in (("det_AP", "box"), ("segm_AP", "mask")):
            target, limit = d[metric]["mean"], d["labeler_s"]["total"] / 3
            reach = {arm: time_to_reach(curve_points(arms, arm, budgets, metric), target) for arm in REVIEW_ARMS
                     if any(run_key(arm, k) in arms for k in budgets)}
            fastest = min((t for t in reach.values() if t is not None), default=None)
            out[f"review reaches D's {what} AP at K={top} with <= 1/3 of D's labeler time"] = {
                "D_AP": round(target, 4), "D_labeler_s": round(d["labeler_s"]["total"]), "limit_s": round(limit),
                "labeler_s_to_reach": {a: None if t is None else round(t) for a, t in reach.items()},
                "met": fastest is not None and fastest <= limit}
    return out


def goals(arms: dict, budgets: list[int]) -> dict:
    out = {str(k): _goals_at(arms, k) for k in budgets}
    curve = curve_goals(arms, budgets)
    if curve:
        out["curve"] = curve
    return out


def retraining_noise(arms: dict) -> dict:
    """How much the retraining seeds alone move an arm's AP: per metric, the pooled standard deviation over
    every arm and budget with two or more seeds (within one, the data is the same and only the retraining's seed
    differs; C and L are left out: their seeds also draw their images), and the mean of their seed ranges (what the
    goals call the spread). Orders or arms that differ by less than about the spread cannot be told apart by this
    run."""
    out = {}
    for metric in ("det_AP", "segm_AP"):
        groups = [r[metric]["per_seed"] for r in arms.values()
                  if len(r[metric]["per_seed"]) >= 2 and r["arm"] not in RANDOM_ARMS]
        if not groups:
            continue
        variances = [statistics.variance(g) for g in groups]  # n - 1 each
        dof = [len(g) - 1 for g in groups]
        pooled = (sum(v * d for v, d in zip(variances, dof)) / sum(dof)) ** 0.5
        out[metric] = {"pooled_sd": round(pooled, 4), "mean_spread": round(statistics.fmean(max(g) - min(g)
                                                                                             for g in groups), 4),
                       "arms": len(groups)}
    return out


def noise_line(noise: dict) -> str:
    if not noise:
        return "Retraining noise: one seed per arm, not measured."
    parts = [f"{'box' if m == 'det_AP' else 'mask'} AP sd {v['pooled_sd']:.3f}, mean seed range {v['mean_spread']:.3f}"
             for m, v in noise.items()]
    n = next(iter(noise.values()))["arms"]
    return (f"Retraining noise (the seeds alone, pooled over {n} arm/budget runs): {'; '.join(parts)}. Differences "
            "under about the seed range are not resolved by this run.")


def markdown_table(arms: dict, costs: ActionCosts) -> str:
    """The arms as a Markdown table (written to loop.md; the README's table is this one)."""
    rows = ["| arm | budget K | box AP [seed range] | mask AP [seed range] | labeler s | verified | drawn (masks) "
            "| asked (accepted) |", "|---|---|---|---|---|---|---|---|"]
    for key, r in arms.items():
        arm, _, k = key.partition("-k")
        d, m = r["det_AP"], r["segm_AP"]
        rows.append(f"| {arm} {r['what']} | {k or '-'} | {d['mean']:.3f} [{d['min']:.3f}-{d['max']:.3f}] | "
                    f"{m['mean']:.3f} [{m['min']:.3f}-{m['max']:.3f}] | {r['labeler_s']['total']:,.0f} | "
                    f"{r['accepts'] + r['rejects']:g} | {r['boxes_drawn']:g} ({r['masks_drawn']:g}) | "
                    f"{r['prompts']:g} ({r['prompts_accepted']:g}) |")
    rows.append(f"\nLabeler seconds: verify {costs.accept_s:g} s (accept) / {costs.reject_s:g} s (reject), draw a box "
                f"{costs.draw_box_s:g} s, a mask {costs.draw_mask_s:g} s, open an image {costs.image_s:g} s, ask "
                f"{costs.prompt_s:g} s (assumed); sources in pipelines/review/effort.py.")
    return "\n".join(rows) + "\n"


def plot_curve(arms: dict, path: Path, title: str) -> None:
    """Val detection and mask AP against labeler hours: a line per budget arm through its budgets
    (band: the range over seeds), A as a level (no new data), E at zero hours (no person)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6))
    colours = {"A": "grey", "B": "tab:blue", "C": "tab:orange", "D": "tab:green", "E": "tab:purple", "F": "tab:brown",
               "G": "tab:red", "H": "tab:pink", "I": "tab:olive",
               "J": "tab:cyan", "K": "black", "L": "goldenrod", "M": "darkred"}
    xmax = max([r["labeler_h"] for r in arms.values()] + [h for r in arms.values()
                                                          for h in r.get("labeler_h_by_ask_s", {}).values()] + [0.1])
    for ax, metric, name in ((axes[0], "det_AP", "detection AP"), (axes[1], "segm_AP", "mask AP")):
        for arm in ARMS:
            rows = sorted((r for r in arms.values() if r["arm"] == arm), key=lambda r: r["budget"] or 0)
            if not rows:
                continue
            label = f"{arm}: {ARMS[arm]}"
            if arm == "A":
                m = rows[0][metric]
                ax.axhline(m["mean"], color=colours[arm], ls="--", lw=1, label=label)
                ax.axhspan(m["min"], m["max"], color=colours[arm], alpha=0.12)
                continue
            x = [r["labeler_h"] for r in rows]
            mean, lo, hi = ([r[metric][k] for r in rows] for k in ("mean", "min", "max"))
            line = "o--" if arm in MASK_STRICT_ARMS else "o-"  # the strict reviewer's orders: dashed, beside C, B, G
            ax.plot(x, mean, line if len(rows) > 1 else "o", color=colours[arm], label=label)
            ax.fill_between(x, lo, hi, color=colours[arm], alpha=0.18)
            if len(rows) == 1:
                ax.errorbar(x, mean, yerr=[[m - lo_ for m, lo_ in zip(mean, lo)], [h - m for m, h in zip(mean, hi)]],
                            fmt="none", ecolor=colours[arm], capsize=4)
            for r, xi, yi in zip(rows, x, mean):
                by_ask = r.get("labeler_h_by_ask_s")
                if by_ask:  # F's seconds at each cost of a prompt (no study gives it): same AP, a bar of hours
                    lo_h, hi_h = min(by_ask.values()), max(by_ask.values())
                    ax.errorbar([xi], [yi], xerr=[[max(xi - lo_h, 0)], [max(hi_h - xi, 0)]], fmt="none",
                                ecolor=colours[arm], elinewidth=1, capsize=3, alpha=0.7)
                    ax.annotate(f"{min(by_ask, key=by_ask.get)}-{max(by_ask, key=by_ask.get)} s/ask", (hi_h, yi),
                                textcoords="offset points", xytext=(3, -9), fontsize=6, color=colours[arm])
                if r["budget"] is not None:
                    ax.annotate(f"K={r['budget']}", (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize=7)
        # labeler hours span two orders of magnitude (a review with boxes the model masks: minutes; labeling from
        # scratch: hours): logarithmic above 0.1 h, linear below it, so that E's zero hours stay on the plot
        ax.set_xscale("symlog", linthresh=0.1, linscale=0.3)
        ax.set_xlim(0, xmax * 1.3)
        ax.set_xlabel("labeler hours (log scale above 0.1 h)")
        ax.set_ylabel(f"val {name} (mean; band: range over seeds)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4, frameon=False)  # below: the curves need the room
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _budgets(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"budgets must be whole numbers >= 1, got {text!r}")
    return values


def _seconds_list(text: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds separated by commas, got {text!r}") from None
    if not values or values[0] < 0 or values[-1] == float("inf") or any(v != v for v in values):
        raise argparse.ArgumentTypeError(f"seconds must be numbers >= 0, got {text!r}")
    return values


def _arms(text: str) -> str:
    arms = "".join(a for a in ARMS if a in text.upper())
    unknown = sorted(set(text.upper()) - set(ARMS) - set(", "))
    if unknown or not arms:
        raise argparse.ArgumentTypeError(f"arms are letters of {''.join(ARMS)}, got {text!r}")
    return arms


ORDER_COSTS = ("accept_s", "reject_s", "draw_box_s", "draw_mask_s", "image_s")  # what G's order is built from


def _check_g_costs(labels: dict, costs, arm: str = "G") -> None:
    """Arm G's (and M's) order was built from the cost flags: resuming with other costs would mix two orders (the
    seconds of a prompt are not among them: no order uses them)."""
    done = labels.get(arm, {}).get("costs")
    now = costs.as_dict()
    changed = {k: (done.get(k), now[k]) for k in ORDER_COSTS if done is not None and done.get(k) != now[k]}
    if changed:
        raise SystemExit(f"bench_loop: arm {arm}'s order in this --out was built with other labeler costs {changed} "
                         "(old, new): use the same cost flags or another --out")


def finished_runs(runs: dict) -> list[tuple[str, str, int | None, int]]:
    """Every retraining a --out holds, as `runs_to_do` names them, in the table's order (arm, budget, seed)."""
    out = []
    for key, seeds in runs.items():
        arm, _, budget = key.partition("-k")
        out += [(key, arm, int(budget) if budget else None, int(s)) for s in seeds]
    return sorted(out, key=lambda t: (REPORT_ORDER.index(t[1]), t[2] or 0, t[3]))


def report(root: Path, costs, ask_range) -> int:
    """One table, plot and goals over everything a --out holds (`--report`)."""
    state = json.loads((root / "loop_state.json").read_text())
    todo = finished_runs(state["runs"])
    if not todo:
        raise SystemExit(f"bench_loop: {root} holds no finished retraining yet")
    arms = aggregate(state["runs"], state["labels"], todo, costs, ask_range)
    budgets = sorted({b for _, _, b, _ in todo if b is not None})
    seeds = sorted({s for *_, s in todo})
    title = (f"{root.name}: every finished run, seeds {','.join(map(str, seeds))}; labeler s: accept {costs.accept_s}, "
             f"reject {costs.reject_s}, box {costs.draw_box_s}, mask {costs.draw_mask_s}, image {costs.image_s}, "
             f"ask {costs.prompt_s:g} (assumed)")
    noise = retraining_noise(arms)
    table = markdown_table(arms, costs) + f"\n{noise_line(noise)}\n"
    (root / "report.json").write_text(json.dumps({"arms": arms, "goals": goals(arms, budgets), "noise": noise,
                                                  "settings": state["settings"]}, indent=2))
    (root / "report.md").write_text(f"{title}\n\n{table}")
    plot_curve(arms, root / "report.png", title)
    print(f"{title}\n\n{table}\nreport.md, report.png, report.json in {root}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # 120 train + 200 val: the arms differ by a few AP points, and on 80 val images (the earlier default) the
    # retraining seeds alone moved an arm's AP by up to 0.058; the val images cost prediction time only
    ap.add_argument("--images", type=int, default=320, help="labeled demo images, train + val (default: 320)")
    ap.add_argument("--val-fraction", type=float, default=0.625,
                    help="share of --images in val (default: 0.625: 120 train, 200 val)")
    ap.add_argument("--pool", type=int, default=240, help="unlabeled pool images (default: 240)")
    ap.add_argument("--budgets", "--budget", dest="budgets", type=_budgets, default=[60], metavar="K[,K...]",
                    help="K: pool images a labeler works through in B, C, D, F and G; several (30,60,120) give a "
                         "learning curve, the budgets nesting (default: 60)")
    ap.add_argument("--curve", action="store_true",
                    help=f"the learning curve: --budgets {','.join(map(str, CURVE_BUDGETS))} (about 2 h on 2 idle "
                         "cores)")
    ap.add_argument("--arms", type=_arms, default=DEFAULT_ARMS,
                    help=f"which arms, letters of {''.join(ARMS)} (default: {DEFAULT_ARMS})")
    ap.add_argument("--strict-iou", type=float, default=0.8,
                    help="arms I and K: the box IoU with the object at which its labeler accepts a prediction "
                         "(default: 0.8, an assumption; arms B-H accept at 0.5)")
    ap.add_argument("--strict-mask-iou", type=float, default=0.8,
                    help="arm K: the mask IoU with the object's at which its labeler keeps a mask the model drew, "
                         "accepted or in a drawn box (default: 0.8, an assumption)")
    ap.add_argument("--seeds", type=int, default=2, help="retraining seeds per arm (default: 2)")
    ap.add_argument("--start-steps", type=int, default=1000, help="stage-1 steps of the starting model (default: 1000)")
    ap.add_argument("--stage1-steps", type=int, default=300, help="stage-1 steps of every arm's retraining (default: 300)")
    ap.add_argument("--stage2-steps", type=int, default=150,
                    help="stage-2 steps of the starting model and of every arm (default: 150)")
    from pipelines.review.effort import ActionCosts

    default = ActionCosts()
    cost = ap.add_argument_group("labeler seconds per action (pipelines/review/effort.py cites each default)")
    cost.add_argument("--accept-s", type=float, default=default.accept_s,
                      help=f"verify a shown label as right (default: {default.accept_s}; assumed under the "
                           "Papadopoulos et al. CVPR 2016 bound of 4.7-7 s of verifying per box produced)")
    cost.add_argument("--reject-s", type=float, default=default.reject_s,
                      help=f"verify a shown label as wrong (default: {default.reject_s}; as --accept-s)")
    cost.add_argument("--box-s", type=float, default=default.draw_box_s,
                      help=f"draw an object without a mask, as a box (default: {default.draw_box_s}: extreme clicking, "
                           "Papadopoulos et al. ICCV 2017; about 35 drawn the usual way)")
    cost.add_argument("--mask-s", type=float, default=default.draw_mask_s,
                      help=f"draw an object's mask, its box included (default: {default.draw_mask_s}: COCO, Lin et al. "
                           "2014, over 22 worker hours per 1,000 segmentations)")
    cost.add_argument("--image-s", type=float, default=default.image_s,
                      help=f"open an image and look it over (default: {default.image_s}; no study gives a number)")
    cost.add_argument("--ask-s", type=float, default=5.0,
                      help="arm F: type an instruction for a missed object in Ask Lumen and check the model's answer "
                           "(default: 5; no published study gives this number and it is not measured here: an "
                           "assumption; see --ask-range)")
    cost.add_argument("--ask-range", type=_seconds_list, default=list(ASK_RANGE), metavar="S[,S...]",
                      help="arm F's labeler seconds are also reported at each of these seconds per ask, from the same "
                           f"run (the AP does not depend on them) (default: {','.join(f'{x:g}' for x in ASK_RANGE)})")
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
    ap.add_argument("--report", action="store_true",
                    help="train nothing: every arm, budget and seed finished in --out (run in parts with other "
                         "--arms / --budgets) in one table, plot and goals: report.md, report.png, report.json")
    args = ap.parse_args()
    if args.curve:
        args.budgets = list(CURVE_BUDGETS)
    if args.seeds < 1 or args.budgets[-1] > args.pool:
        ap.error("need --seeds >= 1 and every budget <= --pool")
    from pipelines.errors import InputError

    try:
        costs = ActionCosts(accept_s=args.accept_s, reject_s=args.reject_s, draw_box_s=args.box_s,
                            draw_mask_s=args.mask_s, image_s=args.image_s, prompt_s=args.ask_s)
    except InputError as e:
        ap.error(str(e))

    for flag, value in (("--strict-iou", args.strict_iou), ("--strict-mask-iou", args.strict_mask_iou)):
        if not 0.5 <= value <= 1.0:
            ap.error(f"{flag} must be between 0.5 (the usual match) and 1, got {value}")
    if args.report:
        if not args.out or not (Path(args.out) / "loop_state.json").is_file():
            ap.error("--report needs the --out of a run (its loop_state.json)")
        return report(Path(args.out), costs, args.ask_range)
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

    # every review round first: FiftyOne's database is needed only here, not during the hours of retraining
    labels, label_s = state.data["labels"], state.data["label_s"]
    for arm in args.arms:
        if QUEUE_ORDER.get(arm) == "gain_per_s":
            _check_g_costs(labels, costs, arm)
    for group, arm, _ in label_groups(args.arms, args.seeds):
        for key, which in (("strict_iou", STRICT_ARMS), ("strict_mask_iou", MASK_STRICT_ARMS)):
            value = getattr(args, key)
            if arm in which and labels.get(group, {}).get(key, value) != value:
                flag = "--" + key.replace("_", "-")
                raise SystemExit(f"bench_loop: arm {arm} in this --out was labeled with {flag} {labels[group][key]}: "
                                 "use the same value or another --out")
    for group, arm, seed in label_groups(args.arms, args.seeds):
        budgets = [None] if arm == "E" else args.budgets
        if group in labels and all(_budget_key(k) in labels[group]["budgets"] for k in budgets):
            continue
        # a new budget relabels the group from its start, the budgets done before included (the labeler
        # is deterministic: they come out the same)
        if arm != "E" and group in labels:
            budgets = sorted(set(budgets) | {int(k) for k in labels[group]["budgets"]})
        t = time.perf_counter()
        b_order = labels["B"]["order"] if arm in ON_B_IMAGES else None
        labels[group] = loop.label_group(group, arm, seed, pred, thresholds, budgets, costs, b_order, start)
        if QUEUE_ORDER.get(arm) == "gain_per_s":
            labels[group]["costs"] = costs.as_dict()
        if arm in STRICT_ARMS:
            labels[group]["strict_iou"] = args.strict_iou
        if arm in MASK_STRICT_ARMS:
            labels[group]["strict_mask_iou"] = args.strict_mask_iou
        label_s[group] = round(time.perf_counter() - t, 1)
        state.save()
        for k, entry in labels[group]["budgets"].items():
            c = entry["counts"]
            print(f"[{time.strftime('%H:%M:%S')}] labeled {group} K={k}: {c['images']} images, {c['accepts']} accepts, "
                  f"{c['rejects']} rejects, {c['boxes_drawn']} drawn ({c['masks_drawn']} masks), "
                  f"{c.get('prompts', 0)} asked ({c.get('prompts_accepted', 0)} answers accepted): "
                  f"{costs.seconds(c['by_kind'])['total']:.0f} labeler s", flush=True)
        print(f"[{time.strftime('%H:%M:%S')}] labeled {group}: {label_s[group]} s", flush=True)
    runs = state.data["runs"]
    todo = runs_to_do(args.arms, args.budgets, args.seeds)
    for key, arm, budget, seed in todo:
        done = runs.setdefault(key, {})
        if str(seed) in done:
            continue
        entry = _label_entry(labels, arm, budget, seed)
        r = loop.retrain_and_evaluate(key, [entry["shard"]] if entry else [], start, seed)
        group = None if arm == "A" else group_name(arm, seed)
        r["label_s"] = label_s.get(group, 0.0) if group else 0.0
        done[str(seed)] = r
        state.save()  # a cut-short run keeps what it has; the same command finishes it
        print(f"[{time.strftime('%H:%M:%S')}] arm {key} seed {seed}: det AP {r['det_AP']:.3f} AP50 "
              f"{r['det_AP50']:.3f} segm AP {r['segm_AP']:.3f} ({r['train_s']} s train, {r['eval_s']} s eval)",
              flush=True)
    wanted = {}
    for key, _, _, seed in todo:
        wanted.setdefault(key, {})[str(seed)] = runs[key][str(seed)]
    arms = aggregate(wanted, labels, todo, costs, args.ask_range)

    total = time.perf_counter() - t_all + state.earlier_s
    summary = {
        "arms": arms, "goals": goals(arms, args.budgets), "noise": retraining_noise(arms),
        "labeler_costs_s": costs.as_dict(),
        "runs": {k: [v[str(s)] for s in range(args.seeds)] for k, v in wanted.items()}, "phases_s": times,
        "total_s": round(total, 1), "resumed": state.data["resumed"],
        "total_cpu_s": round(state.earlier_cpu_s + _cpu_seconds(), 1),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2), "sample_data": counts, "config": vars(args),
    }
    (root / "loop.json").write_text(json.dumps(summary, indent=2))
    title = (f"{args.images} labeled images ({counts['images_train']} train), pool {args.pool}, "
             f"K={','.join(map(str, args.budgets))}, {args.seeds} seeds, {args.stage1_steps}+{args.stage2_steps} "
             f"retrain steps; labeler s: accept {costs.accept_s}, reject {costs.reject_s}, box {costs.draw_box_s}, "
             f"mask {costs.draw_mask_s}, image {costs.image_s}, ask {costs.prompt_s:g} (assumed)")
    plot_curve(arms, root / "loop.png", title)
    (root / "loop.md").write_text(f"{title}\n\n" + markdown_table(arms, costs) + f"\n{noise_line(summary['noise'])}\n")

    print(f"\n{title}")
    print(f"{'arm':7}{'what':34}{'det AP [range]':>22}{'AP50':>7}{'segm AP':>8}{'actions':>8}{'boxes':>6}{'masks':>6}"
          f"{'labeler s':>10}{'dAP/h':>8}{'wall s':>8}")
    for key, r in arms.items():
        d = r["det_AP"]
        per_h = "-" if r["det_AP_gain_per_h"] is None else f"{r['det_AP_gain_per_h']:.3f}"
        print(f"{key:7}{r['what']:34}{d['mean']:>7.3f} [{d['min']:.3f}-{d['max']:.3f}]"
              f"{r['det_AP50']['mean']:>7.3f}{r['segm_AP']['mean']:>8.3f}{r['actions']:>8g}{r['boxes_drawn']:>6g}"
              f"{r['masks_drawn']:>6g}{r['labeler_s']['total']:>10.0f}{per_h:>8}{r['wall_s']:>8}")
    for key, r in arms.items():  # no study gives the seconds of an ask: the same run at other costs
        if r.get("labeler_h_by_ask_s"):
            at = ", ".join(f"{s} s/ask: {h * 3600:.0f} s" for s, h in r["labeler_h_by_ask_s"].items())
            print(f"{key}: {r['prompts']:g} asked, {r['prompts_accepted']:g} answers accepted; labeler s at {at}")
    print(f"\n{noise_line(summary['noise'])}")
    print("\ngoals:")
    for budget, gs in summary["goals"].items():
        for goal, v in gs.items():
            where = "curve" if budget == "curve" else f"K={budget}"
            print(f"  {where} {'MET    ' if v['met'] else 'NOT MET'} {goal}: "
                  f"{({k: x for k, x in v.items() if k != 'met'})}")
    print(f"\nphases (s): {times}; total {summary['total_s']} s wall, {summary['total_cpu_s']} s CPU, "
          f"load average at the end {summary['load_average_1min_at_end']}; everything in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
