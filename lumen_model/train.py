"""Stage-wise training on the shards (`lumen train`, the model assets).

    python -m lumen_model.train --stage 1 --preset tiny --shards var/shards/coco/train ... --out var/models/s1
    torchrun --nproc_per_node 2 -m lumen_model.train ...   # DistributedDataParallel (gloo on CPU, nccl on GPU)

Stage 1: mixed tasks, answer-token CE + Gaussian focal loss + L1 sizes. Stage 2: stage-1 weights
frozen, the mask and pose decoders trained (and the VQA readout, where the model has one). `--resume` continues exactly: model, optimizer,
scheduler, step, RNG states and data position come back from the checkpoint folder.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import random
import re
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.distributed as dist

from lumen_model.checkpoint import (build_model, load_model, mark_diverged, nonfinite_tensors, read_config,
                                    save_checkpoint, verify_files, write_checksums)
from lumen_model.config import LumenConfig, get_preset
from lumen_model.data import SHORT_ANSWER, SHORT_ANSWER_SOURCES, Collator, hflip
from lumen_model.parent_death import AGENT_PID, STARTER_PID, arm_from_env
from lumen_model.tokenizer import train_tokenizer
from lumen_model.train_config import STAGE_TASKS, TrainConfig, build_arg_parser, config_from_args  # noqa: F401 (public here too)
from pipelines.errors import InputError, LumenError
from pipelines.progress import progress
from pipelines.tasks import CATEGORY, task_names
from pipelines.tempdirs import check_replaceable, clean_stale, publish_dir, staged, writing

log = logging.getLogger(__name__)
TRAIN_SPLITS = ("train", "all")


class TrainingDiverged(LumenError):
    """The loss or the weights went non-finite: training stopped, the last good checkpoint is kept."""


@dataclass
class BadStepCounter:
    """Skips updates whose loss or gradient norm is not finite, and stops after `limit` in a row."""

    limit: int
    in_a_row: int = 0

    def check(self, loss: float, grad_norm: float, step: int, out: Path, rank: int = 0) -> bool:
        """True when this step's update may be applied; raises TrainingDiverged at the limit."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        log.warning("step %d: non-finite loss %s / gradient norm %s: update skipped (%d in a row)",
                    step + 1, loss, grad_norm, self.in_a_row)
        if self.in_a_row >= max(1, self.limit):
            first_bad = step + 2 - self.in_a_row  # the streak's first step (1-based); no update was applied since
            raise TrainingDiverged(f"training diverged: loss {loss} / gradient norm {grad_norm} for {self.in_a_row} "
                                   f"steps in a row at step {step + 1}; {_last_good(out, first_bad, rank)}; lower --lr")
        return False


def _saved_step(out: Path) -> int | None:
    """The step of the checkpoint in `out`, None when there is none (or its state is unreadable)."""
    try:
        step = json.loads((out / "trainer_state.json").read_text())["step"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return step if isinstance(step, int) else None


def _last_good(out: Path, first_bad: int | None = None, rank: int = 0) -> str:
    """What a diverged run leaves: the last good checkpoint, or none.

    A checkpoint saved at step N holds the weights that step N+1 runs with. When every step from N+1 on was
    skipped as non-finite, those weights are the ones that diverged (the usual case for a too-high --lr: one
    update at it and every later loss is NaN): they would predict nothing. They are then marked (diverged.json,
    refused by `load_model`) and the message says that no good checkpoint is left.
    """
    step = _saved_step(out)
    if step is None:
        return f"no checkpoint was saved in {out}"
    if first_bad is not None and step >= first_bad - 1:
        if rank == 0:
            mark_diverged(out, f"its weights (step {step}) gave non-finite losses from step {first_bad} on")
        return (f"no good checkpoint is left: the one in {out} (step {step}) holds the weights that diverged, "
                "and predict and --resume refuse it")
    return f"the last good checkpoint (step {step}) is kept in {out}"


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _init_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():  # one GPU per rank, also for the object collectives of a save
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def _device(wanted: str | None, rank: int) -> str:
    """The device this rank trains on: the one asked for, else the GPU when there is one."""
    if wanted is None or wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda":  # one GPU per rank
        return f"cuda:{rank % max(1, torch.cuda.device_count())}"
    return wanted


def _set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _order(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _grouped_order(groups: list[int], seed: int, epoch: int, group_size: int) -> list[int]:
    """One epoch's order in runs of `group_size` samples of the same image (positions into `groups`).

    Each image's samples are shuffled and cut into runs, and the runs are shuffled, so a batch holds a
    few images with several instructions each: the vision encoders run once per image (the batch's
    most expensive part on a CPU), and "find the circles" and "find the squares" on the same picture
    sit side by side, which is the contrast the aligner has to learn.
    """
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    by_image: dict[int, list[int]] = {}
    for pos, key in enumerate(groups):
        by_image.setdefault(key, []).append(pos)
    runs = []
    for key in sorted(by_image):
        members = by_image[key]
        perm = torch.randperm(len(members), generator=g).tolist()
        shuffled = [members[j] for j in perm]
        runs += [shuffled[k:k + group_size] for k in range(0, len(shuffled), group_size)]
    return [pos for r in torch.randperm(len(runs), generator=g).tolist() for pos in runs[r]]


def _batches_from(n: int, seed: int, batch: int, start_step: int, groups: list[int] | None = None, group_size: int = 1):
    """(step, positions) from start_step on: the data position is a pure function of the step."""
    per_epoch = max(1, n // batch)
    step = start_step
    cached = (None, None)
    while True:
        epoch, k = divmod(step, per_epoch)
        if cached[0] != epoch:
            order = _order(n, seed, epoch) if groups is None or group_size <= 1 else _grouped_order(groups, seed, epoch, group_size)
            cached = (epoch, order)
        yield step, cached[1][k * batch:(k + 1) * batch]
        step += 1


def train_rows(dataset, splits=TRAIN_SPLITS) -> tuple[np.ndarray, list[int]]:
    """Positions of the rows in `splits`, and each one's image number (numbered in order of first
    appearance), computed on the Arrow columns without a Python object per row."""
    in_split = pc.fill_null(pc.is_in(dataset.column("split"), value_set=pa.array(list(splits), pa.string())), False)
    keep = np.flatnonzero(in_split.to_numpy(zero_copy_only=False))
    paths = dataset.column("image_path").take(pa.array(keep)).combine_chunks()
    groups = pc.dictionary_encode(paths, null_encoding="encode").indices.to_numpy(zero_copy_only=False)
    return keep, groups.tolist()


def task_repeats(tasks: list[str]) -> dict[str, int]:
    """Repeat-factor sampling (LVIS, Gupta et al. 2019) over tasks instead of categories: with T tasks, a
    task holding a share f < 1/T of the rows has each of them r = round(sqrt(1 / (T f))) times per epoch
    (the square root keeps a rare task from crowding out the others). Pose has 1.4% of the demo's stage-1
    rows and 3.4% of stage 2's: at 400 stage-2 steps its decoder saw each person about once or twice."""
    counts = collections.Counter(tasks)
    share = 1.0 / max(1, len(counts))
    return {t: max(1, round(math.sqrt(share * len(tasks) / c))) for t, c in counts.items()}


def balanced_rows(dataset, keep: np.ndarray, groups: list[int]) -> tuple[np.ndarray, list[int], dict[str, int]]:
    """`keep` and `groups` with each row repeated as `task_repeats` says (repeats stay with their image's group)."""
    tasks = dataset.column("task").take(pa.array(keep)).to_pylist()
    reps = task_repeats(tasks)
    per_row = np.array([reps[t] for t in tasks], dtype=np.int64)
    return np.repeat(keep, per_row), np.repeat(np.asarray(groups, dtype=np.int64), per_row).tolist(), reps


def split_questions(dataset, keep: np.ndarray, groups: list[int]) -> tuple:
    """Stage 2: (the decoders' rows, their groups) and (the short-answer questions' rows, their groups). The
    questions only train the VQA readout; the chats (answers in sentences) are left out."""
    tasks = np.asarray(dataset.column("task").take(pa.array(keep)).to_pylist())
    sources = np.asarray(dataset.column("source").take(pa.array(keep)).to_pylist())
    is_q = tasks == "vqa"
    short = is_q & np.isin(sources, list(SHORT_ANSWER_SOURCES))
    groups = np.asarray(groups, dtype=np.int64)
    return (keep[~is_q], groups[~is_q].tolist()), (keep[short], groups[short].tolist())


def add_questions(rows: tuple, questions: tuple, share: float) -> tuple[np.ndarray, list[int]]:
    """The decoders' rows plus at most `share` of the total as questions, taken evenly. Every question takes a
    decoder's place in a batch: all of them (the chats' too) were 29% of the demo's stage-2 rows, and pose's
    decoder, which sees each person once or twice in 400 steps, lost 0.02-0.04 AP on both seeds."""
    (keep, groups), (q_keep, q_groups) = rows, questions
    n = min(len(q_keep), int(round(share / (1 - share) * len(keep))))
    pick = np.linspace(0, len(q_keep) - 1, n).round().astype(int) if n else np.zeros(0, dtype=int)
    return np.concatenate([keep, q_keep[pick]]), list(groups) + [q_groups[i] for i in pick]


class _StepItems(torch.utils.data.Dataset):
    """Training items addressed by (step, position into `keep`): whether an image is mirrored is a
    pure function of (seed, step, image), so whichever worker fetches an item gets the same one."""

    def __init__(self, dataset, keep, groups, seed: int, p_flip: float):
        self.dataset, self.keep, self.groups, self.seed, self.p_flip = dataset, keep, groups, seed, p_flip

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, key):
        step, pos = key
        item = self.dataset[int(self.keep[pos])]
        if self.p_flip > 0 and _coin(self.seed, step, self.groups[pos]) < self.p_flip:
            item = hflip(item)
        return item


class _StepBatches(torch.utils.data.Sampler):
    """This rank's share of each step's batch, steps start..stop-1, in `_batches_from`'s order."""

    def __init__(self, n, seed, batch_size, start, stop, groups, group_size, rank, per_rank):
        self.args = (n, seed, batch_size, start, groups, group_size)
        self.start, self.stop, self.rank, self.per_rank = start, stop, rank, per_rank

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step, idx in _batches_from(*self.args):
            if step >= self.stop:
                return
            yield [(step, i) for i in idx[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]]


def training_batches(dataset, keep, groups, collate, *, seed: int, batch_size: int, start: int, stop: int,
                     group_size: int, hflip_p: float, num_workers: int = 0, rank: int = 0, world: int = 1):
    """(step, this rank's collated batch) for steps start..stop-1, loaded by `num_workers` DataLoader
    processes ahead of the model. The positions and mirror coins depend on the step alone, and the
    loader draws from its own generator (not the global RNG), so resume and DDP stay exact."""
    sampler = _StepBatches(len(keep), seed, batch_size, start, stop, groups, group_size, rank, batch_size // world)
    if num_workers and torch.multiprocessing.current_process().daemon:
        # a daemonic process (a Celery worker's pool process) may not have children: load in this one
        log.info("batches load in this process: it is daemonic and may not start DataLoader workers")
        num_workers = 0
    if num_workers:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the collator tokenizes in the workers
    context = "fork" if num_workers and "fork" in torch.multiprocessing.get_all_start_methods() else None
    loader = torch.utils.data.DataLoader(_StepItems(dataset, keep, groups, seed, hflip_p), batch_sampler=sampler,
                                         collate_fn=collate, num_workers=num_workers, multiprocessing_context=context,
                                         generator=torch.Generator().manual_seed(seed))
    return _numbered(range(start, stop), loader)


def _numbered(steps: range, loader):
    """(step, batch) pairs; the loader's worker processes are stopped as soon as the steps end.

    An iterator left to the garbage collector can outlive the training (it sits in a reference
    cycle) and be copied into the next loader's forked workers, whose collector then tries to stop
    workers that are not its children ("can only test a child process" tracebacks)."""
    it = iter(loader)
    try:
        for step in steps:
            yield step, next(it)
    finally:
        stop_workers = getattr(it, "_shutdown_workers", None)  # torch's own clean-up; absent without workers
        if stop_workers is not None:
            stop_workers()


def _coin(seed: int, step: int, key: int) -> float:
    return float(np.random.default_rng([seed, step, key]).random())


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _smooth(values: list[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what there is so far)."""
    v = np.asarray(values, dtype=float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    n = np.minimum(np.arange(1, len(v) + 1), window)
    return (c[1:] - c[np.arange(1, len(v) + 1) - n]) / n


def smoothing_window(values: list[float], jitter: float = 0.02) -> int:
    """Moving-average width that brings a loss's step-to-step noise under `jitter` of its range.

    Each loss has its own: stage 2's mask loss is far noisier than stage 1's total, and one window
    for all (len/50) left the stage-2 curve as noise. Averaging w steps divides the noise by sqrt(w).
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 10:
        return 1
    noise = np.median(np.abs(np.diff(v))) / np.sqrt(2)  # per-step noise, robust to the trend
    lo, hi = np.percentile(v, [5, 95])
    want = (noise / (jitter * max(hi - lo, 1e-12))) ** 2
    return int(np.clip(np.ceil(want), max(5, len(v) // 50), max(5, len(v) // 5)))


def _loss_curve(history: list[dict], path: Path, title: str) -> None:
    """Every loss term (faint: per step; solid: moving average) and, on its own axis, the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in history[0] if k not in ("step", "samples_per_s", "lr")] if history else []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = [h["step"] for h in history]
    for k in keys:
        values = [h[k] for h in history]
        window = smoothing_window(values)
        line, = ax.plot(steps, _smooth(values, window), label=f"{k} (mean of {window})",
                        linewidth=1.6 if k == "loss" else 1.0)
        ax.plot(steps, values, color=line.get_color(), alpha=0.15, linewidth=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (moving average; faint: per step)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if history and "lr" in history[0]:
        ax_lr = ax.twinx()
        ax_lr.plot(steps, [h["lr"] for h in history], color="gray", linestyle="--", linewidth=0.9, label="lr")
        ax_lr.set_ylabel("learning rate")
        ax_lr.legend(loc="upper center", fontsize=8)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class TrainingPlan:
    """What a run trains on and where, settled (and the inputs checked) before any model is built."""

    rank: int
    world: int
    device: str
    preset: LumenConfig
    out: Path
    dataset: object  # pipelines.dataset.ShardDataset
    keep: np.ndarray  # positions of the training rows
    groups: list[int]  # each training row's image number
    resume: bool  # --resume and a checkpoint to resume from


@dataclass
class Trainer:
    """The model and its optimizer state, as a run starts (fresh, from --init or resumed) and goes on."""

    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    start: int
    history: list


def train(cfg: TrainConfig) -> dict:
    """Train one stage as `cfg` says; returns the last checkpoint's folder, step, metrics and speed."""
    plan = plan_training(cfg)
    trainer = start_trainer(cfg, plan)
    last_step, seen, t0 = run_steps(cfg, plan, trainer)
    result = write_checkpoint(trainer, plan.out, last_step, cfg, plan.rank)
    result["samples_per_s"] = seen / max(1e-9, time.perf_counter() - t0)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


class TrainingProcessesFailed(LumenError):
    """A multi-process (torchrun) training run exited with an error; `stderr` holds its last lines."""

    def __init__(self, message: str, stderr: str = ""):
        super().__init__(message)
        self.stderr = stderr


def loader_workers(nproc: int) -> int:
    """DataLoader processes per training process on a 2-core CPU: 2 beside one process, none beside DDP ranks.
    Each rank already has a core; a loader process beside each took it back: stage 1 on the 400-image demo ran
    0.39-0.41 s per step with one, 0.32-0.36 s loading in the rank (~10 ms a batch), with the same batches and
    weights (README, "Measured")."""
    return 2 if nproc <= 1 else 0


def train_processes(cfg: TrainConfig, nproc: int, on_line=None) -> dict:
    """`train(cfg)` in `nproc` DistributedDataParallel processes (torchrun; gloo and 1 thread each on a CPU).

    The same global batch, data order and updates as one process (tests/test_model_ddp.py). On a CPU the
    ranks need ~8% more CPU than one thread for the same step (README, "Measured"), where one process's
    threads split a tiny-preset step's many small ops only partly; on a loaded machine both lose time
    waiting for each other. 1 process: plain `train(cfg)` here. (Stage 2's box jitter draws from each
    rank's own RNG: the same distribution as one process, other draws.)
    """
    if nproc <= 1:
        return train(cfg)
    import subprocess

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result_file = out.with_name(f".{out.name}.result.json")
    result_file.unlink(missing_ok=True)
    # lumen_model.torchrun: torch.distributed.run that, with its ranks, dies when this process is killed
    cmd = [sys.executable, "-m", "lumen_model.torchrun", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "lumen_model.train", *cfg.to_argv(), "--result-file", str(result_file)]
    root = str(Path(__file__).resolve().parents[1])  # this checkout's lumen_model, also in the children
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    env.setdefault("OMP_NUM_THREADS", "1")
    env[STARTER_PID] = str(os.getpid())
    log.info("running %s", " ".join(cmd))
    # the ranks' log (rank 0's progress line every few seconds, warnings, a traceback) goes to `on_line` (this
    # process's stderr; a Dagster step's log) as it comes, so a long run is not silent; its last lines also make
    # the error message
    on_line = on_line or sys.stderr.write
    last_lines: collections.deque[str] = collections.deque(maxlen=200)
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env) as proc:
        for line in proc.stderr:
            on_line(line)
            last_lines.append(line)
    if proc.returncode != 0 or not result_file.is_file():
        tail = "".join(last_lines)[-4000:]
        raise TrainingProcessesFailed(f"training in {nproc} processes failed (exit {proc.returncode}): "
                                      f"{_rank_error(tail)}", tail)
    result = json.loads(result_file.read_text())  # rank 0 writes it whole, then renames it
    result_file.unlink()
    return result


# torchrun's own report after a rank fails ("=====", "Root Cause", "[0]:", timestamped elastic log lines) ends
# the output; the rank's message (`lumen_model.train: error: ...`, an exception's last line) comes before it
_RANK_ERROR = re.compile(r"^(lumen_model\.train: error: .+|[A-Za-z_][\w.]*(Error|Exception|Diverged|Interrupt)\b.*)$")


def _rank_error(log: str) -> str:
    """The line of the ranks' log that says why they failed (the last one that looks like an error)."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    own = [ln for ln in lines if _RANK_ERROR.match(ln) and "ChildFailedError" not in ln]
    return own[-1] if own else (lines[-1] if lines else "no output")


def _check_inputs(cfg: TrainConfig) -> None:
    """Fail in one line on bad input before any slow work: missing shards, clashing flags, leaked eval images."""
    missing = [d for d in cfg.shards if not Path(d).is_dir()]
    if missing:
        raise InputError(f"shard folder not found: {', '.join(missing)}")
    if cfg.resume and cfg.init:
        raise InputError("give either --resume (continue --out) or --init (start from another checkpoint), not both")
    if not cfg.allow_eval_overlap:  # no evaluation image may train (pipelines/leakage.py)
        from pipelines.leakage import describe_overlap, find_eval_overlap

        leaks = find_eval_overlap(cfg.shards, cfg.shards, train_splits=TRAIN_SPLITS)
        if leaks:
            raise InputError(describe_overlap(leaks) + "; take them out of training, or pass --allow-eval-overlap")


def _can_resume(out: Path) -> bool:
    """--resume: True when `out` holds a checkpoint to continue; False when there is nothing yet (a first run
    starts at step 0). Weights without their trainer_state.json are refused: training from step 0 over them
    would silently throw the run away."""
    if (out / "trainer_state.json").is_file():
        return True
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"cannot resume {out}: it has no trainer_state.json (the step, optimizer and schedule "
                         f"to continue from); start again without --resume, or with --init {out} to start from "
                         "its weights")
    log.info("--resume: nothing to resume in %s yet; starting at step 0", out)
    return False


def plan_training(cfg: TrainConfig) -> TrainingPlan:
    """Join the process group, check the inputs, open the shards and decide whether to resume."""
    _init_distributed()
    rank, world = _dist_info()
    device = _device(cfg.device, rank)
    preset = get_preset(cfg.preset)
    out = Path(cfg.out)
    tasks = cfg.tasks or STAGE_TASKS[cfg.stage]
    if cfg.stage == 2 and not preset.vqa_readout:
        tasks = tuple(t for t in tasks if t != "vqa")  # no answer decoder to train: the questions would be dead weight
    from pipelines.dataset import ShardDataset

    _check_inputs(cfg)
    dataset = ShardDataset(cfg.shards, input_size=preset.input_size, tasks=tasks)
    keep, groups = train_rows(dataset, TRAIN_SPLITS)
    if not len(keep):
        raise InputError(f"no train/all-split samples for tasks {', '.join(tasks)} in {', '.join(cfg.shards)}")
    questions = None
    if cfg.stage == 2 and "vqa" in tasks:  # for the VQA readout: kept apart from the decoders' balance
        (keep, groups), questions = split_questions(dataset, keep, groups)
    if cfg.balance_tasks:
        keep, groups, reps = balanced_rows(dataset, keep, groups)
        if rank == 0:
            log.info("task repeats per epoch: %s", ", ".join(f"{t} x{r}" for t, r in sorted(reps.items())))
    if questions is not None:
        n_decoders = len(keep)
        keep, groups = add_questions((keep, groups), questions, cfg.question_share)
        if rank == 0:
            log.info("stage 2: %d of %d rows are questions (for the VQA readout)", len(keep) - n_decoders, len(keep))
    cfg.categories = _categories(dataset, cfg.init or (out if cfg.resume else None))
    if rank == 0:
        clean_stale(out)  # temp folders of a killed save; an interrupted swap is put back
    check_replaceable(out, "checkpoint")  # a user's folder or a partition as --out: refused before any training
    resume = cfg.resume and _can_resume(out)  # after clean_stale: it may put one back
    return TrainingPlan(rank, world, device, preset, out, dataset, keep, groups, resume)


def _start_model(cfg: TrainConfig, plan: TrainingPlan):
    """(model, tokenizer): the resumed checkpoint, the --init one, or a new model with its own tokenizer."""
    if plan.resume:
        return load_model(plan.out, plan.device)
    if cfg.init:
        return load_model(cfg.init, plan.device)
    texts = [t for pair in zip(plan.dataset.column("instruction").to_pylist(), plan.dataset.column("answer").to_pylist())
             for t in pair]
    texts += ["user : assistant :", SHORT_ANSWER]
    tokenizer = train_tokenizer(texts, vocab_size=plan.preset.text.vocab_size)
    _set_seed(cfg.seed)
    model = build_model(plan.preset, tokenizer).to(plan.device)
    if cfg.weights:
        from lumen_model.checkpoint import load_pretrained_parts

        load_pretrained_parts(model, cfg.weights)
    return model, tokenizer


def _lr_schedule(cfg: TrainConfig):
    """The learning-rate factor per step: linear warm-up, then a cosine down to `lr_floor`."""
    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return cfg.lr_floor + (1 - cfg.lr_floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return lr_at


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """The trainable parameters; in stage 2 the VQA readout's (and glimpse's) at `readout_lr_scale` x the learning
    rate (the schedule scales both). There it trains alone on frozen features, from the few rows that are questions:
    on such features, 75 question-only steps at the base rate took colour answers from 0.40 to 0.51, 150 at 3x
    to 0.77. In stage 1 it stays at the base rate: at 5x, detection AP fell from 0.692 to 0.655 (seed 0)."""
    readout = getattr(model, "vqa_readout", None)
    scale = cfg.readout_lr_scale if cfg.stage == 2 and readout is not None else 1.0
    answer_parts = [m for m in (readout, getattr(model, "glimpse", None)) if m is not None]
    fast = {id(p) for m in answer_parts for p in m.parameters()} if scale != 1.0 else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = ({"params": [p for p in trainable if id(p) not in fast]},
              {"params": [p for p in trainable if id(p) in fast], "lr": cfg.lr * scale})
    return [g for g in groups if g["params"]]


def start_trainer(cfg: TrainConfig, plan: TrainingPlan) -> Trainer:
    """Model, optimizer and schedule at the run's first step, with the RNG where that step expects it."""
    model, tokenizer = _start_model(cfg, plan)
    model.train()
    model.set_stage(cfg.stage)
    # fused: one kernel over all parameters instead of ~10 small ops per tensor (the same update, up to float
    # rounding; ~3% of a tiny-preset CPU step)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_schedule(cfg))
    start, history = 0, []
    if plan.resume:
        start, history = _load_resume_state(plan.out, optimizer, scheduler, plan.rank)
        log.info("resuming %s at step %d", plan.out, start)
    else:
        _set_seed(cfg.seed + plan.rank)
    return Trainer(model, tokenizer, optimizer, scheduler, start, history)


def run_steps(cfg: TrainConfig, plan: TrainingPlan, t: Trainer) -> tuple[int, int, float]:
    """Train up to the stop step, saving every `save_every`; returns (last step, samples seen, start time)."""
    net = torch.nn.parallel.DistributedDataParallel(t.model, find_unused_parameters=True) if plan.world > 1 else t.model
    p = plan.preset
    collate = Collator(t.tokenizer, p.num_image_tokens, p.max_text_tokens, p.heatmap_size, p.input_size)
    t0 = time.perf_counter()
    bar = progress(total=cfg.max_steps, initial=t.start, desc=f"stage {cfg.stage}", unit="step",
                   enabled=cfg.progress and plan.rank == 0)
    stop = cfg.max_steps if cfg.stop_at_step is None else min(cfg.max_steps, cfg.stop_at_step)
    batches = training_batches(plan.dataset, plan.keep, plan.groups, collate, seed=cfg.seed, batch_size=cfg.batch_size,
                               start=t.start, stop=stop, group_size=cfg.group_size, hflip_p=cfg.hflip,
                               num_workers=cfg.num_workers, rank=plan.rank, world=plan.world)
    per_step = min(cfg.batch_size, len(plan.keep))  # samples in a step's batch, all ranks together
    with contextlib.closing(batches):  # an exception mid-run stops the loader's workers too
        last_step, seen = _steps_loop(cfg, plan, t, net, batches, bar, per_step, t0)
    bar.close()
    return last_step, seen, t0


def _steps_loop(cfg: TrainConfig, plan: TrainingPlan, t: Trainer, net, batches, bar, per_step: int,
                t0: float) -> tuple[int, int]:
    """The step loop proper: one update per batch, the history, the bar, the periodic checkpoints."""
    bad_steps, last_step, seen = BadStepCounter(cfg.max_bad_steps), t.start, 0
    for step, batch in batches:
        rec = _train_step(cfg, plan, t, net, batch, step, bad_steps)
        seen += per_step
        last_step = step + 1
        if not math.isfinite(rec["loss"]):
            continue  # a skipped step: no NaN in the history, the curve or the printed JSON
        rate = seen / (time.perf_counter() - t0)
        t.history.append({"step": step + 1, **rec, "samples_per_s": rate, "lr": t.scheduler.get_last_lr()[0]})
        bar.set_postfix(loss=f"{rec['loss']:.3f}", samples_s=f"{rate:.1f}")
        bar.update(1)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.max_steps:
            write_checkpoint(t, plan.out, step + 1, cfg, plan.rank)
    return last_step, seen


def batch_to(batch: dict, device: str) -> dict:
    """The batch's tensors on `device`, also those in per-row lists (boxes, masks, centers, keypoints, word ids)."""
    def move(v):
        if torch.is_tensor(v):
            return v.to(device, non_blocking=True)
        if isinstance(v, (list, tuple)) and v and all(torch.is_tensor(x) for x in v):
            return type(v)(x.to(device, non_blocking=True) for x in v)
        return v
    return {k: move(v) for k, v in batch.items()}


def _train_step(cfg: TrainConfig, plan: TrainingPlan, t: Trainer, net, batch: dict, step: int,
                bad_steps: BadStepCounter) -> dict:
    """One update on one batch (skipped when non-finite); returns the losses averaged over the ranks."""
    batch = batch_to(batch, plan.device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=plan.device.startswith("cuda")):
        losses = net(batch, stage=cfg.stage)
    t.optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()  # DDP averages the gradients across ranks here
    # each parameter group clipped on its own: stage 2's VQA readout (its own group) must not shrink the mask and
    # pose decoders' steps (clipped together, pose lost 0.02-0.04 AP); one group (stage 1): the usual global clip
    norms = [torch.nn.utils.clip_grad_norm_(g["params"], cfg.grad_clip, foreach=True) for g in t.optimizer.param_groups]
    grad_norm = torch.stack(norms).norm() if len(norms) > 1 else norms[0]
    rec = _means_across(losses, plan.world > 1)
    if bad_steps.check(rec["loss"], float(grad_norm), step, plan.out, plan.rank):  # same values on every rank
        t.optimizer.step()
    t.scheduler.step()  # the schedule stays a function of the step, skipped or not
    return rec


CATEGORY_TASKS = list(task_names(names=CATEGORY, category=None))  # every object of any kind: detection, segmentation


def _categories(dataset, previous) -> list[dict]:
    """The detection categories the model learns (kept in config.json: `lumen predict` on a plain
    folder of images needs them); a stage that trains none keeps its starting checkpoint's.
    Read from the Arrow columns: no Python object per row."""
    t = pa.table({c: dataset.column(c) for c in ("task", "category_id", "category")})
    t = t.filter(pc.and_(pc.is_in(t["task"], value_set=pa.array(CATEGORY_TASKS)),
                         pc.and_(pc.is_valid(t["category_id"]), pc.fill_null(pc.not_equal(t["category"], ""), False))))
    by_id = dict(zip(t["category_id"].to_pylist(), t["category"].to_pylist()))
    if not by_id and previous and (Path(previous) / "config.json").is_file():
        return read_config(previous).get("categories", [])  # a broken config: one line naming it
    return [{"id": int(k), "name": by_id[k]} for k in sorted(by_id)]


def _means_across(losses: dict, ddp: bool) -> dict:
    """Each loss averaged over the ranks, as floats: one all-reduce for all of them (one per loss made every
    rank wait ~0.7 ms per term per step on a CPU)."""
    v = torch.stack([t.detach().float().reshape(()) for t in losses.values()])
    if ddp:
        dist.all_reduce(v)
        v /= dist.get_world_size()
    return dict(zip(losses, v.tolist()))


def _load(path: Path, load):
    """Read one checkpoint file, or one line naming it (truncated, corrupt, missing)."""
    try:
        return load(path)
    except Exception as exc:  # torch/json/safetensors each raise their own kind for a broken file
        raise InputError(f"cannot resume: checkpoint file {path} is unreadable ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'})") from None


def _unusable(path: Path, what: str) -> InputError:
    return InputError(f"cannot resume: checkpoint file {path} {what}")


def _load_resume_state(out: Path, optimizer, scheduler, rank: int) -> tuple[int, list]:
    """Optimizer, scheduler and RNG back from `out`, after checking every file (checksum, structure, same step)."""
    rng_name = f"rng_state_{rank}.json"
    verify_files(out, ["trainer_state.json", "optimizer.pt", "scheduler.pt", rng_name])
    state = _load(out / "trainer_state.json", lambda p: json.loads(p.read_text()))
    if not (isinstance(state, dict) and type(state.get("step")) is int and isinstance(state.get("history"), list)):
        raise _unusable(out / "trainer_state.json", "is not a trainer state (a JSON object with an integer `step` "
                                                    "and a `history` list)")
    step = state["step"]
    opt = _load(out / "optimizer.pt", lambda p: torch.load(p, weights_only=True))
    sched = _load(out / "scheduler.pt", lambda p: torch.load(p, weights_only=True))
    rng = _load(out / rng_name, lambda p: json.loads(p.read_text()))
    if not isinstance(sched, dict) or not isinstance(rng, dict):
        raise _unusable(out / (rng_name if isinstance(sched, dict) else "scheduler.pt"), "does not hold a state object")
    config = read_config(out)
    steps = {"trainer_state.json": step, "config.json": config.get("step"), "scheduler.pt": sched.get("last_epoch"),
             rng_name: rng.get("step", step)}
    if len(set(steps.values())) != 1:  # a checkpoint mixed from two saves: resuming would not be exact
        raise InputError(f"cannot resume {out}: its files are of different steps "
                         f"({', '.join(f'{k} {v}' for k, v in steps.items())})")
    python_rng, torch_rng = _rng_from(rng, out / rng_name)
    try:
        optimizer.load_state_dict(opt)
        scheduler.load_state_dict(sched)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:  # another model's or version's optimizer
        raise _unusable(out / "optimizer.pt", f"does not fit this model's optimizer ({exc.__class__.__name__}: "
                                              f"{str(exc).splitlines()[0][:100] if str(exc) else ''})") from None
    random.setstate(python_rng)
    torch.set_rng_state(torch_rng)
    return step, state["history"]


def _rng_from(rng: dict, path: Path) -> tuple:
    """(Python RNG state, torch RNG state) of a saved rank, checked by trying them on throwaway generators."""
    try:
        py = rng["python"]
        python_rng = (py[0], tuple(py[1]), py[2])
        random.Random().setstate(python_rng)
        torch_rng = torch.tensor(rng["torch"], dtype=torch.uint8)
        torch.Generator().set_state(torch_rng)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise _unusable(path, f"does not hold an RNG state of this version ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0][:100] if str(exc) else ''})") from None
    return python_rng, torch_rng


def _rng_states_of_all_ranks(step: int) -> list[dict]:
    """Every rank's RNG state (on rank 0), so that one process writes the whole checkpoint."""
    rng = _rng_state()
    py = rng["python"]
    mine = {"step": step, "python": [py[0], list(py[1]), py[2]], "torch": rng["torch"].tolist()}
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return every


def write_checkpoint(t: Trainer, out: Path, step: int, cfg: TrainConfig, rank: int) -> dict:
    """Write the whole checkpoint to a temp folder, published by rename: a kill never leaves a half one."""
    bad = nonfinite_tensors(getattr(t.model, "module", t.model).state_dict())
    if bad:  # never replace a good checkpoint with a broken one
        raise TrainingDiverged(f"training diverged: {len(bad)} weight tensors are non-finite at step {step} "
                               f"({bad[0]}, ...); {_last_good(out)}; lower --lr")
    rng_states = _rng_states_of_all_ranks(step)
    if rank != 0:
        return {}
    curve = out / "loss_curve.png"
    with staged(out, "checkpoint") as tmp:
        for r, rng in enumerate(rng_states):
            with writing(tmp / f"rng_state_{r}.json"):
                (tmp / f"rng_state_{r}.json").write_text(json.dumps(rng))
        with writing(tmp / "model.safetensors"):
            save_checkpoint(t.model, t.tokenizer, tmp, extra={"stage": cfg.stage, "step": step,
                                                              "categories": cfg.categories})
        for name, obj in (("optimizer.pt", t.optimizer), ("scheduler.pt", t.scheduler)):
            with writing(tmp / name):
                torch.save(obj.state_dict(), tmp / name)
        state = {"step": step, "history": t.history, "config": cfg.model_dump(exclude={"categories"})}
        with writing(tmp / "trainer_state.json"):
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        if t.history:
            with writing(tmp / curve.name):
                _loss_curve(t.history, tmp / curve.name, f"stage {cfg.stage} ({cfg.preset})")
        state_files = [f"rng_state_{r}.json" for r in range(len(rng_states))] + [
            "optimizer.pt", "scheduler.pt", "trainer_state.json"] + ([curve.name] if t.history else [])
        with writing(tmp / "checksums.json"):  # save_checkpoint recorded the model's files; these are the rest
            write_checksums(tmp, state_files)
        publish_dir(tmp, out, "checkpoint")
    last = t.history[-1] if t.history else {}
    return {"checkpoint_dir": str(out), "step": step, "metrics": {k: v for k, v in last.items() if k != "step"},
            "loss_curve_png": str(curve)}


def main(argv=None) -> int:
    arm_from_env(AGENT_PID)  # a rank of train_processes: killed with torchrun, not left training alone
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_arg_parser().parse_args(argv)
    try:
        result = train(config_from_args(args))
    except LumenError as exc:  # one line (a diverged run, a broken checkpoint), no traceback
        print(f"lumen_model.train: error: {exc}", file=sys.stderr)
        return 2
    if _dist_info()[0] == 0:
        print(json.dumps(result, indent=2))
        if args.result_file:  # written whole, then renamed: a reader never sees half of it
            tmp = Path(args.result_file).with_suffix(".partial")
            tmp.write_text(json.dumps(result, indent=2))
            tmp.replace(args.result_file)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
