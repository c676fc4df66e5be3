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

from assets_defs.instance import create_storage
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
    create_storage(dagster_home)  # as the main command does first: the poll below must not race it
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


@pytest.fixture(scope="module")
def small_checkpoint(model_shard_dirs, tmp_path_factory):
    """A 2-step tiny stage-1 checkpoint (saved after each step)."""
    from lumen_model.train import TrainConfig, train

    out = tmp_path_factory.mktemp("small-ckpt") / "ckpt"
    train(TrainConfig(stage=1, preset="tiny", shards=model_shard_dirs, out=str(out), max_steps=2, batch_size=4,
                      save_every=1, warmup_steps=1, progress=False))
    return out


# --- 2. divergence stops training, keeps the last good checkpoint; predict refuses NaN weights --------

def _one_line_error(capsys) -> str:
    """The one error line on stderr (progress bars and log lines aside), and no traceback."""
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "error" in x.lower()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def test_divergence_stops_training_and_keeps_last_good_checkpoint(model_shard_dirs, tmp_path, capsys):
    import torch
    from lumen_model.checkpoint import WEIGHTS
    from lumen_cli import main as lumen
    from safetensors.torch import load_file

    out = tmp_path / "diverged"
    rc = lumen(["train", "--stage", "1", "--preset", "tiny", "--shards", *model_shard_dirs, "--out", str(out),
                "--max-steps", "40", "--lr", "1000", "--warmup-steps", "1", "--batch-size", "4", "--save-every", "1",
                "--max-bad-steps", "2", "--no-progress"])
    line = _one_line_error(capsys)
    assert rc != 0 and "diverged" in line and str(out) in line, line
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] < 40
    weights = load_file(str(out / WEIGHTS))
    assert all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point())  # a good one
    assert all(math.isfinite(v) for h in state["history"] for k, v in h.items())


def test_predict_refuses_a_checkpoint_with_nonfinite_weights(small_checkpoint, tmp_path):
    import shutil

    import torch
    from lumen_model.checkpoint import WEIGHTS, write_checksums
    from lumen_model.predict import Predictor
    from pipelines.errors import InputError
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "nan-ckpt"
    shutil.copytree(small_checkpoint, ckpt)
    state = load_file(str(ckpt / WEIGHTS))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(ckpt / WEIGHTS))
    write_checksums(ckpt, [WEIGHTS])  # as a save of these weights records them: the NaN check must still see them
    with pytest.raises(InputError) as err:
        Predictor(ckpt, device="cpu")
    assert "\n" not in str(err.value) and str(ckpt / WEIGHTS) in str(err.value) and "NaN" in str(err.value)


# --- 4. a checkpoint is one unit: a kill mid-save leaves the previous one whole ---------------------

KILL_MID_SAVE = """
import os, sys, torch
from lumen_model.train import TrainConfig, train
real_save, saves = torch.save, []
def dying_save(obj, path, *a, **k):
    real_save(obj, path, *a, **k)
    saves.append(str(path))
    if len(saves) == 3:  # step 2's optimizer.pt is written (weights too), its trainer state is not
        os._exit(9)
torch.save = dying_save
train(TrainConfig(stage=1, preset="tiny", shards=sys.argv[2:], out=sys.argv[1], max_steps=4, batch_size=4,
                  save_every=1, warmup_steps=1, progress=False))
"""


def _steps_of(ckpt) -> set:
    return {json.loads((ckpt / "trainer_state.json").read_text())["step"],
            json.loads((ckpt / "config.json").read_text())["step"]}


def test_a_checkpoint_with_tensors_of_another_shape_is_one_line(small_checkpoint, tmp_path):
    """Another version of a part (a glimpse encoder of other widths) is refused in one line, not torch's list."""
    import shutil

    import torch
    from lumen_model.checkpoint import WEIGHTS, load_model, write_checksums
    from pipelines.errors import InputError
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "other-shapes"
    shutil.copytree(small_checkpoint, ckpt)
    state = load_file(str(ckpt / WEIGHTS))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 2)
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])
    save_file(state, str(ckpt / WEIGHTS))
    write_checksums(ckpt, [WEIGHTS])  # saved so by that other version
    with pytest.raises(InputError) as err:
        load_model(ckpt)
    message = str(err.value)
    assert "does not fit this model" in message and name in message and "\n" not in message


@pytest.mark.slow  # a training process of its own, then a resumed run
def test_kill_during_a_save_keeps_the_previous_checkpoint_whole(model_shard_dirs, tmp_path):
    from lumen_model.train import TrainConfig, train

    out = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, "-c", KILL_MID_SAVE, str(out), *model_shard_dirs], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert _steps_of(out) == {1}  # step 1 whole; nothing of step 2 mixed in
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".ckpt.")]
    assert len(leftovers) == 1 and ".tmp-" in leftovers[0]
    result = train(TrainConfig(stage=1, preset="tiny", shards=model_shard_dirs, out=str(out), max_steps=3, batch_size=4,
                               save_every=1, warmup_steps=1, progress=False, resume=True))
    assert result["step"] == 3 and _steps_of(out) == {3}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.")]  # the dead save's temp folder is gone


def test_resume_refuses_files_of_different_steps(small_checkpoint, model_shard_dirs, tmp_path):
    import shutil

    from lumen_model.checkpoint import write_checksums
    from lumen_model.train import TrainConfig, train
    from pipelines.errors import InputError

    ckpt = tmp_path / "mixed"
    shutil.copytree(small_checkpoint, ckpt)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    state["step"], state["history"] = 1, state["history"][:1]  # the trainer state of the save before
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    write_checksums(ckpt, ["trainer_state.json"])  # each file whole and recorded: the steps still disagree
    with pytest.raises(InputError) as err:
        train(TrainConfig(stage=1, preset="tiny", shards=model_shard_dirs, out=str(ckpt), max_steps=3, batch_size=4,
                          warmup_steps=1, progress=False, resume=True))
    assert "different steps" in str(err.value) and "\n" not in str(err.value)


# --- 8. broken checkpoint files: one line naming the file --------------------------------------------

@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt"])
def test_truncated_checkpoint_file_is_one_line_naming_it(small_checkpoint, model_shard_dirs, tmp_path, capsys, name):
    import shutil

    from lumen_cli import main as lumen

    ckpt = tmp_path / "cut"
    shutil.copytree(small_checkpoint, ckpt)
    data = (ckpt / name).read_bytes()
    (ckpt / name).write_bytes(data[: len(data) // 2])
    rc = lumen(["train", "--stage", "1", "--preset", "tiny", "--shards", *model_shard_dirs, "--out", str(ckpt),
                "--max-steps", "3", "--batch-size", "4", "--resume", "--no-progress"])
    line = _one_line_error(capsys)
    assert rc != 0 and str(ckpt / name) in line, line


# --- 5. temp folders: cleaned, never read -------------------------------------------------------------

@pytest.fixture
def coco_shards(sample_data_dir, tmp_path):
    """var/shards-like layout with coco/train converted."""
    from pipelines.convert import convert_source

    root = tmp_path / "shards"
    convert_source("coco", sample_data_dir / "coco" / "annotations" / "instances_train.json", root / "coco" / "train",
                   input_size=128, progress=False)
    return root


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_folders_are_removed_and_never_counted(coco_shards, sample_data_dir, tmp_path):
    import shutil

    from assets_defs.resources import LumenPaths
    from pipelines.catalog import build_catalog
    from pipelines.convert import convert_source
    from pipelines.shards import read_manifest, read_table

    part = coco_shards / "coco" / "train"
    pid = _dead_pid()
    for kind in ("tmp", "old"):  # what a kill -9 mid-publish leaves
        shutil.copytree(part, part.parent / f".train.{kind}-{pid}")
    paths = LumenPaths(root=str(tmp_path))
    assert paths.shard_dirs() == [part]
    rows = build_catalog(tmp_path / "catalog.duckdb", paths.shard_dirs())
    n = read_manifest(part)["counts"]["samples_written"]
    assert sum(r["samples"] for r in rows) == n
    shutil.copy(part / "part-00000.parquet", part / "part-00001.parquet")  # a stray file beside the listed ones
    assert read_table(part).num_rows == n
    convert_source("coco", sample_data_dir / "coco" / "annotations" / "instances_train.json", part,
                   input_size=128, progress=False)  # the next run cleans what the dead one left
    assert sorted(p.name for p in part.parent.iterdir()) == ["train"]


def test_corrupt_parquet_is_one_line_naming_the_file(coco_shards, capsys):
    from pipelines.dataset import ShardDataset, load_hf_dataset
    from pipelines.errors import InputError

    part = coco_shards / "coco" / "train"
    f = part / "part-00000.parquet"
    data = bytearray(f.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    f.write_bytes(bytes(data))
    for load in (ShardDataset, load_hf_dataset):
        with pytest.raises(InputError) as err:
            load([str(part)])
        assert str(f) in str(err.value) and "sha256" in str(err.value) and "\n" not in str(err.value)


# --- 6. image paths outside the images folder are quarantined ------------------------------------------

def _hostile_images(sample_data_dir, tmp_path):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(sample_data_dir / "coco" / "images", images)
    good = sorted(p.name for p in images.iterdir())[0]
    (images / "link.jpg").symlink_to("/etc/hostname")
    (tmp_path / "outside.jpg").write_bytes((images / good).read_bytes())
    return images, good


def test_coco_file_names_outside_the_images_folder_are_quarantined(sample_data_dir, tmp_path):
    from pipelines.convert import convert_source
    from pipelines.shards import read_quarantine, read_table

    from PIL import Image

    images, good = _hostile_images(sample_data_dir, tmp_path)
    names = [good, "/etc/hostname", "../outside.jpg", "link.jpg"]
    w, h = Image.open(images / good).size  # the size the file has (conversion compares them)
    coco = {"images": [{"id": i + 1, "file_name": n, "width": w, "height": h} for i, n in enumerate(names)],
            "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400,
                             "iscrowd": 0} for i in range(len(names))],
            "categories": [{"id": 1, "name": "thing"}]}
    src = tmp_path / "instances_train.json"
    src.write_text(json.dumps(coco))
    out = tmp_path / "out"
    convert_source("coco", src, out, images_dir=images, input_size=128, progress=False)
    paths = set(read_table(out)["image_path"].to_pylist())
    assert paths == {str((images / good).resolve())}
    q = {r["record_id"]: r["reason"] for r in read_quarantine(out).to_pylist()}
    assert all("outside the images folder" in q[f"ann:{i}"] for i in (2, 3, 4)), q


def test_llava_image_outside_the_images_folder_is_quarantined(sample_data_dir, tmp_path):
    from pipelines.convert import convert_source
    from pipelines.shards import read_quarantine, read_table

    images, good = _hostile_images(sample_data_dir, tmp_path)
    conv = [{"from": "human", "value": "<image>\nwhat is it?"}, {"from": "gpt", "value": "a shape"}]
    items = [{"id": str(i), "image": n, "conversations": conv}
             for i, n in enumerate([good, "/etc/hostname", "../outside.jpg", "link.jpg"])]
    src = tmp_path / "llava.json"
    src.write_text(json.dumps(items))
    out = tmp_path / "out"
    convert_source("llava", src, out, images_dir=images, input_size=128, progress=False)
    assert read_table(out).num_rows == 1
    q = {r["record_id"]: r["reason"] for r in read_quarantine(out).to_pylist()}
    assert all("outside the images folder" in q[f"llava:{i}/turn:0"] for i in (1, 2, 3)), q


# --- 9. images decoded at convert time; over-long texts counted ------------------------------------------

def test_truncated_jpeg_is_quarantined_at_convert_time(sample_data_dir, tmp_path):
    import shutil

    from pipelines.convert import convert_source
    from pipelines.shards import read_quarantine, read_table

    images = tmp_path / "images"
    shutil.copytree(sample_data_dir / "coco" / "images", images)
    src = sample_data_dir / "coco" / "annotations" / "instances_train.json"
    first = json.loads(src.read_text())["images"][0]["file_name"]
    data = (images / first).read_bytes()
    (images / first).write_bytes(data[: int(len(data) * 0.7)])
    out = tmp_path / "out"
    manifest = convert_source("coco", src, out, images_dir=images, input_size=128, progress=False)
    assert not [p for p in read_table(out)["image_path"].to_pylist() if p.endswith(first)]
    reasons = [r["reason"] for r in read_quarantine(out).to_pylist() if first in r["reason"]]
    assert reasons and all("does not decode" in r for r in reasons)
    assert manifest["images_verified"] is True


def test_over_long_texts_are_counted_in_the_manifest(sample_data_dir, tmp_path, caplog):
    from pipelines.convert import convert_source

    images = sample_data_dir / "coco" / "images"
    good = sorted(p.name for p in images.iterdir())[0]
    conv = [{"from": "human", "value": "<image>\n" + "why " * 250_000}, {"from": "gpt", "value": "because"}]
    src = tmp_path / "llava.json"
    src.write_text(json.dumps([{"id": "1", "image": good, "conversations": conv},
                               {"id": "2", "image": good, "conversations": conv[:1] + [{"from": "gpt", "value": "ok"}]}]))
    manifest = convert_source("llava", src, tmp_path / "out", images_dir=images, input_size=128, progress=False)
    assert manifest["long_texts"]["samples"] == 2
    assert any("over 1000 characters" in r.getMessage() for r in caplog.records)


# --- 8. a full disk: one line naming the file, no temp folder left ---------------------------------------

# `tiny_disk` (a 16 KiB tmpfs): tests/fixtures_data.py


def test_full_disk_during_convert_is_one_line_and_leaves_no_temp_folder(sample_data_dir, tiny_disk, capsys):
    from lumen_cli import main as lumen

    out = tiny_disk / "coco" / "train"
    rc = lumen(["convert", "coco", "--input", str(sample_data_dir / "coco" / "annotations" / "instances_train.json"),
                "--input-size", "128", "--out", str(out)])
    line = _one_line_error(capsys)
    assert rc != 0 and "No space left on device" in line and str(tiny_disk) in line, line
    assert list((tiny_disk / "coco").iterdir()) == []  # the temp folder went with the error


def test_full_disk_during_training_is_one_line_and_leaves_no_temp_folder(model_shard_dirs, tiny_disk, capsys):
    from lumen_cli import main as lumen

    out = tiny_disk / "ckpt"
    rc = lumen(["train", "--stage", "1", "--preset", "tiny", "--shards", *model_shard_dirs, "--out", str(out),
                "--max-steps", "1", "--batch-size", "4", "--no-progress"])
    line = _one_line_error(capsys)
    assert rc != 0 and "No space left on device" in line and str(tiny_disk) in line, line
    assert list(tiny_disk.iterdir()) == []


def test_a_zombie_is_not_alive():
    """A main command killed with its parent is reparented to PID 1; where PID 1 does not reap (containers,
    this sandbox) it stays a zombie, which `kill(pid, 0)` still finds. Its run must count as dead, or the
    next run waits for its `gpu` slot until it times out."""
    from assets_defs.recovery import PID_TAG, HOST_TAG, owner_state
    from pipelines.tempdirs import pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.time() + 30
        while time.time() < deadline:  # exited, not yet reaped: a zombie
            state = open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                break
            time.sleep(0.05)
        assert state == "Z"
        os.kill(child.pid, 0)  # what the old check asked: it still finds the process
        assert not pid_alive(child.pid)
        import socket

        assert owner_state({PID_TAG: str(child.pid), HOST_TAG: socket.gethostname()}) == "dead"
    finally:
        child.wait()
    assert pid_alive(os.getpid())
