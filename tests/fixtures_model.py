"""Fixtures of the model area: a briefly trained tiny stage-1 and stage-2 checkpoint (real training)."""

from __future__ import annotations

import pytest

from lumen_model.train import TrainConfig, train


@pytest.fixture(scope="session")
def model_shard_dirs(sample_shards_dir) -> list[str]:
    return [str(p) for p in sorted(sample_shards_dir.iterdir()) if p.is_dir()]


@pytest.fixture(scope="session")
def tiny_stage1(model_shard_dirs, tmp_path_factory):
    """(checkpoint folder, train() result) after 24 stage-1 steps on the demo shards."""
    out = tmp_path_factory.mktemp("stage1")
    result = train(TrainConfig(stage=1, preset="tiny", shards=model_shard_dirs, out=str(out), max_steps=24,
                               batch_size=8, lr=2e-3, warmup_steps=4, progress=False))
    return out, result


@pytest.fixture(scope="session")
def tiny_stage2(tiny_stage1, model_shard_dirs, tmp_path_factory):
    """A stage-2 checkpoint (decoders trained for a few steps) on top of `tiny_stage1`."""
    out = tmp_path_factory.mktemp("stage2")
    result = train(TrainConfig(stage=2, preset="tiny", shards=model_shard_dirs, out=str(out), init=str(tiny_stage1[0]),
                               max_steps=4, batch_size=4, progress=False))
    return out, result
