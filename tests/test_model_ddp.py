"""DistributedDataParallel: 2 processes (gloo, CPU) follow the same loss curve as 1 process, same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lumen_model.train import TrainConfig, train

STEPS, BATCH = 3, 4


@pytest.mark.slow
def test_two_processes_match_one_process(model_shard_dirs, tmp_path):
    shards = [d for d in model_shard_dirs if "coco-" in Path(d).name or "refcoco-" in Path(d).name]
    train(TrainConfig(stage=1, preset="tiny", shards=shards, out=str(tmp_path / "one"), max_steps=STEPS,
                      batch_size=BATCH, lr=1e-3, warmup_steps=1, progress=False))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "lumen_model.train",
                           "--stage", "1", "--preset", "tiny", "--shards", *shards, "--out", str(tmp_path / "two"),
                           "--max-steps", str(STEPS), "--batch-size", str(BATCH), "--lr", "1e-3", "--warmup-steps", "1",
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "trainer_state.json").read_text())["history"]
    two = json.loads((tmp_path / "two" / "trainer_state.json").read_text())["history"]
    assert [h["step"] for h in two] == list(range(1, STEPS + 1))
    for key in ("loss", "text", "heatmap", "size"):
        assert [h[key] for h in two] == pytest.approx([h[key] for h in one], rel=2e-3, abs=1e-4), key
    # the updates were really shared: step 2 and 3 depend on the all-reduced gradients of step 1
    assert two[0]["loss"] != pytest.approx(two[-1]["loss"], rel=1e-3)



def _mask_loss_rank(rank: int, world: int, port: int, out: str) -> None:
    """One DDP rank: a one-weight 'head' scores this rank's share of 7 masks (2 on rank 0, 5 on rank 1)."""
    import torch
    import torch.distributed as dist

    from lumen_model.losses import mean_over_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    head = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1, 1, bias=False))
    per_mask = torch.arange(1.0, 8.0)[:2] if rank == 0 else torch.arange(1.0, 8.0)[2:]
    loss = mean_over_ranks(head(per_mask[:, None]).sum(), torch.tensor(float(len(per_mask))))
    loss.backward()  # DDP averages the two ranks' gradients
    Path(out, f"rank{rank}.json").write_text(json.dumps({"grad": head.module.weight.grad.item(),
                                                         "loss": loss.item(), "w": head.module.weight.item()}))
    # the DDP wrapper goes while its process group lives: freed after this function returns, the group's
    # destructor waits for its gloo thread, which waits for the GIL the destructor holds (a hang at exit)
    del head, loss
    dist.destroy_process_group()


@pytest.mark.slow
def test_stage2_means_over_every_ranks_masks_give_the_one_process_gradient(tmp_path):
    """Stage 2's mask / pose losses are means over masks and keypoints, and ranks hold different numbers
    of them: dividing by every rank's count gives the one-process gradient (a per-rank mean would weigh
    rank 0's 2 masks like rank 1's 5: gradient 3.25 instead of the mean 4)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_mask_loss_rank, args=(2, port, str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["grad"] == pytest.approx(4.0)  # d/dw of mean(w * [1..7]) on one process
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(4.0 * ranks[0]["w"])  # the logged mean loss
