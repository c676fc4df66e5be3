"""The aligner's [LOC]-to-colour term (`aligner_colour_match`): "the yellow square" must find the yellow square
when a purple one of the same shape stands beside it."""

import torch
import torch.nn.functional as F

from lumen_model.aligner import DenseAligner
from lumen_model.losses import gaussian_focal_loss

COLOURS = torch.tensor([[0.86, 0.16, 0.16], [0.16, 0.67, 0.24], [0.16, 0.31, 0.86], [0.92, 0.78, 0.12],
                        [0.59, 0.24, 0.75]])  # the demo's red, green, blue, yellow, purple


def _scene(a: int, b: int, swap: bool, size: int = 64):
    """Two squares of colours a and b on grey; with `swap` they trade places. Returns the image and the centres."""
    img = torch.full((3, size, size), 0.85)
    left, right = (b, a) if swap else (a, b)
    img[:, 24:40, 8:24] = COLOURS[left].view(3, 1, 1)
    img[:, 24:40, 40:56] = COLOURS[right].view(3, 1, 1)
    at_a = (32 // 4, (48 if swap else 16) // 4)  # (y, x) on the 16 x 16 heatmap
    at_b = (32 // 4, (16 if swap else 48) // 4)
    return img, at_a, at_b


def _target(yx, m=16, sigma=1.0):
    y, x = torch.meshgrid(torch.arange(m, dtype=torch.float32), torch.arange(m, dtype=torch.float32), indexing="ij")
    return torch.exp(-((x - yx[1]) ** 2 + (y - yx[0]) ** 2) / (2 * sigma ** 2))


def _data(n, gen):
    imgs, locs, targets, pairs = [], [], [], []
    for _ in range(n):
        a, b = torch.randperm(5, generator=gen)[:2].tolist()
        img, at_a, at_b = _scene(a, b, bool(torch.randint(2, (1,), generator=gen)))
        imgs.append(img)
        locs.append(F.one_hot(torch.tensor(a), 8).float())  # the [LOC] state names the colour asked for
        targets.append(_target(at_a))
        pairs.append((at_a, at_b))
    return torch.stack(imgs), torch.stack(locs), torch.stack(targets), pairs


def test_the_colour_term_starts_as_a_no_op_and_alone_learns_which_square_is_meant():
    torch.manual_seed(0)
    al = DenseAligner(8, 8, 32, 1, 2, 16, pixel_encoder="cnn", token_grid=8, colour_match=8)
    imgs, locs, targets, pairs = _data(32, torch.Generator().manual_seed(0))
    tokens = torch.zeros(32, 64, 8)  # image tokens that say nothing
    with torch.no_grad():
        before = al(tokens, locs, al.encode_pixels(imgs), dense=False)["heatmap_logits"]
        assert float(al.colour_logits(al.loc_proj(locs), al.encode_pixels(imgs)).abs().max()) == 0.0
    # only the term's own weights learn: the heatmap it adds must tell the squares apart by itself
    colour_params = list(al.colour.parameters()) + list(al.loc_colour.parameters())
    opt = torch.optim.Adam(colour_params, lr=1e-2)
    for _ in range(200):
        heat = before + al.colour_logits(al.loc_proj(locs), al.encode_pixels(imgs))
        loss = gaussian_focal_loss(heat, targets).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    imgs, locs, _, pairs = _data(48, torch.Generator().manual_seed(1))  # new scenes
    with torch.no_grad():
        feats = al.encode_pixels(imgs)
        heat = al(torch.zeros(48, 64, 8), locs, feats, dense=False)["heatmap_logits"]
        term = al.colour_logits(al.loc_proj(locs), feats)
        al.loc_colour.weight.zero_()
        al.loc_colour.bias.zero_()
        without = al(torch.zeros(48, 64, 8), locs, feats, dense=False)["heatmap_logits"]
    assert torch.allclose(heat - without, term, atol=1e-5)  # the forward pass adds the term to the heatmap
    right = [float(t[a] > t[b]) for t, (a, b) in zip(term, pairs)]
    assert sum(right) / len(right) >= 0.85, sum(right) / len(right)
