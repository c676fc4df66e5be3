"""Stage-wise training on the shards (`lumen train`, the model assets).

    python -m lumen_model.train --stage 1 --preset tiny --shards var/shards/coco/train ... --out var/models/s1
    torchrun --nproc_per_node 2 -m lumen_model.train ...   # DistributedDataParallel (gloo on CPU, nccl on GPU)

Stage 1: mixed tasks, answer-token CE + Gaussian focal loss + L1 sizes. Stage 2: stage-1 weights
frozen, the mask and pose decoders trained. `--resume` continues exactly: model, optimizer,
scheduler, step, RNG states and data position come back from the checkpoint folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.distributed as dist
from tqdm import tqdm

from lumen_model.checkpoint import build_model, load_model, save_checkpoint
from lumen_model.config import get_preset
from lumen_model.data import Collator, hflip
from lumen_model.tokenizer import train_tokenizer
from lumen_model.train_args import build_arg_parser  # noqa: F401  (kept here for `python -m lumen_model.train`)
from pipelines.errors import InputError

log = logging.getLogger(__name__)
STAGE_TASKS = {
    1: ("detection", "instance_segmentation", "pose", "grounding", "referring_segmentation", "vqa"),
    2: ("instance_segmentation", "referring_segmentation", "pose"),
}
TRAIN_SPLITS = ("train", "all")


@dataclass
class TrainConfig:
    stage: int
    preset: str
    shards: list[str]
    out: str
    init: str | None = None
    max_steps: int = 200
    lr: float = 1e-3
    batch_size: int = 16
    seed: int = 0
    resume: bool = False
    tasks: list[str] | None = None
    num_workers: int = 0
    save_every: int = 0  # 0: only at the end
    stop_at_step: int | None = None  # stop (and checkpoint) early, as an interrupted run would; resume later
    warmup_steps: int = 20
    group_size: int = 4  # samples of the same image that sit together in a batch (1: plain shuffle)
    hflip: float = 0.5  # probability of mirroring an image (with "left"/"right" swapped in its texts)
    weights: str | None = None  # local folder with full-size pretrained parts (lumen-7b)
    progress: bool = True
    extra: dict = field(default_factory=dict)


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _init_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


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
    if num_workers:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the collator tokenizes in the workers
    context = "fork" if num_workers and "fork" in torch.multiprocessing.get_all_start_methods() else None
    loader = torch.utils.data.DataLoader(_StepItems(dataset, keep, groups, seed, hflip_p), batch_sampler=sampler,
                                         collate_fn=collate, num_workers=num_workers, multiprocessing_context=context,
                                         generator=torch.Generator().manual_seed(seed))
    return zip(range(start, stop), loader)


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


def _loss_curve(history: list[dict], path: Path, title: str) -> None:
    """Every loss term (faint: per step; solid: moving average) and, on its own axis, the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in history[0] if k not in ("step", "samples_per_s", "lr")] if history else []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = [h["step"] for h in history]
    window = max(1, len(history) // 50)
    for k in keys:
        values = [h[k] for h in history]
        line, = ax.plot(steps, _smooth(values, window), label=k, linewidth=1.6 if k == "loss" else 1.0)
        ax.plot(steps, values, color=line.get_color(), alpha=0.15, linewidth=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (moving average of {window} steps)")
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


def train(cfg: TrainConfig) -> dict:
    _init_distributed()
    rank, world = _dist_info()
    device = f"cuda:{rank % max(1, torch.cuda.device_count())}" if torch.cuda.is_available() else "cpu"
    preset = get_preset(cfg.preset)
    out = Path(cfg.out)
    tasks = cfg.tasks or STAGE_TASKS[cfg.stage]
    from pipelines.dataset import ShardDataset

    missing = [d for d in cfg.shards if not Path(d).is_dir()]
    if missing:
        raise InputError(f"shard folder not found: {', '.join(missing)}")
    if cfg.resume and cfg.init:
        raise InputError("give either --resume (continue --out) or --init (start from another checkpoint), not both")

    dataset = ShardDataset(cfg.shards, input_size=preset.input_size, tasks=tasks)
    keep, groups = train_rows(dataset, TRAIN_SPLITS)
    if not len(keep):
        raise InputError(f"no train/all-split samples for tasks {', '.join(tasks)} in {', '.join(cfg.shards)}")

    state_file = out / "trainer_state.json"
    resume = cfg.resume and state_file.is_file()
    if resume:
        model, tokenizer = load_model(out, device)
    elif cfg.init:
        model, tokenizer = load_model(cfg.init, device)
    else:
        texts = [t for pair in zip(dataset.column("instruction").to_pylist(), dataset.column("answer").to_pylist())
                 for t in pair]
        texts.append("user : assistant :")
        tokenizer = train_tokenizer(texts, vocab_size=preset.text["vocab_size"])
        _set_seed(cfg.seed)
        model = build_model(preset, tokenizer).to(device)
        if cfg.weights:
            from lumen_model.checkpoint import load_pretrained_parts

            load_pretrained_parts(model, cfg.weights)
    model.train()
    model.set_stage(cfg.stage)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    start, history = 0, []
    if resume:
        state = json.loads(state_file.read_text())
        start, history = state["step"], state["history"]
        optimizer.load_state_dict(torch.load(out / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(out / "scheduler.pt", weights_only=True))
        rng = json.loads((out / f"rng_state_{rank}.json").read_text())
        random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
        torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
        log.info("resuming %s at step %d", out, start)
    else:
        _set_seed(cfg.seed + rank)

    ddp = world > 1
    net = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if ddp else model
    collate = Collator(tokenizer, preset.num_image_tokens, preset.max_text_tokens, preset.heatmap_size, preset.input_size)
    use_bf16 = device.startswith("cuda")
    t0, seen = time.perf_counter(), 0
    bar = tqdm(total=cfg.max_steps, initial=start, desc=f"stage {cfg.stage}", unit="step",
               disable=not cfg.progress or rank != 0, dynamic_ncols=True)
    stop = cfg.max_steps if cfg.stop_at_step is None else min(cfg.max_steps, cfg.stop_at_step)
    batches = training_batches(dataset, keep, groups, collate, seed=cfg.seed, batch_size=cfg.batch_size, start=start,
                               stop=stop, group_size=cfg.group_size, hflip_p=cfg.hflip, num_workers=cfg.num_workers,
                               rank=rank, world=world)
    per_step = min(cfg.batch_size, len(keep))  # samples in a step's batch, all ranks together
    for step, batch in batches:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            losses = net(batch, stage=cfg.stage)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()  # DDP averages the gradients across ranks here
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        seen += per_step
        rec = {k: float(_mean_across(v.detach(), ddp)) for k, v in losses.items()}
        rate = seen / (time.perf_counter() - t0)
        history.append({"step": step + 1, **rec, "samples_per_s": rate, "lr": scheduler.get_last_lr()[0]})
        bar.set_postfix(loss=f"{rec['loss']:.3f}", samples_s=f"{rate:.1f}")
        bar.update(1)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.max_steps:
            _save(model, tokenizer, optimizer, scheduler, out, step + 1, history, cfg, rank)
    bar.close()
    result = _save(model, tokenizer, optimizer, scheduler, out, len(history), history, cfg, rank)
    result["samples_per_s"] = seen / max(1e-9, time.perf_counter() - t0)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _mean_across(v: torch.Tensor, ddp: bool) -> float:
    if ddp:
        v = v.clone()
        dist.all_reduce(v)
        v /= dist.get_world_size()
    return v.item()


def _save(model, tokenizer, optimizer, scheduler, out: Path, step: int, history: list, cfg: TrainConfig, rank: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rng = _rng_state()
    py = rng["python"]
    (out / f"rng_state_{rank}.json").write_text(json.dumps({"python": [py[0], list(py[1]), py[2]],
                                                            "torch": rng["torch"].tolist()}))
    if rank != 0:
        return {}
    save_checkpoint(model, tokenizer, out, extra={"stage": cfg.stage, "step": step})
    torch.save(optimizer.state_dict(), out / "optimizer.pt")
    torch.save(scheduler.state_dict(), out / "scheduler.pt")
    state = {"step": step, "history": history, "config": {k: v for k, v in asdict(cfg).items() if k != "extra"}}
    (out / "trainer_state.json").write_text(json.dumps(state, indent=1))
    curve = out / "loss_curve.png"
    if history:
        _loss_curve(history, curve, f"stage {cfg.stage} ({cfg.preset})")
    last = history[-1] if history else {}
    return {"checkpoint_dir": str(out), "step": step, "metrics": {k: v for k, v in last.items() if k != "step"},
            "loss_curve_png": str(curve)}


def config_from_args(args) -> TrainConfig:
    return TrainConfig(stage=args.stage, preset=args.preset, shards=args.shards, out=args.out, init=args.init,
                       max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                       resume=args.resume, save_every=args.save_every, weights=args.weights,
                       warmup_steps=args.warmup_steps, tasks=args.tasks, progress=not args.no_progress,
                       group_size=args.group_size, hflip=args.hflip, num_workers=args.num_workers)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_arg_parser().parse_args(argv)
    result = train(config_from_args(args))
    if _dist_info()[0] == 0:
        print(json.dumps(result, indent=2))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
