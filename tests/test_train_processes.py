"""`train_processes`: DDP training in child processes whose log reaches the caller while they run."""

from __future__ import annotations

from pathlib import Path

import pytest

from lumen_model.train import TrainConfig, TrainingProcessesFailed, train_processes


@pytest.mark.slow
def test_the_ranks_progress_reaches_the_callers_stderr(model_shard_dirs, tmp_path, capfd):
    shards = [d for d in model_shard_dirs if "coco-" in Path(d).name]
    result = train_processes(TrainConfig(stage=1, preset="tiny", shards=shards, out=str(tmp_path / "m"), max_steps=2,
                                         batch_size=4, progress=True, num_workers=0), 2)
    assert result["step"] == 2 and Path(result["checkpoint_dir"]) == tmp_path / "m"
    err = capfd.readouterr().err
    assert "stage 1: 2/2 step" in err  # rank 0's last progress line, passed on as the children wrote it


@pytest.mark.slow  # torchrun and two rank processes
def test_a_failed_run_says_why_in_one_line(tmp_path, capfd):
    cfg = TrainConfig(stage=1, preset="tiny", shards=[str(tmp_path / "no-such-shards")], out=str(tmp_path / "m"),
                      max_steps=2, batch_size=4, progress=False, num_workers=0)
    with pytest.raises(TrainingProcessesFailed) as e:
        train_processes(cfg, 2)
    assert "no-such-shards" in str(e.value) and "\n" not in str(e.value)
    assert "no-such-shards" in capfd.readouterr().err  # the children's own message was passed on as it came


def test_the_error_line_is_the_ranks_not_torchruns_report():
    from lumen_model.train import _rank_error

    log = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
           "RuntimeError: CUDA out of memory on rank 1\n"
           "E1128 05:16:39.577000 23680 api.py:1002] failed (exitcode: 1) local_rank: 1\n"
           "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
           "============================================================\nRoot Cause (first observed failure):\n"
           "[0]:\n============================================================\n")
    assert _rank_error(log) == "RuntimeError: CUDA out of memory on rank 1"
    assert _rank_error("") == "no output"
