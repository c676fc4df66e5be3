"""Batches that hold several instructions per image: the order, the shared vision pass, the [LOC] words."""

import pytest
import torch

from lumen_model.checkpoint import load_model
from lumen_model.data import Collator, hflip
from lumen_model.model import gather_rows
from lumen_model.train import _batches_from, _grouped_order
from pipelines.dataset import ShardDataset


@pytest.fixture(scope="module")
def stage1_for_batching(tiny_stage1):
    return tiny_stage1[0]


def test_grouped_order_is_a_permutation_in_runs_of_one_image():
    groups = [i % 7 for i in range(100)]  # 7 images, 14-15 samples each
    order = _grouped_order(groups, seed=3, epoch=0, group_size=4)
    assert sorted(order) == list(range(100))  # every sample exactly once per epoch
    runs, k = [], 0
    while k < len(order):  # walk the order run by run: a run is at most 4 samples of one image
        key = groups[order[k]]
        run = [p for p in order[k:k + 4] if groups[p] == key]
        runs.append(run)
        k += len(run)
    assert max(len(r) for r in runs) == 4 and len(runs) <= 7 * 4  # each image: ceil(15 / 4) = 4 runs at most
    assert order != _grouped_order(groups, seed=3, epoch=1, group_size=4)  # a new order every epoch
    assert order == _grouped_order(groups, seed=3, epoch=0, group_size=4)  # and the same one on resume


def test_batches_are_a_pure_function_of_the_step():
    groups = [i % 5 for i in range(40)]
    full = [idx for _, idx in zip(range(12), _batches_from(40, 0, 8, 0, groups, 4))]
    resumed = [idx for _, idx in zip(range(5), _batches_from(40, 0, 8, 7, groups, 4))]
    assert [i for _, i in resumed] == [i for _, i in full[7:12]]


def test_gather_rows_equals_indexing_and_its_gradient():
    x = torch.randn(3, 5, 4, requires_grad=True)
    index = torch.tensor([2, 0, 0, 1, 2, 2])
    assert torch.allclose(gather_rows(x, index), x[index])
    gather_rows(x, index).sum().backward()
    assert torch.equal(x.grad[:, 0, 0], torch.tensor([2.0, 1.0, 3.0]))  # how often each row was used


def test_shared_vision_pass_gives_the_per_sample_result(stage1_for_batching, model_shard_dirs):
    """One encoder pass per distinct image, gathered, == every sample encoding its own copy."""
    model, tok = load_model(stage1_for_batching)
    model.eval()
    cfg = model.cfg
    ds = ShardDataset(model_shard_dirs, input_size=cfg.input_size, tasks=["detection", "grounding"], split="train")
    rows = {}
    for i, r in enumerate(ds.rows):
        rows.setdefault(r["image_path"], []).append(i)
    pick = [i for members in list(rows.values())[:3] for i in members[:3]]
    collate = Collator(tok, cfg.num_image_tokens, cfg.max_text_tokens, cfg.heatmap_size, cfg.input_size)
    batch = collate([ds[i] for i in pick])
    assert len(batch["images"]) == 3 and batch["image_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with torch.no_grad():
        shared = model.stage1(batch)
        alone = model.stage1({k: v for k, v in batch.items() if k not in ("images", "image_index")})
    assert torch.allclose(shared["heatmap_logits"], alone["heatmap_logits"], atol=1e-4)


def test_concept_words_are_the_instructions_own_words(stage1_for_batching):
    _, tok = load_model(stage1_for_batching)
    collate = Collator(tok, 4)
    words = tok.convert_ids_to_tokens(collate.concept_ids("Please find the location of the red circle on the left. "
                                                          "Respond with a box."))
    assert sorted(words) == ["circle", "left", "on", "red"]
    words = tok.convert_ids_to_tokens(collate.concept_ids("Where are all the star in this image? Respond with boxes."))
    assert words == ["star"]


def test_mirroring_moves_every_target_with_the_pixels(model_shard_dirs):
    ds = ShardDataset(model_shard_dirs, input_size=128, tasks=["pose", "grounding"], split="train")
    pose = next(i for i, r in enumerate(ds.rows) if r["task"] == "pose")
    side = next(i for i, r in enumerate(ds.rows) if r["task"] == "grounding" and " left" in r["instruction"])
    for idx in (pose, side):
        item = ds[idx]
        flipped = hflip(item)
        s, m = 128, item["heatmap"].shape[-1]
        # the heatmap's peaks are where the mirrored centers say
        for x, y in flipped["centers"].tolist():
            assert flipped["heatmap"][y, x] == 1.0
        # a box's pixels: mirrored box over mirrored image == the box over the image, mirrored
        x0, y0, x1, y1 = item["boxes_input"][0].round().int().tolist()
        fx0, fy0, fx1, fy1 = flipped["boxes_input"][0].round().int().tolist()
        assert (fx0, fx1) == (s - x1, s - x0) and (fy0, fy1) == (y0, y1)
        assert torch.equal(flipped["pixel_values"][:, y0:y1, fx0:fx1], item["pixel_values"][:, y0:y1, x0:x1].flip(-1))
        back = hflip(flipped)
        for key in ("pixel_values", "heatmap", "centers", "boxes_input", "masks_input", "keypoints_input"):
            assert torch.allclose(back[key].float(), item[key].float()), key
        assert back["instruction"] == item["instruction"]
    # words: "left" becomes "right"; keypoints: the left wrist becomes the right wrist
    assert " right" in hflip(ds[side])["instruction"] and " left" not in hflip(ds[side])["instruction"]
    kp, fkp = ds[pose]["keypoints_input"], hflip(ds[pose])["keypoints_input"]
    left_wrist, right_wrist = 9, 10
    if kp[0, left_wrist, 2] > 0:
        assert fkp[0, right_wrist, 0] == pytest.approx(128 - kp[0, left_wrist, 0].item())
