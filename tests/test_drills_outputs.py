"""Output-folder and checkpoint drills (issue 34, round two): each one as a user would meet it, on real
files and the real `lumen` command; each expects one clear line, and nothing of the user's deleted.

1. `--out` replaces only an output this project wrote, of the same kind (a partition a partition,
   a checkpoint a checkpoint); 6. `--resume` without trainer_state.json; 7. a diverged run's
   checkpoint and checksums; 13. broken checkpoint files and `lumen predict` arguments.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg",
                OMP_NUM_THREADS="1")


def _one_line_error(text: str) -> str:
    """The one error line of a command's stderr (log lines aside), and no traceback."""
    lines = [x for x in text.splitlines() if "error" in x.lower()]
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    return lines[0]


def _lumen(capsys, *argv) -> tuple[int, str]:
    """`lumen ARGV` (the CLI's own entry point) -> (exit code, stderr)."""
    from lumen_cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder) -> dict:
    return {p.name: _sha(p) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def checkpoint(model_shard_dirs, tmp_path_factory):
    """A 2-step tiny stage-1 checkpoint (saved after each step), as `lumen train` writes it."""
    from lumen_model.train import TrainConfig, train

    out = tmp_path_factory.mktemp("drill-ckpt") / "ckpt"
    train(TrainConfig(stage=1, preset="tiny", shards=model_shard_dirs, out=str(out), max_steps=2, batch_size=4,
                      save_every=1, warmup_steps=1, progress=False))
    return out


@pytest.fixture
def ckpt(checkpoint, tmp_path):
    """A copy of `checkpoint` a test may break."""
    return shutil.copytree(checkpoint, tmp_path / "ckpt")


def _train(*extra):
    return ["train", "--stage", "1", "--preset", "tiny", "--max-steps", "3", "--batch-size", "4",
            "--warmup-steps", "1", "--no-progress", *extra]


def _predict(sample_data_dir, checkpoint, out, *extra):
    coco = sample_data_dir / "coco"
    return ["predict", "--checkpoint", checkpoint, "--task", "detection", "--images", coco / "images",
            "--annotations", coco / "annotations" / "instances_val.json", "--out", out, *extra]


# --- 1. --out replaces only what this project wrote, of the same kind ------------------------------------

def test_convert_refuses_an_out_folder_holding_a_users_files(sample_data_dir, tmp_path):
    mydata = tmp_path / "mydata"
    mydata.mkdir()
    (mydata / "thesis.txt").write_text("three years of work\n")
    proc = subprocess.run([sys.executable, "-m", "lumen_cli", "convert", "coco", "--input",
                           str(sample_data_dir / "coco" / "annotations" / "instances_val.json"), "--out", str(mydata)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    line = _one_line_error(proc.stderr)
    assert proc.returncode == 2 and str(mydata) in line and "refusing to replace" in line, line
    assert sorted(p.name for p in mydata.iterdir()) == ["thesis.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mydata.")]  # no temp folder left either


def test_train_refuses_a_shard_partition_as_its_out(model_shard_dirs, tmp_path, capsys):
    part = shutil.copytree(next(d for d in model_shard_dirs if d.endswith("coco-val")), tmp_path / "coco-val")
    before = _tree(part)
    rc, err = _lumen(capsys, *_train("--shards", *model_shard_dirs, "--out", part))
    line = _one_line_error(err)
    assert rc == 2 and str(part) in line and "shard partition" in line, line
    assert _tree(part) == before  # the partition is untouched


def test_only_an_empty_folder_or_an_output_of_the_same_kind_is_replaced(checkpoint, model_shard_dirs, tmp_path):
    from pipelines.errors import InputError
    from pipelines.tempdirs import check_replaceable

    partition = next(d for d in model_shard_dirs if d.endswith("coco-val"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "a.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for kind in ("partition", "checkpoint"):
        check_replaceable(tmp_path / "absent", kind)
        check_replaceable(tmp_path / "empty", kind)
    check_replaceable(partition, "partition")
    check_replaceable(checkpoint, "checkpoint")
    refused = ((tmp_path / "user", "partition"), (tmp_path / "user", "checkpoint"), (tmp_path / "file", "partition"),
               (partition, "checkpoint"), (checkpoint, "partition"))
    for out, kind in refused:
        with pytest.raises(InputError) as err:
            check_replaceable(out, kind)
        assert str(out) in str(err.value) and "\n" not in str(err.value)


def test_convert_writes_into_an_empty_existing_folder(sample_data_dir, tmp_path):
    from pipelines.convert import convert_source
    from pipelines.shards import read_table

    out = tmp_path / "empty"
    out.mkdir()
    src = sample_data_dir / "coco" / "annotations" / "instances_val.json"
    convert_source("coco", src, out, input_size=128, progress=False)
    n = read_table(out).num_rows
    convert_source("coco", src, out, input_size=128, progress=False)  # and a partition of its own is replaced
    assert read_table(out).num_rows == n > 0


# --- 6. --resume without trainer_state.json ---------------------------------------------------------------

def test_resume_without_trainer_state_refuses_instead_of_starting_over(ckpt, model_shard_dirs, capsys):
    (ckpt / "trainer_state.json").unlink()
    before = _tree(ckpt)
    rc, err = _lumen(capsys, *_train("--shards", *model_shard_dirs, "--out", ckpt, "--resume"))
    line = _one_line_error(err)
    assert rc == 2 and "trainer_state.json" in line and str(ckpt) in line, line
    assert _tree(ckpt) == before  # the old weights are neither trained over nor replaced


# --- 7. a diverged run's checkpoint; checksums ------------------------------------------------------------

def test_a_diverged_runs_checkpoint_never_predicts_nothing_silently(model_shard_dirs, sample_data_dir, tmp_path,
                                                                    capsys):
    """At --lr 1000 the first update already breaks the weights: the step-1 checkpoint is "kept", but every
    loss after it is NaN, and before the fix it predicted 0 boxes with exit code 0."""
    out = tmp_path / "diverged"
    rc, err = _lumen(capsys, "train", "--stage", "1", "--preset", "tiny", "--shards", *model_shard_dirs, "--out", out,
                     "--max-steps", "40", "--lr", "1000", "--warmup-steps", "1", "--batch-size", "4",
                     "--save-every", "1", "--max-bad-steps", "2", "--no-progress")
    line = _one_line_error(err)
    assert rc == 2 and "diverged" in line and "no good checkpoint" in line, line
    rc, err = _lumen(capsys, *_predict(sample_data_dir, out, tmp_path / "det.json"))
    line = _one_line_error(err)
    assert rc == 2 and "diverged" in line and str(out) in line, line
    assert not (tmp_path / "det.json").exists()


def _flip_a_byte(path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)  # inside the tensor data, past the header: the file still parses
    data[i] ^= 0x40
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_the_weights_are_one_line_naming_the_file(ckpt, sample_data_dir, tmp_path, capsys):
    _flip_a_byte(ckpt / "model.safetensors")
    rc, err = _lumen(capsys, *_predict(sample_data_dir, ckpt, tmp_path / "det.json"))
    line = _one_line_error(err)
    assert rc == 2 and str(ckpt / "model.safetensors") in line and "sha256" in line, line


def test_flipped_bytes_in_the_optimizer_state_refuse_a_resume(ckpt, model_shard_dirs, capsys):
    _flip_a_byte(ckpt / "optimizer.pt")
    rc, err = _lumen(capsys, *_train("--shards", *model_shard_dirs, "--out", ckpt, "--resume"))
    line = _one_line_error(err)
    assert rc == 2 and str(ckpt / "optimizer.pt") in line, line


def test_a_checkpoint_without_checksums_still_loads_and_says_so(ckpt, caplog):
    from lumen_model.checkpoint import load_model

    (ckpt / "checksums.json").unlink(missing_ok=True)  # as saved before checkpoints had checksums
    with caplog.at_level(logging.WARNING, logger="lumen_model.checkpoint"):
        model, _ = load_model(ckpt)
    assert model is not None
    assert any(str(ckpt) in r.getMessage() and "not verified" in r.getMessage() for r in caplog.records), caplog.text


# --- 13. broken checkpoint files and predict arguments: one line, no traceback ---------------------------

def _config_not_json(config: dict) -> str:
    return json.dumps(config)[:-40]


CONFIG_BREAKS = {
    "not JSON": _config_not_json,
    "a JSON list": lambda config: json.dumps([config]),
    "no lumen key": lambda config: json.dumps({k: v for k, v in config.items() if k != "lumen"}),
    "vocab_size a string": lambda config: json.dumps(dict(config, vocab_size=str(config["vocab_size"]))),
}


@pytest.mark.parametrize("case", sorted(CONFIG_BREAKS))
def test_a_broken_checkpoint_config_is_one_line_naming_it(ckpt, sample_data_dir, tmp_path, capsys, case):
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(CONFIG_BREAKS[case](config))
    rc, err = _lumen(capsys, *_predict(sample_data_dir, ckpt, tmp_path / "det.json"))
    line = _one_line_error(err)
    assert rc == 2 and str(ckpt / "config.json") in line, line


def test_a_truncated_tokenizer_is_one_line_naming_it(ckpt, sample_data_dir, tmp_path, capsys):
    data = (ckpt / "tokenizer.json").read_bytes()
    (ckpt / "tokenizer.json").write_bytes(data[: len(data) // 2])
    (ckpt / "checksums.json").unlink(missing_ok=True)  # an older checkpoint: the reader itself must say it
    rc, err = _lumen(capsys, *_predict(sample_data_dir, ckpt, tmp_path / "det.json"))
    line = _one_line_error(err)
    assert rc == 2 and str(ckpt / "tokenizer.json") in line, line


def _state_without_history(ckpt) -> str:
    state = json.loads((ckpt / "trainer_state.json").read_text())
    del state["history"]
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    return "trainer_state.json"


def _rng_of_another_shape(ckpt) -> str:
    rng = json.loads((ckpt / "rng_state_0.json").read_text())
    rng["torch"] = rng["torch"][:100]
    (ckpt / "rng_state_0.json").write_text(json.dumps(rng))
    return "rng_state_0.json"


@pytest.mark.parametrize("breaks", [_state_without_history, _rng_of_another_shape], ids=["no history", "rng shape"])
def test_a_broken_training_state_refuses_a_resume_in_one_line(ckpt, model_shard_dirs, capsys, breaks):
    name = breaks(ckpt)
    (ckpt / "checksums.json").unlink(missing_ok=True)  # an older checkpoint: the reader itself must say it
    rc, err = _lumen(capsys, *_train("--shards", *model_shard_dirs, "--out", ckpt, "--resume"))
    line = _one_line_error(err)
    assert rc == 2 and str(ckpt / name) in line, line


def test_predict_refuses_a_folder_as_out_before_any_work(checkpoint, sample_data_dir, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    rc, err = _lumen(capsys, *_predict(sample_data_dir, checkpoint, out))
    line = _one_line_error(err)
    assert rc == 2 and str(out) in line and "folder" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # nothing started (no heatmaps folder)


def test_predict_refuses_batch_size_zero(checkpoint, sample_data_dir, tmp_path, capsys):
    rc, err = _lumen(capsys, *_predict(sample_data_dir, checkpoint, tmp_path / "det.json", "--batch-size", "0"))
    line = _one_line_error(err)
    assert rc == 2 and "batch_size=0: must be >= 1" in line, line  # the setting's name (pipelines/settings.py)


def test_predict_says_a_missing_checkpoint_folder_does_not_exist(sample_data_dir, tmp_path, capsys):
    missing = tmp_path / "no-such-checkpoint"
    rc, err = _lumen(capsys, "predict", "--checkpoint", missing, "--task", "detection",
                     "--images", sample_data_dir / "coco" / "images", "--out", tmp_path / "det.json")
    line = _one_line_error(err)
    assert rc == 2 and str(missing) in line and "does not exist" in line, line
