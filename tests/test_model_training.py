"""The Lumen model: full-size shapes on the meta device, a real tiny training run, save/load, resume."""

import json

import numpy as np
import pytest
import torch

from lumen_model.checkpoint import load_model, save_checkpoint
from lumen_model.config import get_preset
from lumen_model.model import LumenModel
from lumen_model.train import TrainConfig, train
from lumen_model.tokenizer import ALL_SPECIALS

LLAVA_15_7B_PARAMS = 7_063_427_072  # llava-1.5-7b-hf: CLIP ViT-L/14-336 + Vicuna-7B + projector


def test_lumen_7b_has_llava_15_7b_shapes_on_meta_device():
    cfg = get_preset("lumen-7b")
    with torch.device("meta"):  # shapes and parameter counts, no memory
        model = LumenModel(cfg, vocab_size=cfg.text.vocab_size, image_token_id=32000, pad_token_id=0)
    n = sum(p.numel() for p in model.llava.parameters())
    # the vision tower runs at 448 (interpolated position embeddings: 32x32+1 instead of 24x24+1 rows of 1024)
    assert n == LLAVA_15_7B_PARAMS + (32 * 32 - 24 * 24) * 1024
    assert sum(p.numel() for p in model.masks.sam.mask_decoder.parameters()) == 4_058_340  # SAM's mask decoder
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.fixture(scope="module")
def stage1_checkpoint(tiny_stage1, model_shard_dirs):
    out, result = tiny_stage1
    return out, result, model_shard_dirs


def test_stage1_loss_goes_down_and_writes_a_checkpoint(stage1_checkpoint):
    out, result, _ = stage1_checkpoint
    history = json.loads((out / "trainer_state.json").read_text())["history"]
    first = np.mean([h["loss"] for h in history[:4]])
    last = np.mean([h["loss"] for h in history[-4:]])
    assert last < first * 0.8, (first, last)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "optimizer.pt", "loss_curve.png"):
        assert (out / name).is_file(), name
    assert result["samples_per_s"] > 0


def test_checkpoint_round_trip_through_the_hf_layout(stage1_checkpoint, tmp_path):
    out, _, _ = stage1_checkpoint
    model, tok = load_model(out)
    copy = save_checkpoint(model, tok, tmp_path / "copy")
    again, tok2 = load_model(copy)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert tok2.convert_tokens_to_ids("[LOC]") == tok.convert_tokens_to_ids("[LOC]") != tok.unk_token_id


@pytest.mark.slow  # three training runs
def test_resume_continues_exactly(stage1_checkpoint, tmp_path):
    """6 steps in one go == a run stopped after 3 steps, then --resume: same weights, same losses."""
    _, _, shards = stage1_checkpoint
    common = dict(stage=1, preset="tiny", shards=shards, batch_size=4, lr=2e-4, warmup_steps=2, progress=False)
    train(TrainConfig(out=str(tmp_path / "a"), max_steps=6, **common))
    train(TrainConfig(out=str(tmp_path / "b"), max_steps=6, stop_at_step=3, **common))
    train(TrainConfig(out=str(tmp_path / "b"), max_steps=6, resume=True, **common))
    ha = json.loads((tmp_path / "a" / "trainer_state.json").read_text())["history"]
    hb = json.loads((tmp_path / "b" / "trainer_state.json").read_text())["history"]
    assert [h["step"] for h in hb] == [1, 2, 3, 4, 5, 6]
    assert [h["loss"] for h in ha] == pytest.approx([h["loss"] for h in hb], rel=1e-5)
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), k


def test_stage2_freezes_stage1_and_trains_decoders(stage1_checkpoint, tiny_stage2):
    out, _, _ = stage1_checkpoint
    before, _ = load_model(out)
    after, _ = load_model(tiny_stage2[0])
    sb, sa = before.state_dict(), after.state_dict()
    assert all(torch.equal(sb[k], sa[k]) for k in sb if k.startswith(("llava.", "aligner.")))
    assert any(not torch.equal(sb[k], sa[k]) for k in sb if k.startswith(("masks.", "pose.")))
    history = json.loads((tiny_stage2[0] / "trainer_state.json").read_text())["history"]
    assert all(np.isfinite(h["loss"]) and h["loss"] < 20 for h in history), history


def test_special_tokens_are_single_ids_in_tokenizer_and_embeddings(stage1_checkpoint):
    model, tok = load_model(stage1_checkpoint[0])
    ids = [tok.convert_tokens_to_ids(t) for t in ALL_SPECIALS]
    assert len(set(ids)) == len(ids) and tok.unk_token_id not in ids[2:]
    assert tok("Sure, the location is [LOC]. [DET]", add_special_tokens=False)["input_ids"][-3:] == [
        tok.convert_tokens_to_ids("[LOC]"), tok.convert_tokens_to_ids("."), tok.convert_tokens_to_ids("[DET]")]
    assert model.llava.get_input_embeddings().num_embeddings >= max(ids) + 1


def test_full_size_loading_path_reads_hf_layout_folders(stage1_checkpoint, tmp_path):
    """The --weights / LUMEN_WEIGHTS_DIR path: a LLaVA folder written by save_pretrained loads back (the SAM
    folder's path is tests/test_model_sam.py: the tiny preset's mask head is not SAM)."""
    from lumen_model.checkpoint import build_model, load_pretrained_parts

    trained, tok = load_model(stage1_checkpoint[0])
    trained.llava.save_pretrained(tmp_path / "weights" / "llava")
    torch.manual_seed(123)
    fresh = build_model(trained.cfg, tok)
    assert not torch.equal(fresh.llava.lm_head.weight, trained.llava.lm_head.weight)
    counts = load_pretrained_parts(fresh, tmp_path / "weights")
    assert counts == {"llava": len(trained.llava.state_dict())}
    a, b = trained.llava.state_dict(), fresh.llava.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_cli_bad_input_is_one_line(tmp_path):
    import subprocess

    for extra, needle in ((["--shards", str(tmp_path / "nope")], "shard folder not found"),
                          (["--shards", str(tmp_path), "--preset", "huge"], "invalid choice: 'huge'")):
        proc = subprocess.run([".venv/bin/lumen", "train", "--stage", "1", "--out", str(tmp_path / "o"), *extra],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow  # three training runs, two with loader processes
def test_resume_is_exact_with_dataloader_workers(stage1_checkpoint, tmp_path):
    """Batches loaded by 2 DataLoader workers, stopped after 3 steps and resumed == 6 steps loaded
    in the training process: the data (and mirror coins) depend on the step alone."""
    _, _, shards = stage1_checkpoint
    common = dict(stage=1, preset="tiny", shards=shards, batch_size=4, lr=2e-4, warmup_steps=2, progress=False)
    train(TrainConfig(out=str(tmp_path / "a"), max_steps=6, num_workers=0, **common))
    train(TrainConfig(out=str(tmp_path / "b"), max_steps=6, stop_at_step=3, num_workers=2, **common))
    train(TrainConfig(out=str(tmp_path / "b"), max_steps=6, resume=True, num_workers=2, **common))
    ha = json.loads((tmp_path / "a" / "trainer_state.json").read_text())["history"]
    hb = json.loads((tmp_path / "b" / "trainer_state.json").read_text())["history"]
    assert [h["step"] for h in hb] == [1, 2, 3, 4, 5, 6]
    assert [h["loss"] for h in ha] == pytest.approx([h["loss"] for h in hb], rel=1e-5)
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x, y, atol=1e-6), k


def test_training_batches_come_from_the_workers(stage1_checkpoint):
    """num_workers > 0 really loads in other processes (the items carry the loading pid)."""
    import os

    from lumen_model.train import train_rows, training_batches
    from pipelines.dataset import ShardDataset

    _, _, shards = stage1_checkpoint
    ds = ShardDataset(shards, input_size=128)
    keep, groups = train_rows(ds)
    batches = training_batches(ds, keep, groups, lambda items: os.getpid(), seed=0,
                               batch_size=4, start=0, stop=4, group_size=4, hflip_p=0.5, num_workers=2)
    loaded = [pid for _, pid in batches]
    assert len(loaded) == 4 and os.getpid() not in loaded


def test_loader_workers_stop_when_the_steps_end(stage1_checkpoint):
    """The last step stops the DataLoader's worker processes at once: an iterator left to the garbage
    collector survived into the next loader's forked workers ("can only test a child process")."""
    import gc
    import multiprocessing

    from lumen_model.train import train_rows, training_batches
    from pipelines.dataset import ShardDataset

    _, _, shards = stage1_checkpoint
    ds = ShardDataset(shards, input_size=128)
    keep, groups = train_rows(ds)
    before = set(multiprocessing.active_children())
    gc.disable()  # what must stop the workers is the end of the steps, not a collection
    try:
        batches = training_batches(ds, keep, groups, lambda items: len(items), seed=0,
                                   batch_size=4, start=0, stop=3, group_size=4, hflip_p=0.5, num_workers=2)
        assert [step for step, _ in batches] == [0, 1, 2]
        left = [p for p in multiprocessing.active_children() if p not in before]
    finally:
        gc.enable()
    assert left == [], left
