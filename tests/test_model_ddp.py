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
