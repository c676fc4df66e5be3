"""The VQA readout: what a question's heatmap points at (colour, features, peaks), handed to the answer."""

import torch

from lumen_model.vqa_readout import VqaReadout, answer_positions, heat_statistics


def _blobs(centers, m=32, sigma=1.0, height=6.0):
    """Heatmap logits with one Gaussian bump per center on a 'no object' floor (-4)."""
    y, x = torch.meshgrid(torch.arange(m, dtype=torch.float32), torch.arange(m, dtype=torch.float32), indexing="ij")
    logit = torch.full((m, m), -4.0)
    for cx, cy in centers:
        logit = torch.maximum(logit, -4.0 + height * torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2)))
    return logit


def test_peak_counts_follow_the_number_of_objects():
    heat = torch.stack([_blobs(c) for c in ([], [(5, 5)], [(5, 5), (20, 8)], [(5, 5), (20, 8), (12, 25)])])
    stats = heat_statistics(heat)
    counts = torch.expm1(stats[:, 1])  # the lowest level's soft count
    assert torch.allclose(counts, torch.tensor([0.0, 1.0, 2.0, 3.0]), atol=0.05), counts
    assert stats[0, 0] < 0.05 and (stats[1:, 0] > 0.8).all()  # "is there ...?": the peak


def test_readout_reads_the_colour_where_the_heatmap_points():
    """Same heatmap, same features: two images whose only difference is the colour under the peak give
    different readouts, and an image that differs only away from the peak gives (nearly) the same."""
    torch.manual_seed(0)
    readout = VqaReadout(feature_dim=8, text_dim=16)
    torch.nn.init.normal_(readout.mlp[-1].weight)  # trained weights are not zero
    heat = _blobs([(8, 8)], height=12.0).unsqueeze(0)
    feats = torch.randn(1, 8, 32, 32)
    red, blue = torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)
    red[:, 0, 6:11, 6:11], blue[:, 2, 6:11, 6:11] = 1.0, 1.0
    red_far = red.clone()
    red_far[:, 2, 24:30, 24:30] = 1.0  # a blue thing where the question does not look
    r_red, r_blue, r_far = (readout(heat, feats, p) for p in (red, blue, red_far))
    assert (r_red - r_blue).norm() > 20 * (r_red - r_far).norm()


def test_untrained_readout_changes_no_answer():
    readout = VqaReadout(feature_dim=8, text_dim=16)
    out = readout(torch.randn(2, 32, 32), torch.randn(2, 8, 32, 32), torch.randn(2, 3, 128, 128))
    assert out.shape == (2, 16) and torch.count_nonzero(out) == 0


def test_answer_positions_are_the_states_that_predict_the_answer():
    where = answer_positions(torch.tensor([2, -1, 0]), 4)
    assert where.tolist() == [[False, False, True, True], [False] * 4, [True] * 4]


def test_a_batch_moves_whole_to_the_training_device():
    """Per-row lists (boxes, masks, centers, keypoints, word ids) travel with the tensors: a GPU run of
    stage 1 and 2 failed on CPU tensors left in them."""
    from lumen_model.train import batch_to

    batch = {"input_ids": torch.zeros(2, 3), "boxes_input": [torch.zeros(1, 4), torch.zeros(0, 4)],
             "task": ["vqa", "detection"], "concept_ids": (torch.zeros(2), torch.zeros(0)), "empty": []}
    moved = batch_to(batch, "meta")
    assert moved["input_ids"].is_meta and all(t.is_meta for t in moved["boxes_input"] + list(moved["concept_ids"]))
    assert isinstance(moved["concept_ids"], tuple) and moved["task"] == ["vqa", "detection"] and moved["empty"] == []
