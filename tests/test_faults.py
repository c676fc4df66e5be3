"""Crash, fault and hostile-input drills (issue 13): each one as an operator would run it, on real
files, a real Dagster instance and real processes; each expects one clear line, nothing half-published
and nothing left that blocks the next run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid

import dagster as dg
import pytest

from tests.conftest import ROOT


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


# --- 1. a run killed while holding the `gpu` slot must not block every later run -------------------

def _gpu_holders(home) -> set[str]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        if "gpu" not in instance.event_log_storage.get_concurrency_keys():
            return set()
        return {s.run_id for s in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots}


@pytest.mark.slow
@pytest.mark.timeout(600)  # before the fix the second run waited for the slot forever
def test_main_killed_mid_training_then_next_run_finishes(tmp_path, dagster_home, monkeypatch, capsys):
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "assets_defs.main", "--data-root", str(data), "--dagster-home", str(dagster_home),
           "--images", "16", "--stage1-steps", "5000", "--stage2-steps", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(DAGSTER_HOME=str(dagster_home)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not _gpu_holders(dagster_home) and time.time() < deadline and proc.poll() is None:
            time.sleep(1)
        holders = _gpu_holders(dagster_home)
        assert holders, "the main command never reached a `gpu` step"
        time.sleep(2)  # well inside training
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    dead_run = holders.pop()
    assert _gpu_holders(dagster_home) == {dead_run}  # the kill left the slot claimed

    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    from assets_defs.main import run_main

    capsys.readouterr()
    small = {"ops": {"models": {"config": {"stage1_steps": 2, "stage2_steps": 1, "batch_size": 4}}}}
    result, instance = run_main(data_root=str(data), dagster_home=str(dagster_home), images=16, run_config=small,
                                asset_selection=["source_data", "shards", "catalog", "stage1_model", "stage2_model"])
    assert result.success
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[recovery]")]
    assert len(lines) == 1 and dead_run in lines[0] and "gpu" in lines[0], lines
    assert instance.get_run_by_id(dead_run).status == dg.DagsterRunStatus.FAILURE
    assert _gpu_holders(dagster_home) == set()


def test_slot_held_by_unknown_process_refuses_with_one_line(dagster_instance, tmp_path, capsys):
    from assets_defs.recovery import BlockedByRunError, CLEAR_COMMAND, main as recovery_main, recover_dead_runs

    run = dagster_instance.add_run(dg.DagsterRun(job_name="main", run_id=str(uuid.uuid4()),
                                                 status=dg.DagsterRunStatus.STARTED))
    storage = dagster_instance.event_log_storage
    storage.set_concurrency_slots("gpu", 1)
    assert storage.claim_concurrency_slot("gpu", run.run_id, "models").is_claimed
    with pytest.raises(BlockedByRunError) as err:
        recover_dead_runs(dagster_instance)
    msg = str(err.value)
    assert "\n" not in msg and run.run_id in msg and f"{CLEAR_COMMAND} {run.run_id}" in msg
    # the command it names clears it
    assert recovery_main(["--dagster-home", str(dagster_instance.root_directory), "--clear", run.run_id]) == 0
    assert dagster_instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert not storage.get_concurrency_info("gpu").claimed_slots
    assert recover_dead_runs(dagster_instance) == []


def test_finished_run_still_holding_a_slot_is_freed(dagster_instance):
    from assets_defs.recovery import recover_dead_runs

    run = dagster_instance.add_run(dg.DagsterRun(job_name="main", run_id=str(uuid.uuid4()),
                                                 status=dg.DagsterRunStatus.FAILURE))
    storage = dagster_instance.event_log_storage
    storage.set_concurrency_slots("gpu", 1)
    assert storage.claim_concurrency_slot("gpu", run.run_id, "models").is_claimed
    lines = []
    assert recover_dead_runs(dagster_instance, log=lines.append) == [run.run_id]
    assert not storage.get_concurrency_info("gpu").claimed_slots and len(lines) == 1


# --- 2. divergence stops training, keeps the last good checkpoint; predict refuses NaN weights --------

def _one_line_error(capsys) -> str:
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1, err
    return err[0]


def test_divergence_stops_training_and_keeps_last_good_checkpoint(model_shard_dirs, tmp_path, capsys):
    from lumen_model.checkpoint import WEIGHTS, nonfinite_tensors
    from pipelines.cli import main as lumen
    from safetensors.torch import load_file

    out = tmp_path / "diverged"
    rc = lumen(["train", "--stage", "1", "--preset", "tiny", "--shards", *model_shard_dirs, "--out", str(out),
                "--max-steps", "40", "--lr", "1000", "--warmup-steps", "1", "--batch-size", "4", "--save-every", "1",
                "--max-bad-steps", "2", "--no-progress"])
    line = _one_line_error(capsys)
    assert rc != 0 and "diverged" in line and str(out) in line, line
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] < 40
    assert not nonfinite_tensors(load_file(str(out / WEIGHTS)))  # the kept checkpoint is a good one
    assert all(math.isfinite(v) for h in state["history"] for k, v in h.items())


def test_predict_refuses_a_checkpoint_with_nonfinite_weights(tiny_stage1, tmp_path, capsys):
    import shutil

    import torch
    from lumen_model.checkpoint import WEIGHTS
    from lumen_model.predict import Predictor
    from pipelines.errors import InputError
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "nan-ckpt"
    shutil.copytree(tiny_stage1[0], ckpt)
    state = load_file(str(ckpt / WEIGHTS))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(ckpt / WEIGHTS))
    with pytest.raises(InputError) as err:
        Predictor(ckpt, device="cpu")
    assert "\n" not in str(err.value) and str(ckpt / WEIGHTS) in str(err.value) and "NaN" in str(err.value)
