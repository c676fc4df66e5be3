"""Faster ways to compute the same training values: each one against the plain computation it replaces."""

import torch

from lumen_model.aligner import Attention, DenseAligner
from lumen_model.decoders.pose import crop_features
from lumen_model.decoders.roi_masks import RoiMaskHead, enlarge
from lumen_model.losses import mask_loss_sum

HEADS = ("heatmap_logits", "sizes", "offsets")


def _aligner_and_inputs(seed: int = 0, colour_match: int = 6):
    torch.manual_seed(seed)
    al = DenseAligner(48, 40, 32, 2, 4, 16, pixel_encoder="cnn", image_self_attn=True, token_grid=8,
                      colour_match=colour_match)
    with torch.no_grad():  # non-zero biases everywhere the fold moves them
        for p in al.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return al, torch.randn(3, 64, 48), torch.randn(3, 40), torch.randn(2, 3, 64, 64)


def _pixel_feats(al, pixels):
    index = torch.tensor([0, 0, 1])  # two instructions on the first image, one on the second
    return tuple(f[index] for f in al.encode_pixels(pixels))


def test_heads_without_the_dense_map_equal_the_dense_heads_and_their_gradients():
    al, image_tokens, loc, pixels = _aligner_and_inputs()
    with torch.no_grad():
        weights = {k: torch.randn(3, *al(image_tokens, loc, _pixel_feats(al, pixels))[k].shape[1:]) for k in HEADS}
    results = []
    for dense in (True, False):
        al.zero_grad()
        out = al(image_tokens, loc, _pixel_feats(al, pixels), dense=dense)
        assert ("dense" in out) == dense
        sum((out[k] * weights[k]).sum() for k in HEADS).backward()
        results.append(({k: out[k].detach() for k in HEADS},
                        {n: p.grad.clone() for n, p in al.named_parameters() if p.grad is not None}))
    (full, full_grads), (heads, head_grads) = results
    for k in HEADS:
        assert torch.allclose(full[k], heads[k], atol=1e-5, rtol=1e-4), k
    assert set(full_grads) == set(head_grads)  # every parameter still learns, the fuse's last conv included
    for n in full_grads:
        assert torch.allclose(full_grads[n], head_grads[n], atol=1e-5, rtol=1e-3), n


def test_batch_first_attention_equals_torch_multihead_attention():
    torch.manual_seed(1)
    ours = Attention(32, 4, batch_first=True)
    with torch.no_grad():
        ours.in_proj_bias.normal_()
        ours.out_proj.bias.normal_()
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    ref.load_state_dict(ours.state_dict())  # the same keys: checkpoints load into either
    x, other = torch.randn(3, 10, 32), torch.randn(3, 5, 32)
    for q, k, v in ((x, x, other[:, :0].new_zeros(3, 10, 32) + x * 2), (x, other, other), (other, x, x)):
        got = ours(q, k, v, need_weights=False)[0]
        want = ref(q, k, v, need_weights=False)[0]
        assert torch.allclose(got, want, atol=1e-5)
        got.square().sum().backward()
        want.square().sum().backward()
    for (name, p), r in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, r.grad, atol=1e-4), name


def _crop_per_box(dense, boxes, input_size, crop):
    """The per-box loop crop_features replaced: one grid per box, built from Python floats."""
    grids, batch = [], []
    lin = (torch.arange(crop, dtype=dense.dtype) + 0.5) / crop
    for i, bx in enumerate(boxes):
        for x0, y0, x1, y1 in bx.tolist():
            gy, gx = torch.meshgrid((y0 + (y1 - y0) * lin) / input_size * 2 - 1,
                                    (x0 + (x1 - x0) * lin) / input_size * 2 - 1, indexing="ij")
            grids.append(torch.stack([gx, gy], -1))
            batch.append(i)
    return torch.nn.functional.grid_sample(dense[batch], torch.stack(grids), align_corners=False)


def _random_boxes(n, size=128):
    xy = torch.rand(n, 2) * size * 0.8
    return torch.cat([xy, xy + 2 + torch.rand(n, 2) * size * 0.5], 1)


def test_crops_of_all_boxes_at_once_equal_the_per_box_crops():
    torch.manual_seed(2)
    dense = torch.randn(3, 8, 32, 32)
    boxes = [_random_boxes(4), _random_boxes(0), _random_boxes(3)]
    assert torch.allclose(crop_features(dense, boxes, 128, 14), _crop_per_box(dense, boxes, 128, 14), atol=1e-6)
    assert crop_features(dense, [_random_boxes(0)] * 3, 128, 14).shape == (0, 8, 14, 14)


def test_mask_targets_cropped_at_once_equal_the_per_mask_crops():
    torch.manual_seed(3)
    head = RoiMaskHead(16, 128)
    head.eval()  # no box jitter: the rois are the enlarged boxes
    boxes = [_random_boxes(2), _random_boxes(3)]
    masks = [torch.rand(len(b), 128, 128) > 0.5 for b in boxes]
    dense, heat, pixels = torch.randn(2, 16, 32, 32), torch.randn(2, 32, 32), torch.randn(2, 3, 128, 128)
    rois = [enlarge(b, head.context) for b in boxes]
    logits = head.box_logits(dense, heat, pixels, rois)
    target = torch.cat([_crop_per_box(m.float()[None, None], [r[None]], 128, head.out_size)
                        for ms, rs in zip(masks, rois) for m, r in zip(ms, rs)])
    assert torch.allclose(torch.div(*head.loss_sum(dense, heat, pixels, boxes, masks)),
                          torch.div(*mask_loss_sum(logits, target[:, 0])), atol=1e-6)
